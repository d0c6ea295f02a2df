/**
 * The one stage contract (after Kafka Streams' Processor): a stage is a factory that
 * gives a fresh processor per partition; the runtime owns consuming, decoding,
 * producing, committing, the stores and the timers. Output leaves only through the
 * context. Everything is typed by the stage's declaration in topology.ts: the values of
 * its input records, the topics it may emit to and the stores it may open.
 *
 * @example
 *   const stage: StageFactory<'enrich'> = (deps) => ({
 *     async process(batch, ctx) { for (const r of batch) ctx.emit(r, 'enriched', r.value.recipient, join(r.value)); },
 *   });
 */
import type { IHeaders } from 'kafkajs';
import type { HeraldConfig } from '../config.ts';
import type { RuleSet } from '../rules/rules.ts';
import type { ReasonCode, Status } from '../schemas/lifecycle.ts';
import type { TopicValues } from '../schemas/types.ts';
import type { StoreView } from '../state/store.ts';
import type { StageInput, StageName, StageOutput, StoreName, TopicKey } from '../topology.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';

/**
 * Where a record is in Kafka: the provenance every lifecycle event carries. A held item
 * (a deferred notification, a retry) stores the reference of the record that caused it,
 * so the outputs a timer produces for it point at that record.
 */
export interface RecordRef {
  readonly topic: string;
  readonly partition: number;
  readonly offset: string;
  /** Record timestamp in ms: the stream time decisions read. */
  readonly timestamp: number;
}

/**
 * Just the reference of a record, to keep in a held value: a consumed record passed where a
 * RecordRef is expected still carries its value, headers and raw bytes, which JSON would
 * write into the store and its changelog (the bytes as an array of numbers, about six times
 * the record).
 */
export const recordRef = (r: RecordRef): RecordRef => ({ topic: r.topic, partition: r.partition, offset: r.offset, timestamp: r.timestamp });

/** A consumed record of topic `K`, decoded. */
export interface TopicRecord<K extends TopicKey> extends RecordRef {
  readonly topicKey: K;
  readonly key: string | null;
  readonly value: TopicValues[K];
  readonly headers: Readonly<Record<string, string>>;
  /** Original bytes, for dead-lettering. */
  readonly raw: Buffer | null;
  readonly rawKey?: Buffer | null;
  readonly rawHeaders?: IHeaders;
}

/** A consumed record of any of the topics `K` (a union over them, so `topicKey` narrows `value`). */
export type InRecord<K extends TopicKey = TopicKey> = { [T in K]: TopicRecord<T> }[K];

/** A record that failed to decode: its bytes and place, no value. */
export interface UndecodedRecord extends RecordRef {
  readonly topicKey: TopicKey;
  readonly key: string | null;
  readonly headers: Readonly<Record<string, string>>;
  readonly raw: Buffer | null;
  /** The key's and headers' bytes as consumed, for dead-lettering (absent on records handed over in process). */
  readonly rawKey?: Buffer | null;
  readonly rawHeaders?: IHeaders;
}

/** The fields of a lifecycle event a stage decides; the runtime fills stage, source and `terminal`. */
export interface Decision {
  notificationId: string;
  deliveryId?: string | null;
  tenant: string;
  recipient: string;
  eventId: string;
  eventType: string;
  ruleId?: string | null;
  status: Status;
  reasonCode: ReasonCode;
  /** One plain sentence: why. */
  reason: string;
  channel?: string | null;
  attempt?: number | null;
  /**
   * Tells apart decisions that repeat the same status at the same attempt (a task held again
   * behind an open circuit: the record it was decided on), so each has its own decisionId and shows in
   * the lifecycle; an at-least-once repeat of one decision keeps its id.
   */
  repeat?: string;
  providerMessageId?: string | null;
  traceId: string;
  /** Defaults to the causing record's timestamp (stream time). */
  timestamp?: number;
  /** In-app deliveries: what the inbox shows (`{subject, body}` JSON). */
  content?: string | null;
}

export interface EmitOptions {
  headers?: Record<string, string>;
  /** Defaults to the cause's timestamp, so stream time flows downstream. */
  timestamp?: number;
}

/** The error fields the DLQ headers carry. */
export type DeadLetterError = Error & { code?: string; field?: string };

