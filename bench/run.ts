/**
 * `npm run bench`: one JSON report on stdout.
 *
 * - passthrough: one consume -> produce(acks=-1) -> commit hop with plain kafkajs on the
 *   same embedded broker in the same run: the ceiling every stage is measured against;
 * - dedupe: the dedupe stage alone (RocksDB store, changelog, half the records duplicates);
 * - pipeline: events/s through all seven stages to a real HTTP webhook, and its ratio to
 *   the passthrough ceiling (stages fused, the default; and unfused);
 * - realisticMix: 50,000 events for 10,000 users with duplicates, audience fan-outs, users
 *   over a rate limit and two channels per rule (see mix);
 * - latency: publish-to-webhook percentiles at a fixed offered load;
 * - restore: a 1,000,000-key store restored from its changelog into RocksDB;
 * - embeddedRestart: 1,000,000 journaled records replayed into a fresh embedded broker;
 * - lifecycleRebuild: `herald lifecycle rebuild` over 54,000 lifecycle events (6,000 notifications);
 * - peak RSS of this process.
 *
 * `npm run bench -- --http` runs only the HTTP API scenario (see httpRun); `-- --noisy` runs it
 * twice at a fixed load, without and with noisy neighbours; `-- --soak` runs it at a fixed load
 * for minutes and prints Herald's RSS at 1 minute and at the end of publishing.
 *
 * Sizes respect the embedded broker's ~5 MB per partition log (see README).
 * Environment: BENCH_BROKERS (embedded brokers, default 1), BENCH_ONLY=dedupe|throttle|pipeline|mix|restore|journal|rebuild|latency,
 * BENCH_PASSTHROUGH / BENCH_DEDUPE / BENCH_PIPELINE / BENCH_MIX_EVENTS / BENCH_RESTORE_KEYS / BENCH_REBUILD_EVENTS (record counts),
 * BENCH_LATENCY_RATE / BENCH_LATENCY_SECONDS (the fixed offered load of the latency run, default 2,000/s for 30 s);
 * with --http, BENCH_HTTP_EVENTS and BENCH_HTTP_RATE (a fixed offered load instead of as fast as answered);
 * with --noisy, BENCH_NOISY_RATE / BENCH_NOISY_SECONDS (default 200/s for 40 s);
 * with --soak, BENCH_SOAK_RATE / BENCH_SOAK_SECONDS (default 1,000/s for 300 s).
 */
import { randomUUID } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { fork } from 'node:child_process';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Kafka, Message } from 'kafkajs';
import { loadConfig } from '../config.ts';
import { EmbeddedBroker } from '../embedded/broker.ts';
import { Journal, type JournalRecord } from '../embedded/journal.ts';
import { BrokerJournal } from '../embedded/persistence.ts';
import { EmbeddedSchemaRegistry } from '../embedded/schema-registry.ts';
import { notificationId } from '../processors/ids.ts';
import pLimit from 'p-limit';
import { type Herald, startHerald } from '../app/herald.ts';
import type { ClientReport, WireJob } from './clients.ts';
import { kafkaRequestsOf, promValue, residentMb, startNpm, treeCpuMs } from './herald-process.ts';
import { createKafka, createProducer } from '../runtime/kafka.ts';
import { createLogger } from '../runtime/logger.ts';
import { restoreFromChangelog } from '../runtime/restore.ts';
import { TopicReader } from '../runtime/reader.ts';
import type { LifecycleEvent } from '../schemas/types.ts';
import { checkAccounting } from '../test/support/accounting.ts';
import { rebuildLifecycle } from '../replay/rebuild.ts';
import { Serde } from '../schemas/index.ts';
import { KeyValueStore } from '../state/store.ts';
import { SUB_TOPOLOGY, topicName, topicPlan, userKey } from '../topology.ts';

