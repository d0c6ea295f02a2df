/**
 * Global tables on the embedded broker: bootstrap before readiness, tombstones, and a
 * restart that reads only the records after each partition's checkpoint.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EmbeddedBroker } from '../embedded/broker.ts';
import type { NotificationView } from '../processors/outcome.ts';
import { Serde } from '../schemas/index.ts';
import { topicName, userKey } from '../topology.ts';
import { api, eventually, removeDir, startTestHerald, startCluster, TEST_ENV } from './support/herald.ts';
import { createKafka, createProducer } from '../runtime/kafka.ts';
import { loadConfig } from '../config.ts';
import { partitionFor } from '../runtime/partitioner.ts';

/** The partitions of the cluster's topics (startCluster below). */
const PARTITIONS = 2;
import { createLogger } from '../runtime/logger.ts';

let cluster: Awaited<ReturnType<typeof startCluster>>;
let broker: EmbeddedBroker;
let env: Record<string, string>;
const USERS = topicName('herald.', 'users');

beforeAll(async () => {
  cluster = await startCluster(PARTITIONS);
  ({ broker, env } = cluster);
});

afterAll(async () => {
  await cluster?.stop();
});

async function produceUsers(ids: string[], tombstones: string[] = []) {
  const serde = new Serde(env.SCHEMA_REGISTRY_URL!);
  await serde.register(USERS, 'UserProfile');
  const kafka = createKafka(loadConfig({ ...TEST_ENV, KAFKA_BROKERS: broker.bootstraps }), broker.bootstraps, createLogger('silent'));
  const producer = createProducer(kafka);
  await producer.connect();
  const messages = [
    ...(await Promise.all(ids.map(async (id) => ({ key: userKey('acme', id), value: await serde.encode(USERS, { userId: id, tenant: 'acme', name: id, webhookUrl: 'http://127.0.0.1:9/x' }) })))),
    ...tombstones.map((id) => ({ key: userKey('acme', id), value: null })),
  ];
  await producer.send({ topic: USERS, acks: -1, messages });
  await producer.disconnect();
}

const tableRecords = async (h: Awaited<ReturnType<typeof startTestHerald>>) => {
  const text = await h.metrics.registry.getSingleMetricAsString('herald_table_records_total');
  return Number(/table="users"\} (\d+)/.exec(text)?.[1] ?? 0);
};

