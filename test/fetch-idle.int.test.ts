/**
 * The idle fetch wait (HERALD_FETCH_IDLE_WAIT_MS, kafkajs patched): after three empty
 * fetches in a row a consumer asks the broker to wait twice as long as before, then twice
 * that, up to `idleMaxWaitTimeInMs`, and goes back to `maxWaitTimeInMs` as soon as a fetch
 * brings records. The
 * embedded broker holds a fetch with no records for the whole wait it was asked for, so
 * the wait each fetch asked for shows in how long the fetch took (kafkajs' FETCH event).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Consumer, Kafka } from 'kafkajs';
import { EmbeddedBroker } from '../embedded/broker.ts';
import { loadConfig } from '../config.ts';
import { createKafka, createProducer } from '../runtime/kafka.ts';
import { createLogger } from '../runtime/logger.ts';
import { eventually } from './support/herald.ts';

let broker: EmbeddedBroker;
let kafka: Kafka;
const topic = 'fetch.idle.test.v1';
const consumers: Consumer[] = [];

beforeAll(async () => {
  broker = await EmbeddedBroker.start({ brokers: 1 });
  await broker.createTopic(topic, 1);
  kafka = createKafka(loadConfig({ KAFKA_BROKERS: broker.bootstraps, HERALD_WEBHOOK_SECRET: 'fetch-idle-test-secret' }), broker.bootstraps, createLogger('silent'));
}, 30_000);

afterAll(async () => {
  for (const c of consumers) await c.disconnect().catch(() => undefined);
  await broker?.stop();
});

/** A consumer of `topic`: the records it got, and each fetch's duration in order. */
async function follow(group: string, idleMaxWaitTimeInMs?: number) {
  const consumer = kafka.consumer({ groupId: group, maxWaitTimeInMs: 20, minBytes: 1, sessionTimeout: 10_000, ...(idleMaxWaitTimeInMs ? { idleMaxWaitTimeInMs } : {}) });
  consumers.push(consumer);
  const fetches: number[] = [];
  const got: string[] = [];
  consumer.on(consumer.events.FETCH, (e) => void fetches.push(e.payload.duration));
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({ eachMessage: async ({ message }) => void got.push(message.value!.toString()) });
  return { fetches, got };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

describe('idle fetch wait', () => {
  it('waits longer once a consumer is idle, and still gets the next record', async () => {
    const idle = await follow('fetch-idle', 400);
    const plain = await follow('fetch-plain');
    await eventually(() => idle.fetches.length >= 10 && plain.fetches.length >= 10, 30_000);
    // After three empty fetches of 20 ms the waits double (40, 80, 160, 320 ms), then stay at
    // the idle wait (the broker holds each whole, so each lasts at least that long).
    expect(idle.fetches.slice(3, 7).map((d, i) => d >= 20 * 2 ** (i + 1) - 5)).toEqual([true, true, true, true]);
    expect(Math.min(...idle.fetches.slice(7, 10))).toBeGreaterThanOrEqual(395);
    expect(Math.max(...idle.fetches.slice(7, 10))).toBeLessThan(800);
    // Without an idle wait, an idle consumer keeps asking for 20 ms.
    expect(median(plain.fetches.slice(3))).toBeLessThan(380);

    const producer = createProducer(kafka);
    await producer.connect();
    try {
      await producer.send({ topic, acks: -1, messages: [{ value: 'first' }] });
      await eventually(() => idle.got.includes('first') && plain.got.includes('first'), 10_000);
      // Records bring it back to the short wait: the fetches after the one that brought them
      // wait 20 ms again (then 40, 80: all far below the idle wait of 400).
      for (let i = 0; i < 20; i++) await producer.send({ topic, acks: -1, messages: [{ value: `n${i}` }] });
      await eventually(() => idle.got.length >= 21, 10_000);
      const after = idle.fetches.length;
      await eventually(() => idle.fetches.length >= after + 3, 10_000);
      expect(Math.max(...idle.fetches.slice(after, after + 3))).toBeLessThan(300);
    } finally {
      await producer.disconnect();
    }
  }, 60_000);
});