const log = createLogger(process.env.HERALD_BENCH_LOG ?? 'silent');
const progress = (m: string) => process.stderr.write(`[bench] ${m}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const PARTITIONS = 8;
const round = (n: number) => Math.round(n);

/**
 * A condition for `until`: every id in `ids` has arrived. It keeps its place, so each poll
 * looks only past the ids already seen (polling the whole list every 20 ms cost the process
 * Herald runs in 2.5 % of its CPU in a 60,000-event run).
 */
function allArrived(ids: Iterable<string>, arrivals: ReadonlyMap<string, number>): () => boolean {
  const list = [...ids];
  let i = 0;
  return () => {
    while (i < list.length && arrivals.has(list[i]!)) i++;
    return i === list.length;
  };
}

async function until(cond: () => boolean | Promise<boolean>, timeoutMs: number, what: string) {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`bench: timed out waiting for ${what}`);
    await sleep(20);
  }
}

async function produceAll(kafka: Kafka, topic: string, messages: Message[], chunk = 2000) {
  const producer = createProducer(kafka);
  await producer.connect();
  for (let i = 0; i < messages.length; i += chunk) await producer.send({ topic, acks: -1, messages: messages.slice(i, i + chunk) });
  await producer.disconnect();
}

async function passthrough(broker: EmbeddedBroker, kafka: Kafka, n: number) {
  const [src, dst] = [`bp.in.${randomUUID()}`, `bp.out.${randomUUID()}`];
  await broker.createTopic(src, PARTITIONS);
  await broker.createTopic(dst, PARTITIONS);
  const value = Buffer.alloc(150, 'x');
  await produceAll(kafka, src, Array.from({ length: n }, (_, i) => ({ key: `user-${i % 5000}`, value })));
  const producer = createProducer(kafka);
  await producer.connect();
  // The stages' own fetch settings (their defaults, or what HERALD_* in the environment sets).
  const config = loadConfig(process.env);
  const settings = { maxWaitTimeInMs: config.fetchMaxWaitMs, minBytes: config.fetchMinBytes, maxBytesPerPartition: config.fetchMaxPartitionBytes, acks: -1, partitionsConsumedConcurrently: PARTITIONS, commit: 'after each batch' };
  const consumer = kafka.consumer({ groupId: `bp.${randomUUID()}`, maxWaitTimeInMs: settings.maxWaitTimeInMs, minBytes: settings.minBytes, maxBytesPerPartition: settings.maxBytesPerPartition });
  await consumer.connect();
  await consumer.subscribe({ topic: src, fromBeginning: true });
  let done = 0;
  let first = 0;
  await consumer.run({
    autoCommit: false,
    partitionsConsumedConcurrently: PARTITIONS,
    eachBatch: async ({ batch }) => {
      if (!first) first = performance.now();
      await producer.sendBatch({ acks: -1, topicMessages: [{ topic: dst, messages: batch.messages.map((m) => ({ key: m.key, value: m.value })) }] });
      await consumer.commitOffsets([{ topic: src, partition: batch.partition, offset: (BigInt(batch.lastOffset()) + 1n).toString() }]);
      done += batch.messages.length;
    },
  });
  await until(() => done >= n, 120_000, 'passthrough');
  const seconds = (performance.now() - first) / 1000;
  await consumer.disconnect();
  await producer.disconnect();
  return { records: n, seconds: +seconds.toFixed(3), recordsPerSecond: round(n / seconds), settings };
}

// One metric, not the whole registry as JSON: the bench polls this every 20 ms while Herald
// runs on the same event loop.
const metricValue = async (registry: import('prom-client').Registry, name: string, labels: Record<string, string>) => {
  const m = await registry.getSingleMetric(name)?.get();
  const v = (m?.values as { labels: Record<string, string>; value: number }[] | undefined)?.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return v?.value ?? 0;
};

function env(broker: EmbeddedBroker, registryUrl: string, prefix: string, stateDir: string, extra: Record<string, string> = {}) {
  // HERALD_* settings in the environment tune the bench's Herald like any other (its own below win).
  const tuning = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('HERALD_') && !k.startsWith('HERALD_BENCH')));
  return loadConfig({
    ...tuning,
    ...extra,
    KAFKA_BROKERS: broker.bootstraps, SCHEMA_REGISTRY_URL: registryUrl, HERALD_TOPIC_PREFIX: prefix, HERALD_PARTITIONS: String(PARTITIONS),
    HERALD_STATE_DIR: stateDir, HERALD_HTTP_PORT: '0', HERALD_LOG_LEVEL: 'silent', HERALD_SESSION_TIMEOUT_MS: '10000',
    // The in-process runs read Herald's stores and metrics directly: one process (--http runs the default).
    HERALD_WORKERS: '1',
    HERALD_WEBHOOK_SECRET: 'bench-signing-secret', HERALD_OUTBOUND_ALLOW: '127.0.0.1',
  });
}

/**
 * One stateful stage alone over `n` pre-produced records: dedupe (every key twice) or
 * throttle (rules/demo.json: 2 comments per 20 s per user, 10 per user here, so most are
 * deferred into the held store).
 */
async function statefulStage(stage: 'dedupe' | 'throttle', broker: EmbeddedBroker, kafka: Kafka, registryUrl: string, n: number) {
  const prefix = stage === 'dedupe' ? 'bd.' : 'bt.';
  for (const t of topicPlan(prefix, PARTITIONS)) await broker.createTopic(t.name, t.partitions);
  const serde = new Serde(registryUrl);
  const topic = topicName(prefix, stage === 'dedupe' ? 'enriched' : 'deduped');
  await serde.register(topic, 'EnrichedNotification');
  const t0 = Date.now();
  const messages: Message[] = [];
  for (let i = 0; i < n; i++) {
    const recipient = `user-${i % 2000}`;
    const key = `k-${Math.floor(i / 2)}`; // every key twice: half the records are duplicates
    const request = {
      notificationId: notificationId('acme', `e-${i}`, recipient, 'comment-created'), tenant: 'acme', eventId: `e-${i}`, eventType: 'comment.created', ruleId: 'comment-created',
      recipient, category: 'collaboration', priority: 'NORMAL', data: '{}', idempotencyKey: key, actor: null, occurredAt: t0 + i, expiresAt: null, traceId: 't', digestOf: [],
    };
    const user = { userId: recipient, tenant: 'acme', name: null, email: null, phone: null, locale: 'en', timezone: 'UTC', webhookUrl: 'http://127.0.0.1:9/x', chatWebhookUrl: null, active: true, updatedAt: null };
    messages.push({ key: userKey('acme', recipient), value: await serde.encode(topic, { request, user, preferences: null }), timestamp: String(t0 + i) });
  }
  await produceAll(kafka, topic, messages);
  const stateDir = mkdtempSync(join(tmpdir(), 'herald-bench-'));
  const config = env(broker, registryUrl, prefix, stateDir, stage === 'throttle' ? { HERALD_RULES: 'rules/demo.json' } : {});
  const herald = await startHerald({ config, stages: [stage], api: false, log });
  const count = () => metricValue(herald.metrics.registry, 'herald_stage_records_total', { stage, result: 'outcome' });
  await until(async () => (await count()) > 0, 60_000, `${stage} start`);
  const first = performance.now();
  await until(async () => (await count()) >= n, 180_000, stage);
  const seconds = (performance.now() - first) / 1000;
  await herald.stop();
  rmSync(stateDir, { recursive: true, force: true });
  return { records: n, ...(stage === 'dedupe' ? { duplicates: n / 2 } : { deferred: n - 2 * 2000 }), seconds: +seconds.toFixed(3), recordsPerSecond: round(n / seconds), note: 'from the first decided batch to the last; includes the lazy open of each partition store' };
}

async function pipeline(broker: EmbeddedBroker, kafka: Kafka, registryUrl: string, n: number, offered: { perSecond: number; seconds: number }, fuse = true) {
  const prefix = fuse ? 'bf.' : 'bu.';
  for (const t of topicPlan(prefix, PARTITIONS)) await broker.createTopic(t.name, t.partitions);
  // The receiver runs in its own process (bench/receiver.ts) and reports arrivals over IPC.
  const arrivals = new Map<string, number>();
  const repeated: string[] = [];
  const receiver = fork(join(import.meta.dirname, 'receiver.ts'), [], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const port = await new Promise<number>((resolve, reject) => {
    receiver.once('error', reject);
    receiver.on('message', (m: { port?: number; arrivals?: [string, number][]; repeated?: string[] }) => {
      if (m.port) resolve(m.port);
      for (const [id, at] of m.arrivals ?? []) if (!arrivals.has(id)) arrivals.set(id, at);
      repeated.push(...(m.repeated ?? []));
    });
  });
  const hook = `http://127.0.0.1:${port}/hook`;
  const serde = new Serde(registryUrl);
  const users = topicName(prefix, 'users');
  await serde.register(users, 'UserProfile');
  const USERS = 500;
  await produceAll(kafka, users, await Promise.all(Array.from({ length: USERS }, async (_, i) => ({ key: userKey('acme', `user-${i}`), value: await serde.encode(users, { userId: `user-${i}`, tenant: 'acme', webhookUrl: hook }) }))));
  const event = (id: string, i: number) => JSON.stringify({ id, type: 'comment.created', tenant: 'acme', recipients: [`user-${i % USERS}`], actor: 'bench', data: { commentId: id, documentTitle: 'Doc', excerpt: 'hello' } });
  await produceAll(kafka, topicName(prefix, 'events'), Array.from({ length: n }, (_, i) => ({ key: `t-${i}`, value: event(`t-${i}`, i) })));
  const stateDir = mkdtempSync(join(tmpdir(), 'herald-bench-'));
  const herald = await startHerald({ config: env(broker, registryUrl, prefix, stateDir, { HERALD_FUSE_STAGES: String(fuse) }), log });
  const delivered = () => metricValue(herald.metrics.registry, 'herald_deliver_attempts_total', { channel: 'webhook', result: 'delivered' });
  const ingested = () => metricValue(herald.metrics.registry, 'herald_stage_records_total', { stage: 'ingest', result: 'in' });
  await until(async () => (await ingested()) > 0, 60_000, 'pipeline start');
  await until(async () => (await delivered()) >= n, 300_000, 'pipeline').catch(async (err: Error) => {
    throw new Error(`${err.message}: delivered ${await delivered()} of ${n}; ${(await herald.metrics.registry.getSingleMetricAsString('herald_stage_records_total')).split('\n').filter((l) => !l.startsWith('#')).join('; ')}`);
  });
  // From ingest's first batch to the last webhook's arrival, both wall clock (a poll on
  // Herald's busy event loop can notice the start seconds late, which once made 4,000 events
  // look delivered in 2 ms).
  const throughputIds = [...Array.from({ length: n }, (_, i) => `t-${i}`)];
  await until(() => throughputIds.every((id) => arrivals.has(id)), 60_000, 'pipeline arrivals at the receiver');
  const first = herald.runners.get('ingest')!.firstBatchAt()!;
  const seconds = (throughputIds.reduce((m, id) => Math.max(m, arrivals.get(id)!), 0) - first) / 1000;
  const stages = await stageFigures(herald);
  const throughput = { events: n, seconds: +seconds.toFixed(3), eventsPerSecond: round(n / seconds), stages };

  // Fixed offered load, on an idle Herald: the burst's aftermath (the outcome stage catching
  // up on its lifecycle records, deliver settling detached calls) would otherwise be measured
  // as latency. Idle: no stage took in a record for a second.
  const takenIn = async () => {
    let sum = 0;
    for (const st of ['ingest', 'enrich', 'dedupe', 'throttle', 'route', 'deliver', 'outcome']) sum += await metricValue(herald.metrics.registry, 'herald_stage_records_total', { stage: st, result: 'in' });
    return sum;
  };
  for (let last = -1, now = await takenIn(), waited = 0; now !== last && waited < 60_000; waited += 1000) {
    await sleep(1000);
    [last, now] = [now, await takenIn()];
  }
  // Fixed offered load: publish times against webhook arrival times.
  const producer = createProducer(kafka);
  await producer.connect();
  const sent = new Map<string, number>();
  const total = offered.perSecond * offered.seconds;
  const tickMs = 20;
  const perTick = offered.perSecond / (1000 / tickMs);
  const startAt = performance.now();
  let i = 0;
  while (i < total) {
    const due = Math.min(total, Math.floor(((performance.now() - startAt) / tickMs + 1) * perTick));
    const batch: Message[] = [];
    for (; i < due; i++) {
      const id = `lat-${i}`;
      batch.push({ key: id, value: event(id, i) });
      sent.set(id, performance.timeOrigin + performance.now());
    }
    if (batch.length) await producer.send({ topic: topicName(prefix, 'events'), acks: -1, messages: batch });
    await sleep(tickMs);
  }
  // Offered faster than Herald drains, the backlog grows: what has not arrived 60 s after the
  // last send counts as later than everything (a percentile that falls there is reported as null).
  await until(allArrived(sent.keys(), arrivals), 60_000, 'latency events').catch(() => undefined);
  await producer.disconnect();
  const lat = [...sent].map(([id, t]) => (arrivals.has(id) ? arrivals.get(id)! - t : Number.POSITIVE_INFINITY)).sort((a, b) => a - b);
  const late = lat.filter((x) => x === Number.POSITIVE_INFINITY).length;
  const pct = (p: number) => {
    const v = lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))]!;
    return Number.isFinite(v) ? +v.toFixed(1) : null;
  };
  const sendSeconds = (performance.now() - startAt) / 1000;
  // Correctness: every accepted notification reached exactly one terminal status (per channel),
  // no delivery reached the receiver twice. The outcomes are read only now, from the start of
  // outcomes.v1: a checker following them while the figures above were taken would share
  // Herald's event loop, fetching and decoding 8 lifecycle records an event.
  const outcomes: LifecycleEvent[] = [];
  const admin = kafka.admin();
  await admin.connect();
  const outcomeReader = new TopicReader(kafka, admin, { topic: topicName(prefix, 'outcomes'), groupPrefix: 'bench.', onBatch: async ({ messages }) => {
    for (const m of messages) if (m.value) outcomes.push(await serde.decode<LifecycleEvent>(m.value));
  } });
  await outcomeReader.start();
  const accepted = () => new Set(outcomes.filter((e) => e.status === 'ACCEPTED').map((e) => e.notificationId));
  await until(() => accepted().size === n + total && checkAccounting(outcomes, accepted()).violations.length === 0, 240_000, 'accounting').catch(() => undefined);
  const accounting = checkAccounting(outcomes, accepted());
  await outcomeReader.stop();
  await admin.disconnect();
  await herald.stop();
  receiver.disconnect();
  rmSync(stateDir, { recursive: true, force: true });
  if (accepted().size !== n + total) throw new Error(`bench: ${accepted().size} notifications accepted of ${n + total} events`);
  if (accounting.violations.length) throw new Error(`bench: accounting invariant violated: ${accounting.violations.slice(0, 5).join('; ')}`);
  if (repeated.length) throw new Error(`bench: ${repeated.length} deliveries reached the receiver twice (e.g. ${repeated[0]})`);
  const correctness = { notifications: accounting.notifications, terminal: accounting.terminal, violations: 0, deliveredTwice: 0, receiver: 'separate process (bench/receiver.ts), same machine' };
  return { throughput, correctness, latency: { offeredPerSecond: offered.perSecond, seconds: offered.seconds, events: total, achievedSendPerSecond: round(total / sendSeconds), p50Ms: pct(50), p95Ms: pct(95), p99Ms: pct(99), maxMs: pct(100), notDeliveredWithin60sOfLastSend: late } };
}

