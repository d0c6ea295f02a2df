import { describe, expect, it, vi } from 'vitest';
import type { Message, RecordMetadata } from 'kafkajs';
import { CoalescingProducer } from '../runtime/coalescing-producer.ts';

type Batch = { acks?: number; topicMessages?: { topic: string; messages: Message[] }[] };

/** A producer whose requests are acknowledged when the test says so, numbering offsets per partition like a broker. */
function fakeBroker() {
  const requests: { batch: Batch; ack: () => void; fail: (e: Error) => void }[] = [];
  const ends = new Map<string, number>();
  const sendBatch = (batch: Batch) => new Promise<RecordMetadata[]>((resolve, reject) => {
    requests.push({
      batch,
      fail: reject,
      ack: () => {
        const meta: RecordMetadata[] = [];
        for (const { topic, messages } of batch.topicMessages ?? []) {
          const counts = new Map<number, number>();
          for (const m of messages) counts.set(m.partition ?? 0, (counts.get(m.partition ?? 0) ?? 0) + 1);
          for (const [partition, n] of counts) {
            const k = `${topic}/${partition}`;
            const base = ends.get(k) ?? 100;
            ends.set(k, base + n);
            meta.push({ topicName: topic, partition, errorCode: 0, baseOffset: String(base) });
          }
        }
        resolve(meta);
      },
    });
  });
  return { requests, producer: { sendBatch } as never };
}
const tick = () => new Promise((r) => setImmediate(r));
const msgs = (p: number, ...vs: string[]) => vs.map((v) => ({ key: v, value: v, partition: p }));

describe('CoalescingProducer (stages share one produce pipe)', () => {
  it('merges batches that wait behind a request into one, per topic and in order, and tells each its own offsets', async () => {
    const { requests, producer } = fakeBroker();
    const c = new CoalescingProducer(producer);
    const first = c.sendBatch({ acks: -1, topicMessages: [{ topic: 'cl', messages: msgs(0, 'a') }] });
    await tick();
    const second = c.sendBatch({ acks: -1, topicMessages: [{ topic: 'out', messages: [{ key: 'k', value: 'o1' }] }, { topic: 'cl', messages: msgs(0, 'b', 'c') }] });
    const third = c.sendBatch({ acks: -1, topicMessages: [{ topic: 'cl', messages: msgs(0, 'd') }, { topic: 'cl2', messages: msgs(3, 'e') }] });
    await tick();
    expect(requests).toHaveLength(1);
    requests[0]!.ack();
    expect(await first).toEqual([{ topicName: 'cl', partition: 0, errorCode: 0, baseOffset: '100' }]);
    await tick();
    expect(requests).toHaveLength(2);
    const merged = requests[1]!.batch;
    expect(merged.acks).toBe(-1);
    expect(merged.topicMessages!.map((t) => [t.topic, t.messages.map((m) => m.value)])).toEqual([['out', ['o1']], ['cl', ['b', 'c', 'd']], ['cl2', ['e']]]);
    requests[1]!.ack();
    // b, c landed at 101..102 and d at 103: each caller gets the offset its own records start at.
    expect(await second).toEqual([{ topicName: 'cl', partition: 0, errorCode: 0, baseOffset: '101' }]);
    expect(await third).toEqual([{ topicName: 'cl', partition: 0, errorCode: 0, baseOffset: '103' }, { topicName: 'cl2', partition: 3, errorCode: 0, baseOffset: '100' }]);
  });

  it('fails every batch a failed request carried, and sends the next ones', async () => {
    const { requests, producer } = fakeBroker();
    const c = new CoalescingProducer(producer);
    const a = c.sendBatch({ acks: -1, topicMessages: [{ topic: 't', messages: msgs(0, 'a') }] });
    await tick();
    const b = c.sendBatch({ acks: -1, topicMessages: [{ topic: 't', messages: msgs(0, 'b') }] });
    requests[0]!.fail(new Error('not leader'));
    await expect(a).rejects.toThrow('not leader');
    await tick();
    requests[1]!.ack();
    await expect(b).resolves.toHaveLength(1);
  });

  it('bounds a merged request in bytes', async () => {
    const { requests, producer } = fakeBroker();
    const c = new CoalescingProducer(producer);
    void c.sendBatch({ acks: -1, topicMessages: [{ topic: 't', messages: msgs(0, 'a') }] }, 10);
    await tick();
    const big = [1, 2, 3].map((i) => c.sendBatch({ acks: -1, topicMessages: [{ topic: 't', messages: msgs(0, `big${i}`) }] }, 400 * 1024));
    requests[0]!.ack();
    await tick();
    expect(requests[1]!.batch.topicMessages![0]!.messages.map((m) => m.value)).toEqual(['big1', 'big2']);
    requests[1]!.ack();
    await tick();
    expect(requests[2]!.batch.topicMessages![0]!.messages.map((m) => m.value)).toEqual(['big3']);
    requests[2]!.ack();
    await Promise.all(big);
  });

  it('with a linger, holds a batch handed over while nothing is outstanding until the linger ends, and sends the batches of that time in one request', async () => {
    vi.useFakeTimers();
    try {
      const { requests, producer } = fakeBroker();
      const c = new CoalescingProducer(producer, 1, 20);
      const a = c.sendBatch({ acks: -1, topicMessages: [{ topic: 'cl', messages: msgs(0, 'a') }] }, 10);
      await vi.advanceTimersByTimeAsync(10);
      expect(requests).toHaveLength(0);
      const b = c.sendBatch({ acks: -1, topicMessages: [{ topic: 'cl', messages: msgs(0, 'b') }] }, 10);
      await vi.advanceTimersByTimeAsync(10);
      expect(requests).toHaveLength(1);
      expect(requests[0]!.batch.topicMessages![0]!.messages.map((m) => m.value)).toEqual(['a', 'b']);
      requests[0]!.ack();
      expect((await a)[0]!.baseOffset).toBe('100');
      expect((await b)[0]!.baseOffset).toBe('101');
      // A request's worth goes at once, linger or not.
      const big = c.sendBatch({ acks: -1, topicMessages: [{ topic: 'cl', messages: msgs(0, 'c') }] }, 1024 * 1024);
      await vi.advanceTimersByTimeAsync(0);
      expect(requests).toHaveLength(2);
      // A batch handed over while a request is outstanding does not linger: it goes as soon as that one is answered.
      const queued = c.sendBatch({ acks: -1, topicMessages: [{ topic: 'cl', messages: msgs(0, 'd') }] }, 10);
      await vi.advanceTimersByTimeAsync(5);
      expect(requests).toHaveLength(2);
      requests[1]!.ack();
      await big;
      await vi.advanceTimersByTimeAsync(0);
      expect(requests).toHaveLength(3);
      requests[2]!.ack();
      await queued;
      // A failed request leaves nothing counted as waiting: after it, and after more than a
      // request's worth of traffic in all, a small batch still lingers.
      const failing = c.sendBatch({ acks: -1, topicMessages: [{ topic: 'cl', messages: msgs(0, 'e') }] }, 10);
      await vi.advanceTimersByTimeAsync(20);
      requests[3]!.fail(new Error('broker down'));
      await expect(failing).rejects.toThrow('broker down');
      const later = c.sendBatch({ acks: -1, topicMessages: [{ topic: 'cl', messages: msgs(0, 'f') }] }, 10);
      await vi.advanceTimersByTimeAsync(19);
      expect(requests).toHaveLength(4);
      await vi.advanceTimersByTimeAsync(1);
      expect(requests).toHaveLength(5);
      requests[4]!.ack();
      await later;
    } finally {
      vi.useRealTimers();
    }
  });
});
