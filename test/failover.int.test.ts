/**
 * Two instances in the same consumer groups on the embedded broker. One is killed with
 * SIGKILL; its partitions move to the survivor, which restores their dedupe stores from
 * the changelog and keeps suppressing duplicates of keys the dead instance saw.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmbeddedBroker } from '../embedded/broker.ts';
import { EmbeddedSchemaRegistry } from '../embedded/schema-registry.ts';
import { createLogger } from '../runtime/logger.ts';
import { createKafka } from '../runtime/kafka.ts';
import { TopicReader } from '../runtime/reader.ts';
import { loadConfig } from '../config.ts';
import { Serde } from '../schemas/index.ts';
import type { LifecycleEvent } from '../schemas/types.ts';
import { topicName, topicPlan } from '../topology.ts';
import { checkAccounting } from './support/accounting.ts';
import { eventually, removeDir, AUTH, TEST_ENV } from './support/herald.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';

let broker: EmbeddedBroker;
let registry: EmbeddedSchemaRegistry;
let registryUrl: string;
const hooks = new WebhookReceiver();
const children: ChildProcess[] = [];
const dirs: string[] = [];

beforeAll(async () => {
  await hooks.start();
  broker = await EmbeddedBroker.start();
  for (const t of topicPlan('herald.', 4)) await broker.createTopic(t.name, t.partitions);
  registry = new EmbeddedSchemaRegistry();
  registryUrl = await registry.start();
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await registry?.stop();
  await broker?.stop();
  await hooks.stop();
  for (const d of dirs) removeDir(d);
});

interface Instance { child: ChildProcess; url: string; log: () => string }

async function instance(name: string): Promise<Instance> {
  const stateDir = mkdtempSync(join(tmpdir(), `herald-${name}-`));
  dirs.push(stateDir);
  const child = spawn(process.execPath, ['cli/herald.ts', 'run'], {
    env: {
      ...process.env, ...TEST_ENV, KAFKA_BROKERS: broker.bootstraps, SCHEMA_REGISTRY_URL: registryUrl, HERALD_PARTITIONS: '4', HERALD_STATE_DIR: stateDir,
      HERALD_HTTP_PORT: '0', HERALD_LOG_LEVEL: 'info', HERALD_SESSION_TIMEOUT_MS: '6000', HERALD_INSTANCE_ID: name,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const url = await eventually(() => /herald ready (\S+)/.exec(out)?.[1], 40_000).catch((err: Error) => {
    throw new Error(`instance ${name} not ready: ${err.message}\n${out.split('\n').slice(-15).join('\n')}`);
  });
  return { child, url, log: () => out };
}

async function post(url: string, path: string, body: unknown, method = 'POST') {
  const res = await fetch(`${url}${path}`, { method, headers: { 'content-type': 'application/json', ...AUTH }, body: JSON.stringify(body) });
  expect(res.status).toBe(202);
  return res.json() as Promise<{ notifications: { notificationId: string }[] }>;
}

describe('failover between two instances', () => {
  it('keeps suppressing duplicates of keys seen by an instance killed with SIGKILL', async () => {
    const a = await instance('a');
    const b = await instance('b');
    // Both members in every group: each holds some partitions.
    const dedupeJoins = (x: Instance) => x.log().split('\n').filter((l) => l.includes('"joined group"') && l.includes('"stage":"dedupe"')).map((l) => JSON.parse(l) as { partitions: number[] });
    await eventually(() => dedupeJoins(b).length > 0, 30_000);

    const config = loadConfig({ ...TEST_ENV, KAFKA_BROKERS: broker.bootstraps });
    const kafka = createKafka(config, broker.bootstraps, createLogger('silent'));
    const admin = kafka.admin();
    await admin.connect();
    const serde = new Serde(registryUrl);
    const outcomes: LifecycleEvent[] = [];
    const reader = new TopicReader(kafka, admin, { topic: topicName('herald.', 'outcomes'), groupPrefix: 'test.', onBatch: async ({ messages }) => {
      for (const m of messages) outcomes.push(await serde.decode<LifecycleEvent>(m.value!));
    } });
    await reader.start();
    const terminalOf = (id: string) => outcomes.find((e) => e.notificationId === id && e.terminal);

    const users = Array.from({ length: 12 }, (_, i) => `user-${i}`);
    for (const u of users) await post(a.url, `/v1/users/${u}`, { webhookUrl: `${hooks.url}/${u}` }, 'PUT');
    // Wait until both instances' users tables have everyone.
    await eventually(async () => (await Promise.all([a, b].flatMap((x) => users.map((u) => fetch(`${x.url}/v1/users/${u}`, { headers: AUTH }).then((r) => r.ok))))).every(Boolean), 30_000);

    const firstIds: string[] = [];
    for (const [i, u] of users.entries()) {
      const r = await post(i % 2 ? a.url : b.url, '/v1/events', { id: `first-${u}`, type: 'comment.created', tenant: 'acme', recipients: [u], idempotencyKey: `key-${u}`, data: { commentId: u } });
      firstIds.push(r.notifications[0]!.notificationId);
    }
    await eventually(() => firstIds.every((id) => terminalOf(id)?.status === 'DELIVERED'), 30_000);
    // The dedupe partitions b holds are the ones a must take over.
    const bPartitions = dedupeJoins(b).at(-1)!.partitions;
    expect(bPartitions.length).toBeGreaterThan(0);
    const decidedByB = outcomes.filter((e) => e.stage === 'dedupe' && firstIds.includes(e.notificationId) && bPartitions.includes(e.sourcePartition));
    expect(decidedByB.length).toBeGreaterThan(0);

    const exited = new Promise<void>((r) => b.child.once('exit', () => r()));
    b.child.kill('SIGKILL');
    await exited;

    const secondIds: string[] = [];
    for (const u of users) {
      const r = await post(a.url, '/v1/events', { id: `second-${u}`, type: 'comment.created', tenant: 'acme', recipients: [u], idempotencyKey: `key-${u}`, data: { commentId: u } });
      secondIds.push(r.notifications[0]!.notificationId);
    }
    await eventually(() => secondIds.every((id) => terminalOf(id)), 60_000);
    expect(secondIds.map((id) => terminalOf(id)!.status)).toEqual(users.map(() => 'SUPPRESSED_DUPLICATE'));
    // a serves the whole lifecycle of notifications that b projected: its outcome store
    // replayed outcomes.v1 for the partitions it took over.
    for (const id of firstIds) {
      const n = await eventually(async () => {
        const res = await fetch(`${a.url}/v1/notifications/${id}`, { headers: AUTH });
        // Taken-over partitions are served while they catch up on the tail: wait for the end.
        const view = res.ok && ((await res.json()) as { terminal: string[]; events: { stage: string }[] });
        return view && view.terminal.length > 0 && view;
      }, 20_000);
      expect(n.terminal, id).toEqual(['webhook:DELIVERED']);
      expect(n.events.map((e) => e.stage), id).toEqual(['ingest', 'enrich', 'dedupe', 'throttle', 'route', 'deliver', 'deliver']);
    }
    // The accounting invariant over everything on outcomes.v1.
    const accepted = new Set(outcomes.filter((e) => e.status === 'ACCEPTED').map((e) => e.notificationId));
    expect(accepted.size).toBe(users.length * 2);
    expect(checkAccounting(outcomes, accepted).violations).toEqual([]);
    // Every user got exactly one webhook.
    for (const u of users) expect(hooks.for(`/${u}`).map((r) => [r.headers['idempotency-key'], r.headers['herald-attempt'], r.json.notificationId]), u).toHaveLength(1);
    // a restored the partitions it took over from the changelog.
    const restores = a.log().split('\n').filter((l) => l.includes('"store restored"') && l.includes('"stage":"dedupe"')).map((l) => JSON.parse(l) as { applied: number; partitions: number[] });
    const restoredFromB = restores.filter((r) => r.applied > 0 && r.partitions.some((p) => bPartitions.includes(p)));
    expect(restoredFromB.length).toBeGreaterThan(0);

    await reader.stop();
    await admin.disconnect();
    a.child.kill('SIGTERM');
  }, 150_000);
});