/**
 * The realistic mix (BENCH_ONLY=mix): `n` events streamed in (never more than 4,000 ahead of
 * ingest, so the embedded broker's per-partition cap never drops data) for 10,000 users:
 * - 5 announcements to an audience of 1,000 members (fan-out);
 * - the other events are comments, one recipient each; every fifth repeats an earlier
 *   comment for the same user inside the 1 h dedupe window (~20 % duplicates);
 * - 1,000 heavy users (10 %) get 40 % of the comments and run over a limit of 3 per minute
 *   (onExceed: drop);
 * - both rules send two channels: webhook (HTTP to the receiver) and in-app.
 * Figures: events/s and notifications/s from the first ingested batch until every accepted
 * notification has its terminal status per channel; the mix's counts; the correctness check.
 */
async function mix(broker: EmbeddedBroker, kafka: Kafka, registryUrl: string, n: number) {
  const prefix = 'bm.';
  for (const t of topicPlan(prefix, PARTITIONS)) await broker.createTopic(t.name, t.partitions);
  const repeated: string[] = [];
  const receiver = fork(join(import.meta.dirname, 'receiver.ts'), [], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const port = await new Promise<number>((resolve, reject) => {
    receiver.once('error', reject);
    receiver.on('message', (m: { port?: number; repeated?: string[] }) => {
      if (m.port) resolve(m.port);
      repeated.push(...(m.repeated ?? []));
    });
  });
  const hook = `http://127.0.0.1:${port}/hook`;
  const dir = mkdtempSync(join(tmpdir(), 'herald-bench-mix-'));
  const rulesFile = join(dir, 'rules.json');
  const templates = { webhook: { en: { subject: '{{eventType}}', body: '{{actor}}: {{data.text}}' } }, inapp: { en: { body: '{{actor}}: {{data.text}}' } } };
  writeFileSync(rulesFile, JSON.stringify({
    version: 2,
    rules: [
      { id: 'comment', eventType: 'comment.created', category: 'collaboration', channels: ['webhook', 'inapp'], templates, dedupe: { keyFields: ['recipient', 'data.commentId'], window: '1h' }, throttle: { limits: [{ scope: 'user', max: 3, per: '1m' }], onExceed: 'drop' } },
      { id: 'announce', eventType: 'product.announcement', category: 'product', channels: ['webhook', 'inapp'], templates, dedupe: { keyFields: ['recipient', 'data.id'], window: '1h' } },
    ],
  }));
  const serde = new Serde(registryUrl);
  const USERS = 10_000;
  const users = topicName(prefix, 'users');
  await serde.register(users, 'UserProfile');
  await produceAll(kafka, users, await Promise.all(Array.from({ length: USERS }, async (_, i) => ({ key: userKey('acme', `user-${i}`), value: await serde.encode(users, { userId: `user-${i}`, tenant: 'acme', webhookUrl: hook }) }))));
  const audiences = topicName(prefix, 'audiences');
  await serde.register(audiences, 'AudienceMember');
  const { audienceKey } = await import('../processors/ingest.ts');
  await produceAll(kafka, audiences, await Promise.all(Array.from({ length: 1000 }, async (_, i) => ({ key: audienceKey('acme', 'all-hands', `user-${i}`), value: await serde.encode(audiences, { tenant: 'acme', audience: 'all-hands', userId: `user-${i}`, addedAt: null }) }))));
  // The events, decided up front (deterministic): which are duplicates, who is heavy.
  const ANNOUNCEMENTS = 5;
  const events: string[] = [];
  const comments: { user: number; commentId: string }[] = [];
  let duplicates = 0;
  let announcements = 0;
  for (let i = 0; i < n; i++) {
    if (i % Math.floor(n / ANNOUNCEMENTS) === 0 && announcements < ANNOUNCEMENTS) {
      announcements++;
      events.push(JSON.stringify({ id: `m-${i}`, type: 'product.announcement', tenant: 'acme', recipients: [], audience: 'all-hands', actor: 'bench', data: { id: `a-${i}`, text: 'news' } }));
      continue;
    }
    let c: { user: number; commentId: string };
    if (comments.length >= 5 && i % 5 === 0) {
      c = comments[comments.length - 1 - (i % 4)]!; // the same comment for the same user again
      duplicates++;
    } else {
      // 40 % of comments to the 1,000 heavy users (user-9000..9999), the rest spread over the other 9,000.
      const heavy = i % 5 === 1 || i % 5 === 3;
      c = { user: heavy ? 9000 + ((i * 7919) % 1000) : (i * 104729) % 9000, commentId: `c-${i}` };
      comments.push(c);
    }
    events.push(JSON.stringify({ id: `m-${i}`, type: 'comment.created', tenant: 'acme', recipients: [`user-${c.user}`], actor: 'bench', data: { commentId: c.commentId, text: 'hello' } }));
  }
  const stateDir = join(dir, 'state');
  const herald = await startHerald({ config: env(broker, registryUrl, prefix, stateDir, { HERALD_RULES: rulesFile }), log });
  const outcomes: LifecycleEvent[] = [];
  const admin = kafka.admin();
  await admin.connect();
  const outcomeReader = new TopicReader(kafka, admin, { topic: topicName(prefix, 'outcomes'), groupPrefix: 'bench.', onBatch: async ({ messages }) => {
    for (const m of messages) if (m.value) outcomes.push(await serde.decode<LifecycleEvent>(m.value));
  } });
  await outcomeReader.start();
  const ingested = () => metricValue(herald.metrics.registry, 'herald_stage_records_total', { stage: 'ingest', result: 'in' });
  // Streamed in: at most 4,000 events ahead of ingest.
  const producer = createProducer(kafka);
  await producer.connect();
  for (let i = 0; i < events.length;) {
    if (i - (await ingested()) > 4000) {
      await sleep(20);
      continue;
    }
    const chunk = events.slice(i, i + 1000);
    await producer.send({ topic: topicName(prefix, 'events'), acks: -1, messages: chunk.map((value, j) => ({ key: `m-${i + j}`, value })) });
    i += chunk.length;
  }
  await producer.disconnect();
  const expected = n - ANNOUNCEMENTS + ANNOUNCEMENTS * 1000;
  const accepted = () => new Set(outcomes.filter((e) => e.status === 'ACCEPTED').map((e) => e.notificationId));
  // Checked once outcomes stop arriving for a second (the check reads every lifecycle event,
  // and running it every second while they flow took a fifth of the CPU); the end is the
  // last terminal decision's time, so when the check runs does not change the figure.
  const deadline = Date.now() + 900_000;
  for (let seen = -1; ;) {
    await sleep(1000);
    if (outcomes.length !== seen) {
      seen = outcomes.length;
      continue;
    }
    const a = accepted();
    if (a.size === expected && checkAccounting(outcomes, a).violations.length === 0) break;
    if (Date.now() > deadline) throw new Error(`bench mix: ${a.size} of ${expected} notifications accepted, not all terminal, after 15 minutes`);
  }
  const first = herald.runners.get('ingest')!.firstBatchAt()!;
  const done = outcomes.reduce((m, e) => (e.terminal && e.timestamp > m ? e.timestamp : m), 0);
  const seconds = (done - first) / 1000;
  const stages = await stageFigures(herald);
  const accounting = checkAccounting(outcomes, accepted());
  const counts: Record<string, number> = {};
  for (const e of outcomes) if (e.terminal) counts[`${e.status}${e.channel ? ` ${e.channel}` : ''}`] = (counts[`${e.status}${e.channel ? ` ${e.channel}` : ''}`] ?? 0) + 1;
  await outcomeReader.stop();
  await admin.disconnect();
  await herald.stop();
  receiver.disconnect();
  rmSync(dir, { recursive: true, force: true });
  if (repeated.length) throw new Error(`bench mix: ${repeated.length} deliveries reached the receiver twice (e.g. ${repeated[0]})`);
  return {
    mix: { events: n, users: USERS, notifications: expected, announcementsToAudienceOf1000: ANNOUNCEMENTS, repeatedComments: duplicates, heavyUsers: 1000, limit: '3 per minute per user, drop', channelsPerRule: ['webhook', 'inapp'], streamed: 'at most 4,000 events ahead of ingest' },
    seconds: +seconds.toFixed(3), eventsPerSecond: round(n / seconds), notificationsPerSecond: round(expected / seconds), terminalStatuses: counts, stages,
    correctness: { notifications: accounting.notifications, terminal: accounting.terminal, violations: accounting.violations.length, deliveredTwice: repeated.length },
  };
}

async function restore(broker: EmbeddedBroker, kafka: Kafka, keys: number) {
  const partitions = 40; // ~3.8 MB per partition: inside the embedded broker's 5 MB log
  const topic = `br.changelog.${randomUUID()}`;
  await broker.createTopic(topic, partitions);
  const producer = createProducer(kafka);
  await producer.connect();
  const chunk = 5000;
  for (let i = 0; i < keys; i += chunk) {
    const messages: Message[] = [];
    for (let j = i; j < Math.min(keys, i + chunk); j++) {
      messages.push({ key: `fld:${j.toString(16).padStart(40, '0')}`, value: JSON.stringify({ notificationId: `ntf_${j.toString(16).padStart(32, '0')}`, firstSeenAt: 1767225600000 + j, expiresAt: 1767312000000 + j }), partition: j % partitions });
    }
    await producer.send({ topic, acks: -1, messages });
  }
  await producer.disconnect();
  const dir = mkdtempSync(join(tmpdir(), 'herald-bench-restore-'));
  const stores = await Promise.all(Array.from({ length: partitions }, (_, p) => KeyValueStore.open({ backend: 'rocksdb', dir, stage: 'bench', name: 'seen', partition: p, changelog: topic })));
  const admin = kafka.admin();
  await admin.connect();
  let firstApply = 0;
  const r = await restoreFromChangelog({
    kafka, admin, topic, groupPrefix: 'bench.', targets: stores.map((store, partition) => ({ store, partition })), log,
    onApplied: () => { firstApply ||= performance.now(); },
  });
  const applySeconds = (performance.now() - firstApply) / 1000;
  const check = await stores[7]!.view().getMany([`fld:${(7).toString(16).padStart(40, '0')}`]);
  if (!check[0]) throw new Error('bench: restored store misses a key');
  await admin.disconnect();
  for (const s of stores) await s.close();
  rmSync(dir, { recursive: true, force: true });
  if (r.applied !== keys) throw new Error(`bench: restored ${r.applied} of ${keys} keys`);
  return { keys, partitions, backend: 'rocksdb', seconds: +r.seconds.toFixed(3), keysPerSecond: round(keys / r.seconds), applySeconds: +applySeconds.toFixed(3), keysPerSecondExcludingGroupJoin: round(keys / applySeconds) };
}

/**
 * Restart of the embedded default with `records` held: a journal of that many records
 * (8 partitions, 200-byte values, as outcomes look) replayed into a fresh broker at the same
 * offsets, which is what `npm start` does before its stages join.
 */
async function journalRestart(records: number) {
  const partitions = 8;
  const topic = 'herald.outcomes.v1';
  const dir = mkdtempSync(join(tmpdir(), 'herald-bench-journal-'));
  const journal = Journal.open(dir);
  const value = Buffer.alloc(200, 'x');
  for (let p = 0; p < partitions; p++) {
    const per = Math.ceil(records / partitions);
    for (let i = 0; i < per; i += 10_000) {
      const chunk: JournalRecord[] = [];
      for (let o = i; o < Math.min(per, i + 10_000); o++) chunk.push({ offset: BigInt(o), timestamp: 1767225600000 + o, key: Buffer.from(`user-${o % 5000}`), value, headers: {} });
      journal.append(topic, p, chunk);
    }
  }
  journal.close();
  const broker = await EmbeddedBroker.start();
  await broker.createTopic(topic, partitions);
  const kafka = createKafka(loadConfig({ KAFKA_BROKERS: broker.bootstraps, HERALD_LOG_LEVEL: 'silent', HERALD_WEBHOOK_SECRET: 'bench-signing-secret' }), broker.bootstraps, log, 'herald-bench-journal');
  const admin = kafka.admin();
  const producer = createProducer(kafka);
  await Promise.all([admin.connect(), producer.connect()]);
  const started = performance.now();
  const replayed = await new BrokerJournal(Journal.open(dir), null, admin, producer, log).replay();
  const seconds = (performance.now() - started) / 1000;
  const ends = await admin.fetchTopicOffsets(topic);
  await Promise.all([admin.disconnect(), producer.disconnect()]);
  await broker.stop();
  rmSync(dir, { recursive: true, force: true });
  if (replayed.records !== Math.ceil(records / partitions) * partitions) throw new Error(`bench: replayed ${replayed.records} records`);
  return { records: replayed.records, partitions, valueBytes: 200, seconds: +seconds.toFixed(3), recordsPerSecond: round(replayed.records / seconds), endOffsets: ends.map((e) => Number(e.high)), note: 'journal read + produce at the original offsets into a fresh embedded broker; group joins (~3 s) come on top' };
}

/**
 * `herald lifecycle rebuild` over an outcomes topic of `events` lifecycle events (9 per
 * notification, as a delivered notification has), 8 partitions: read, applied to a fresh
 * projection in RocksDB, digested.
 */
async function lifecycleRebuild(broker: EmbeddedBroker, kafka: Kafka, registryUrl: string, events: number) {
  const prefix = `bl${randomUUID().slice(0, 8)}.`;
  const topic = topicName(prefix, 'outcomes');
  await broker.createTopic(topic, 8);
  const serde = new Serde(registryUrl);
  await serde.register(topic, 'LifecycleEvent');
  const steps = [['ingest', 'ACCEPTED'], ['enrich', 'ENRICHED'], ['dedupe', 'UNIQUE'], ['throttle', 'ADMITTED'], ['route', 'ROUTED'], ['deliver', 'ATTEMPTED'], ['deliver', 'DELIVERED'], ['deliver', 'ATTEMPTED'], ['deliver', 'DELIVERED']] as const;
  const messages: Message[] = [];
  for (let i = 0; i < events; i++) {
    const n = Math.floor(i / steps.length);
    const [stage, status] = steps[i % steps.length]!;
    const channel = stage === 'deliver' ? (i % steps.length < 7 ? 'webhook' : 'email') : null;
    const recipient = `user-${n % 5000}`;
    const ev = {
      decisionId: `d-${i}`, notificationId: `ntf_${n.toString(16).padStart(32, '0')}`, deliveryId: channel ? `ntf_${n}:${channel}` : null, tenant: 'acme', recipient, eventId: `e-${n}`, eventType: 'comment.created', ruleId: 'comment-created',
      stage, status, terminal: status === 'DELIVERED', reasonCode: 'bench', reason: `${stage} decided ${status} for the bench`, content: null, channel, attempt: channel ? 1 : null, providerMessageId: null,
      sourceTopic: 'bench', sourcePartition: 0, sourceOffset: String(i), timestamp: 1767225600000 + i, traceId: 't',
    };
    messages.push({ key: userKey('acme', recipient), value: await serde.encode(topic, ev) });
  }
  await produceAll(kafka, topic, messages);
  const config = loadConfig({ KAFKA_BROKERS: broker.bootstraps, SCHEMA_REGISTRY_URL: registryUrl, HERALD_TOPIC_PREFIX: prefix, HERALD_LOG_LEVEL: 'silent', HERALD_WEBHOOK_SECRET: 'bench-signing-secret' });
  const admin = kafka.admin();
  const producer = createProducer(kafka);
  await Promise.all([admin.connect(), producer.connect()]);
  let firstApply = 0;
  const r = await rebuildLifecycle({ kafka, admin, producer, log, registry: registryUrl, serde: () => serde, running: null }, config, serde, { onProgress: () => { firstApply ||= performance.now(); } });
  const applySeconds = (performance.now() - firstApply) / 1000;
  await Promise.all([admin.disconnect(), producer.disconnect()]);
  if (r.records !== events || r.notifications !== Math.ceil(events / steps.length)) throw new Error(`bench: rebuilt ${r.records} records, ${r.notifications} notifications`);
  return { records: r.records, notifications: r.notifications, partitions: r.partitions, seconds: +r.seconds.toFixed(3), recordsPerSecond: round(r.records / r.seconds), recordsPerSecondExcludingGroupJoin: round(r.records / applySeconds), digest: r.digest };
}

/** Where the time goes: batches per stage, their size and duration. */
async function stageFigures(herald: Herald): Promise<Record<string, { batches: number; recordsPerBatch: number; msPerBatch: number; meanMsSincePublish: number }>> {
  return stageFiguresOf(await herald.metrics.registry.metrics());
}

/** The per-stage batch figures from a /metrics page (with workers, summed over the processes). */
function stageFiguresOf(text: string): Record<string, { batches: number; recordsPerBatch: number; msPerBatch: number; meanMsSincePublish: number }> {
  const stages: Record<string, { batches: number; recordsPerBatch: number; msPerBatch: number; meanMsSincePublish: number }> = {};
  for (const stage of ['ingest', 'enrich', 'dedupe', 'throttle', 'route', 'deliver', 'outcome']) {
    const count = promValue(text, 'herald_stage_batch_duration_seconds_count', { stage });
    const sum = promValue(text, 'herald_stage_batch_duration_seconds_sum', { stage });
    const records = promValue(text, 'herald_stage_records_total', { stage, result: 'in' });
    // Mean of (handled at - record timestamp): since publish, cumulative along the chain.
    const seen = promValue(text, 'herald_stage_record_e2e_latency_seconds_count', { stage });
    const e2e = promValue(text, 'herald_stage_record_e2e_latency_seconds_sum', { stage });
    stages[stage] = { batches: count, recordsPerBatch: count ? +(records / count).toFixed(1) : 0, msPerBatch: count ? +((sum / count) * 1000).toFixed(2) : 0, meanMsSincePublish: seen ? +((e2e / seen) * 1000).toFixed(1) : 0 };
  }
  return stages;
}

/** Bytes allocated on disk under `dir` (st_blocks, so preallocated space counts, as `du` shows it). */
function allocatedBytes(dir: string): number {
  let total = 0;
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) total += statSync(join(e.parentPath, e.name)).blocks * 512;
  }
  return total;
}

