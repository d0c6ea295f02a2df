/**
 * A broker-free driver for one stage (after Kafka Streams' TopologyTestDriver): feeds
 * records to a processor through the runtime's own BatchContext and failure policy, with
 * memory-level stores and a capturing sink in place of the producer, and returns what the
 * stage emitted, decided and dead-lettered. The wall clock is the driver's: `advance`
 * moves it and runs the processor's timers.
 */
import { loadConfig } from '../../config.ts';
import { loadRules } from '../../rules/rules.ts';
import { BatchContext } from '../../runtime/batch-context.ts';
import type { Processor, StageDeps } from '../../runtime/contract.ts';
import { processBatch, type StageRecord } from '../../runtime/failure-policy.ts';
import { createLogger } from '../../runtime/logger.ts';
import { Metrics } from '../../runtime/metrics.ts';
import type { LifecycleEvent } from '../../schemas/types.ts';
import { KeyValueStore } from '../../state/store.ts';
import { type StageName, type TopicKey, stageSpec, topicName } from '../../topology.ts';
import { MemoryTables } from './memory-tables.ts';

export interface Emitted { topic: TopicKey; key: string; value: unknown; timestamp: number }
export type Outcome = LifecycleEvent;
export interface DeadLetter { offset: string; code: string; reason: string; field?: string; headers: Record<string, string>; value: unknown }
export interface Result { emitted: Emitted[]; outcomes: Outcome[]; dlq: DeadLetter[] }

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type AnyFactory = (deps: StageDeps) => Processor<any>;

export class StageDriver {
  readonly stage: StageName;
  readonly stores = new Map<string, KeyValueStore>();
  private processor: Processor | null = null;
  private offset = 0;
  private streamTime = -1;
  private readonly factory: AnyFactory;
  private readonly deps: StageDeps;
  /** Wall clock seen by the stage; tests move it with `advance`. */
  now = Date.parse('2026-01-01T00:00:00Z');

  constructor(stage: StageName, factory: AnyFactory, deps: Partial<StageDeps> = {}) {
    this.stage = stage;
    this.factory = factory;
    const config = loadConfig({}, { stateBackend: 'memory', logLevel: 'silent' });
    this.deps = {
      config, rules: loadRules('rules/default.json'), log: createLogger('silent'), metrics: new Metrics(),
      tables: new MemoryTables(), availableChannels: new Set(['webhook']), ...deps,
    };
  }

  private async init(): Promise<Processor> {
    if (!this.processor) {
      for (const s of stageSpec(this.stage).stores) {
        this.stores.set(s.name, await KeyValueStore.open({ backend: 'memory', dir: '', stage: this.stage, name: s.name, partition: 0, changelog: null }));
      }
      this.processor = this.factory(this.deps) as Processor;
      await this.processor.init?.({ partition: 0 });
    }
    return this.processor;
  }

  /** A context like the runtime's, whose `recordNow` lands in `result`. */
  private context(result: Result): BatchContext {
    return new BatchContext({
      stage: this.stage, partition: 0, stores: this.stores, log: this.deps.log, clock: () => this.now,
      sink: { recordNow: async (events) => void result.outcomes.push(...events) },
    });
  }

  /** What the runtime would produce for `ctx`, and its store writes applied. */
  private async complete(ctx: BatchContext, result: Result): Promise<void> {
    for (const o of ctx.outputs) {
      if (o.topicKey === 'outcomes') result.outcomes.push(o.value as LifecycleEvent);
      else if (o.topicKey === 'dlq') {
        const h = o.headers ?? {};
        result.dlq.push({ offset: h['herald.source.offset']!, code: h['herald.error.code']!, reason: h['herald.error.reason']!, ...(h['herald.error.field'] ? { field: h['herald.error.field'] } : {}), headers: h, value: o.value });
      } else result.emitted.push({ topic: o.topicKey, key: o.key, value: o.value, timestamp: o.timestamp });
    }
    for (const v of ctx.views.values()) await v.flush(null);
  }

  /** Processes one batch, through the runtime's failure policy; `timestamp` is each record's stream time. */
  async pipe(records: { value: unknown; timestamp: number; key?: string; topicKey?: TopicKey }[]): Promise<Result> {
    const processor = await this.init();
    const result: Result = { emitted: [], outcomes: [], dlq: [] };
    const input = records.map((r) => {
      const topicKey = r.topicKey ?? stageSpec(this.stage).inputs[0]!;
      return {
        topic: topicName('herald.', topicKey), topicKey, partition: 0,
        offset: String(this.offset++), key: r.key ?? null, value: r.value, timestamp: r.timestamp, headers: {}, raw: Buffer.from('raw'),
      } as StageRecord;
    });
    if (input.length === 0) return result;
    await processBatch({ records: input, rejected: [] }, input.at(-1)!.offset, {
      where: { stage: this.stage }, log: this.deps.log,
      attempt: async (work) => {
        const ctx = this.context(result);
        await work(ctx);
        await this.complete(ctx, result);
      },
      process: (recs, ctx) => processor.process(recs, ctx),
      reject: () => undefined,
    });
    for (const r of input) this.streamTime = Math.max(this.streamTime, r.timestamp);
    return result;
  }

  /** Moves the wall clock by `ms` and runs the processor's timer once, as the runtime does at each interval. */
  async advance(ms: number): Promise<Result> {
    const processor = await this.init();
    this.now += ms;
    const result: Result = { emitted: [], outcomes: [], dlq: [] };
    if (!processor.punctuate) return result;
    const ctx = this.context(result);
    await processor.punctuate(ctx, { wallClock: this.now, streamTime: this.streamTime });
    await this.complete(ctx, result);
    return result;
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
      for await (const [key, value] of store.db.iterator({})) rows.push({ key, value });
      await fresh.restore(rows, 0n);
      await store.close();
      this.stores.set(name, fresh);
    }
    this.processor = this.factory(this.deps) as Processor;
    await this.processor.init?.({ partition: 0 });
  }

  async close(): Promise<void> {
    await this.processor?.close?.();
    for (const s of this.stores.values()) await s.close();
  }
}
