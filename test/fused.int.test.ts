/**
 * Fused stages (topology.ts SUB_TOPOLOGY, HERALD_FUSE_STAGES): enrich, dedupe, throttle and
 * route run in one task per partition, and still write every topic between them, with
 * provenance that points at the record each decision read. Switching the setting on the
 * same broker and state loses nothing and decides nothing twice:
 *
 * 1. unfused, every stage: 10 events delivered;
 * 2. unfused without throttle and route: 10 more stop in deduped.v1 (throttle's group is 10 behind);
 * 3. fused: the 10 waiting are handled first, then 10 new ones; every follower group's
 *    committed offset reaches the end of its input, as Kafka's tools would show it;
 * 4. unfused again: 10 new ones, and nothing the fused run did is done again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Herald } from '../app/herald.ts';
import type { LifecycleEvent } from '../schemas/types.ts';
import { TopicReader } from '../runtime/reader.ts';
import { STAGE_NAMES, type StageName, groupId, topicName } from '../topology.ts';
import { api, eventually, removeDir, startCluster, startTestHerald } from './support/herald.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';
import { mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';

let cluster: Awaited<ReturnType<typeof startCluster>>;
const hooks = new WebhookReceiver();
const stateDir = mkdtempSync(join(tmpdir(), 'herald-fused-'));
const USERS = ['f0', 'f1', 'f2', 'f3', 'f4', 'f5', 'f6', 'f7', 'f8', 'f9'];
const PARTITIONS = 2;

beforeAll(async () => {
  await hooks.start();
  cluster = await startCluster(PARTITIONS);
});
afterAll(async () => {
  await cluster?.stop();
  await hooks.stop();
  removeDir(stateDir);
});

const start = (fuse: boolean, stages: readonly StageName[] = STAGE_NAMES) =>
  startTestHerald({ stateDir, stages, env: { ...cluster.env, HERALD_PARTITIONS: String(PARTITIONS), HERALD_FUSE_STAGES: String(fuse), HERALD_COMMIT_INTERVAL_MS: '200' } });

let published = 0;
async function publish(h: Herald, n: number): Promise<void> {
  for (let i = 0; i < n; i++, published++) {
    const r = await api(h, 'POST', '/v1/events', { type: 'comment.created', tenant: 'acme', recipients: [USERS[published % USERS.length]], data: { commentId: `fused-${published}` } });
    expect(r.status).toBe(202);
  }
}

const deliveredKeys = () => hooks.received.map((r) => String(r.headers['idempotency-key']));

async function ends(h: Herald, topic: string): Promise<Map<number, bigint>> {
  return new Map((await h.admin.fetchTopicOffsets(topicName('herald.', topic as never))).map((o) => [o.partition, BigInt(o.high)]));
}
const total = (m: Map<number, bigint>) => [...m.values()].reduce((a, b) => a + (b > 0n ? b : 0n), 0n);

async function committed(h: Herald, stage: StageName, topic: string): Promise<Map<number, bigint>> {
  const [g] = await h.admin.fetchOffsets({ groupId: groupId('herald.', stage), topics: [topicName('herald.', topic as never)] });
  return new Map((g?.partitions ?? []).map((p) => [p.partition, BigInt(p.offset)]));
}

/** Every record of a topic, decoded, by "partition/offset". */
async function readAll(h: Herald, topic: string): Promise<Map<string, Record<string, unknown>>> {
  const name = topicName('herald.', topic as never);
  const out = new Map<string, Record<string, unknown>>();
  const reader = new TopicReader(h.kafka, h.admin, {
    topic: name, groupPrefix: 'test.', until: await ends(h, topic),
    onBatch: async (b) => {
      for (const m of b.messages) out.set(`${b.partition}/${m.offset}`, (await h.serde.decode(m.value!)) as Record<string, unknown>);
    },
  });
  await reader.readToEnd();
  return out;
}

