/**
 * Shared fetches (runtime/fetch-coalescer.ts, HERALD_SHARE_FETCHES): the consumers of a
 * process send the fetches of one turn of the event loop to a broker as one request, and
 * each gets its own partitions back. First against brokers whose answers the test controls
 * (what is merged, what is kept apart, a failure), then with real kafkajs consumers in
 * different groups on the embedded broker (3 brokers, so partitions have different leaders),
 * reading every record once while sending fewer requests than fetches.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FetchBroker, FetchRequest, FetchResponse, Kafka } from 'kafkajs';
import { EmbeddedBroker } from '../embedded/broker.ts';
import { loadConfig } from '../config.ts';
import { fetchCoalescer } from '../runtime/fetch-coalescer.ts';
import { createKafka, createProducer } from '../runtime/kafka.ts';
import { createLogger } from '../runtime/logger.ts';

const request = (topics: Record<string, number[]>, maxWaitTime = 20): FetchRequest => ({
  maxWaitTime, minBytes: 1, maxBytes: 1 << 20, isolationLevel: 1, rackId: '',
  topics: Object.entries(topics).map(([topic, ps]) => ({ topic, partitions: ps.map((partition) => ({ partition, fetchOffset: '0', maxBytes: 1 << 20 })) })),
});

/** A broker that answers each partition with its name, or fails a request naming `failOn` (as kafkajs does for a partition's error code, or with `failWith`). */
function fakeBroker(nodeId = 0, failOn?: string, failWith = 'KafkaJSOffsetOutOfRange') {
  const sent: FetchRequest[] = [];
  const broker: FetchBroker = {
    nodeId, brokerAddress: `localhost:${9092 + nodeId}`,
    fetch: async (r) => {
      sent.push(r);
      if (failOn && r.topics.some((t) => t.topic === failOn)) throw Object.assign(new Error(`${failWith} on ${failOn}`), { name: failWith });
      return { throttleTime: 0, responses: r.topics.map((t) => ({ topicName: t.topic, partitions: t.partitions.map((p) => ({ partition: p.partition, messages: [`${t.topic}/${p.partition}`] })) })) } as FetchResponse;
    },
  };
  return { broker, sent };
}

const partitionsOf = (r: FetchResponse) => r.responses.flatMap((t) => t.partitions.map((p) => `${t.topicName}/${p.partition}`)).sort();

describe('fetchCoalescer', () => {
  it('sends the fetches of one turn to a broker as one request and answers each with its own partitions', async () => {
    const share = fetchCoalescer();
    const { broker, sent } = fakeBroker();
    const [a, b, c] = await Promise.all([
      share(broker, request({ 'requests.v1': [0, 1] }, 20)),
      share(broker, request({ 'outcomes.v1': [0], 'enriched.v1': [1] }, 250)),
      share(broker, request({ 'outcomes.v1': [1] }, 100)),
    ]);
    expect(sent).toHaveLength(1);
    // The shortest wait any of them asked for: none waits longer than it asked.
    expect(sent[0]!.maxWaitTime).toBe(20);
    expect(partitionsOf({ responses: sent[0]!.topics.map((t) => ({ topicName: t.topic, partitions: t.partitions })) })).toEqual(['enriched.v1/1', 'outcomes.v1/0', 'outcomes.v1/1', 'requests.v1/0', 'requests.v1/1']);
    expect(partitionsOf(a)).toEqual(['requests.v1/0', 'requests.v1/1']);
    expect(partitionsOf(b)).toEqual(['enriched.v1/1', 'outcomes.v1/0']);
    expect(partitionsOf(c)).toEqual(['outcomes.v1/1']);
    expect(share.counts).toEqual({ fetches: 3, requests: 1, split: 0 });
  });

  it('keeps apart consumers of the same partition, fetches of different brokers, and fetches of different turns', async () => {
    const share = fetchCoalescer();
    const one = fakeBroker(1);
    const two = fakeBroker(2);
    await Promise.all([
      share(one.broker, request({ 'enriched.v1': [0] })),
      share(one.broker, request({ 'enriched.v1': [0, 1] })), // a reader of the same partition: its own request
      share(one.broker, request({ 'deduped.v1': [0] })),
      share(two.broker, request({ 'deduped.v1': [1] })),
    ]);
    expect(one.sent.map((r) => r.topics.map((t) => `${t.topic}:${t.partitions.map((p) => p.partition).join(',')}`).sort())).toEqual([['deduped.v1:0', 'enriched.v1:0'], ['enriched.v1:0,1']]);
    expect(two.sent).toHaveLength(1);
    await share(one.broker, request({ 'admitted.v1': [0] }));
    expect(one.sent).toHaveLength(3);
  });

  it('sends a failed shared request again as separate requests, so only the consumer whose partition failed sees the error', async () => {
    const share = fetchCoalescer();
    const { broker, sent } = fakeBroker(0, 'dlq.v1');
    const [ok, failed] = await Promise.allSettled([share(broker, request({ 'requests.v1': [0] })), share(broker, request({ 'dlq.v1': [0] }))]);
    expect(ok.status).toBe('fulfilled');
    expect(partitionsOf((ok as PromiseFulfilledResult<FetchResponse>).value)).toEqual(['requests.v1/0']);
    expect(failed.status).toBe('rejected');
    expect(String((failed as PromiseRejectedResult).reason)).toContain('KafkaJSOffsetOutOfRange on dlq.v1');
    expect(sent).toHaveLength(3);
    expect(share.counts).toEqual({ fetches: 2, requests: 3, split: 1 });
  });

  it('fails every consumer of a shared request with a connection\'s error, as each would have alone, without sending again', async () => {
    const share = fetchCoalescer();
    const { broker, sent } = fakeBroker(0, 'requests.v1', 'KafkaJSConnectionClosedError');
    const settled = await Promise.allSettled([share(broker, request({ 'requests.v1': [0] })), share(broker, request({ 'enriched.v1': [0] }))]);
    expect(settled.map((s) => s.status)).toEqual(['rejected', 'rejected']);
    for (const s of settled) expect((s as PromiseRejectedResult).reason).toMatchObject({ name: 'KafkaJSConnectionClosedError' });
    expect(sent).toHaveLength(1);
    expect(share.counts).toEqual({ fetches: 2, requests: 1, split: 0 });
  });

  it('shares only among fetches with the same minBytes, so a consumer waiting for bytes is not answered at the first one', async () => {
    const share = fetchCoalescer();
    const { broker, sent } = fakeBroker();
    await Promise.all([share(broker, { ...request({ 'requests.v1': [0] }), minBytes: 65536 }), share(broker, request({ 'users.v1': [0] })), share(broker, request({ 'enriched.v1': [0] }))]);
    expect(sent.map((r) => [r.minBytes, r.topics.map((t) => t.topic).sort().join(',')])).toEqual([[65536, 'requests.v1'], [1, 'enriched.v1,users.v1']]);
  });
});

