/**
 * A broker-free driver for one stage (after Kafka Streams' TopologyTestDriver): the
 * runtime's sandbox with memory-level stores, the default rules and in-memory tables,
 * fed simple records. The wall clock is the driver's: `advance` moves it and runs the
 * processor's timers.
 */
import { loadConfig } from '../../config.ts';
import { loadRules } from '../../rules/rules.ts';
import type { HeraldError } from '../../errors.ts';
import type { StageDeps } from '../../runtime/contract.ts';
import type { StageRecord } from '../../runtime/failure-policy.ts';
import { createLogger } from '../../runtime/logger.ts';
import { Metrics } from '../../runtime/metrics.ts';
import { type AnyFactory, type DeadLetter, type Emitted as SandboxEmitted, SandboxStage } from '../../runtime/sandbox.ts';
import type { LifecycleEvent } from '../../schemas/types.ts';
import type { KeyValueStore } from '../../state/store.ts';
import { type StageName, type TopicKey, stageSpec, topicName } from '../../topology.ts';
import { MemoryTables } from './memory-tables.ts';

export type Emitted = Omit<SandboxEmitted, 'headers'>;
export type Outcome = LifecycleEvent;
export type { DeadLetter };
export interface Result { emitted: Emitted[]; outcomes: Outcome[]; dlq: DeadLetter[] }

export class StageDriver {
  readonly stage: StageName;
  private readonly sandbox: SandboxStage;
  private offset = 0;
  /** Wall clock seen by the stage; tests move it with `advance`. */
  now = Date.parse('2026-01-01T00:00:00Z');

  constructor(stage: StageName, factory: AnyFactory, deps: Partial<StageDeps> = {}) {
    this.stage = stage;
    const config = loadConfig({}, { stateBackend: 'memory', logLevel: 'silent' });
    const all: StageDeps = {
      config, rules: loadRules('rules/default.json'), log: createLogger('silent'), metrics: new Metrics(),
      tables: new MemoryTables(), availableChannels: new Set(['webhook']), ...deps,
    };
    this.sandbox = new SandboxStage(stage, factory, all, () => this.now);
  }

  get stores(): Map<string, KeyValueStore> {
    return this.sandbox.stores;
  }

  private static strip(r: { emitted: SandboxEmitted[]; outcomes: Outcome[]; dlq: DeadLetter[] }): Result {
    return { emitted: r.emitted.map(({ headers: _h, ...e }) => e), outcomes: r.outcomes, dlq: r.dlq };
  }

  /** Processes one batch, through the runtime's failure policy; `timestamp` is each record's stream time. */
  async pipe(records: { value: unknown; timestamp: number; key?: string; topicKey?: TopicKey }[]): Promise<Result> {
    const input = records.map((r) => {
      const topicKey = r.topicKey ?? stageSpec(this.stage).inputs[0]!;
      return {
        topic: topicName('herald.', topicKey), topicKey, partition: 0,
        offset: String(this.offset++), key: r.key ?? null, value: r.value, timestamp: r.timestamp, headers: {}, raw: Buffer.from('raw'),
      } as StageRecord;
    });
    return StageDriver.strip(await this.sandbox.process({ records: input, rejected: [] }));
  }

  /** Processes one batch holding records that failed to decode (`raw` bytes, the codec's error) ahead of decoded ones. */
  async pipeWithRejected(rejected: { raw: Buffer; error: HeraldError }[], records: { value: unknown; timestamp: number; key?: string }[] = []): Promise<Result> {
    const topicKey = stageSpec(this.stage).inputs[0]!;
    const base = () => ({ topic: topicName('herald.', topicKey), topicKey, partition: 0, offset: String(this.offset++), key: null, timestamp: this.now, headers: {} });
    const bad = rejected.map((r) => ({ rec: { ...base(), raw: r.raw }, err: r.error }));
    const good = records.map((r) => ({ ...base(), key: r.key ?? null, value: r.value, timestamp: r.timestamp, raw: Buffer.from('raw') }) as StageRecord);
    return StageDriver.strip(await this.sandbox.process({ records: good, rejected: bad }));
  }

  /** Moves the wall clock by `ms` and runs the processor's timer once, as the runtime does at each interval. */
  async advance(ms: number): Promise<Result> {
    this.now += ms;
    return StageDriver.strip(await this.sandbox.punctuate());
  }

  /** A rebalance that moves the partition to another instance (stores restored, caches gone). */
  rebalance(): Promise<void> {
    return this.sandbox.rebalance();
  }

  close(): Promise<void> {
    return this.sandbox.close();
  }
}
