/**
 * The processor context of one batch or one punctuation (Kafka Streams'
 * ProcessorContextImpl): it checks what a stage emits against its declaration in
 * topology.ts, turns decisions into lifecycle events (stage, provenance, `terminal` from
 * the lifecycle table), builds the DLQ copy of a bad record with its reason headers, and
 * buffers all of it, with the stores' writes, until the runtime completes the batch.
 * Tests drive processors through this same class with a capturing sink.
 */
import type { IHeaders } from 'kafkajs';
import { decisionIdOf, isTerminal } from '../schemas/lifecycle.ts';
import type { LifecycleEvent, TopicValues } from '../schemas/types.ts';
import { BatchView, type KeyValueStore, type StoreView } from '../state/store.ts';
import { type StageName, type StageOutput, type StoreName, type TopicKey, stageSpec, userKey } from '../topology.ts';
import type { DeadLetterError, Decision, EmitOptions, InRecord, RecordRef, StageContext, UndecodedRecord } from './contract.ts';
import type { Logger } from './logger.ts';

/** How much of a bad record's own headers its dead letter keeps (a broker refuses produce requests past ~1 MB). */
const MAX_ORIGINAL_HEADER_BYTES = 65_536;

/** Headers as strings (the first value of a repeated one), for reading rather than forwarding. */
export function headerStrings(h: IHeaders | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, v] of Object.entries(h ?? {})) if (v !== undefined) out[name] = String(Array.isArray(v) ? v[0] : v);
  return out;
}

/** A record the batch will produce, not yet encoded. */
export interface PendingOutput {
  topicKey: TopicKey;
  /** A Buffer or null only on dead letters (the original key's bytes). */
  key: string | Buffer | null;
  value: unknown;
  timestamp: number;
  headers?: IHeaders;
}

/** Where decisions that must be on record at once (`recordNow`) go: the record collector, or a test's capture. */
export interface OutcomeSink {
  recordNow(events: LifecycleEvent[]): Promise<void>;
}

export interface BatchContextOptions<S extends StageName> {
  stage: S;
  partition: number;
  stores: ReadonlyMap<string, KeyValueStore>;
  log: Logger;
  clock: () => number;
  sink: OutcomeSink;
}

/** DLQ headers: the error's code, field and reason, and where the original record was. */
export function deadLetterHeaders(stage: string, cause: RecordRef, error: DeadLetterError): Record<string, string> {
  const headers: Record<string, string> = {
    'herald.error.code': error.code ?? 'HRL_PROCESSING_FAILED',
    'herald.error.reason': error.message.slice(0, 1000),
    'herald.error.stage': stage,
    'herald.source.topic': cause.topic,
    'herald.source.partition': String(cause.partition),
    'herald.source.offset': cause.offset,
    'herald.source.timestamp': String(cause.timestamp),
  };
  if (error.field) headers['herald.error.field'] = error.field.slice(0, 200);
  return headers;
}

export class BatchContext<S extends StageName = StageName> implements StageContext<S> {
  readonly outputs: PendingOutput[] = [];
  readonly views = new Map<string, BatchView>();
  readonly counts = { out: 0, outcome: 0, dlq: 0 };
  /** Highest timestamp of this batch's outputs: the changelog records' timestamp. */
  maxTimestamp: number | null = null;

  readonly stage: S;
  readonly partition: number;
  readonly log: Logger;
  private readonly o: BatchContextOptions<S>;

  constructor(o: BatchContextOptions<S>) {
    this.o = o;
    this.stage = o.stage;
    this.partition = o.partition;
    this.log = o.log;
  }

  store(name: StoreName<S>): StoreView {
    let v = this.views.get(name);
    if (!v) {
      const s = this.o.stores.get(name);
      if (!s) throw new Error(`stage ${this.stage} did not declare a store named "${name}" in topology.ts`);
      v = s.view();
      this.views.set(name, v);
    }
    return v;
  }

  private push(topicKey: TopicKey, key: string | Buffer | null, value: unknown, timestamp: number, headers?: IHeaders): void {
    if (!(stageSpec(this.stage).outputs as readonly TopicKey[]).includes(topicKey)) throw new Error(`stage ${this.stage} may not write to ${topicKey}; declare it in topology.ts`);
    this.maxTimestamp = Math.max(this.maxTimestamp ?? 0, timestamp);
    this.outputs.push({ topicKey, key, value, timestamp, ...(headers ? { headers } : {}) });
  }

