/**
 * Fetch-ahead for one input partition of a stage that fetches (Kafka Streams' record
 * buffer, `buffered.records.per.partition`): a fetched batch is decoded and queued here,
 * and the fetch returns at once, so the consumer fetches the next batch while this one is
 * processed. The partition's task then takes what is queued as one batch (up to 500
 * records, the consumer's `max.poll.records` default).
 *
 * Why: a fetch from the embedded broker returns one message set per partition, and at a
 * steady rate producers write sets of one or two records. Fetching only after each batch
 * is handled kept every batch that small, however long the backlog: the cost per batch
 * (produce round trip, state write, commit bookkeeping) set the throughput.
 *
 * Nothing queued is committed before it is handled: a queue that is dropped (the task
 * closed, a rebalance began, the stage stops) is fetched again from the committed offset
 * by whichever member holds the partition. A failure the policy leaves to a retry (the
 * broker or the registry unwell) keeps the batch at the head of the queue and handles it
 * again after a pause, without fetching it again.
 */
import type { KafkaMessage } from 'kafkajs';
import type { HeraldError } from '../errors.ts';
import type { Decoded } from './failure-policy.ts';

/** Records queued per partition before a fetch waits (Kafka Streams' default is 1,000). */
export const MAX_BUFFERED_RECORDS = 1000;
/** Records handled as one batch at most (the consumer's `max.poll.records` default). */
export const MAX_BATCH_RECORDS = 500;

