/**
 * The embedded parts on their own: the librdkafka mock cluster through kafkajs (topics
 * made by the launcher, a broker taken down and back), and the embedded schema registry
 * through @kafkajs/confluent-schema-registry.
 */
import { randomUUID } from 'node:crypto';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SchemaRegistry } from '@kafkajs/confluent-schema-registry';
import { Kafka, logLevel, Partitioners } from 'kafkajs';
import { afterAll, describe, expect, it } from 'vitest';
import { EmbeddedBroker } from '../embedded/broker.ts';
import { Journal } from '../embedded/journal.ts';
import { BrokerJournal } from '../embedded/persistence.ts';
import { createLogger } from '../runtime/logger.ts';
import { EmbeddedSchemaRegistry } from '../embedded/schema-registry.ts';
import { HeraldError } from '../errors.ts';

describe('embedded broker', () => {
  const brokers: EmbeddedBroker[] = [];
  afterAll(async () => {
    for (const b of brokers) await b.stop();
  });

  it('creates topics with the declared partition counts and carries records through a 3-broker outage', async () => {
    const broker = await EmbeddedBroker.start({ brokers: 3 });
    brokers.push(broker);
    const topic = `t-${randomUUID()}`;
    await broker.createTopic(topic, 3, 3);
    const kafka = new Kafka({ clientId: 'test', brokers: broker.bootstraps.split(','), logLevel: logLevel.NOTHING, retry: { retries: 20, initialRetryTime: 100 } });
    const admin = kafka.admin();
    await admin.connect();
    expect((await admin.fetchTopicMetadata({ topics: [topic] })).topics[0]!.partitions).toHaveLength(3);
    await admin.disconnect();
    const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
    await producer.connect();
    const send = (from: number, n: number) =>
      producer.send({ topic, acks: -1, messages: Array.from({ length: n }, (_, i) => ({ key: `k${from + i}`, value: String(from + i) })) });
    await send(0, 300);
    await broker.brokerDown(2);
    const during = send(300, 300);
    await new Promise((r) => setTimeout(r, 1500));
    await broker.brokerUp(2);
    await during;
    const consumer = kafka.consumer({ groupId: `g-${randomUUID()}`, maxWaitTimeInMs: 50 });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    const seen = new Set<string>();
    let total = 0;
    await consumer.run({ eachMessage: async ({ message }) => { total++; seen.add(message.value!.toString()); } });
    const deadline = Date.now() + 30_000;
    while (seen.size < 600 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    await consumer.disconnect();
    await producer.disconnect();
    expect(seen.size).toBe(600);
    expect(total).toBe(600);
  });

  it('answers every topic\'s offsets in one pair of ListOffsets requests (the kafkajs patch\'s fetchTopicsOffsets), as fetchTopicOffsets does one topic at a time', async () => {
    const broker = await EmbeddedBroker.start({ brokers: 3 });
    brokers.push(broker);
    const topics = [`a-${randomUUID()}`, `b-${randomUUID()}`];
    await broker.createTopic(topics[0]!, 3, 3);
    await broker.createTopic(topics[1]!, 2, 3);
    const kafka = new Kafka({ clientId: 'test', brokers: broker.bootstraps.split(','), logLevel: logLevel.NOTHING, retry: { retries: 20, initialRetryTime: 100 } });
    const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
    await producer.connect();
    await producer.send({ topic: topics[0]!, acks: -1, messages: Array.from({ length: 30 }, (_, i) => ({ key: `k${i}`, value: 'v' })) });
    await producer.send({ topic: topics[1]!, acks: -1, messages: Array.from({ length: 7 }, (_, i) => ({ key: `k${i}`, value: 'v' })) });
    await producer.disconnect();
    const admin = kafka.admin();
    await admin.connect();
    const one = await Promise.all(topics.map(async (topic) => ({ topic, partitions: await admin.fetchTopicOffsets(topic) })));
    const leaders = new Set((await admin.fetchTopicMetadata({ topics })).topics.flatMap((t) => t.partitions.map((p) => p.leader)));
    let listOffsets = 0;
    admin.on(admin.events.REQUEST, (e) => void (e.payload.apiName === 'ListOffsets' && listOffsets++));
    const all = await admin.fetchTopicsOffsets(topics);
    await admin.disconnect();
    const sorted = (xs: { topic: string; partitions: { partition: number; high: string; low: string }[] }[]) =>
      xs.map(({ topic, partitions }) => ({ topic, partitions: partitions.map(({ partition, high, low }) => ({ partition, high, low })).sort((x, y) => x.partition - y.partition) }));
    expect(sorted(all)).toEqual(sorted(one));
    expect(sorted(all).map(({ partitions }) => partitions.reduce((n, p) => n + Number(p.high), 0))).toEqual([30, 7]);
    // Ends and starts: one request per broker that leads a partition, for both topics at once
    // (one topic at a time asks each topic's leaders twice).
    expect(leaders.size).toBeGreaterThan(0);
    expect(listOffsets).toBe(2 * leaders.size);
    expect(await kafka.admin().fetchTopicsOffsets([])).toEqual([]);
  });

  /** A broker with a fresh topic of `partitions`, a producer and an admin client on it, and an empty journal directory. */
  async function journalFixture(partitions: number) {
    const broker = await EmbeddedBroker.start();
    brokers.push(broker);
    const topic = `j-${randomUUID()}`;
    await broker.createTopic(topic, partitions);
    const kafka = new Kafka({ clientId: 'test', brokers: broker.bootstraps.split(','), logLevel: logLevel.NOTHING, retry: { retries: 20, initialRetryTime: 100 } });
    const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner });
    const admin = kafka.admin();
    await Promise.all([producer.connect(), admin.connect()]);
    return { broker, topic, producer, admin, dir: mkdtempSync(join(tmpdir(), 'herald-brokerjournal-')) };
  }

  it('journals what its own writer reads: every record with its offset, timestamp, key, value and headers, from where the journal ended', async () => {
    const { broker, topic, producer, admin, dir } = await journalFixture(2);
    try {
      // Partition 0 was journaled up to offset 1 before (a restart): the writer starts after it.
      const early = await producer.send({ topic, acks: -1, messages: [{ partition: 0, key: 'old', value: 'old' }] });
      expect(early[0]!.baseOffset).toBe('0');
      const journal = Journal.open(dir);
      journal.append(topic, 0, [{ offset: 0n, timestamp: 1, key: Buffer.from('old'), value: Buffer.from('old'), headers: {} }]);
      const durable = new BrokerJournal(journal, broker, admin, producer, createLogger('silent'));
      await durable.follow([topic]);
      const sent = [
        { partition: 0, key: 'k1', value: Buffer.from([0, 255, 7]), timestamp: '1700000000123', headers: { 'herald.trace': 't-1', quote: 'a"b\\c\n\u0001é', twice: ['first', 'second'] } },
        { partition: 0, key: null, value: null, timestamp: '1700000000124' },
        { partition: 1, key: 'k3', value: 'v3', timestamp: '1700000000125', headers: { empty: '' } },
      ];
      const acks = await producer.send({ topic, acks: -1, messages: sent });
      await Promise.all(acks.map((a) => journal.waitFor(topic, a.partition, BigInt(a.baseOffset!) + (a.partition === 0 ? 1n : 0n), 10_000)));
      expect(journal.highWater(topic, 0)).toBe(3n);
      expect(journal.highWater(topic, 1)).toBe(1n);
      // Its reports size the partitions as the files are.
      expect(journal.bytesAfter(topic, 0, 0n)).toBe(statSync(join(dir, topic, '0.log')).size);
      journal.close();
      const back = Object.fromEntries([...Journal.open(dir).read()].map((p) => [p.partition, [...p.records]]));
      expect(back[0]).toEqual([
        { offset: 0n, timestamp: 1, key: Buffer.from('old'), value: Buffer.from('old'), headers: {} },
        // A repeated header keeps its first value, as Herald reads headers.
        { offset: 1n, timestamp: 1700000000123, key: Buffer.from('k1'), value: Buffer.from([0, 255, 7]), headers: { 'herald.trace': 't-1', quote: 'a"b\\c\n\u0001é', twice: 'first' } },
        { offset: 2n, timestamp: 1700000000124, key: null, value: null, headers: {} },
      ]);
      expect(back[1]).toEqual([{ offset: 0n, timestamp: 1700000000125, key: Buffer.from('k3'), value: Buffer.from('v3'), headers: { empty: '' } }]);
      await expect(broker.follow(topic, 1, 0n)).rejects.toThrow(/followed already/);
      await expect(broker.follow('bad/topic', 0, 0n)).rejects.toThrow(/a topic name holds only/);
    } finally {
      await Promise.all([producer.disconnect(), admin.disconnect()]);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('journals every record it acknowledged when its owner is killed with SIGKILL: the broker outlives it to write them, and a start waits for it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'herald-killed-owner-'));
    try {
      const out = await new Promise<string>((resolve) => {
        execFile(process.execPath, ['test/support/killed-owner.ts', dir], (_err, stdout) => resolve(stdout));
      });
      expect(out).toContain('acked 2000');
      await Journal.waitForEarlierWriter(dir, createLogger('silent'));
      expect(existsSync(join(dir, 'writer.pid'))).toBe(false);
      const records = [...Journal.open(dir).read()].flatMap((p) => [...p.records]);
      expect(records).toHaveLength(2000);
      expect(new Set(records.map((r) => r.key!.toString())).size).toBe(2000);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('rejects the waits for records the broker dropped before its journal writer read them, and journals on from the first one it holds', async () => {
    const { broker, topic, producer, admin, dir } = await journalFixture(1);
    try {
      // 6.4 MB into one partition: the broker keeps about 5 MB and drops the oldest records.
      const value = Buffer.alloc(64 * 1024, 1);
      for (let i = 0; i < 100; i++) await producer.send({ topic, acks: -1, messages: [{ partition: 0, key: `k${i}`, value }] });
      const { low, high } = (await admin.fetchTopicOffsets(topic))[0]!;
      expect(Number(low)).toBeGreaterThan(0);
      const journal = Journal.open(dir);
      const dropped = journal.waitFor(topic, 0, 0n, 10_000);
      const lastDropped = journal.waitFor(topic, 0, BigInt(low) - 1n, 10_000);
      const kept = journal.waitFor(topic, 0, BigInt(high) - 1n, 10_000);
      await new BrokerJournal(journal, broker, admin, producer, createLogger('silent')).follow([topic]);
      await expect(dropped).rejects.toMatchObject({ code: 'HRL_JOURNAL_BEHIND', message: expect.stringContaining('dropped the record before it was journaled') });
      await expect(lastDropped).rejects.toMatchObject({ code: 'HRL_JOURNAL_BEHIND' });
      await kept;
      journal.close();
      const [part] = [...Journal.open(dir).read()];
      expect([...part!.records].map((r) => [Number(r.offset), r.key?.toString()])).toEqual(Array.from({ length: Number(high) - Number(low) }, (_, i) => [Number(low) + i, `k${Number(low) + i}`]));
    } finally {
      await Promise.all([producer.disconnect(), admin.disconnect()]);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('replays a compacted topic compacted: each key\'s last record at its offset, placeholders for the ones it superseded, so more history than the broker keeps loses no key', async () => {
    const { topic, producer, admin, dir } = await journalFixture(1);
    try {
      // 6.5 MB of history for 4 keys in one partition (the broker keeps about 5 MB), the last of key k3 a tombstone.
      const journal = Journal.open(dir);
      const value = Buffer.alloc(64 * 1024, 7);
      const history = Array.from({ length: 100 }, (_, i) => ({ offset: BigInt(i), timestamp: 1_700_000_000_000 + i, key: Buffer.from(`k${i % 4}`), value: i === 99 ? null : Buffer.concat([Buffer.from(`v${i}:`), value]), headers: {} }));
      journal.append(topic, 0, history);
      journal.close();
      const file = join(dir, encodeURIComponent(topic), '0.log');
      const before = statSync(file).size;
      const reopened = Journal.open(dir);
      const replayed = await new BrokerJournal(reopened, null, admin, producer, createLogger('silent'), (t) => t === topic).replay();
      // The file itself was compacted on the way (over 1 MB, most of it superseded): 4 records left of 100.
      expect(replayed).toMatchObject({ records: 4, superseded: 96, gaps: 0 });
      expect(reopened.compactions).toEqual([{ topic, partition: 0, bytesBefore: before, bytesAfter: statSync(file).size, recordsBefore: 100, recordsAfter: 4 }]);
      expect(statSync(file).size).toBeLessThan(before / 20);
      expect([...Journal.open(dir).read()].flatMap((p) => [...p.records].map((r) => [Number(r.offset), r.key?.toString()]))).toEqual([[96, 'k0'], [97, 'k1'], [98, 'k2'], [99, 'k3']]);
      const { low, high } = (await admin.fetchTopicOffsets(topic))[0]!;
      expect([Number(low), Number(high)]).toEqual([0, 100]); // nothing dropped, every offset where it was
      const kafka = new Kafka({ clientId: 'test', brokers: (await admin.describeCluster()).brokers.map((b) => `${b.host}:${b.port}`), logLevel: logLevel.NOTHING });
      const consumer = kafka.consumer({ groupId: `g-${randomUUID()}` });
      await consumer.connect();
      await consumer.subscribe({ topic, fromBeginning: true });
      const seen: [number, string | null, string | null][] = [];
      await consumer.run({ eachMessage: async ({ message }) => void seen.push([Number(message.offset), message.key?.toString() ?? null, message.value ? message.value.subarray(0, 4).toString() : null]) });
      const deadline = Date.now() + 30_000;
      while (seen.length < 100 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      await consumer.disconnect();
      // the keyed records left are each key's last: v96 of k0, v97 of k1, v98 of k2, k3's tombstone
      expect(seen.filter(([, key]) => key !== null)).toEqual([[96, 'k0', 'v96:'], [97, 'k1', 'v97:'], [98, 'k2', 'v98:'], [99, 'k3', null]]);
      expect(seen).toHaveLength(100);
    } finally {
      await Promise.all([producer.disconnect(), admin.disconnect()]);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it('refuses a bad command with the broker\'s reason', async () => {
    const broker = await EmbeddedBroker.start();
    brokers.push(broker);
    await expect(broker.brokerDown(99)).rejects.toThrow(HeraldError);
  });
});

describe('embedded schema registry', () => {
  it('registers, encodes and decodes in the Confluent wire format, and refuses a BACKWARD-incompatible change', async () => {
    const server = new EmbeddedSchemaRegistry();
    const url = await server.start();
    try {
      const registry = new SchemaRegistry({ host: url });
      const v1 = { type: 'record', name: 'Thing', namespace: 't', fields: [{ name: 'a', type: 'string' }] };
      const { id } = await registry.register({ type: 'AVRO' as never, schema: JSON.stringify(v1) }, { subject: 'things-value' });
      const buf = await registry.encode(id, { a: 'x' });
      expect(buf[0]).toBe(0);
      expect(buf.readInt32BE(1)).toBe(id);
      expect(await new SchemaRegistry({ host: url }).decode(buf)).toEqual({ a: 'x' });
      // Same schema again: same id.
      expect((await registry.register({ type: 'AVRO' as never, schema: JSON.stringify(v1) }, { subject: 'things-value' })).id).toBe(id);
      const compatible = { ...v1, fields: [...v1.fields, { name: 'b', type: 'int', default: 0 }] };
      const v2 = await registry.register({ type: 'AVRO' as never, schema: JSON.stringify(compatible) }, { subject: 'things-value' });
      expect(v2.id).not.toBe(id);
      const breaking = { ...v1, fields: [...v1.fields, { name: 'c', type: 'int' }] };
      await expect(registry.register({ type: 'AVRO' as never, schema: JSON.stringify(breaking) }, { subject: 'things-value' })).rejects.toThrow(/incompatible/);
      expect(await registry.getLatestSchemaId('things-value')).toBe(v2.id);
    } finally {
      await server.stop();
    }
  });

  it('speaks the REST endpoints and status codes of Confluent\'s registry, comparing schemas as parsed JSON', async () => {
    const server = new EmbeddedSchemaRegistry();
    const url = await server.start();
    const call = async (method: string, path: string, body?: unknown) => {
      const res = await fetch(`${url}${path}`, { method, headers: { 'content-type': 'application/vnd.schemaregistry.v1+json' }, ...(body ? { body: JSON.stringify(body) } : {}) });
      return { status: res.status, body: (await res.json()) as Record<string, unknown> };
    };
    try {
      const v1 = { type: 'record', name: 'Thing', namespace: 't', fields: [{ name: 'a', type: 'string' }, { name: 'at', type: { type: 'long', logicalType: 'timestamp-millis' } }] };
      const first = await call('POST', '/subjects/s-value/versions', { schema: JSON.stringify(v1) });
      // The same schema with its keys in another order is the same version (a text compare would make a new one).
      const reordered = { fields: [{ type: 'string', name: 'a' }, { type: { logicalType: 'timestamp-millis', type: 'long' }, name: 'at' }], namespace: 't', name: 'Thing', type: 'record' };
      expect((await call('POST', '/subjects/s-value/versions', { schema: JSON.stringify(reordered) })).body).toEqual(first.body);
      expect((await call('GET', '/subjects/s-value/versions')).body).toEqual([1]);
      expect((await call('POST', '/subjects/s-value', { schema: JSON.stringify(reordered) })).body).toMatchObject({ version: 1, id: first.body.id });
      // Dropping the logical type is another schema, not the same one.
      const plain = { ...v1, fields: [v1.fields[0], { name: 'at', type: 'long' }] };
      expect((await call('POST', '/subjects/s-value', { schema: JSON.stringify(plain) })).status).toBe(404);
      expect((await call('GET', '/subjects/s-value/versions/1/schema')).body).toEqual(v1);
      // answered as registered (its keys in their order), not in the form it is compared in
      expect((await call('GET', '/subjects/s-value/versions/1')).body.schema).toBe(JSON.stringify(v1));
      expect((await call('GET', `/schemas/ids/${first.body.id}`)).body.schema).toBe(JSON.stringify(v1));
      expect((await call('GET', '/schemas/types')).body).toEqual(['AVRO']);
      expect(await call('GET', '/subjects/nope/versions/1')).toMatchObject({ status: 404, body: { error_code: 40401 } });
      expect(await call('GET', '/subjects/s-value/versions/7')).toMatchObject({ status: 404, body: { error_code: 40402 } });
      expect(await call('GET', '/subjects/s-value/versions/x')).toMatchObject({ status: 422, body: { error_code: 42202 } });
      expect(await call('POST', '/compatibility/subjects/s-value/versions/latest', { schema: '{"type":' })).toMatchObject({ status: 422, body: { error_code: 42201 } });
      const added = { ...v1, fields: [...v1.fields, { name: 'b', type: 'int', default: 0 }] };
      const breaking = { ...v1, fields: [...v1.fields, { name: 'c', type: 'int' }] };
      expect((await call('POST', '/compatibility/subjects/s-value/versions/latest', { schema: JSON.stringify(added) })).body).toEqual({ is_compatible: true });
      expect((await call('POST', '/compatibility/subjects/s-value/versions', { schema: JSON.stringify(breaking) })).body).toEqual({ is_compatible: false });
      // ?verbose=true says why, as Confluent's registry does.
      const verbose = await call('POST', '/compatibility/subjects/s-value/versions?verbose=true', { schema: JSON.stringify(breaking) });
      expect(verbose.body.is_compatible).toBe(false);
      expect((verbose.body.messages as string[])[0]).toMatch(/^BACKWARD: the new schema cannot read data written with version 1: .*c/);
      expect((await call('POST', '/compatibility/subjects/s-value/versions/1?verbose=true', { schema: JSON.stringify(added) })).body).toEqual({ is_compatible: true, messages: [] });
      expect(await call('GET', '/no/such/path')).toEqual({ status: 404, body: { error_code: 404, message: 'HTTP 404 Not Found' } });
      expect((await call('GET', '/mode')).body).toEqual({ mode: 'READWRITE' });
      expect((await call('GET', `/schemas/ids/${first.body.id}/schema`)).body).toEqual(v1);
      expect((await call('GET', `/schemas/ids/${first.body.id}/versions`)).body).toEqual([{ subject: 's-value', version: 1 }]);
      // Subject-level config: set, read, deleted (back to the global level).
      expect((await call('GET', '/config/s-value')).body).toMatchObject({ error_code: 40408 });
      await call('PUT', '/config/s-value', { compatibility: 'NONE' });
      expect((await call('DELETE', '/config/s-value')).body).toEqual({ compatibilityLevel: 'NONE' });
      expect((await call('GET', '/config/s-value')).body).toMatchObject({ error_code: 40408 });
      expect((await call('GET', '/config/s-value?defaultToGlobal=true')).body).toEqual({ compatibilityLevel: 'BACKWARD' });
      // A level Confluent does not know is refused (42203), and changes nothing.
      expect(await call('PUT', '/config', { compatibility: 'BOGUS' })).toMatchObject({ status: 422, body: { error_code: 42203 } });
      expect(await call('PUT', '/config/s-value', {})).toMatchObject({ status: 422, body: { error_code: 42203 } });
      expect((await call('GET', '/config')).body).toEqual({ compatibilityLevel: 'BACKWARD' });
      // A lookup in a subject that does not exist is 40401 (40403 is a schema missing from one that does).
      expect(await call('POST', '/subjects/nope', { schema: JSON.stringify(v1) })).toMatchObject({ status: 404, body: { error_code: 40401 } });
      // Bodies it cannot read, in Confluent's shape and content type.
      const raw = async (contentType: string, body: string) => {
        const res = await fetch(`${url}/subjects/s-value/versions`, { method: 'POST', headers: { 'content-type': contentType }, body });
        return { status: res.status, type: res.headers.get('content-type'), body: (await res.json()) as Record<string, unknown> };
      };
      expect(await raw('application/vnd.schemaregistry.v1+json', '{"schema": "{bad')).toMatchObject({ status: 400, type: expect.stringMatching(/^application\/vnd\.schemaregistry\.v1\+json/), body: { error_code: 400 } });
      expect(await raw('text/plain', '{}')).toMatchObject({ status: 415, body: { error_code: 415, message: 'HTTP 415 Unsupported Media Type' } });
      expect((await fetch(`${url}/subjects`)).headers.get('content-type')).toMatch(/^application\/vnd\.schemaregistry\.v1\+json/);
    } finally {
      await server.stop();
    }
  });

  it('filters subjects by ?subjectPrefix=, names the subjects of a schema id, and takes application/octet-stream bodies, as Confluent\'s registry does', async () => {
    const server = new EmbeddedSchemaRegistry();
    const url = await server.start();
    try {
      const schema = JSON.stringify({ type: 'record', name: 'P', fields: [{ name: 'a', type: 'int' }] });
      const post = (subject: string, type = 'application/vnd.schemaregistry.v1+json') => fetch(`${url}/subjects/${subject}/versions`, { method: 'POST', headers: { 'content-type': type }, body: JSON.stringify({ schema }) });
      const a = await post('herald.out-value', 'application/octet-stream');
      expect(a.status).toBe(200);
      const { id } = (await a.json()) as { id: number };
      await post('other-value');
      expect(await (await fetch(`${url}/subjects?subjectPrefix=herald.`)).json()).toEqual(['herald.out-value']);
      expect(((await (await fetch(`${url}/schemas/ids/${id}/subjects`)).json()) as string[]).sort()).toEqual(['herald.out-value', 'other-value']);
      expect(await (await fetch(`${url}/schemas/ids/999/subjects`)).json()).toMatchObject({ error_code: 40403 });
    } finally {
      await server.stop();
    }
  });

  it('deletes as Confluent\'s registry does: soft first (the ids stay readable), permanently after, and never reuses a version number', async () => {
    const server = new EmbeddedSchemaRegistry();
    const url = await server.start();
    const call = async (method: string, path: string, body?: unknown) => {
      const res = await fetch(`${url}${path}`, { method, headers: { 'content-type': 'application/vnd.schemaregistry.v1+json' }, ...(body ? { body: JSON.stringify(body) } : {}) });
      return { status: res.status, body: (await res.json()) as unknown };
    };
    try {
      const schema = (n: number) => JSON.stringify({ type: 'record', name: 'D', fields: Array.from({ length: n }, (_, i) => ({ name: `f${i}`, type: 'int', default: 0 })) });
      const one = (await call('POST', '/subjects/d-value/versions', { schema: schema(1) })).body as { id: number };
      await call('POST', '/subjects/d-value/versions', { schema: schema(2) });
      expect(await call('DELETE', '/subjects/d-value?permanent=true')).toMatchObject({ status: 404, body: { error_code: 40405 } });
      expect(await call('DELETE', '/subjects/d-value/versions/2')).toEqual({ status: 200, body: 2 });
      expect((await call('GET', '/subjects/d-value/versions')).body).toEqual([1]);
      // Version numbers are not reused after a delete.
      await call('POST', '/subjects/d-value/versions', { schema: schema(3) });
      expect((await call('GET', '/subjects/d-value/versions')).body).toEqual([1, 3]);
      expect((await call('GET', '/subjects/d-value/versions?deleted=true')).body).toEqual([1, 2, 3]);
      expect(await call('DELETE', '/subjects/d-value')).toEqual({ status: 200, body: [1, 3] });
      expect((await call('GET', '/subjects/d-value/versions?deleted=true')).body).toEqual([1, 2, 3]);
      expect((await call('GET', '/subjects')).body).toEqual([]);
      expect((await call('GET', '/subjects?deleted=true')).body).toEqual(['d-value']);
      expect(await call('GET', '/subjects/d-value/versions/1')).toMatchObject({ status: 404, body: { error_code: 40401 } });
      // … unless asked for with ?deleted=true, as Confluent's registry answers it
      expect(await call('GET', '/subjects/d-value/versions/2?deleted=true')).toMatchObject({ status: 200, body: { subject: 'd-value', version: 2 } });
      // Records written with a deleted schema still decode: its id stays readable.
      expect((await call('GET', `/schemas/ids/${one.id}`)).status).toBe(200);
      expect(await call('DELETE', '/subjects/d-value')).toMatchObject({ status: 404, body: { error_code: 40404 } });
      expect(await call('DELETE', '/subjects/d-value?permanent=true')).toEqual({ status: 200, body: [1, 2, 3] });
      expect((await call('GET', '/subjects?deleted=true')).body).toEqual([]);
      expect(await call('DELETE', '/subjects/d-value?permanent=true')).toMatchObject({ status: 404, body: { error_code: 40401 } });
    } finally {
      await server.stop();
    }
  });
});