describe('global tables', () => {
  it('are caught up before ready, apply tombstones, and restart from their checkpoints', async () => {
    const ids = Array.from({ length: 500 }, (_, i) => `u${i}`);
    await produceUsers(ids);
    const h = await startTestHerald({ env });
    const stateDir = h.stateDir;
    try {
      // Ready means caught up: every user is there at once, without waiting.
      const ready = await api<{ ready: boolean; tables: Record<string, boolean> }>(h, 'GET', '/readyz');
      expect(ready.body).toMatchObject({ ready: true, tables: { users: true, preferences: true } });
      expect((await api(h, 'GET', '/v1/users/u0')).status).toBe(200);
      expect((await api(h, 'GET', '/v1/users/u499')).status).toBe(200);
      expect(await tableRecords(h)).toBe(500);

      // A tombstone deletes: the next event for that user is DROPPED as unknown.
      const del = await api(h, 'DELETE', '/v1/users/u7');
      expect(del.status).toBe(202);
      await eventually(async () => (await api(h, 'GET', '/v1/users/u7')).status === 404);
      const res = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'comment.created', tenant: 'acme', recipients: ['u7'], data: { commentId: 'x' } });
      const n = await eventually(async () => {
        const r = await api<NotificationView>(h, 'GET', `/v1/notifications/${res.body.notifications[0]!.notificationId}`);
        return r.status === 200 && r.body.terminal.length ? r.body : false;
      });
      expect(n.events.at(-1)).toMatchObject({ stage: 'enrich', status: 'DROPPED', reasonCode: 'unknown_recipient' });
    } finally {
      await h.stop();
    }

    // Two more changes while it is down; the restart reads just those.
    await produceUsers(['late-1'], ['u8']);
    const again = await startTestHerald({ env, stateDir });
    try {
      expect((await api(again, 'GET', '/v1/users/late-1')).status).toBe(200);
      expect((await api(again, 'GET', '/v1/users/u8')).status).toBe(404);
      expect((await api(again, 'GET', '/v1/users/u7')).status).toBe(404);
      expect((await api(again, 'GET', '/v1/users/u9')).status).toBe(200);
      expect(await tableRecords(again)).toBe(2);
    } finally {
      await again.stop();
      removeDir(stateDir);
    }
  });

  it('take JSON values as users.v1 takes Avro (a producer without a registry, such as kcat), and skip and count a value that does not fit', async () => {
    const kafka = createKafka(loadConfig({ ...TEST_ENV, KAFKA_BROKERS: broker.bootstraps }), broker.bootstraps, createLogger('silent'));
    const producer = createProducer(kafka);
    await producer.connect();
    await producer.send({ topic: USERS, acks: -1, messages: [
      { key: userKey('acme', 'json-user'), value: JSON.stringify({ userId: 'json-user', tenant: 'acme', name: 'Jay', email: 'jay@example.com' }) },
      { key: userKey('acme', 'json-bad'), value: JSON.stringify({ userId: 'json-bad', tenant: 'acme', nickname: 'x' }) },
      { key: userKey('acme', 'not-json'), value: 'hello' },
      // A value for another user than its key: it would put the key's user's notifications in the other's inbox.
      { key: userKey('acme', 'victim'), value: JSON.stringify({ userId: 'json-user', tenant: 'acme', email: 'attacker@example.com' }) },
      { key: userKey('acme', 'other-tenant'), value: JSON.stringify({ userId: 'other-tenant', tenant: 'globex' }) },
      // No tenant in the value (the field is optional): the key's.
      { key: userKey('acme', 'no-tenant'), value: JSON.stringify({ userId: 'no-tenant', name: 'Nat' }) },
      // Dee, then Dee's tombstone on another partition than her key's (librdkafka's consistent_random):
      // applied, it would delete her live and bring her back in a table rebuilt in partition order.
      { key: userKey('acme', 'dee'), value: JSON.stringify({ userId: 'dee', tenant: 'acme', name: 'Dee' }) },
      { key: userKey('acme', 'dee'), value: null, partition: (partitionFor(userKey('acme', 'dee'), PARTITIONS) + 1) % PARTITIONS },
    ] });
    await producer.disconnect();
    const h = await startTestHerald({ env });
    try {
      const user = await api<Record<string, unknown>>(h, 'GET', '/v1/users/json-user');
      expect(user.status).toBe(200);
      expect(user.body).toMatchObject({ userId: 'json-user', name: 'Jay', email: 'jay@example.com' });
      expect((await api(h, 'GET', '/v1/users/json-bad')).status).toBe(404);
      expect((await api(h, 'GET', '/v1/users/not-json')).status).toBe(404);
      expect((await api(h, 'GET', '/v1/users/victim')).status).toBe(404);
      expect((await api(h, 'GET', '/v1/users/json-user')).body).toMatchObject({ email: 'jay@example.com' });
      expect((await api(h, 'GET', '/v1/users/other-tenant')).status).toBe(404);
      expect((await h.tables.getMany<Record<string, unknown>>('users', [userKey('acme', 'no-tenant')]))[0]).toMatchObject({ userId: 'no-tenant', name: 'Nat' });
      const skipped = await h.metrics.registry.getSingleMetricAsString('herald_table_records_skipped_total');
      expect(skipped).toMatch(/table="users",code="HRL_SCHEMA_VIOLATION"\} 1/);
      expect(skipped).toMatch(/table="users",code="HRL_DECODE_FAILED"\} 1/);
      expect(skipped).toMatch(/table="users",code="HRL_KEY_MISMATCH"\} 2/);
      expect(skipped).toMatch(/table="users",code="HRL_WRONG_PARTITION"\} 1/);
      expect((await api(h, 'GET', '/v1/users/dee')).body).toMatchObject({ name: 'Dee' });
    } finally {
      await h.stop();
      removeDir(h.stateDir);
    }
  });

  it('catch up on demand: a row written just before a record is found once the table has read to its end offsets', async () => {
    const h = await startTestHerald({ env });
    try {
      const kafka = createKafka(loadConfig({ ...TEST_ENV, KAFKA_BROKERS: broker.bootstraps }), broker.bootstraps, createLogger('silent'));
      const producer = createProducer(kafka);
      await producer.connect();
      // given a profile written (acked) just now, and a record stamped after it
      await producer.send({ topic: USERS, acks: -1, messages: [{ key: userKey('acme', 'just-now'), value: JSON.stringify({ userId: 'just-now', tenant: 'acme', name: 'Now' }) }] });
      await producer.disconnect();
      const stamped = Date.now();
      // when a lookup catches the table up first, then it finds the row
      expect(await h.tables.catchUp(['users'], stamped)).toBe(true);
      expect((await h.tables.getMany<Record<string, unknown>>('users', [userKey('acme', 'just-now')]))[0]).toMatchObject({ name: 'Now' });
      const syncs = async () => Number(/table="users",result="caught_up"\} (\d+)/.exec(await h.metrics.registry.getSingleMetricAsString('herald_table_catch_ups_total'))?.[1] ?? 0);
      expect(await syncs()).toBe(1);
      // and a record stamped before that catch-up needs no other (no second ListOffsets); one stamped later does
      expect(await h.tables.catchUp(['users'], stamped - 1)).toBe(true);
      expect(await syncs()).toBe(1);
      expect(await h.tables.catchUp(['users'], Date.now() + 1)).toBe(true);
      expect(await syncs()).toBe(2);
    } finally {
      await h.stop();
      removeDir(h.stateDir);
    }
  });
});