describe('kafkajs consumers sharing fetches on the embedded broker', () => {
  let broker: EmbeddedBroker;
  let kafka: Kafka;
  const topics = ['share.a.v1', 'share.b.v1', 'share.c.v1'];

  beforeAll(async () => {
    broker = await EmbeddedBroker.start({ brokers: 3 });
    for (const t of topics) await broker.createTopic(t, 3, 3);
    kafka = createKafka(loadConfig({ KAFKA_BROKERS: broker.bootstraps, HERALD_WEBHOOK_SECRET: 'share-test-secret' }), broker.bootstraps, createLogger('silent'));
  }, 30_000);

  afterAll(async () => {
    await broker?.stop();
  });

  it('reads every record of each consumer\'s topic exactly once, in several groups, in fewer requests than fetches', async () => {
    const share = fetchCoalescer();
    const seen = new Map<string, string[]>(topics.map((t) => [t, []]));
    const consumers = topics.map((t, i) => kafka.consumer({ groupId: `share-test-${i}`, maxWaitTimeInMs: 20, fetchCoalescer: share }));
    for (const [i, c] of consumers.entries()) {
      await c.connect();
      await c.subscribe({ topic: topics[i]!, fromBeginning: true });
      await c.run({ eachMessage: async ({ topic, partition, message }) => void seen.get(topic)!.push(`${partition}:${message.value!.toString()}`) });
    }
    const producer = createProducer(kafka);
    await producer.connect();
    const expected = new Map<string, string[]>(topics.map((t) => [t, []]));
    for (let round = 0; round < 20; round++) {
      await producer.sendBatch({
        acks: -1,
        topicMessages: topics.map((topic) => ({ topic, messages: [0, 1, 2].map((partition) => ({ partition, key: `k${partition}`, value: `${round}` })) })),
      });
      for (const t of topics) for (const p of [0, 1, 2]) expected.get(t)!.push(`${p}:${round}`);
    }
    await producer.disconnect();
    const deadline = Date.now() + 30_000;
    while (topics.some((t) => seen.get(t)!.length < expected.get(t)!.length) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    for (const c of consumers) await c.disconnect();
    for (const t of topics) expect(seen.get(t)!.sort()).toEqual(expected.get(t)!.sort());
    expect(share.counts.split).toBe(0);
    // Three consumers on three brokers: at most three requests per turn, never one per fetch.
    expect(share.counts.requests).toBeLessThan(share.counts.fetches);
  }, 60_000);
});
