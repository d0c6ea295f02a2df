/**
 * One stage run outside Kafka (Kafka Streams' TopologyTestDriver, and the replay sandbox):
 * records go through the runtime's own BatchContext and failure policy into a processor
 * with fresh in-memory stores, and what it emits, decides and dead-letters is captured
 * instead of produced. Nothing here talks to a broker; the wall clock is the caller's.
 */
import type { LifecycleEvent } from '../schemas/types.ts';
import { KeyValueStore } from '../state/store.ts';
import { type StageName, type TopicKey, stageSpec } from '../topology.ts';
import { BatchContext, headerStrings } from './batch-context.ts';
import type { Processor, StageDeps } from './contract.ts';
import { type Decoded, processBatch, rejectRecords } from './failure-policy.ts';

export interface Emitted { topic: TopicKey; key: string; value: unknown; timestamp: number; headers: Record<string, string> }
export interface DeadLetter { offset: string; key: string | null; code: string; reason: string; field?: string; headers: Record<string, string>; value: unknown }
export interface SandboxResult { emitted: Emitted[]; outcomes: LifecycleEvent[]; dlq: DeadLetter[] }

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyFactory = (deps: StageDeps) => Processor<any>;

export class SandboxStage {
  readonly stage: StageName;
  readonly stores = new Map<string, KeyValueStore>();
  private processor: Processor | null = null;
  /** The highest record timestamp processed (stream time). */
  streamTime = -1;
  private readonly factory: AnyFactory;
  readonly deps: StageDeps;
  private readonly clock: () => number;

  constructor(stage: StageName, factory: AnyFactory, deps: StageDeps, clock: () => number) {
    this.stage = stage;
    this.factory = factory;
    this.deps = deps;
    this.clock = clock;
  }

  private async init(): Promise<Processor> {
    if (!this.processor) {
      for (const s of stageSpec(this.stage).stores) {
        if (!this.stores.has(s.name)) this.stores.set(s.name, await KeyValueStore.open({ backend: 'memory', dir: '', stage: this.stage, name: s.name, partition: 0, changelog: null }));
      }
      this.processor = this.factory(this.deps) as Processor;
      await this.processor.init?.({ partition: 0 });
    }
    return this.processor;
  }

  /** A context like the runtime's, whose `recordNow` lands in `result`. */
  private context(result: SandboxResult): BatchContext {
    return new BatchContext({
      stage: this.stage, partition: 0, stores: this.stores, log: this.deps.log, clock: this.clock,
      sink: { recordNow: async (events) => void result.outcomes.push(...events) },
    });
  }

  /** What the runtime would produce for `ctx`, and its store writes applied. */
  private async complete(ctx: BatchContext, result: SandboxResult): Promise<void> {
    for (const o of ctx.outputs) {
      const h = headerStrings(o.headers);
      const key = o.key === null ? null : o.key.toString();
      if (o.topicKey === 'outcomes') result.outcomes.push(o.value as LifecycleEvent);
      else if (o.topicKey === 'dlq') {
        result.dlq.push({ offset: h['herald.source.offset']!, key, code: h['herald.error.code']!, reason: h['herald.error.reason']!, ...(h['herald.error.field'] ? { field: h['herald.error.field'] } : {}), headers: h, value: o.value });
      } else result.emitted.push({ topic: o.topicKey, key: key ?? '', value: o.value, timestamp: o.timestamp, headers: h });
    }
    for (const v of ctx.views.values()) await v.flush(null);
  }

  /** Processes one decoded batch through the runtime's failure policy. */
  async process(batch: Decoded): Promise<SandboxResult> {
    const processor = await this.init();
    const result: SandboxResult = { emitted: [], outcomes: [], dlq: [] };
    const last = [...batch.records.map((r) => r.offset), ...batch.rejected.map((r) => r.rec.offset)].sort((a, b) => Number(BigInt(a) - BigInt(b))).at(-1);
    if (last === undefined) return result;
    await processBatch(batch, last, {
      where: { stage: this.stage }, log: this.deps.log,
      attempt: async (work) => {
        const ctx = this.context(result);
        await work(ctx);
        await this.complete(ctx, result);
      },
      process: (recs, ctx) => processor.process(recs, ctx),
      reject: (rejected, ctx) => rejectRecords(rejected, ctx, processor.rejected?.bind(processor), this.deps.log),
    });
    for (const r of batch.records) this.streamTime = Math.max(this.streamTime, r.timestamp);
    return result;
  }

  /** Runs the processor's timer once at the sandbox's wall clock, as the runtime does at each interval. */
  async punctuate(): Promise<SandboxResult> {
    const processor = await this.init();
    const result: SandboxResult = { emitted: [], outcomes: [], dlq: [] };
    if (!processor.punctuate) return result;
    const ctx = this.context(result);
    await processor.punctuate(ctx, { wallClock: this.clock(), streamTime: this.streamTime });
    await this.complete(ctx, result);
    return result;
  }

  get hasTimer(): boolean {
    return this.processor?.punctuate !== undefined;
  }

  /**
   * A rebalance that moves the partition to another instance: the processor is dropped and
   * a new one starts on stores rebuilt from the old ones' contents, as a changelog restore
   * rebuilds them (in-memory caches of the old processor are gone).
   */
  async rebalance(): Promise<void> {
    await this.processor?.close?.();
    this.processor = null;
    const old = new Map(this.stores);
    this.stores.clear();
    for (const [name, store] of old) {
      const fresh = await KeyValueStore.open({ backend: 'memory', dir: '', stage: this.stage, name, partition: 0, changelog: null });
      const rows: { key: string; value: string }[] = [];
      // What a changelog holds: the values, without the local time indexes and metadata
      // (a restore rebuilds the indexes from the values).
      for await (const [key, value] of store.db.iterator({})) if (!key.startsWith('\u0000')) rows.push({ key, value });
      await fresh.restore(rows, 0n);
      await store.close();
      this.stores.set(name, fresh);
    }
    await this.init();
  }

  async close(): Promise<void> {
    await this.processor?.close?.();
    for (const s of this.stores.values()) await s.close();
  }
}
