/**
 * One assigned partition of a stage (Kafka Streams' StreamTask): its processor instance,
 * its stores, its stream time and its timers, and the lock that serialises everything
 * done to them, so a batch, a punctuation and a close never overlap on one store.
 *
 * Completing a batch or a punctuation is always the same: produce its outputs and its
 * changelog records (acks=-1), then write its store changes with their checkpoint in one
 * database batch, then mark its input offset done. A crash anywhere before the mark
 * replays it; the derived ids make the replay idempotent downstream.
 */
import { HeraldError } from '../errors.ts';
import type { KeyValueStore } from '../state/store.ts';
import type { StageName } from '../topology.ts';
import { BatchContext } from './batch-context.ts';
import type { Processor } from './contract.ts';
import { type Decoded, processBatch, rejectRecords } from './failure-policy.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import type { OffsetManager } from './offsets.ts';
import type { Produced, RecordCollector } from './record-collector.ts';
import type { TopicKey } from '../topology.ts';

/**
 * The next stage of a fused sub-topology: the records this task produced to `topicKey` (its
 * input topic) are handed to it, in process, after they are acknowledged; `to` resolves when
 * it has taken them (queued), not when it has handled them.
 */
export interface Forward {
  topicKey: TopicKey;
  to(partition: number, records: Produced[]): Promise<void>;
}

export interface PartitionTaskOptions {
  stage: StageName;
  partition: number;
  processor: Processor;
  stores: Map<string, KeyValueStore>;
  collector: RecordCollector;
  offsets: OffsetManager;
  log: Logger;
  metrics: Metrics;
  clock: () => number;
  /** Set when this stage runs fused with its successor (topology.ts, `SUB_TOPOLOGY`). */
  forward?: Forward;
}

export class PartitionTask {
  readonly partition: number;
  readonly processor: Processor;
  readonly stores: Map<string, KeyValueStore>;
  /** Fused successor: the offset of its input partition it handles next (records before it are done). */
  nextInput: bigint | null = null;
  /** Highest record timestamp this task has processed (Kafka Streams' partition time); -1 before the first. */
  streamTime = -1;
  private nextStreamPunctuation = Number.NEGATIVE_INFINITY;
  private lock: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | null = null;
  private punctuating = false;
  private closed = false;
  /** Consecutive failed punctuations, and the wall-clock time before which none runs (backoff). */
  private failures = 0;
  private resumeAt = 0;
  private readonly o: PartitionTaskOptions;
  private readonly log: Logger;
  private readonly recordLatency: ReturnType<Metrics['recordLatency']['labels']>;

  constructor(o: PartitionTaskOptions) {
    this.o = o;
    this.recordLatency = o.metrics.recordLatency.labels(o.stage);
    this.partition = o.partition;
    this.processor = o.processor;
    this.stores = o.stores;
    this.log = o.log.child({ partition: o.partition });
  }