  emit<K extends StageOutput<S>>(cause: RecordRef, topic: K, key: string, value: TopicValues[K], opts: EmitOptions = {}): void {
    this.push(topic, key, value, opts.timestamp ?? cause.timestamp, opts.headers);
    this.counts.out++;
  }

  outcome(cause: RecordRef, d: Decision): void {
    const ev = this.lifecycle(cause, d);
    this.push('outcomes', userKey(d.tenant, d.recipient), ev, ev.timestamp);
    this.counts.outcome++;
    this.logDecision(ev);
  }

  async recordNow(decisions: [RecordRef, Decision][]): Promise<void> {
    if (decisions.length === 0) return;
    const events = decisions.map(([cause, d]) => this.lifecycle(cause, d));
    await this.o.sink.recordNow(events);
    for (const ev of events) this.logDecision(ev);
    this.counts.outcome += events.length;
  }

  private logDecision(ev: LifecycleEvent): void {
    this.log.debug({ notificationId: ev.notificationId, traceId: ev.traceId, deliveryId: ev.deliveryId, status: ev.status, reasonCode: ev.reasonCode }, 'decision');
  }

  /** The lifecycle event of a decision: the runtime adds the stage, the provenance and whether it is terminal. */
  lifecycle(cause: RecordRef, d: Decision): LifecycleEvent {
    const ids = { notificationId: d.notificationId, stage: this.stage, status: d.status, deliveryId: d.deliveryId ?? null, attempt: d.attempt ?? null };
    return {
      decisionId: decisionIdOf({ ...ids, repeat: d.repeat ?? null }),
      notificationId: d.notificationId,
      deliveryId: d.deliveryId ?? null,
      tenant: d.tenant,
      recipient: d.recipient,
      eventId: d.eventId,
      eventType: d.eventType,
      ruleId: d.ruleId ?? null,
      stage: this.stage,
      status: d.status,
      terminal: isTerminal(d.status),
      reasonCode: d.reasonCode,
      reason: d.reason,
      content: d.content ?? null,
      channel: d.channel ?? null,
      attempt: d.attempt ?? null,
      providerMessageId: d.providerMessageId ?? null,
      sourceTopic: cause.topic,
      sourcePartition: cause.partition,
      sourceOffset: cause.offset,
      timestamp: d.timestamp ?? cause.timestamp,
      traceId: d.traceId,
    };
  }

  deadLetter(cause: InRecord | UndecodedRecord, error: DeadLetterError): void {
    const headers = deadLetterHeaders(this.stage, cause, error);
    // Not the reason: it quotes the record (personal data); it is in the record's herald.error.reason header.
    this.log.warn({ code: headers['herald.error.code'], field: headers['herald.error.field'], topic: cause.topic, partition: cause.partition, offset: cause.offset }, 'dead-lettered (the reason is in its herald.error.reason header)');
    // The original record, exactly (as Kafka Connect's dead-letter queue keeps it): its key's
    // and value's bytes (a tombstone stays a tombstone, a null key null) and its headers,
    // with Herald's error headers beside them (replacing any of the same name).
    const raw = 'rawKey' in cause ? cause : null;
    const original: IHeaders = {};
    let room = MAX_ORIGINAL_HEADER_BYTES;
    for (const [name, v] of Object.entries(raw?.rawHeaders ?? cause.headers)) {
      // Herald's own headers from an earlier dead-lettering (a record sent back from dlq.v1) never mix with these.
      if (v === undefined || name.startsWith('herald.error.') || name.startsWith('herald.source.')) continue;
      const size = name.length + (Array.isArray(v) ? v : [v]).reduce((n, x) => n + x.length, 0);
      if (size > room) {
        headers['herald.error.headers'] = 'original headers over 64 KB: the rest were left out';
        break;
      }
      room -= size;
      original[name] = v;
    }
    this.push('dlq', raw && raw.rawKey !== undefined ? raw.rawKey : cause.key, cause.raw, cause.timestamp, { ...original, ...headers });
    this.counts.dlq++;
  }

  wallClock(): number {
    return this.o.clock();
  }
}
