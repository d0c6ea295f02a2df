import { describe, expect, it } from 'vitest';
import type { ProducerRecord, RecordMetadata } from 'kafkajs';
import { CoalescingSender } from '../app/coalesce.ts';

/** A send that is acknowledged when the test says so, recording what each produce carried. */
function gatedSend() {
  const sends: { record: ProducerRecord; ack: () => void; fail: (e: Error) => void }[] = [];
  const send = (record: ProducerRecord) => new Promise<RecordMetadata[]>((resolve, reject) => sends.push({ record, ack: () => resolve([]), fail: reject }));
  return { sends, send };
}
const tick = () => new Promise((r) => setImmediate(r));

describe('CoalescingSender (group commit for the API)', () => {
  it('sends at once when idle, and what arrives during a produce goes out together in the next', async () => {
    const { sends, send } = gatedSend();
    const c = new CoalescingSender(send);
    const done: string[] = [];
    const first = c.produce('t', { key: 'a', value: 'a' }).then(() => done.push('a'));
    await tick();
    expect(sends.map((s) => s.record.messages.map((m) => m.key))).toEqual([['a']]);
    const rest = ['b', 'c', 'd'].map((k) => c.produce('t', { key: k, value: k }).then(() => done.push(k)));
    await tick();
    expect(sends).toHaveLength(1); // b, c, d wait for a's produce
    sends[0]!.ack();
    await first;
    await tick();
    expect(done).toEqual(['a']); // b, c, d are not acknowledged before their own produce is
    expect(sends.map((s) => s.record.messages.map((m) => m.key))).toEqual([['a'], ['b', 'c', 'd']]);
    expect(sends[1]!.record.acks).toBe(-1);
    sends[1]!.ack();
    await Promise.all(rest);
    expect(done).toEqual(['a', 'b', 'c', 'd']);
  });

  it('fails only the requests a failed produce carried, and keeps going', async () => {
    const { sends, send } = gatedSend();
    const c = new CoalescingSender(send, 2);
    const a = c.produce('t', { key: 'a', value: 'a' });
    await tick();
    const later = ['b', 'c', 'd'].map((k) => c.produce('t', { key: k, value: k }));
    sends[0]!.fail(new Error('broker down'));
    await expect(a).rejects.toThrow('broker down');
    await tick();
    // At most 2 records a produce: b and c, then d.
    expect(sends[1]!.record.messages.map((m) => m.key)).toEqual(['b', 'c']);
    sends[1]!.ack();
    await tick();
    expect(sends[2]!.record.messages.map((m) => m.key)).toEqual(['d']);
    sends[2]!.ack();
    await expect(Promise.all(later)).resolves.toHaveLength(3);
  });

  it('keeps topics apart', async () => {
    const { sends, send } = gatedSend();
    const c = new CoalescingSender(send);
    const both = [c.produce('x', { key: '1', value: '1' }), c.produce('y', { key: '2', value: '2' })];
    await tick();
    expect(sends.map((s) => s.record.topic).sort()).toEqual(['x', 'y']);
    for (const s of sends) s.ack();
    await Promise.all(both);
  });

  it('fails a message not acknowledged within its timeout: taken out of the queue when its produce has not started, left to its produce when it has', async () => {
    const { sends, send } = gatedSend();
    const c = new CoalescingSender(send);
    const inFlight = c.produce('t', { key: 'a', value: 'a' }, 30, 'event a');
    await tick();
    const queued = c.produce('t', { key: 'b', value: 'b' }, 30, 'event b');
    await expect(inFlight).rejects.toMatchObject({ code: 'HRL_BROKER_UNREACHABLE', message: expect.stringContaining('event a: the brokers have not acknowledged it within 30 ms') });
    await expect(queued).rejects.toMatchObject({ code: 'HRL_BROKER_UNREACHABLE', message: expect.stringContaining('event b: not written') });
    expect(c.stalledMs('t')).toBeGreaterThanOrEqual(30);
    sends[0]!.ack();
    await tick();
    // b left the queue: the next produce carries only what came after it
    const next = c.produce('t', { key: 'c', value: 'c' }, 1000);
    await tick();
    expect(sends.map((s) => s.record.messages.map((m) => m.key))).toEqual([['a'], ['c']]);
    expect(c.stalledMs('t')).toBeLessThan(1000);
    sends[1]!.ack();
    await expect(next).resolves.toBeUndefined();
    expect(c.stalledMs('t')).toBe(0);
  });
});
