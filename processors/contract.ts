/**
 * The one stage contract (after Kafka Streams' Processor): a stage is a factory that
 * gives a fresh processor per partition; the runtime owns consuming, decoding,
 * producing, committing and the stores. Output leaves only through the context.
 *
 * @example
 *   const stage: StageFactory = (deps) => ({
 *     async process(batch, ctx) { for (const r of batch) ctx.emit(r, 'requests', r.key!, r.value); },
 *   });
 */
import type { HeraldConfig } from '../config.ts';
import type { Logger } from '../runtime/logger.ts';
import type { Metrics } from '../runtime/metrics.ts';
import type { RuleSet } from '../rules/rules.ts';
import type { BatchView } from '../state/store.ts';
import type { StageName, TopicKey } from '../topology.ts';

export interface InRecord<V = unknown> {
  readonly topic: string;
  readonly topicKey: TopicKey;
  readonly partition: number;
  readonly offset: string;
  readonly key: string | null;
  readonly value: V;
  /** Record timestamp in ms: the stream time decisions read. */
  readonly timestamp: number;
  readonly headers: Readonly<Record<string, string>>;
  /** Original bytes, for dead-lettering. */
  readonly raw: Buffer | null;
}

/** The fields of a lifecycle event a stage decides; the runtime fills source and stage. */
export interface Decision {
  notificationId: string;
  deliveryId?: string | null;
  tenant: string;
  recipient: string;
  eventId: string;
  eventType: string;
  ruleId?: string | null;
  status: string;
  terminal?: boolean;
  reasonCode: string;
  reason: string;
  channel?: string | null;
  attempt?: number | null;
  providerMessageId?: string | null;
  traceId: string;
  /** Defaults to the causing record's timestamp (stream time). */
  timestamp?: number;
}

export interface StageContext {
  readonly stage: StageName;
  readonly partition: number;
  readonly log: Logger;
  /** This batch's view of a declared store (see topology.ts). */
  store(name: string): BatchView;
  /**
   * Sends a record to an output topic, stamped with the cause's timestamp (stream time
   * flows downstream). It is produced before the batch's offsets are committed.
   */
  emit(cause: InRecord, topic: TopicKey, key: string, value: unknown, headers?: Record<string, string>): void;
  /** Records a decision on outcomes.v1, caused by `cause`. */
  outcome(cause: InRecord, decision: Decision): void;
  /**
   * Produces decisions to outcomes.v1 at once (acks=-1) instead of with the batch: for a
   * decision that must be on record before an effect, such as an ATTEMPTED before a call.
   */
  recordNow(decisions: [InRecord, Decision][]): Promise<void>;
  /** Sends the record's original bytes to dlq.v1 with the error's code and reason. */
  deadLetter(cause: InRecord, error: Error & { code?: string; field?: string }): void;
  /** Wall-clock time: for timers and effects only, never for decisions. */
  wallClock(): number;

}

export interface Processor {
  /** Called once per partition assignment, after its stores are restored. */
  init?(ctx: { partition: number }): Promise<void>;
  /**
   * Handles one consumed batch of one partition, in offset order. May be called again
   * with the same records after a failure (at-least-once), so decisions must depend only
   * on the records, the stores and stream time. Throwing a non-retriable error makes the
   * runtime re-run the records one by one and dead-letter the ones that fail.
   */
  process(batch: InRecord[], ctx: StageContext): Promise<void>;
  /**
   * Wall-clock time before which this batch must not be processed (a timer, e.g. a retry's
   * due time), or undefined. The runtime waits, keeping the group membership alive and
   * without holding the partition, then calls `process`.
   */
  dueAt?(batch: InRecord[]): number | undefined;
  /**
   * Called for a record that failed to decode, after the runtime dead-lettered it, so the
   * stage can record a REJECTED decision where an id can still be derived.
   */
  rejected?(record: InRecord<null>, error: Error & { code?: string; field?: string }, ctx: StageContext): void;
  /** Called when the partition is revoked or the process stops. */
  close?(): Promise<void>;
}

/** What a stage may use; built once per process. */
export interface StageDeps {
  config: HeraldConfig;
  rules: RuleSet;
  log: Logger;
  metrics: Metrics;
  tables: TableLookup;
  /** Channels this deployment can deliver (route skips the others). */
  availableChannels: ReadonlySet<string>;
  /** Channel implementations; used only by deliver, the one stage with outside effects. */
  channels: ReadonlyMap<string, import('../channels/channel.ts').ChannelProvider>;
}

export type TableName = 'users' | 'preferences' | 'audiences';

/** Read access to the global tables, materialised locally on every instance. */
export interface TableLookup {
  /** Batched point lookups (one call per consumed batch, not per record). */
  getMany<T>(table: TableName, keys: string[]): Promise<(T | undefined)[]>;
  /** Rows whose key starts with `prefix`, in key order, streamed. */
  scan<T>(table: TableName, prefix: string): AsyncIterable<[string, T]>;
}

export type StageFactory = (deps: StageDeps) => Processor;