describe('fused stages', () => {
  it('write every topic between them, cite the records they read, and switch on and off without losing or repeating work', async () => {
    // 1. Unfused, every stage.
    let h = await start(false);
    for (const u of USERS) expect((await api(h, 'PUT', `/v1/users/${u}`, { name: u, webhookUrl: `${hooks.url}/${u}` })).status).toBe(202);
    await eventually(async () => (await Promise.all(USERS.map((u) => api(h, 'GET', `/v1/users/${u}`)))).every((r) => r.status === 200));
    await publish(h, 10);
    await eventually(() => new Set(deliveredKeys()).size === 10, 30_000);
    await h.stop();

    // 2. Unfused, throttle and route not running: 10 more wait in deduped.v1.
    h = await start(false, ['ingest', 'enrich', 'dedupe', 'deliver', 'outcome']);
    await publish(h, 10);
    await eventually(async () => total(await ends(h, 'deduped')) === 20n, 30_000);
    expect(total(await committed(h, 'throttle', 'deduped'))).toBe(10n);
    await h.stop();
    expect(new Set(deliveredKeys()).size).toBe(10);

    // 3. Fused: the waiting 10 go through first (throttle's backlog), then 10 new ones.
    h = await start(true);
    await eventually(() => new Set(deliveredKeys()).size === 20, 30_000);
    expect(await h.metrics.registry.getSingleMetricAsString('herald_fused_read_back_records_total')).toMatch(/herald_fused_read_back_records_total\{stage="throttle",reason="backlog"\} 10$/m);
    await publish(h, 10);
    await eventually(() => new Set(deliveredKeys()).size === 30, 30_000);
    // Every topic between the fused stages was written, and each stage's group has done all of its input.
    for (const [stage, input] of [['dedupe', 'enriched'], ['throttle', 'deduped'], ['route', 'admitted']] as const) {
      expect(total(await ends(h, input))).toBe(30n);
      expect([...(await ends(h, input)).values()].every((end) => end > 0n), 'both partitions are used').toBe(true);
      await eventually(async () => {
        const [c, e] = [await committed(h, stage, input), await ends(h, input)];
        return [...e].every(([p, end]) => (c.get(p) ?? -1n) === (end > 0n ? end : -1n));
      }, 10_000);
    }
    // Each decision of a fused stage cites the record it read: that record is the same notification.
    const inputs = new Map<string, Map<string, Record<string, unknown>>>();
    for (const t of ['enriched', 'deduped', 'admitted']) inputs.set(topicName('herald.', t as never), await readAll(h, t));
    const outcomes = [...(await readAll(h, 'outcomes')).values()] as unknown as LifecycleEvent[];
    const cited = outcomes.filter((o) => ['dedupe', 'throttle', 'route'].includes(o.stage));
    expect(cited.length).toBeGreaterThanOrEqual(90);
    for (const o of cited) {
      const read = inputs.get(o.sourceTopic)?.get(`${o.sourcePartition}/${o.sourceOffset}`) as { request: { notificationId: string } } | undefined;
      expect(read?.request.notificationId, `${o.stage} ${o.status} of ${o.notificationId} cites ${o.sourceTopic}[${o.sourcePartition}]@${o.sourceOffset}`).toBe(o.notificationId);
    }
    await h.stop();

    // 4. Unfused again: the groups resume where the fused run left them.
    h = await start(false);
    await publish(h, 10);
    await eventually(() => new Set(deliveredKeys()).size === 40, 30_000);
    const all = [...(await readAll(h, 'outcomes')).values()] as unknown as LifecycleEvent[];
    // Nothing decided twice by any stage, nothing sent twice.
    expect(all.filter((o) => o.reasonCode === 'replayed').map((o) => `${o.stage} ${o.notificationId}`)).toEqual([]);
    expect(deliveredKeys().length).toBe(40);
    for (const stage of ['dedupe', 'throttle', 'route'] as const) expect(all.filter((o) => o.stage === stage && o.terminal === false).length).toBeGreaterThanOrEqual(40);
    await h.stop();
  }, 180_000);
});
