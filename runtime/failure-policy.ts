/**
 * Failure policy per phase (Kafka Streams' deserialization and processing exception
 * handlers), reading `retriable` and `code`, never the message:
 *
 * - decode: a record that cannot be decoded is set aside for the DLQ and its neighbours
 *   go on; an infrastructure error (registry, broker) fails the batch, to be fetched again.
 * - process and produce: a retriable error fails the batch (nothing committed, fetched
 *   again); any other error re-runs the batch record by record, and a record that fails
 *   alone is dead-lettered alone, so one bad record never stops a partition or loses a
 *   neighbour.
 */
import type { KafkaMessage } from 'kafkajs';
import { asHeraldError, type ErrorWhere, type HeraldError, loggableError } from '../errors.ts';
import type { StageInput, StageName, TopicKey } from '../topology.ts';
import type { BatchContext } from './batch-context.ts';
import type { Codec } from './codec.ts';
import type { InRecord, UndecodedRecord } from './contract.ts';
import type { Logger } from './logger.ts';

export interface Rejected { rec: UndecodedRecord; err: HeraldError }

/** A record of any stage's input topics. */
export type StageRecord = InRecord<StageInput<StageName>>;

export interface Decoded {
  records: StageRecord[];
  rejected: Rejected[];
}

function headersOf(h: KafkaMessage['headers']): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, v] of Object.entries(h ?? {})) if (v !== undefined) out[key] = Array.isArray(v) ? String(v[0]) : String(v);
  return out;
}

/** Decode phase. */
export async function decodeBatch(codec: Codec, stage: string, topicKey: TopicKey, topic: string, partition: number, messages: KafkaMessage[]): Promise<Decoded> {
  const records: StageRecord[] = [];
  const rejected: Rejected[] = [];
  for (const m of messages) {
    // A placeholder the embedded broker's journal wrote to keep offsets aligned (no key, no
    // value): nothing to decode or do. A record with a value is never one, whatever its headers.
    if (m.value === null && m.key === null && m.headers?.['herald.journal.gap'] !== undefined) continue;
    const base: UndecodedRecord = { topic, topicKey, partition, offset: m.offset, key: m.key?.toString() ?? null, timestamp: Number(m.timestamp), headers: headersOf(m.headers), raw: m.value, rawKey: m.key, ...(m.headers ? { rawHeaders: m.headers } : {}) };
    try {
      records.push({ ...base, value: await codec.decode(topicKey, m.value) } as StageRecord);
    } catch (err) {
      const e = asHeraldError(err, { stage, topic, partition, offset: m.offset });
      if (e.retriable) throw e; // the registry or broker is unwell, not the record
      rejected.push({ rec: base, err: e });
    }
  }
  return { records, rejected };
}

export interface ProcessPhase {
  where: ErrorWhere;
  log: Logger;
  /** Runs `work` in a fresh context, then completes it (produce, write state) and marks `offset` done. */
  attempt: (work: (ctx: BatchContext) => Promise<void> | void, offset: string | null) => Promise<void>;
  process: (records: StageRecord[], ctx: BatchContext) => Promise<void>;
  /** Dead-letters the undecodable records (and lets the stage record REJECTED). */
  reject: (rejected: readonly Rejected[], ctx: BatchContext) => void;
}

/**
 * The reject phase both runtimes share: each undecodable record goes to the dead-letter
 * topic, and the stage's `rejected` hook may record what it can read of it (REJECTED
 * decisions). The hook reads a record that is bad by definition: if it throws, the record
 * is still dead-lettered and its neighbours go on; only the hook's decisions are missing,
 * and the log says so (the code and where, never the record's content).
 */
export function rejectRecords(rejected: readonly Rejected[], ctx: BatchContext, hook: ((rec: UndecodedRecord, err: HeraldError, ctx: BatchContext) => void) | undefined, log: Logger): void {
  for (const { rec, err } of rejected) {
    ctx.deadLetter(rec, err);
    if (!hook) continue;
    try {
      hook(rec, err, ctx);
    } catch (hookErr) {
      log.warn({ code: err.code, topic: rec.topic, partition: rec.partition, offset: rec.offset, hookError: hookErr instanceof Error ? hookErr.name : typeof hookErr }, 'record dead-lettered; its REJECTED decision could not be derived from it');
    }
  }
}

/** Process and produce phases of one decoded batch whose last offset is `lastOffset`. */
export async function processBatch({ records, rejected }: Decoded, lastOffset: string, p: ProcessPhase): Promise<void> {
  try {
    await p.attempt(async (ctx) => {
      p.reject(rejected, ctx);
      if (records.length) await p.process(records, ctx);
    }, lastOffset);
    return;
  } catch (err) {
    const e = asHeraldError(err, p.where);
    if (e.retriable) throw e; // not committed: the batch is fetched again
    p.log.warn({ code: e.code, ...loggableError(e), records: records.length }, 'batch failed; re-running record by record to isolate the bad one');
  }
  await p.attempt((ctx) => p.reject(rejected, ctx), null);
  for (const rec of records) {
    try {
      await p.attempt((ctx) => p.process([rec], ctx), rec.offset);
    } catch (inner) {
      // The record itself is bad (its processing or its outputs): dead-letter it alone.
      const ie = asHeraldError(inner, { ...p.where, offset: rec.offset });
      if (ie.retriable) throw ie;
      await p.attempt((ctx) => ctx.deadLetter(rec, ie), rec.offset);
    }
  }
  await p.attempt(() => undefined, lastOffset);
}
