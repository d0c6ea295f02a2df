/**
 * Global tables: compacted topics (users.v1, preferences.v1, audiences.v1) materialised
 * in full, in a local store, on every instance that needs them. Each table keeps one
 * checkpoint per source partition, so a restart reads only what arrived since. Start-up
 * waits until every table has caught up to the end offsets captured when it started;
 * `/readyz` reports it. Tombstones delete. Values are Avro in the Confluent wire format
 * (read as Herald's schema, through schema resolution) or JSON (validated against it), as
 * on events.v1; a value that is neither, or does not fit, is skipped, logged and counted.
 */
import type { Admin, Kafka } from 'kafkajs';
import type { HeraldConfig } from '../config.ts';
import type { TableLookup, TableName } from './contract.ts';
import { type SchemaName, type Serde, validate } from '../schemas/index.ts';
import { KeyValueStore } from '../state/store.ts';
import { TOPICS, audienceKey, topicName, userKey } from '../topology.ts';
import { HeraldError, isTransient } from '../errors.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import { partitionFor } from './partitioner.ts';
import { TopicReader, startOffsets } from './reader.ts';

/** How long a lookup waits for a table to catch up (the embedded broker answers a waiting table fetch only after 250 ms). */
const CATCH_UP_MS = 2_000;
/** How long catch-ups pause after one timed out. */
const CATCH_UP_QUIET_MS = 60_000;

export class GlobalTables implements TableLookup {
  private readonly stores = new Map<string, KeyValueStore>();
  private readonly readers: TopicReader[] = [];
  private readonly caught = new Set<string>();
  /** Per table and partition, the last offset applied to the store. */
  private readonly applied = new Map<TableName, Map<number, bigint>>();
  /** Catch-ups waiting for the readers: the last offset each partition must reach. */
  private waiters: { table: TableName; target: Map<number, bigint>; done: () => void }[] = [];
  /** Per table, the latest catch-up: when its end offsets were read, and whether it got there. */
  private readonly syncs = new Map<TableName, { since: number; reached: Promise<boolean> }>();
  /** After a catch-up that timed out, none is tried until then (a partition whose last offset no reader sees, such as a transaction marker). */
  private quietUntil = 0;
  private readonly kafka: Kafka;
  private readonly admin: Admin;
  private readonly serde: Serde;
  private readonly config: HeraldConfig;
  private readonly log: Logger;
  private readonly metrics: Metrics;

  constructor(kafka: Kafka, admin: Admin, serde: Serde, config: HeraldConfig, log: Logger, metrics: Metrics) {
    this.kafka = kafka;
    this.admin = admin;
    this.serde = serde;
    this.config = config;
    this.log = log;
    this.metrics = metrics;
  }

  /** Starts following the tables and resolves when all are caught up. */
  async start(tables: readonly TableName[]): Promise<void> {
    await Promise.all(tables.map((t) => this.follow(t)));
  }

  private async follow(table: TableName): Promise<void> {
    const started = performance.now();
    const store = await KeyValueStore.open({ backend: this.config.stateBackend, dir: this.config.stateDir, stage: 'global', name: table, partition: 0, changelog: null });
    this.stores.set(table, store);
    const topic = topicName(this.config.topicPrefix, table);
    const schema = TOPICS[table].schema as SchemaName;
    const from = new Map<number, bigint>();
    const positions = new Map<number, bigint>();
    this.applied.set(table, positions);
    const starts = await startOffsets(this.admin, topic);
    const partitionCount = starts.size;
    for (const [p, low] of starts) {
      const cp = await store.checkpoint(p);
      from.set(p, cp === null || cp + 1n < low ? low : cp + 1n);
      positions.set(p, from.get(p)! - 1n);
    }
    let applied = 0;
    const reader = new TopicReader(this.kafka, this.admin, {
      topic,
      groupPrefix: this.config.topicPrefix,
      from,
      onBatch: async ({ partition, messages }) => {
        const records: { key: string; value: string | null }[] = [];
        for (const m of messages) {
          const key = m.key?.toString();
          if (!key) continue;
          // A key's records are ordered only within its partition: one written elsewhere (a
          // librdkafka producer's consistent_random partitioner, say) would be applied in an
          // order that differs between the live table and one rebuilt from the topic (a
          // deleted user came back). Skipped, said and counted, tombstones too.
          if (partitionFor(m.key!, partitionCount) !== partition) {
            const code = 'HRL_WRONG_PARTITION';
            this.log.warn({ table, partition, offset: m.offset, code, expected: partitionFor(m.key!, partitionCount) }, `table record skipped: its key belongs on partition ${partitionFor(m.key!, partitionCount)} (Kafka's default partitioner, murmur2); set the producer's partitioner to murmur2_random`);
            this.metrics.tableSkipped.inc({ table, code });
            continue;
          }
          if (m.value === null) records.push({ key, value: null });
          else {
            try {
              records.push({ key, value: JSON.stringify(keyed(table, key, await this.decode(schema, m.value))) });
            } catch (err) {
              // The registry unreachable is not the record's fault: the batch is read again, not skipped.
              if ((err as HeraldError).retriable === true || isTransient(err)) throw err;
              const code = (err as HeraldError).code ?? 'HRL_DECODE_FAILED';
              // Code and field only: the reason quotes the row (profiles hold e-mail addresses and phone numbers).
              this.log.warn({ table, partition, offset: m.offset, code, ...(err instanceof HeraldError && err.field !== undefined ? { field: err.field } : {}) }, 'table record skipped: not a valid value');
              this.metrics.tableSkipped.inc({ table, code });
            }
          }
        }
        const last = BigInt(messages.at(-1)!.offset);
        await store.restore(records, last, partition);
        positions.set(partition, last);
        if (this.waiters.length) this.wake();
        applied += messages.length;
        this.metrics.tableRecords.inc({ table }, messages.length);
      },
    });
    this.readers.push(reader);
    await reader.start();
    await reader.caughtUp;
    this.caught.add(table);
    this.log.info({ table, applied, seconds: Number(((performance.now() - started) / 1000).toFixed(3)) }, 'global table caught up');
  }

