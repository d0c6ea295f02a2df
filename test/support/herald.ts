/** Starting Herald for integration tests: its own state directory, a free port, quiet logs. */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../config.ts';
import { type Herald, type StartOptions, startHerald } from '../../app/herald.ts';
import { createLogger } from '../../runtime/logger.ts';
import type { StageName } from '../../topology.ts';

export interface TestHeraldOptions {
  stages?: readonly StageName[];
  env?: Record<string, string>;
  stateDir?: string;
  channels?: StartOptions['channels'];
  api?: boolean;
}

/** The API key every test Herald registers for tenant acme (admin): HERALD_DEV_KEY. */
export const TEST_KEY = 'hk_test_acme_admin_0123456789abcdef';
/** Authorization headers with TEST_KEY. */
export const AUTH = { authorization: `Bearer ${TEST_KEY}` } as const;
/**
 * The default rules without the in-app channel, so the suite's webhook tests see one
 * delivery per notification; the inbox tests run on rules/default.json itself. Derived
 * from the default file, so it cannot drift.
 */
function webhookRules(): string {
  const doc = JSON.parse(readFileSync('rules/default.json', 'utf8')) as { rules: { id: string; channels: string[] }[] };
  for (const r of doc.rules) r.channels = r.channels.filter((c) => c !== 'inapp');
  const file = join(mkdtempSync(join(tmpdir(), 'herald-rules-')), 'rules.json');
  writeFileSync(file, JSON.stringify(doc));
  return file;
}
export const TEST_RULES = webhookRules();

/** Settings every test instance shares: the key, a signing secret of its own, loopback receivers allowed (needed against KAFKA_BROKERS), the test rules, one process (tests read its stores and runners directly; test/workers.int.test.ts and the demo run the default, one per core). */
export const TEST_ENV = { HERALD_DEV_KEY: TEST_KEY, HERALD_WEBHOOK_SECRET: 'test-signing-secret', HERALD_OUTBOUND_ALLOW: '127.0.0.1,::1', HERALD_RULES: TEST_RULES, HERALD_WORKERS: '1' } as const;

export async function startTestHerald(o: TestHeraldOptions = {}): Promise<Herald & { stateDir: string }> {
  const stateDir = o.stateDir ?? mkdtempSync(join(tmpdir(), 'herald-test-'));
  const config = loadConfig({
    ...TEST_ENV,
    HERALD_HTTP_PORT: '0', HERALD_STATE_DIR: stateDir, HERALD_PARTITIONS: '2', HERALD_RETRY_BASE_MS: '100', HERALD_SESSION_TIMEOUT_MS: '6000', HERALD_LOG_LEVEL: process.env.HERALD_TEST_LOG ?? 'silent',
    // Real Kafka under testcontainers passes its own.
    ...(process.env.KAFKA_BROKERS ? { KAFKA_BROKERS: process.env.KAFKA_BROKERS } : {}),
    ...o.env,
  });
  const herald = await startHerald({ config, log: createLogger(config.logLevel), ...(o.stages ? { stages: o.stages } : {}), ...(o.channels ? { channels: o.channels } : {}), ...(o.api !== undefined ? { api: o.api } : {}) });
  return Object.assign(herald, { stateDir });
}

export function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
}

/** Polls `fn` until it stops throwing (or returns a truthy value), then returns its result. */
export async function eventually<T>(fn: () => Promise<T | false | null | undefined> | T | false | null | undefined, timeoutMs = 20_000, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== false && v !== undefined && v !== null) return v as T;
      last = new Error('condition still false');
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw last;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export async function api<T = Record<string, unknown>>(h: Herald, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: T }> {
  const res = await fetch(`${h.httpUrl}${path}`, {
    method,
    headers: body !== undefined ? { 'content-type': 'application/json', ...AUTH, ...headers } : { ...AUTH, ...headers },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : null) as T };
}

/** Follows a topic from the beginning in a group of its own; `messages` fills as records arrive. */
export async function collect(h: Herald, topic: string): Promise<{ messages: import('kafkajs').KafkaMessage[]; stop: () => Promise<void> }> {
  const { TopicReader } = await import('../../runtime/reader.ts');
  const messages: import('kafkajs').KafkaMessage[] = [];
  const reader = new TopicReader(h.kafka, h.admin, { topic, groupPrefix: 'test.', onBatch: async (b) => void messages.push(...b.messages) });
  await reader.start();
  return { messages, stop: () => reader.stop() };
}

/**
 * A broker and schema registry that outlive the Herald processes of a test, for restart
 * and failover tests. `env` points Herald at them.
 */
export async function startCluster(partitions: number, brokers = 1): Promise<{ broker: import('../../embedded/broker.ts').EmbeddedBroker; env: { KAFKA_BROKERS: string; SCHEMA_REGISTRY_URL: string }; stop: () => Promise<void> }> {
  const { EmbeddedBroker } = await import('../../embedded/broker.ts');
  const { EmbeddedSchemaRegistry } = await import('../../embedded/schema-registry.ts');
  const { topicPlan } = await import('../../topology.ts');
  const broker = await EmbeddedBroker.start({ brokers });
  for (const t of topicPlan('herald.', partitions)) await broker.createTopic(t.name, t.partitions, Math.min(brokers, 3));
  const registry = new EmbeddedSchemaRegistry();
  const env = { KAFKA_BROKERS: broker.bootstraps, SCHEMA_REGISTRY_URL: await registry.start() };
  return { broker, env, stop: async () => { await registry.stop(); await broker.stop(); } };
}

/** One API call by URL with the test key (for Herald processes started outside this one). */
export async function callUrl(url: string, method: string, path: string, body?: unknown): Promise<{ status: number; servedBy: string | null; body: Record<string, unknown> }> {
  const res = await fetch(`${url}${path}`, { method, headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...AUTH }, ...(body ? { body: JSON.stringify(body) } : {}) });
  return { status: res.status, servedBy: res.headers.get('x-herald-served-by'), body: (await res.json().catch(() => null)) as Record<string, unknown> };
}