/** A promise and the function that resolves it. */
function signal(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

interface Queued { decoded: Decoded; lastOffset: string; count: number }

export interface InputBufferOptions {
  /** Handles the merged batch whose last offset is `lastOffset` (decoded records and rejects of `count` fetched records). */
  handle: (decoded: Decoded, lastOffset: string, count: number) => Promise<void>;
  /** Waits until there is room downstream (back-pressure), before each merged batch. */
  room?: () => Promise<void>;
  /** A failed attempt: reported, then the same records are tried again after `backoffMs`. */
  failed: (err: Error, attempt: number, backoffMs: number) => void;
  maxRecords?: number;
  /**
   * Records reaching an idle queue wait up to this long for more before they are handled
   * (fetch.min.bytes and fetch.max.wait.ms, applied here: the embedded broker ignores
   * min bytes). Fetching goes on meanwhile; MAX_BATCH_RECORDS queued starts the batch at once.
   */
  lingerMs?: number;
}

export class InputBuffer {
  private queue: Queued[] = [];
  private records = 0;
  private draining: Promise<void> | null = null;
  /** Queued records waiting out `lingerMs` before the drain starts. */
  private lingering: NodeJS.Timeout | null = null;
  private dropped = false;
  /** Moves on every drop: a batch handled across a drop no longer counts against the new queue. */
  private epoch = 0;
  private dropSignal = signal();
  private spaceWaiters: (() => void)[] = [];
  /** Offsets up to this one are queued or handled: a fetch of them again (a member rejoined from the committed offset) is skipped. */
  private fetchedUpTo: bigint | null = null;
  /** The last offset handled. */
  private handledUpTo: bigint | null = null;
  private readonly o: InputBufferOptions;
  private readonly max: number;

  constructor(o: InputBufferOptions) {
    this.o = o;
    this.max = o.maxRecords ?? MAX_BUFFERED_RECORDS;
  }

  /** Records queued and not yet handled. */
  get size(): number {
    return this.records;
  }

  /** The messages of a fetched batch that are not queued or handled already. */
  fresh(messages: KafkaMessage[]): KafkaMessage[] {
    const upTo = this.fetchedUpTo;
    return upTo === null ? messages : messages.filter((m) => BigInt(m.offset) > upTo);
  }

  /**
   * Resolves true once there is room for another batch (or the queue was dropped), false
   * if there is none after `timeoutMs` or after a failed attempt: the fetch then leaves
   * its batch to be fetched again, so the member keeps polling and sees a rebalance.
   */
  async space(timeoutMs: number): Promise<boolean> {
    if (this.records < this.max || this.dropped) return true;
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((r) => {
      this.spaceWaiters.push(r);
      timer = setTimeout(r, timeoutMs);
    });
    clearTimeout(timer);
    return this.records < this.max || this.dropped;
  }

  /**
   * Resolves once everything queued is handled (or dropped), or after `timeoutMs`. A fetch
   * that leaves nothing behind on the broker waits for it, so the next fetch goes out when
   * there may be something new to read: fetching ahead pays only with a backlog, and a
   * fetch sent at once would wait out fetch.max.wait.ms on an empty partition.
   */
  async handled(timeoutMs: number): Promise<void> {
    if (!this.draining) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.draining, new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
  }

  /** Queues a decoded batch (`count` fetched records ending at `lastOffset`) and makes sure it is being handled. */
  push(decoded: Decoded, lastOffset: string, count: number): void {
    if (this.dropped) return;
    this.queue.push({ decoded, lastOffset, count });
    this.records += count;
    this.fetchedUpTo = BigInt(lastOffset);
    if (this.draining) return;
    if (this.o.lingerMs && this.records < Math.min(MAX_BATCH_RECORDS, this.max)) {
      if (!this.lingering) {
        this.lingering = setTimeout(() => this.start(), this.o.lingerMs);
        this.lingering.unref();
      }
      return;
    }
    this.start();
  }

  /** Makes sure what is queued is being handled. */
  private start(): void {
    if (this.lingering) clearTimeout(this.lingering);
    this.lingering = null;
    // Started on a later tick, so `draining` is set before the loop can call back into `push`.
    // Records pushed between the loop's last look at the queue and its end start it again.
    this.draining ??= Promise.resolve().then(() => this.drain()).finally(() => {
      this.draining = null;
      if (this.queue.length && !this.dropped) this.start();
    });
  }

  /**
   * Drops what is queued (nothing of it was committed) and takes no more: the partition
   * is closing or may move. A batch being handled finishes. Resolves when it has.
   */
  async drop(): Promise<void> {
    this.clear();
    await this.draining;
  }

  private clear(): void {
    if (this.lingering) clearTimeout(this.lingering);
    this.lingering = null;
    this.dropped = true;
    this.epoch++;
    this.queue = [];
    this.records = 0;
    this.fetchedUpTo = this.handledUpTo;
    this.wake();
    this.dropSignal.resolve();
  }

  private wake(): void {
    for (const w of this.spaceWaiters.splice(0)) w();
  }

  /** Takes batches again after a drop (the member rejoined and still holds the partition). */
  reopen(): void {
    if (!this.dropped) return;
    this.dropped = false;
    this.dropSignal = signal();
  }

  private async drain(): Promise<void> {
    let attempt = 0;
    while (this.queue.length && !this.dropped) {
      const epoch = this.epoch;
      if (this.o.room) await Promise.race([this.o.room(), this.dropSignal.promise]);
      if (this.dropped || epoch !== this.epoch) continue;
      // What is queued goes as one batch (up to MAX_BATCH_RECORDS, whole fetched batches),
      // less any record handled already (fetched again while a batch ran across a drop).
      let n = 0;
      let upTo = 0;
      while (upTo < this.queue.length && (upTo === 0 || n + this.queue[upTo]!.count <= MAX_BATCH_RECORDS)) n += this.queue[upTo++]!.count;
      const take = this.queue.splice(0, upTo);
      const count = take.reduce((n, q) => n + q.count, 0);
      const done = this.handledUpTo;
      const fresh = (offset: string) => done === null || BigInt(offset) > done;
      const decoded: Decoded = take.length === 1 && done === null ? take[0]!.decoded : {
        records: take.flatMap((q) => q.decoded.records).filter((r) => fresh(r.offset)),
        rejected: take.flatMap((q) => q.decoded.rejected).filter((r) => fresh(r.rec.offset)),
      };
      const lastOffset = take.at(-1)!.lastOffset;
      try {
        await this.o.handle(decoded, lastOffset, count);
        attempt = 0;
        const last = BigInt(lastOffset);
        if (this.handledUpTo === null || last > this.handledUpTo) this.handledUpTo = last;
        if (this.fetchedUpTo === null || last > this.fetchedUpTo) this.fetchedUpTo = last;
        if (epoch === this.epoch) this.records -= count;
        this.wake();
      } catch (err) {
        if ((err as HeraldError).code === 'HRL_SHUTTING_DOWN') {
          this.clear();
          return;
        }
        // Not committed: the same records, with whatever arrived meanwhile, are tried again
        // (after a drop they are fetched again instead).
        if (epoch === this.epoch) this.queue.unshift(...take);
        attempt++;
        const backoffMs = Math.min(10_000, 200 * 2 ** Math.min(attempt - 1, 6));
        this.o.failed(err as Error, attempt, backoffMs);
        this.wake();
        await Promise.race([new Promise((r) => setTimeout(r, backoffMs)), this.dropSignal.promise]);
      }
    }
  }
}
