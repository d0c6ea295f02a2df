/**
 * A broker-free driver for one stage (after Kafka Streams' TopologyTestDriver): feeds
 * records to a processor through a captured context backed by memory-level stores, and
 * returns what the stage emitted, decided and dead-lettered.
 */
import type { Decision, InRecord, Processor, StageContext, StageDeps, StageFactory } from '../../processors/contract.ts';
import { loadConfig } from '../../config.ts';
import { loadRules } from '../../rules/rules.ts';
import { createLogger } from '../../runtime/logger.ts';
import { Metrics } from '../../runtime/metrics.ts';
import { type BatchView, KeyValueStore } from '../../state/store.ts';
import { STAGES, type StageName, type TopicKey } from '../../topology.ts';
import { MemoryTables } from './memory-tables.ts';

export interface Emitted { topic: TopicKey; key: string; value: unknown; timestamp: number }
export interface Outcome extends Decision { stage: string; sourceOffset: string; timestamp: number }
export interface DeadLetter { offset: string; code: string; reason: string; field?: string }
export interface Result { emitted: Emitted[]; outcomes: Outcome[]; dlq: DeadLetter[] }

export class StageDriver {
  readonly stage: StageName;
  readonly stores = new Map<string, KeyValueStore>();
  private processor: Processor | null = null;
  private offset = 0;
  private readonly factory: StageFactory;
  private readonly deps: StageDeps;
  /** Wall clock seen by the stage; tests move it. */
  now = Date.parse('2026-01-01T00:00:00Z');

  constructor(stage: StageName, factory: StageFactory, deps: Partial<StageDeps> = {}) {
    this.stage = stage;
    this.factory = factory;
    const config = loadConfig({}, { stateBackend: 'memory', logLevel: 'silent' });
    this.deps = {
      config, rules: loadRules('rules/default.json'), log: createLogger('silent'), metrics: new Metrics(),
      tables: new MemoryTables(), availableChannels: new Set(['webhook']), channels: new Map(), ...deps,
    };
  }

  private async init(): Promise<Processor> {
    if (!this.processor) {
      for (const s of STAGES[this.stage].stores) {
        this.stores.set(s.name, await KeyValueStore.open({ backend: 'memory', dir: '', stage: this.stage, name: s.name, partition: 0, changelog: null }));
      }
      this.processor = this.factory(this.deps);
      await this.processor.init?.({ partition: 0 });
    }
    return this.processor;
  }

  /** Processes one batch; `timestamp` is the stream time of each record. */
  async pipe(records: { value: unknown; timestamp: number; key?: string; topicKey?: TopicKey }[]): Promise<Result> {
    const processor = await this.init();
    const result: Result = { emitted: [], outcomes: [], dlq: [] };
    const views = new Map<string, BatchView>();
    const stage = this.stage;
    const ctx: StageContext = {
      stage, partition: 0, log: this.deps.log,
      store: (name) => {
        let v = views.get(name);
        if (!v) {
          const s = this.stores.get(name);
          if (!s) throw new Error(`no store ${name}`);
          v = s.view();
          views.set(name, v);
        }
        return v;
      },
      emit: (cause, topic, key, value) => {
        if (!STAGES[stage].outputs.includes(topic)) throw new Error(`${stage} may not write ${topic}`);
        result.emitted.push({ topic, key, value, timestamp: cause.timestamp });
      },
      outcome: (cause, d) => result.outcomes.push({ ...d, stage, sourceOffset: cause.offset, timestamp: d.timestamp ?? cause.timestamp }),
      recordNow: async (decisions) => {
        for (const [cause, d] of decisions) result.outcomes.push({ ...d, stage, sourceOffset: cause.offset, timestamp: d.timestamp ?? cause.timestamp });
      },
      deadLetter: (cause, err) => result.dlq.push({ offset: cause.offset, code: err.code ?? 'HRL_PROCESSING_FAILED', reason: err.message, ...(err.field ? { field: err.field } : {}) }),
      wallClock: () => this.now,
    };
    const input: InRecord[] = records.map((r) => ({
      topic: `herald.${r.topicKey ?? STAGES[stage].inputs[0]}`, topicKey: r.topicKey ?? STAGES[stage].inputs[0]!, partition: 0,
      offset: String(this.offset++), key: r.key ?? null, value: r.value, timestamp: r.timestamp, headers: {}, raw: Buffer.from('raw'),
    }));
    // The runtime waits for a batch's due time; here the clock jumps there.
    const due = processor.dueAt?.(input);
    if (due !== undefined) this.now = Math.max(this.now, due);
    await processor.process(input, ctx);
    for (const v of views.values()) await v.flush(null);
    return result;
  }

  async close(): Promise<void> {
    await this.processor?.close?.();
    for (const s of this.stores.values()) await s.close();
  }
}
