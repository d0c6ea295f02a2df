/**
 * TopicReader's bounded reads against the embedded broker: a read ends at the end offsets
 * it was given, and one whose batch handler fails gives up with that error (`abort`)
 * instead of kafkajs retrying the batch and restarting the consumer forever. Fused stages
 * read their backlog and records from other producers this way; a read that never ended
 * would stall a partition.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Admin, Kafka } from 'kafkajs';
import { EmbeddedBroker } from '../embedded/broker.ts';
import { loadConfig } from '../config.ts';
import { createKafka, createProducer } from '../runtime/kafka.ts';
import { createLogger } from '../runtime/logger.ts';
import { TopicReader } from '../runtime/reader.ts';

let broker: EmbeddedBroker;
let kafka: Kafka;
let admin: Admin;
const topic = 'reader.test.v1';

beforeAll(async () => {
  broker = await EmbeddedBroker.start({ brokers: 1 });
  await broker.createTopic(topic, 2);
  kafka = createKafka(loadConfig({ KAFKA_BROKERS: broker.bootstraps, HERALD_WEBHOOK_SECRET: 'reader-test-secret' }), broker.bootstraps, createLogger('silent'));
  admin = kafka.admin();
  await admin.connect();
  const producer = createProducer(kafka);
  await producer.connect();
  await producer.send({ topic, acks: -1, messages: Array.from({ length: 10 }, (_, i) => ({ key: `k${i}`, value: String(i), partition: i % 2 })) });
  await producer.disconnect();
}, 30_000);

afterAll(async () => {
  await admin?.disconnect();
  await broker?.stop();
});

describe('TopicReader', () => {
  it('reads exactly the offsets asked for, then ends', async () => {
    const seen: string[] = [];
    const reader = new TopicReader(kafka, admin, {
      topic, groupPrefix: 'test.', from: new Map([[0, 1n], [1, 2n]]), until: new Map([[0, 4n], [1, 5n]]),
      onBatch: async ({ partition, messages }) => void seen.push(...messages.filter((m) => BigInt(m.offset) < (partition === 0 ? 4n : 5n)).map((m) => `${partition}@${m.offset}`)),
    });
    await reader.readToEnd();
    expect(seen.sort()).toEqual(['0@1', '0@2', '0@3', '1@2', '1@3', '1@4']);
  }, 30_000);

  it('gives up with the handler\'s error when aborted, instead of reading again and again', async () => {
    let batches = 0;
    const reader: TopicReader = new TopicReader(kafka, admin, {
      topic, groupPrefix: 'test.', until: new Map([[0, 5n], [1, 5n]]),
      onBatch: async () => {
        batches++;
        reader.abort(new Error('the partition moved'));
      },
    });
    await expect(reader.readToEnd()).rejects.toThrow('the partition moved');
    // Stopped: nothing more is read after the abort.
    const after = batches;
    await new Promise((r) => setTimeout(r, 1000));
    expect(batches).toBe(after);
    expect(after).toBeLessThanOrEqual(2);
  }, 30_000);
});