/** Runs the HTTP clients (bench/clients.ts) in a child process and returns their report. */
function runClients(job: WireJob): Promise<ClientReport> {
  const child = fork(join(import.meta.dirname, 'clients.ts'), [], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  return new Promise<ClientReport>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`bench clients exited with ${code} before reporting`)));
    child.once('message', (m: { report?: ClientReport; error?: string }) => {
      child.disconnect();
      if (m.report) resolve(m.report);
      else reject(new Error(`bench --http clients: ${m.error}`));
    });
    child.send(job);
  });
}

/**
 * `npm run bench -- --http`: Herald driven as users drive it. `events` events POSTed to
 * /v1/events by `clients` concurrent HTTP clients for `users` users (one recipient each),
 * delivered to a webhook receiver in its own process; publish rate, end-to-end rate
 * (first POST to last webhook) and publish-to-webhook percentiles, with the correctness
 * check of the pipeline run.
 */
async function httpRun(o: { events: number; clients: number; users: number; perSecond?: number; noisy?: { hang: number; retryAfter: number }; sampleRss?: boolean }) {
  const arrivals = new Map<string, number>();
  const repeated: string[] = [];
  const receiver = fork(join(import.meta.dirname, 'receiver.ts'), [], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
  const port = await new Promise<number>((resolve, reject) => {
    receiver.once('error', reject);
    receiver.on('message', (m: { port?: number; arrivals?: [string, number][]; repeated?: string[] }) => {
      if (m.port) resolve(m.port);
      for (const [id, at] of m.arrivals ?? []) if (!arrivals.has(id)) arrivals.set(id, at);
      repeated.push(...(m.repeated ?? []));
    });
  });
  // The embedded default started as users start it (`npm start`, in a process of its own,
  // with its workers, broker, journal and back-pressure), so its memory is measured apart
  // from the bench's.
  const stateDir = mkdtempSync(join(tmpdir(), 'herald-bench-http-'));
  const key = 'hk_bench_http_0123456789abcdef';
  const herald = await startNpm({ HERALD_STATE_DIR: stateDir, HERALD_DEV_KEY: key, HERALD_API_RATE: '1000000', HERALD_API_BURST: '1000000', HERALD_WEBHOOK_SECRET: 'bench-signing-secret' });
  // Disk the state directory takes once Herald is ready, before any event: allocated blocks, as `du` counts them.
  const diskAtStartMb = round(allocatedBytes(stateDir) / 1048576);
  // --soak: Herald's memory every 5 s while the clients publish: each process's RSS, and from
  // /metrics (summed over the processes) RocksDB's own figures and the V8 heaps.
  const rss: { at: number; rssMb: number; rssAnonMb: number; workersRssMb: number[]; heapMb: number; rocksdbMb: Record<string, number> }[] = [];
  const t0 = Date.now();
  const mb = (bytes: number) => round(bytes / 1048576);
  const sampler = o.sampleRss ? setInterval(async () => {
    const text = await herald.metrics().catch(() => '');
    const rocksdbMb = Object.fromEntries(['memtables', 'tableReaders', 'blockCache', 'blockCachePinned'].map((kind) => [kind, mb(promValue(text, 'herald_store_memory_bytes', { kind }))]));
    const workerPids = await herald.refreshWorkers();
    rss.push({ at: Math.round((Date.now() - t0) / 1000), rssMb: residentMb(herald.pid), rssAnonMb: residentMb(herald.pid, 'RssAnon'), workersRssMb: workerPids.map((pid) => residentMb(pid)), heapMb: mb(promValue(text, 'nodejs_heap_size_used_bytes')), rocksdbMb });
  }, 5000) : null;
  // Herald is stopped whatever happens below: a failed run leaves no process behind.
  const measure = async () => {
    // The clients run in their own process, as users' clients do.
    const hang = o.noisy?.hang ?? 0;
    const noisyUsers = hang + (o.noisy?.retryAfter ?? 0);
    const topicsBefore = await herald.topicEnds();
    const cpuBefore = treeCpuMs(herald.pid);
    // A failed scrape would leave no starting point: try again (a worker may miss one report).
    let requestsBefore = new Map<string, number>();
    for (let attempt = 0; attempt < 10 && requestsBefore.size === 0; attempt++) {
      if (attempt) await new Promise((r) => setTimeout(r, 200));
      requestsBefore = kafkaRequestsOf(await herald.metrics().catch(() => ''));
    }
    const { sent: sentList, waits, refused, firstPost, published } = await runClients({ url: herald.url, key, events: o.events, clients: o.clients, users: o.users, ...(o.perSecond ? { perSecond: o.perSecond } : {}), hooks: Array.from({ length: o.users }, (_, i) => `http://127.0.0.1:${port}/${i < hang ? 'hang' : i < noisyUsers ? 'retry-after' : 'hook'}`) });
    if (sampler) clearInterval(sampler);
    // Healthy events: those whose user is not one of the noisy neighbours (event i goes to user i % users).
    const healthy = (id: string) => Number(id.slice(id.lastIndexOf('-') + 1)) % o.users >= noisyUsers;
    const sent = new Map(sentList.filter(([id]) => healthy(id)));
    if (refused) throw new Error(`bench --http: ${refused} of ${o.events} POSTs were not accepted`);
    await until(allArrived(sent.keys(), arrivals), 600_000, 'http deliveries');
    // CPU Herald spent (its process, its workers, its broker) from the first POST until the
    // work the events caused is done: the last delivery, and the lifecycle projection (which
    // trails it) caught up, i.e. its records and batches have not moved for a second (more
    // than its linger and the idle fetch wait). Taken when they stopped moving.
    const cpuAfter = await (async () => {
      const progress = async () => {
        const text = await herald.metrics().catch(() => '');
        // A failed scrape tells nothing: it neither moves nor settles the window.
        return text ? { text, key: `${promValue(text, 'herald_stage_records_total', { stage: 'outcome', result: 'in' })}/${promValue(text, 'herald_stage_batch_duration_seconds_count', { stage: 'outcome' })}` } : null;
      };
      const first = await progress();
      let seen = first?.key ?? null;
      let at = treeCpuMs(herald.pid);
      let requests = kafkaRequestsOf(first?.text ?? '');
      let quietSince = Date.now();
      const deadline = Date.now() + 120_000;
      while (Date.now() < deadline && Date.now() - quietSince < 1000) {
        await new Promise((r) => setTimeout(r, 250));
        const now = await progress();
        if (now === null) continue;
        if (now.key !== seen) {
          seen = now.key;
          at = treeCpuMs(herald.pid);
          requests = kafkaRequestsOf(now.text);
          quietSince = Date.now();
        }
      }
      return { ...at, requests, caughtUp: Date.now() - quietSince >= 1000 };
    })();
    // Records Herald produced, per event, by topic: end offsets from before the first POST to
    // when the work was done (the window above, plus its quiet second).
    const topicsAfter = await herald.topicEnds();
    const produced = [...topicsAfter].map(([t, n]) => [t.replace(/^herald\./, ''), n - (topicsBefore.get(t) ?? 0)] as const).filter(([, n]) => n > 0);
    const recordsPerEvent = { all: +(produced.reduce((sum, [, n]) => sum + n, 0) / o.events).toFixed(2), byTopic: Object.fromEntries(produced.sort((a, b) => b[1] - a[1]).map(([t, n]) => [t, +(n / o.events).toFixed(3)])) };
    const cpuSeconds = Object.fromEntries((['herald', 'workers', 'broker'] as const).map((k) => [k, +((cpuAfter[k] - cpuBefore[k]) / 1000).toFixed(2)])) as Record<'herald' | 'workers' | 'broker', number>;
    const cpuMsPerEvent = +((['herald', 'workers', 'broker'] as const).reduce((sum, k) => sum + cpuAfter[k] - cpuBefore[k], 0) / o.events).toFixed(3);
    // Requests Herald's Kafka clients sent over the same window, per event: in all, by API and by client and API (most first).
    const deltas = [...cpuAfter.requests].map(([k, n]) => [k, n - (requestsBefore.get(k) ?? 0)] as const).filter(([, n]) => n !== 0);
    const perEvent = (entries: Iterable<readonly [string, number]>) => Object.fromEntries([...entries].sort((a, b) => b[1] - a[1]).map(([k, n]) => [k, +(n / o.events).toFixed(3)]));
    const byApi = new Map<string, number>();
    for (const [k, n] of deltas) byApi.set(k.slice(k.lastIndexOf(' ') + 1), (byApi.get(k.slice(k.lastIndexOf(' ') + 1)) ?? 0) + n);
    // A count that went down means a worker missed one of the two scrapes (/metrics leaves out a worker that does not answer in time).
    const kafkaRequestsPerEvent = requestsBefore.size === 0 || deltas.some(([, n]) => n < 0) ? { unknown: 'a /metrics scrape at either end of the window missed a process' } : { all: +(deltas.reduce((sum, [, n]) => sum + n, 0) / o.events).toFixed(2), byApi: perEvent(byApi), byClient: perEvent(deltas.filter(([, n]) => n / o.events >= 0.005)) };
    // Peak RSS (VmHWM) of Herald's process and of each worker, before the check's reads add to it.
    const workerPids = await herald.refreshWorkers();
    const heraldPeakRssMb = residentMb(herald.pid, 'VmHWM');
    const workerPeakRssMb = workerPids.map((pid) => residentMb(pid, 'VmHWM'));
    // A loop, not a spread: a soak has hundreds of thousands of arrivals, more arguments than the stack takes.
    let last = 0;
    for (const at of arrivals.values()) last = Math.max(last, at);
    const lat = [...sent].map(([id, t]) => arrivals.get(id)! - t).sort((a, b) => a - b);
    const pct = (p: number) => +lat[Math.min(lat.length - 1, Math.floor((p / 100) * lat.length))]!.toFixed(1);
    // The correctness check reads every notification through the API, one at a time, as a
    // user would (outcomes.v1 of 20,000 notifications is more than the embedded broker keeps
    // per partition, ~5 MB, for a reader started beside it; the outcome stage reports any
    // record the broker dropped, in /readyz).
    const viaApi = async () => {
      const events: LifecycleEvent[] = [];
      const get = pLimit(32);
      await Promise.all(sentList.map(([id]) => get(async () => {
        const user = `user-${Number(id.slice(id.lastIndexOf('-') + 1)) % o.users}`;
        const res = await fetch(`${herald.url}/v1/notifications/${notificationId('acme', id, user, 'comment-created')}`, { headers: { authorization: `Bearer ${key}` } });
        if (res.status === 200) events.push(...((await res.json()) as { events: LifecycleEvent[] }).events);
        else await res.body?.cancel();
      })));
      return events;
    };
    const check = async () => {
      const events = await viaApi();
      const accepted = new Set(events.filter((e) => e.status === 'ACCEPTED').map((e) => e.notificationId));
      // The noisy neighbours' notifications are still being retried: the check covers everyone else.
      const settled = events.filter((e) => Number(e.recipient.slice('user-'.length)) >= noisyUsers);
      return { accepted, accounting: checkAccounting(settled, new Set(settled.filter((e) => e.status === 'ACCEPTED').map((e) => e.notificationId))), timeline: timelineOf(settled) };
    };
    // Where the latency goes: for each lifecycle status (and channel), the median time from
    // the event's due time to the decision, over the healthy users' notifications.
    const dueOf = new Map(sentList);
    const timelineOf = (events: LifecycleEvent[]) => {
      const by = new Map<string, number[]>();
      for (const e of events) {
        const due = dueOf.get(e.eventId);
        if (due === undefined || e.timestamp == null) continue;
        const k = `${e.stage} ${e.status}${e.channel ? ` ${e.channel}` : ''}`;
        const list = by.get(k) ?? [];
        list.push(Number(e.timestamp) - due);
        by.set(k, list);
      }
      const median = (xs: number[]) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
      return Object.fromEntries([...by].map(([k, xs]) => [k, +median(xs).toFixed(1)] as const).sort((a, b) => a[1] - b[1]));
    };
    let result = await check();
    await until(async () => {
      result = await check();
      return result.accepted.size === o.events && result.accounting.violations.length === 0;
    }, 120_000, 'accounting').catch(() => undefined);
    const { accepted, accounting } = result;
    const readiness = await herald.readiness();
    const lost = readiness.reasons.filter((r) => r.includes('records lost'));
    const stages = stageFiguresOf(await herald.metrics());
    const workers = 1 + workerPids.length;
    return { hang, sentList, waits, firstPost, published, sent, last, pct, accepted, accounting, timeline: result.timeline, lost, stages, heraldPeakRssMb, workerPeakRssMb, workers, cpuSeconds, cpuMsPerEvent, kafkaRequestsPerEvent, recordsPerEvent, cpuCaughtUp: cpuAfter.caughtUp };
  };
  let m: Awaited<ReturnType<typeof measure>>;
  try {
    m = await measure();
  } catch (err) {
    if (sampler) clearInterval(sampler);
    await herald.stop().catch(() => null);
    receiver.disconnect();
    rmSync(stateDir, { recursive: true, force: true });
    throw err;
  }
  const { hang, sentList, waits, firstPost, published, sent, last, pct, accepted, accounting, timeline, lost, stages, heraldPeakRssMb, workerPeakRssMb, workers, cpuSeconds, cpuMsPerEvent, kafkaRequestsPerEvent, recordsPerEvent, cpuCaughtUp } = m;
  const exitCode = await herald.stop();
  if (exitCode !== 0) progress(`npm start exited with ${exitCode} on SIGTERM; the end of its output:\n${herald.output().split('\n').slice(-40).join('\n')}`);
  receiver.disconnect();
  rmSync(stateDir, { recursive: true, force: true });
  // Failures are reported with the figures, and make the run exit non-zero.
  const failures = [
    ...(lost.length ? [`the embedded broker dropped ${lost.length} batches of outcome records the projection had not read (${lost[0]})`] : []),
    ...(accepted.size !== o.events ? [`${accepted.size} notifications accepted of ${o.events} events`] : []),
    ...(accounting.violations.length ? [`accounting invariant violated for ${accounting.violations.length} notifications (e.g. ${accounting.violations[0]})`] : []),
    ...(repeated.length ? [`${repeated.length} deliveries reached the receiver twice`] : []),
    ...(exitCode !== 0 ? [`npm start exited with ${exitCode} on SIGTERM`] : []),
  ];
  return {
    events: o.events, clients: o.clients, users: o.users, offeredPerSecond: o.perSecond ?? 'as fast as answered', retriedAfter429or503: waits, herald: 'embedded default, started by npm start in its own process: its own broker, journal and back-pressure', workers, heraldPeakRssMb, ...(workerPeakRssMb.length ? { workerPeakRssMb } : {}), diskAtStartMb,
    publishSeconds: +((published - firstPost) / 1000).toFixed(3), publishPerSecond: round(o.events / ((published - firstPost) / 1000)),
    endToEndSeconds: +((last - firstPost) / 1000).toFixed(3), endToEndEventsPerSecond: round(sent.size / ((last - firstPost) / 1000)),
    ...(o.noisy ? { noisyNeighbours: { hangingUsers: hang, hangingNotifications: sentList.filter(([id]) => Number(id.slice(id.lastIndexOf('-') + 1)) % o.users < hang).length, retryAfter100000Users: o.noisy.retryAfter, latencyOf: 'healthy users only' } } : {}),
    latency: { p50Ms: pct(50), p95Ms: pct(95), p99Ms: pct(99), maxMs: pct(100) },
    // On a saturated machine the rate follows the CPU an event costs: this varies far less between runs than the rate.
    cpu: { seconds: cpuSeconds, msPerEvent: cpuMsPerEvent, kafkaRequestsPerEvent, recordsProducedPerEvent: recordsPerEvent, until: cpuCaughtUp ? 'the last delivery and the lifecycle projection caught up' : 'the last delivery and 120 s more: the lifecycle projection was still catching up' },
    medianMsFromDueToDecision: timeline, stages,
    ...(o.sampleRss ? { rss } : {}),
    correctness: { ok: failures.length === 0, failures, notifications: accounting.notifications, terminal: accounting.terminal, violations: accounting.violations.length, deliveredTwice: repeated.length },
  };
}

async function main() {
  const started = Date.now();
  const broker = await EmbeddedBroker.start({ brokers: Number(process.env.BENCH_BROKERS ?? 1) });
  const registry = new EmbeddedSchemaRegistry();
  const registryUrl = await registry.start();
  const kafka = createKafka(loadConfig({ KAFKA_BROKERS: broker.bootstraps, HERALD_LOG_LEVEL: 'silent', HERALD_WEBHOOK_SECRET: 'bench-signing-secret' }), broker.bootstraps, log, 'herald-bench');
  try {
    if (process.argv.includes('--noisy')) {
      // The same load twice, without and with noisy neighbours: healthy users' latency is compared.
      const rate = Number(process.env.BENCH_NOISY_RATE ?? 200);
      const events = rate * Number(process.env.BENCH_NOISY_SECONDS ?? 40);
      progress(`noisy neighbours: ${events} events at ${rate}/s through the HTTP API, first without, then with 8 hanging endpoints and 8 answering Retry-After: 100000 …`);
      const quiet = await httpRun({ events, clients: 50, users: 1000, perSecond: rate });
      progress(`  without: healthy p99 ${quiet.latency.p99Ms} ms; with …`);
      const noisy = await httpRun({ events, clients: 50, users: 1000, perSecond: rate, noisy: { hang: 8, retryAfter: 8 } });
      progress(`  with: healthy p99 ${noisy.latency.p99Ms} ms`);
      const ratio = +(noisy.latency.p99Ms / quiet.latency.p99Ms).toFixed(2);
      process.stdout.write(`${JSON.stringify({ date: new Date().toISOString(), machine: { cpus: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', node: process.version }, noisyNeighbours: { offeredPerSecond: rate, events, healthyP99RatioWithToWithout: ratio, target: '<= 2', without: quiet, with: noisy }, peakRssMb: round(process.resourceUsage().maxRSS / 1024), totalSeconds: round((Date.now() - started) / 1000) }, null, 2)}\n`);
      if (!quiet.correctness.ok || !noisy.correctness.ok) process.exitCode = 1;
      return;
    }
    if (process.argv.includes('--soak')) {
      // A fixed offered load for minutes through the HTTP API: does Herald's memory grow?
      const rate = Number(process.env.BENCH_SOAK_RATE ?? 1000);
      const seconds = Number(process.env.BENCH_SOAK_SECONDS ?? 300);
      progress(`soak: ${rate} events/s offered for ${seconds} s through the HTTP API, RSS sampled every 5 s …`);
      const run = await httpRun({ events: rate * seconds, clients: 50, users: 1000, perSecond: rate, sampleRss: true });
      const samples = run.rss ?? [];
      const at60 = samples.find((x) => x.at >= 60);
      const end = samples.at(-1);
      const growth = at60 && end ? +(((end.rssMb - at60.rssMb) / at60.rssMb) * 100).toFixed(1) : null;
      const soak = {
        offeredPerSecond: rate, seconds, events: rate * seconds, rssMbAt60s: at60?.rssMb ?? null, rssMbAtEnd: end?.rssMb ?? null, endAtSecond: end?.at ?? null,
        growthPercent: growth, target: 'RSS at the end within 10% of RSS at 1 minute', publishSeconds: run.publishSeconds, publishPerSecond: run.publishPerSecond,
        endToEndEventsPerSecond: run.endToEndEventsPerSecond, retriedAfter429or503: run.retriedAfter429or503, latency: run.latency, correctness: run.correctness,
        stages: run.stages, rssEvery30s: samples.filter((x) => x.at % 30 === 0),
      };
      process.stdout.write(`${JSON.stringify({ date: new Date().toISOString(), machine: { cpus: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', node: process.version }, soak, totalSeconds: round((Date.now() - started) / 1000) }, null, 2)}\n`);
      if (!run.correctness.ok) process.exitCode = 1;
      return;
    }
    if (process.argv.includes('--http')) {
      const events = Number(process.env.BENCH_HTTP_EVENTS ?? 20_000);
      progress(`HTTP API run: ${events.toLocaleString('en-US')} events, 50 clients, 1,000 users …`);
      const http = await httpRun({ events, clients: 50, users: 1000, ...(process.env.BENCH_HTTP_RATE ? { perSecond: Number(process.env.BENCH_HTTP_RATE) } : {}) });
      process.stdout.write(`${JSON.stringify({ date: new Date().toISOString(), machine: { cpus: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', node: process.version }, broker: 'embedded librdkafka mock cluster (1 broker), loopback', http, peakRssMb: round(process.resourceUsage().maxRSS / 1024), totalSeconds: round((Date.now() - started) / 1000) }, null, 2)}\n`);
      if (!http.correctness.ok) {
        progress(`correctness check failed: ${http.correctness.failures.join('; ')}`);
        process.exitCode = 1;
      }
      return;
    }
    const only = process.env.BENCH_ONLY;
    progress('passthrough (kafkajs ceiling) …');
    const ceiling = await passthrough(broker, kafka, Number(process.env.BENCH_PASSTHROUGH ?? 60_000));
    progress(`  ${ceiling.recordsPerSecond} records/s; dedupe stage …`);
    const dedupe = only && only !== 'dedupe' ? null : await statefulStage('dedupe', broker, kafka, registryUrl, Number(process.env.BENCH_DEDUPE ?? 40_000));
    progress(`  ${dedupe?.recordsPerSecond} records/s; throttle stage …`);
    const throttleBench = only && only !== 'throttle' ? null : await statefulStage('throttle', broker, kafka, registryUrl, Number(process.env.BENCH_THROTTLE ?? 20_000));
    progress(`  ${throttleBench?.recordsPerSecond} records/s; full pipeline …`);
    const pipe = only && only !== 'pipeline' ? null : await pipeline(broker, kafka, registryUrl, Number(process.env.BENCH_PIPELINE ?? 4_000), { perSecond: 100, seconds: 10 });
    progress(`  ${pipe?.throughput.eventsPerSecond} events/s, p50 ${pipe?.latency.p50Ms} ms at 100/s; the same unfused (HERALD_FUSE_STAGES=false) …`);
    const unfused = only && only !== 'pipeline' ? null : await pipeline(broker, kafka, registryUrl, Number(process.env.BENCH_PIPELINE ?? 4_000), { perSecond: 100, seconds: 10 }, false);
    progress(`  ${unfused?.throughput.eventsPerSecond} events/s, p50 ${unfused?.latency.p50Ms} ms at 100/s; the realistic mix (${Number(process.env.BENCH_MIX_EVENTS ?? 50_000)} events) …`);
    const mixed = only && only !== 'mix' ? null : await mix(broker, kafka, registryUrl, Number(process.env.BENCH_MIX_EVENTS ?? 50_000));
    progress(`  mix: ${mixed?.eventsPerSecond} events/s, ${mixed?.notificationsPerSecond} notifications/s; restore …`);
    const restored = only && only !== 'restore' ? null : await restore(broker, kafka, Number(process.env.BENCH_RESTORE_KEYS ?? 1_000_000));
    progress(`  ${restored?.keysPerSecond} keys/s; embedded restart with 1,000,000 journaled records …`);
    const restart = only && only !== 'journal' ? null : await journalRestart(Number(process.env.BENCH_JOURNAL_RECORDS ?? 1_000_000));
    progress(`  ${restart?.seconds} s; lifecycle rebuild …`);
    const rebuilt = only && only !== 'rebuild' ? null : await lifecycleRebuild(broker, kafka, registryUrl, Number(process.env.BENCH_REBUILD_EVENTS ?? 54_000));
    progress(`  ${rebuilt?.recordsPerSecond} records/s`);
    // Latency at a fixed offered load, as users meet it: through the HTTP API of the embedded
    // default (back-pressure included), clients in their own process, publish -> webhook.
    const rate = Number(process.env.BENCH_LATENCY_RATE ?? 2000);
    const latencySeconds = Number(process.env.BENCH_LATENCY_SECONDS ?? 30);
    if (!only || only === 'latency') progress(`latency at ${rate} events/s offered for ${latencySeconds} s, through the HTTP API …`);
    const latency = only && only !== 'latency' ? null : await httpRun({ events: rate * latencySeconds, clients: 50, users: 1000, perSecond: rate });
    if (latency) progress(`  p50 ${latency.latency.p50Ms} ms, p99 ${latency.latency.p99Ms} ms; ${latency.endToEndEventsPerSecond} events/s end to end`);
    const report = {
      date: new Date().toISOString(),
      machine: { cpus: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', node: process.version },
      broker: 'embedded librdkafka mock cluster (1 broker), loopback',
      passthrough: ceiling,
      dedupe,
      throttle: throttleBench,
      pipeline: pipe ? { ...pipe.throughput, ratioToPassthrough: +(pipe.throughput.eventsPerSecond / ceiling.recordsPerSecond).toFixed(3), hops: 6, fetchedHops: 3, fused: SUB_TOPOLOGY.join('+'), note: 'events/s from the first ingested batch to the last webhook delivered (one recipient per event); the default settings (stages fused)' } : null,
      lightLoadLatency: pipe?.latency ?? null,
      pipelineUnfused: unfused ? { ...unfused.throughput, ratioToPassthrough: +(unfused.throughput.eventsPerSecond / ceiling.recordsPerSecond).toFixed(3), fetchedHops: 6, lightLoadLatency: unfused.latency, note: 'the same run with HERALD_FUSE_STAGES=false: every stage fetches its input' } : null,
      latency: latency ? { offeredPerSecond: rate, seconds: latencySeconds, ...latency.latency, publishPerSecond: latency.publishPerSecond, endToEndEventsPerSecond: latency.endToEndEventsPerSecond, retriedAfter429or503: latency.retriedAfter429or503, correctness: latency.correctness, via: latency.herald, heraldPeakRssMb: latency.heraldPeakRssMb, workerPeakRssMb: latency.workerPeakRssMb ?? [], cpu: latency.cpu } : null,
      correctness: pipe?.correctness ?? null,
      realisticMix: mixed,
      restore: restored,
      embeddedRestart: restart,
      lifecycleRebuild: rebuilt,
      diskAtStartMb: latency?.diskAtStartMb ?? null,
      // Herald's own processes in the HTTP run (npm start), and this bench process, which also
      // ran the in-process parts (pipeline, mix, the 1,000,000-key restore) and their checks.
      heraldPeakRssMb: latency ? { primary: latency.heraldPeakRssMb, workers: latency.workerPeakRssMb ?? [] } : null,
      peakRssMb: round(process.resourceUsage().maxRSS / 1024),
      peakRssMbOf: 'this bench process: the in-process runs, their checks, the broker client',
      totalSeconds: round((Date.now() - started) / 1000),
    };
    process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  } finally {
    await registry.stop();
    await broker.stop();
  }
}

await main();
process.exit(0);
