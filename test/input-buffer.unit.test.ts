/**
 * The fetch-ahead queue of a fetching stage: batches fetched while one is handled go
 * together as the next batch; a failure the policy leaves to a retry handles the same
 * records again; a drop forgets what is queued (never handled, never committed) so it is
 * fetched again, while records queued already are not taken twice.
 */
import type { KafkaMessage } from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { HeraldError } from '../errors.ts';
import type { Decoded, StageRecord } from '../runtime/failure-policy.ts';
import { InputBuffer } from '../runtime/input-buffer.ts';

const rec = (offset: number) => ({ offset: String(offset) }) as unknown as StageRecord;
const batch = (...offsets: number[]): Decoded => ({ records: offsets.map(rec), rejected: [] });
const msg = (offset: number) => ({ offset: String(offset) }) as KafkaMessage;
const offsetsOf = (d: Decoded) => d.records.map((r) => Number(r.offset));
const until = async (cond: () => boolean) => {
  for (let i = 0; i < 200 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(cond()).toBe(true);
};

/** A buffer whose first handled batch waits for `release`; `handled` lists each batch's offsets. */
function firstBlocks() {
  const handled: number[][] = [];
  let release!: () => void;
  const running = new Promise<void>((r) => (release = r));
  const buffer = new InputBuffer({
    handle: async (d) => {
      handled.push(offsetsOf(d));
      if (handled.length === 1) await running;
    },
    failed: () => undefined,
  });
  return { buffer, handled, release };
}

describe('input buffer', () => {
  it('handles what was queued while a batch ran as one batch, in offset order', async () => {
    const { buffer, handled, release } = firstBlocks();
    buffer.push(batch(0), '0', 1);
    await until(() => handled.length === 1);
    buffer.push(batch(1, 2), '2', 2);
    buffer.push(batch(3), '3', 1);
    expect(buffer.size).toBe(4);
    release();
    await until(() => handled.length === 2);
    expect(handled).toEqual([[0], [1, 2, 3]]);
    await until(() => buffer.size === 0);
  });

  it('handles the same records again after a retriable failure, with what arrived meanwhile', async () => {
    const handled: { offsets: number[]; last: string }[] = [];
    const failures: number[] = [];
    let fail = true;
    const buffer = new InputBuffer({
      handle: async (d, last) => {
        handled.push({ offsets: offsetsOf(d), last });
        if (fail) {
          fail = false;
          buffer.push(batch(2), '2', 1);
          throw new HeraldError('HRL_PROCESSING_FAILED', 'broker down', { retriable: true });
        }
      },
      failed: (_err, attempt) => failures.push(attempt),
    });
    buffer.push(batch(0, 1), '1', 2);
    await until(() => handled.length === 2);
    expect(failures).toEqual([1]);
    expect(handled).toEqual([{ offsets: [0, 1], last: '1' }, { offsets: [0, 1, 2], last: '2' }]);
    await until(() => buffer.size === 0);
  });

  it('drops what is queued but not what is being handled, skips queued offsets fetched again, and takes the dropped ones again', async () => {
    const { buffer, handled, release } = firstBlocks();
    buffer.push(batch(0, 1), '1', 2);
    await until(() => handled.length === 1);
    buffer.push(batch(2, 3), '3', 2);
    // A member that rejoined fetches from the committed offset: what is queued is not taken twice.
    expect(buffer.fresh([1, 2, 3, 4].map(msg)).map((m) => Number(m.offset))).toEqual([4]);
    const dropped = buffer.drop();
    release();
    await dropped;
    expect(handled).toEqual([[0, 1]]);
    expect(buffer.size).toBe(0);
    // The batch handled across the drop is not taken again when the member fetches from the committed offset.
    expect(buffer.fresh([0, 1, 2, 3].map(msg)).map((m) => Number(m.offset))).toEqual([2, 3]);
    // Dropped records were never handled: fetched again, they are taken again.
    expect(buffer.fresh([2, 3].map(msg)).map((m) => Number(m.offset))).toEqual([2, 3]);
    buffer.push(batch(9), '9', 1);
    expect(buffer.size).toBe(0); // dropped: takes nothing until reopened
    buffer.reopen();
    buffer.push(batch(2, 3), '3', 2);
    await until(() => handled.length === 2);
    expect(handled[1]).toEqual([2, 3]);
  });

  it('makes a fetch wait while the queue is full, and stops on a closed task without retrying', async () => {
    let release!: () => void;
    const running = new Promise<void>((r) => (release = r));
    let calls = 0;
    const buffer = new InputBuffer({
      maxRecords: 3,
      handle: async () => {
        calls++;
        if (calls === 1) await running;
        if (calls === 2) throw new HeraldError('HRL_SHUTTING_DOWN', 'closed', { retriable: true });
      },
      failed: () => {
        throw new Error('a closed task is not retried');
      },
    });
    buffer.push(batch(0, 1, 2), '2', 3);
    await until(() => calls === 1);
    let spaced = false;
    const space = buffer.space(60_000).then(() => (spaced = true));
    buffer.push(batch(3), '3', 1);
    await new Promise((r) => setTimeout(r, 30));
    expect(spaced).toBe(false);
    release();
    await space;
    await until(() => calls === 2);
    await until(() => buffer.size === 0);
    buffer.push(batch(4), '4', 1);
    await new Promise((r) => setTimeout(r, 30));
    expect(calls).toBe(2);
  });

  it('never handles a record twice when the partition stays across a rebalance that began while a batch ran', async () => {
    const { buffer, handled, release } = firstBlocks();
    buffer.push(batch(0, 1), '1', 2);
    await until(() => handled.length === 1);
    const dropped = buffer.drop(); // REBALANCING
    buffer.reopen(); // GROUP_JOIN: still ours; the member fetches again from the committed offset 0
    const again = buffer.fresh([0, 1, 2, 3].map(msg));
    buffer.push(batch(...again.map((m) => Number(m.offset))), '3', again.length);
    release();
    await dropped;
    await until(() => handled.length === 2);
    expect(handled).toEqual([[0, 1], [2, 3]]);
    await until(() => buffer.size === 0);
  });

  describe('with a linger', () => {
    const lingering = (lingerMs: number) => {
      const handled: number[][] = [];
      const buffer = new InputBuffer({ handle: async (d) => void handled.push(offsetsOf(d)), failed: () => undefined, lingerMs });
      return { buffer, handled };
    };
    const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

    it('waits for more records before handling a batch, and handles what came meanwhile as one', async () => {
      const { buffer, handled } = lingering(600);
      buffer.push(batch(0), '0', 1);
      await sleep(100);
      buffer.push(batch(1, 2), '2', 2);
      await sleep(100);
      expect(handled).toEqual([]);
      // The next fetch is not held back while the records linger.
      let done = false;
      void buffer.handled(1000).then(() => (done = true));
      await sleep(20);
      expect(done).toBe(true);
      await until(() => handled.length === 1);
      expect(handled).toEqual([[0, 1, 2]]);
      expect(buffer.size).toBe(0);
    });

    it('counts the wait from the first record, not from the latest', async () => {
      const { buffer, handled } = lingering(800);
      buffer.push(batch(0), '0', 1);
      await sleep(500);
      buffer.push(batch(1), '1', 1);
      // A wait started again by the second push would end at 1,300 ms.
      await sleep(600);
      expect(handled).toEqual([[0, 1]]);
    });

    it('starts at once when a full batch is queued', async () => {
      const { buffer, handled } = lingering(60_000);
      buffer.push(batch(...Array.from({ length: 300 }, (_, i) => i)), '299', 300);
      buffer.push(batch(...Array.from({ length: 200 }, (_, i) => 300 + i)), '499', 200);
      await until(() => handled.length === 1);
      expect(handled[0]).toHaveLength(500);
    });

    it('handles nothing that lingered when the queue is dropped, and lingers afresh once reopened', async () => {
      const { buffer, handled } = lingering(1500);
      buffer.push(batch(0), '0', 1);
      await sleep(400);
      await buffer.drop();
      buffer.reopen();
      buffer.push(batch(0, 1), '1', 2);
      // The dropped wait would have ended at 1,500 ms; the new one ends at 1,900 ms.
      await sleep(1300);
      expect(handled).toEqual([]);
      await until(() => handled.length === 1);
      expect(handled).toEqual([[0, 1]]);
    });
  });
});
