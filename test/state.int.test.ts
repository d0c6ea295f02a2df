/**
 * Durable keyed state on the embedded broker: dedupe's store is restored from its
 * changelog, so deleting the state directory loses nothing, and a restart with the
 * directory intact restores only the tail after the local checkpoint.
 */
import { Kafka, logLevel } from 'kafkajs';
import { scanLifecycle, tail } from '../cli/explain.ts';
import { loadConfig } from '../config.ts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EmbeddedBroker } from '../embedded/broker.ts';
import type { NotificationView } from '../processors/outcome.ts';
import { topicName } from '../topology.ts';
import { api, eventually, removeDir, startTestHerald, startCluster, TEST_ENV } from './support/herald.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';

let cluster: Awaited<ReturnType<typeof startCluster>>;
let broker: EmbeddedBroker;
let env: Record<string, string>;
const hooks = new WebhookReceiver();

beforeAll(async () => {
  await hooks.start();
  cluster = await startCluster(2);
  ({ broker, env } = cluster);
});

afterAll(async () => {
  await cluster?.stop();
  await hooks.stop();
});

async function post(h: Awaited<ReturnType<typeof startTestHerald>>, id: string, key: string) {
  const res = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { id, type: 'comment.created', tenant: 'acme', recipients: ['ada'], idempotencyKey: key, data: { commentId: id } });
  expect(res.status).toBe(202);
  const nid = res.body.notifications[0]!.notificationId;
  return eventually(async () => {
    const r = await api<NotificationView>(h, 'GET', `/v1/notifications/${nid}`);
    return r.status === 200 && r.body.terminal.length > 0 ? r.body : false;
  });
}

describe('dedupe state across restarts', () => {
  it('still suppresses a duplicate after the state directory is deleted and the process restarted', async () => {
    const first = await startTestHerald({ env });
    await api(first, 'PUT', '/v1/users/ada', { webhookUrl: `${hooks.url}/ada` });
    await eventually(async () => (await api(first, 'GET', '/v1/users/ada')).status === 200);
    const original = await post(first, 'before-restart', 'key-1');
    expect(original.terminal).toEqual(['webhook:DELIVERED']);
    // A record on outcomes.v1 that is not a lifecycle event (framed with its schema id, then garbage), as a stray producer can write.
    const outcomesTopic = topicName('herald.', 'outcomes');
    const framed = await first.serde.encode(outcomesTopic, original.events[0]!);
    // and a well-formed Avro record of another schema (a DomainEvent written to the wrong topic)
    const stranger = await first.serde.encode(topicName('herald.', 'events'), { id: 'stray', type: 'comment.created', tenant: 'acme', recipients: ['ada'], audience: null, data: '{}', idempotencyKey: null, occurredAt: null, expiresAt: null, actor: null, traceId: null });
    await first.producer.send({ topic: outcomesTopic, acks: -1, messages: [{ key: 'acme/ada', value: Buffer.concat([framed.subarray(0, 5), Buffer.from('garbage')]) }, { key: 'acme/ada', value: stranger }] });
    await first.stop();
    removeDir(first.stateDir);

    // Without any instance: the lifecycle rebuilt from outcomes.v1, and the decisions tailed,
    // each reader skipping the stray record and saying so.
    const config = loadConfig({ ...TEST_ENV, ...env });
    const skipped: string[] = [];
    const rebuilt = await scanLifecycle(config, original.notificationId, (where, why) => skipped.push(`${where}: ${why}`));
    expect(rebuilt!.events.map((e) => e.status)).toEqual(original.events.map((e) => e.status));
    expect(skipped).toEqual([expect.stringMatching(/^herald\.outcomes\.v1\[\d\]@\d+: Avro decode failed/), expect.stringMatching(/cannot be read as LifecycleEvent/)]);
    const ac = new AbortController();
    const lines: string[] = [];
    const tailing = tail(config, { fromBeginning: true, print: (l) => lines.push(l), signal: ac.signal });
    await eventually(() => lines.some((l) => l.startsWith(original.notificationId) && l.includes('DELIVERED')) && lines.filter((l) => l.startsWith('(skipped herald.outcomes.v1[')).length === 2);
    ac.abort();
    await tailing;

    const second = await startTestHerald({ env });
    try {
      const dup = await post(second, 'after-restart', 'key-1');
      expect(dup.terminal).toEqual(['SUPPRESSED_DUPLICATE']);
      expect(dup.events.at(-1)!.reason).toContain(original.notificationId);
      const restored = await second.metrics.registry.getSingleMetricAsString('herald_state_restore_records_total');
      expect(restored).toMatch(/stage="dedupe",store="seen"\} [1-9]/);
      // A new key is still delivered.
      expect((await post(second, 'fresh', 'key-2')).terminal).toEqual(['webhook:DELIVERED']);
    } finally {
      await second.stop();
      removeDir(second.stateDir);
    }
  });

  it('restores only the changelog tail after the local checkpoint when the state directory survives', async () => {
    const first = await startTestHerald({ env: { ...env, HERALD_COMMIT_INTERVAL_MS: '60000' } });
    const stateDir = first.stateDir;
    await api(first, 'PUT', '/v1/users/ada', { webhookUrl: `${hooks.url}/ada` });
    await eventually(async () => (await api(first, 'GET', '/v1/users/ada')).status === 200);
    await post(first, 'cp-1', 'cp-key-1');
    await first.stop();
    // A graceful stop commits every completed batch, though the commit interval had not passed.
    const admin = new Kafka({ brokers: broker.bootstraps.split(','), logLevel: logLevel.NOTHING }).admin();
    await admin.connect();
    const events = topicName('herald.', 'events');
    const [committed] = await admin.fetchOffsets({ groupId: 'herald.ingest', topics: [events] });
    const ends = await admin.fetchTopicOffsets(events);
    await admin.disconnect();
    expect(committed!.partitions.map((p) => p.offset).sort()).toEqual(ends.map((e) => e.high).sort());
    const second = await startTestHerald({ env, stateDir });
    try {
      const dup = await post(second, 'cp-2', 'cp-key-1');
      expect(dup.terminal).toEqual(['SUPPRESSED_DUPLICATE']);
      // Everything the store needed was already on disk: nothing to apply from the changelog.
      const restored = await second.metrics.registry.getSingleMetricAsString('herald_state_restore_records_total');
      expect(restored).not.toMatch(/stage="dedupe",store="seen"\} [1-9]/);
    } finally {
      await second.stop();
      removeDir(stateDir);
    }
  });
});
