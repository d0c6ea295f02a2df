/**
 * kill -9 mid-stream, twice: a Herald process is killed with SIGKILL while events flow
 * and started again on the same state directory, with all four channels in use (webhook,
 * chat, email to a real SMTP server, the in-app inbox). Nothing is lost (every event
 * reaches a terminal status on every channel), nothing is decided twice (the accounting
 * invariant over outcomes.v1), and each delivery arrives under one key: a call repeated
 * after a crash, before its result was recorded, carries the same Idempotency-Key or
 * Message-ID.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { SmtpSink } from '../channels/smtp-sink.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../config.ts';
import type { LifecycleEvent } from '../schemas/types.ts';
import { createKafka, createProducer } from '../runtime/kafka.ts';
import { createLogger } from '../runtime/logger.ts';
import { TopicReader } from '../runtime/reader.ts';
import { Serde } from '../schemas/index.ts';
import { topicName, userKey } from '../topology.ts';
import { checkAccounting } from './support/accounting.ts';
import { eventually, removeDir, startCluster, TEST_ENV } from './support/herald.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';

let cluster: Awaited<ReturnType<typeof startCluster>>;
const hooks = new WebhookReceiver();
const mail = new SmtpSink(10_000);
// The default rules with comment-created sent on all four channels.
const rulesFile = join(mkdtempSync(join(tmpdir(), 'herald-crash-rules-')), 'rules.json');
{
  const doc = JSON.parse(readFileSync('rules/default.json', 'utf8')) as { rules: { id: string; channels: string[]; templates: Record<string, unknown> }[] };
  const rule = doc.rules.find((r) => r.id === 'comment-created')!;
  rule.channels = ['webhook', 'email', 'inapp', 'chat'];
  rule.templates.chat = { en: { body: '{{actor}} commented on {{data.commentId}}' } };
  writeFileSync(rulesFile, JSON.stringify(doc));
}
const stateDir = mkdtempSync(join(tmpdir(), 'herald-crash-'));
const children: ChildProcess[] = [];

beforeAll(async () => {
  await hooks.start();
  await mail.start();
  cluster = await startCluster(4);
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await cluster?.stop();
  await hooks.stop();
  await mail.stop();
  removeDir(stateDir);
});

const env = () => ({ ...process.env, ...TEST_ENV, ...cluster.env, HERALD_RULES: rulesFile, HERALD_SMTP_URL: mail.url, HERALD_PARTITIONS: '4', HERALD_STATE_DIR: stateDir, HERALD_LOG_LEVEL: 'warn', HERALD_SESSION_TIMEOUT_MS: '6000', HERALD_COMMIT_INTERVAL_MS: '200', HERALD_HTTP_PORT: '0' });
let url = '';

/** `herald run`; the last one also serves the API (for the live projection's digest). */
async function herald(withApi = false): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['cli/herald.ts', 'run', ...(withApi ? [] : ['--no-api'])], {
    env: env(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', () => undefined);
  await eventually(() => out.includes('herald ready'), 60_000);
  if (withApi) url = /herald ready (http:\S+)/.exec(out)![1]!;
  return child;
}

describe('kill -9 mid-stream', () => {
  it('loses nothing and decides nothing twice across two SIGKILLs', async () => {
    const kafka = createKafka(loadConfig({ ...TEST_ENV, KAFKA_BROKERS: cluster.env.KAFKA_BROKERS }), cluster.env.KAFKA_BROKERS, createLogger('silent'), 'crash-test');
    const admin = kafka.admin();
    await admin.connect();
    const serde = new Serde(cluster.env.SCHEMA_REGISTRY_URL);
    const users = topicName('herald.', 'users');
    await serde.register(users, 'UserProfile');
    const producer = createProducer(kafka);
    await producer.connect();
    const USERS = 30;
    await producer.send({ topic: users, acks: -1, messages: await Promise.all(Array.from({ length: USERS }, async (_, i) => ({ key: userKey('acme', `u${i}`), value: await serde.encode(users, { userId: `u${i}`, tenant: 'acme', webhookUrl: `${hooks.url}/hook`, chatWebhookUrl: `${hooks.url}/chat`, email: `u${i}@example.com` }) }))) });
    const outcomes: LifecycleEvent[] = [];
    const reader = new TopicReader(kafka, admin, { topic: topicName('herald.', 'outcomes'), groupPrefix: 'test.', onBatch: async ({ messages }) => {
      for (const m of messages) outcomes.push(await serde.decode<LifecycleEvent>(m.value!));
    } });
    await reader.start();

    let sent = 0;
    let acked = 0;
    const send = async (n: number) => {
      const messages = Array.from({ length: n }, (_, k) => {
        const i = sent + k;
        return { key: `e${i}`, value: JSON.stringify({ id: `e${i}`, type: 'comment.created', tenant: 'acme', recipients: [`u${i % USERS}`], data: { commentId: `c${i}` } }) };
      });
      sent += n;
      await producer.send({ topic: topicName('herald.', 'events'), acks: -1, messages });
      acked += n;
    };
    const TOTAL = 1000;
    const inFlightAtKill: number[] = [];
    for (let round = 0; round < 2; round++) {
      const child = await herald();
      const before = new Set(outcomes.filter((e) => e.status === 'DELIVERED').map((e) => e.notificationId)).size;
      // A stream, not one burst: 400 events over about two seconds, so that however large
      // the batches Herald makes, some events are on their way when it is killed.
      const streaming = (async () => {
        for (let k = 0; k < 20; k++) {
          await send(20);
          await new Promise((r) => setTimeout(r, 100));
        }
      })();
      streaming.catch(() => undefined); // awaited below; a failure is reported there, once

      // Kill it while the stream is in flight: some deliveries are done, some not.
      await eventually(() => new Set(outcomes.filter((e) => e.status === 'DELIVERED').map((e) => e.notificationId)).size > before + 30, 30_000, 10);
      // Events the broker had acknowledged when Herald was killed (in Kafka, so Herald's to handle).
      const sentAtKill = acked;
      const exited = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGKILL');
      await exited;
      inFlightAtKill.push(sentAtKill - new Set(hooks.for('/hook').map((r) => String(r.headers['idempotency-key']))).size);
      await streaming;
    }
    // The kills landed mid-stream: events were still on their way each time.
    expect(Math.min(...inFlightAtKill)).toBeGreaterThan(0);
    await herald(true);
    await send(TOTAL - sent);

    const keys = () => new Set(hooks.for('/hook').map((r) => String(r.headers['idempotency-key'])));
    const chatKeys = () => new Set(hooks.for('/chat').map((r) => String(r.headers['idempotency-key'])));
    const mailIds = () => new Set(mail.list({ tenant: null, limit: 100_000 }).map((m) => m.messageId));
    await eventually(() => keys().size >= TOTAL && chatKeys().size >= TOTAL && mailIds().size >= TOTAL, 120_000);
    const accepted = () => new Set(outcomes.filter((e) => e.status === 'ACCEPTED').map((e) => e.notificationId));
    await eventually(() => accepted().size === TOTAL && checkAccounting(outcomes, accepted()).violations.length === 0, 60_000).catch(() => undefined);
    expect(accepted().size).toBe(TOTAL);
    expect(checkAccounting(outcomes, accepted()).violations).toEqual([]);
    // One delivery per event under one key; a repeated call (if any) reused its key.
    expect(keys().size).toBe(TOTAL);
    expect(chatKeys().size).toBe(TOTAL);
    expect(mailIds().size).toBe(TOTAL);
    expect(new Set(outcomes.filter((e) => e.channel === 'inapp' && e.status === 'DELIVERED').map((e) => e.notificationId)).size).toBe(TOTAL);
    const byKey = new Map<string, Set<string>>();
    for (const r of hooks.for('/hook')) byKey.set(String(r.headers['idempotency-key']), (byKey.get(String(r.headers['idempotency-key'])) ?? new Set()).add((r.json as { eventId: string }).eventId));
    expect([...byKey.values()].every((ids) => ids.size === 1)).toBe(true);
    console.info(`[crash] in flight at the kills: ${inFlightAtKill.join(', ')}; ${hooks.for('/hook').length} webhook calls for ${TOTAL} deliveries (${hooks.for('/hook').length - TOTAL} repeated with the same Idempotency-Key after a SIGKILL); ${mail.list({ tenant: null, limit: 100_000 }).length} mails for ${TOTAL}`);

    // The projection rebuilt from outcomes.v1 has the digest of the live one (once it has applied everything).
    const { stdout } = await promisify(execFile)(process.execPath, ['cli/herald.ts', 'lifecycle', 'rebuild', '--json'], { env: env(), maxBuffer: 64 * 1024 * 1024 });
    const rebuilt = JSON.parse(stdout) as { notifications: number; tenants: Record<string, { digest: string; notifications: number }> };
    expect(rebuilt.notifications).toBe(TOTAL);
    const live = await eventually(async () => {
      const d = (await (await fetch(`${url}/v1/lifecycle/digest`, { headers: { authorization: `Bearer ${TEST_ENV.HERALD_DEV_KEY}` } })).json()) as { digest: string; notifications: number };
      return d.digest === rebuilt.tenants.acme!.digest ? d : false;
    }, 120_000);
    expect(live.notifications).toBe(TOTAL);

    await reader.stop();
    await producer.disconnect();
    await admin.disconnect();
  }, 360_000);
});