  /** A table value: Avro (magic byte 0) read as Herald's `schema`, or JSON validated against it. */
  private async decode(schema: SchemaName, buf: Buffer): Promise<unknown> {
    if (buf[0] === 0) return this.serde.decode(buf, schema);
    let parsed: unknown;
    try {
      parsed = JSON.parse(buf.toString('utf8'));
    } catch (err) {
      throw new HeraldError('HRL_DECODE_FAILED', `neither Avro (magic byte 0) nor JSON: ${(err as Error).message}`);
    }
    return validate(schema, parsed);
  }

  /**
   * Waits, at most CATCH_UP_MS, until `tables` hold every record written to them before
   * `stampedAt`: their end offsets are read (one ListOffsets per table, shared by every
   * caller stamped before it was sent) and the readers followed up to them. Kafka Streams
   * bounds the same wait, for a stream joined with a table, with max.task.idle.ms. A
   * record stamped before the latest catch-up needs no other. Resolves true when the tables
   * got there, false when the bound passed or the end offsets could not be read.
   */
  async catchUp(tables: readonly TableName[], stampedAt: number): Promise<boolean> {
    if (Date.now() < this.quietUntil) return false;
    const reached = await Promise.all(tables.map((t) => {
      const last = this.syncs.get(t);
      if (last && last.since >= stampedAt) return last.reached;
      const sync = { since: Date.now(), reached: this.sync(t) };
      this.syncs.set(t, sync);
      return sync.reached;
    }));
    return reached.every(Boolean);
  }

  private async sync(table: TableName): Promise<boolean> {
    const started = performance.now();
    let ends: Awaited<ReturnType<Admin['fetchTopicOffsets']>>;
    try {
      ends = await this.admin.fetchTopicOffsets(topicName(this.config.topicPrefix, table));
    } catch (err) {
      this.log.warn({ table, err: (err as Error).message }, 'table catch-up: its end offsets could not be read; looking up as it is');
      return false;
    }
    const target = new Map(ends.filter((o) => BigInt(o.high) > BigInt(o.low)).map((o) => [o.partition, BigInt(o.high) - 1n]));
    const there = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        resolve(false);
      }, CATCH_UP_MS);
      const waiter = { table, target, done: () => (clearTimeout(timer), resolve(true)) };
      this.waiters.push(waiter);
      this.wake();
    });
    this.metrics.tableCatchUps.inc({ table, result: there ? 'caught_up' : 'timed_out' });
    if (!there) {
      this.quietUntil = Date.now() + CATCH_UP_QUIET_MS;
      this.log.warn({ table, waitedMs: CATCH_UP_MS, pausedMs: CATCH_UP_QUIET_MS }, 'table catch-up: the reader did not reach the end offsets in time; lookups go on without waiting for a while');
    } else this.log.debug({ table, ms: Number((performance.now() - started).toFixed(1)) }, 'table caught up for a lookup');
    return there;
  }

  /** Resolves the catch-ups whose tables have reached their targets. */
  private wake(): void {
    this.waiters = this.waiters.filter((w) => {
      const applied = this.applied.get(w.table);
      const there = [...w.target].every(([p, last]) => (applied?.get(p) ?? -1n) >= last);
      if (there) w.done();
      return !there;
    });
  }

  private store(table: TableName): KeyValueStore {
    const s = this.stores.get(table);
    if (!s) throw new Error(`global table ${table} is not materialised in this process; declare it in topology.ts`);
    return s;
  }

  getMany<T>(table: TableName, keys: string[]): Promise<(T | undefined)[]> {
    return this.store(table).view().getMany<T>(keys);
  }

  async *scan<T>(table: TableName, prefix: string): AsyncGenerator<[string, T]> {
    for await (const [k, v] of this.store(table).range(prefix, `${prefix}\uffff`)) yield [k, v as T];
  }

  has(table: string): boolean {
    return this.stores.has(table);
  }

  isCaughtUp(table: string): boolean {
    return this.caught.has(table);
  }

  async stop(): Promise<void> {
    this.quietUntil = Infinity;
    await Promise.all(this.readers.map((r) => r.stop()));
    for (const s of this.stores.values()) await s.close();
    this.stores.clear();
  }
}

/**
 * A table value as Herald looks it up: by its key. A value that names another tenant, user
 * or audience than the key would show up under the wrong user (their inbox address, their
 * email), so it is refused (HRL_KEY_MISMATCH). A profile or preferences value without a
 * tenant (the field is optional) belongs to the key's.
 */
function keyed(table: TableName, key: string, value: unknown): unknown {
  const v = value as { tenant?: string | null; userId: string; audience?: string };
  let expected: string;
  if (table === 'audiences') expected = audienceKey(v.tenant ?? '', v.audience ?? '', v.userId);
  else if (v.tenant) expected = userKey(v.tenant, v.userId);
  else expected = `${key.slice(0, key.indexOf('/'))}/${encodeURIComponent(v.userId)}`;
  if (expected !== key) {
    throw new HeraldError('HRL_KEY_MISMATCH', `value is for ${expected}, but its key is ${key}; ${table} values are looked up by key`, { field: 'userId' });
  }
  return value;
}