export interface StageContext<S extends StageName = StageName> {
  readonly stage: S;
  readonly partition: number;
  readonly log: Logger;
  /** This batch's (or punctuation's) view of a store the stage declared in topology.ts. */
  store(name: StoreName<S>): StoreView;
  /**
   * Sends a record to an output topic the stage declared. It is produced (acks=-1) before
   * the batch's offsets are committed and its state is written.
   */
  emit<K extends StageOutput<S>>(cause: RecordRef, topic: K, key: string, value: TopicValues[K], opts?: EmitOptions): void;
  /** Records a decision on outcomes.v1, caused by `cause`. */
  outcome(cause: RecordRef, decision: Decision): void;
  /**
   * Produces decisions to outcomes.v1 at once (acks=-1) instead of with the batch: for a
   * decision that must be on record before an effect, such as an ATTEMPTED before a call.
   */
  recordNow(decisions: [RecordRef, Decision][]): Promise<void>;
  /** Sends the record's original bytes to dlq.v1 with the error's code, field and reason. */
  deadLetter(cause: InRecord | UndecodedRecord, error: DeadLetterError): void;
  /** Wall-clock time: for timers and effects only, never for decisions. */
  wallClock(): number;
}

/** When a processor's `punctuate` runs (Kafka Streams' PunctuationType). */
export interface PunctuationSchedule {
  /** Interval between punctuations, in ms of the chosen time. */
  intervalMs: number;
  /**
   * `wall-clock`: every `intervalMs` of real time, whether records arrive or not (releases,
   * retries). `stream-time`: after a batch moves the partition's stream time (the highest
   * record timestamp seen) past the next multiple of `intervalMs` (windows that close on data).
   */
  type: 'wall-clock' | 'stream-time';
}

export interface Processor<S extends StageName = StageName> {
  /** Called once per partition assignment, after its stores are restored. */
  init?(ctx: { partition: number }): Promise<void>;
  /**
   * Handles one consumed batch of one partition, in offset order. May be called again
   * with the same records after a failure (at-least-once), so decisions must depend only
   * on the records, the stores and stream time. Throwing a non-retriable error makes the
   * runtime re-run the records one by one and dead-letter the ones that fail.
   */
  process(batch: InRecord<StageInput<S>>[], ctx: StageContext<S>): Promise<void>;
  /** When `punctuate` runs; without it, it never does. */
  readonly punctuation?: PunctuationSchedule;
  /**
   * A timer: runs under the partition lock, never at the same time as a batch of the same
   * partition. Its outputs, outcomes and store writes are produced and written exactly like
   * a batch's, before the next batch of the partition. May run again after a crash for the
   * same held items, so it must be idempotent on their ids, like `process`.
   */
  punctuate?(ctx: StageContext<S>, time: { wallClock: number; streamTime: number }): Promise<void>;
  /**
   * Called for a record that failed to decode, after the runtime dead-lettered it, so the
   * stage can record a REJECTED decision where an id can still be derived.
   */
  rejected?(record: UndecodedRecord, error: DeadLetterError, ctx: StageContext<S>): void;
  /**
   * Called once when the process stops cleanly, after the partition's last batch and
   * before its last commit, under the partition lock: the stage finishes what it started
   * outside a batch (deliver: calls still running past their batch's wait), within a bound
   * of its own, and records it; its outputs are produced like a timer's.
   */
  settle?(ctx: StageContext<S>, time: { wallClock: number; streamTime: number }): Promise<void>;
  /** Called when the partition is revoked or the process stops. */
  close?(): Promise<void>;
}

/** What every stage may use; built once per process. Effects (channels) are given to deliver alone, by its factory. */
export interface StageDeps {
  config: HeraldConfig;
  rules: RuleSet;
  log: Logger;
  metrics: Metrics;
  tables: TableLookup;
  /** Channels this deployment can deliver (route skips the others). */
  availableChannels: ReadonlySet<string>;
  /** Where the outcome stage announces inbox changes (live inbox streams of this process). */
  inbox?: { publish(tenant: string, recipient: string, item: unknown): void };
}

export type TableName = 'users' | 'preferences' | 'audiences';

/** Read access to the global tables, materialised locally on every instance. */
export interface TableLookup {
  /** Batched point lookups (one call per consumed batch, not per record). */
  getMany<T>(table: TableName, keys: string[]): Promise<(T | undefined)[]>;
  /** Rows whose key starts with `prefix`, in key order, streamed. */
  scan<T>(table: TableName, prefix: string): AsyncIterable<[string, T]>;
  /**
   * Waits until `tables` hold every record written to them before `stampedAt` (a record's
   * timestamp), or a bound passes; true when they do. For a lookup that found nothing:
   * an update written just before the record (PUT a user, then publish) may still be on
   * its way to this process.
   */
  catchUp?(tables: readonly TableName[], stampedAt: number): Promise<boolean>;
}

export type StageFactory<S extends StageName = StageName> = (deps: StageDeps) => Processor<S>;