  /** Runs `fn` once everything queued before it on this partition has finished. */
  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.lock.then(() => {
      if (this.closed) throw new HeraldError('HRL_SHUTTING_DOWN', `partition ${this.partition} of ${this.o.stage} is closed`, { retriable: true });
      return fn();
    });
    this.lock = next.catch(() => undefined);
    return next;
  }

  /** Waits for whatever runs on this partition now. */
  idle(): Promise<void> {
    return this.lock.then(() => undefined);
  }

  context(): BatchContext {
    return new BatchContext({ stage: this.o.stage, partition: this.partition, stores: this.stores, log: this.o.log, clock: this.o.clock, sink: this.o.collector });
  }

  /** Produce everything `ctx` emitted, write its state, then mark `offset` of `topic` done. */
  async complete(ctx: BatchContext, topic: string | null, offset: string | null): Promise<void> {
    const { collector, offsets, metrics, stage } = this.o;
    const views = [...ctx.views.values()];
    // A timer run has no input to re-read: its outputs must be acknowledged before the
    // changelog records that delete its held items, or a partial failure could lose them.
    const forward = this.o.forward;
    const produced: Produced[] = [];
    const changelogOffsets = await collector.send(ctx.outputs, views, this.partition, ctx.maxTimestamp ?? this.o.clock(), {
      outputsFirst: topic === null, ...(forward ? { forward: { topicKey: forward.topicKey, partition: this.partition }, produced } : {}),
    });
    for (const view of views) {
      const cl = view.store.changelog;
      // A changelogged store checkpoints its changelog offset; a source store, its input offset.
      await view.flush(cl ? (changelogOffsets.get(cl) ?? null) : offset !== null ? BigInt(offset) : null);
    }
    // Fused: the successor takes these records (acknowledged, so never lost: until it has
    // handled them they are its backlog on the broker) and handles them as its own batch.
    if (forward && produced.length) await forward.to(this.partition, produced);
    if (topic !== null && offset !== null) offsets.mark(topic, this.partition, offset);
    metrics.records.inc({ stage, result: 'out' }, ctx.counts.out);
    metrics.records.inc({ stage, result: 'outcome' }, ctx.counts.outcome);
    metrics.records.inc({ stage, result: 'dlq' }, ctx.counts.dlq);
    // Per batch at debug (a line a batch was most of an info log); each stage logs a summary a minute at info.
    if (ctx.counts.out + ctx.counts.outcome + ctx.counts.dlq > 0) this.log.debug({ topic, offset, ...ctx.counts }, topic ? 'batch committed' : 'punctuation committed');
  }

  /** Processes a decoded batch of `topic` under the partition lock, then any stream-time punctuation it made due. */
  handle(topic: string, decoded: Decoded, lastOffset: string): Promise<void> {
    return this.run(async () => {
      const endTimer = this.o.metrics.batchDuration.startTimer({ stage: this.o.stage });
      try {
        await processBatch(decoded, lastOffset, {
          where: { stage: this.o.stage, topic, partition: this.partition },
          log: this.log,
          attempt: async (work, offset) => {
            const ctx = this.context();
            await work(ctx);
            await this.complete(ctx, topic, offset);
          },
          process: (records, ctx) => this.processor.process(records, ctx),
          reject: (rejected, ctx) => rejectRecords(rejected, ctx, this.processor.rejected?.bind(this.processor), this.log),
        });
      } finally {
        endTimer();
      }
      const handledAt = Date.now();
      const latency = this.recordLatency;
      for (const r of decoded.records) {
        if (r.timestamp > this.streamTime) this.streamTime = r.timestamp;
        latency.observe(Math.max(0, handledAt - r.timestamp) / 1000);
      }
      for (const r of decoded.rejected) if (r.rec.timestamp > this.streamTime) this.streamTime = r.rec.timestamp;
      const p = this.processor.punctuation;
      if (p?.type === 'stream-time' && this.streamTime >= this.nextStreamPunctuation) {
        this.nextStreamPunctuation = (Math.floor(this.streamTime / p.intervalMs) + 1) * p.intervalMs;
        // The batch is complete and marked: a failed timer must not make it run again.
        await this.punctuateNow().catch((err: unknown) => this.log.error({ err }, 'stream-time punctuation failed; it runs again when stream time next passes its interval'));
      }
    });
  }

  /** Starts the wall-clock punctuation the processor declared, if any (again after `stopTimers`). */
  startTimers(): void {
    const p = this.processor.punctuation;
    if (!p || p.type !== 'wall-clock' || !this.processor.punctuate || this.timer || this.closed) return;
    this.timer = setInterval(() => void this.punctuate(), p.intervalMs);
    this.timer.unref();
  }

  /**
   * Stops the wall-clock timer (during a rebalance, before a stop) and waits for a run in
   * progress, so a partition about to move is never punctuated by two instances at once.
   */
  async stopTimers(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.idle();
  }

  /** One punctuation under the partition lock (skipped while the previous one still runs). */
  async punctuate(): Promise<void> {
    if (this.punctuating || this.closed || this.o.clock() < this.resumeAt) return;
    this.punctuating = true;
    try {
      await this.run(() => this.punctuateNow());
      this.failures = 0;
    } catch (err) {
      if (this.closed) return;
      // Held items stay in the store and are tried again, after a growing pause (up to 30 s).
      this.failures++;
      const backoffMs = Math.min(30_000, 100 * 2 ** Math.min(this.failures, 9));
      this.resumeAt = this.o.clock() + backoffMs;
      this.log.error({ err, failures: this.failures, backoffMs }, 'punctuation failed; its held items are tried again after a pause');
    } finally {
      this.punctuating = false;
    }
  }

  private async punctuateNow(): Promise<void> {
    if (!this.processor.punctuate) return;
    const ctx = this.context();
    await this.processor.punctuate(ctx, { wallClock: this.o.clock(), streamTime: this.streamTime });
    await this.complete(ctx, null, null);
  }

  /** A clean stop: the processor's `settle`, under the lock, completed like a punctuation (see Processor.settle). */
  async settle(): Promise<void> {
    if (!this.processor.settle || this.closed) return;
    await this.run(async () => {
      const ctx = this.context();
      await this.processor.settle!(ctx, { wallClock: this.o.clock(), streamTime: this.streamTime });
      await this.complete(ctx, null, null);
    });
  }

  /** Stops the timers, waits for the running batch or punctuation, closes the processor and the stores. */
  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    // Closed first: nothing queued after this point runs against the closing stores.
    this.closed = true;
    await this.idle();
    await this.processor.close?.();
    for (const s of this.stores.values()) await s.close().catch(() => undefined);
  }
}
