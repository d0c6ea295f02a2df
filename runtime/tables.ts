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
import { TopicReader, startOffsets } from './reader.ts';

export class GlobalTables implements TableLookup {
  private readonly stores = new Map<string, KeyValueStore>();
  private readonly readers: TopicReader[] = [];
  private readonly caught = new Set<string>();
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
    for (const [p, low] of await startOffsets(this.admin, topic)) {
      const cp = await store.checkpoint(p);
      from.set(p, cp === null || cp + 1n < low ? low : cp + 1n);
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
          if (m.value === null) records.push({ key, value: null });
          else {
            try {
              records.push({ key, value: JSON.stringify(keyed(table, key, await this.decode(schema, m.value))) });
            } catch (err) {
              // The registry unreachable is not the record's fault: the batch is read again, not skipped.
              if ((err as HeraldError).retriable === true || isTransient(err)) throw err;
              const code = (err as HeraldError).code ?? 'HRL_DECODE_FAILED';
              this.log.warn({ table, partition, offset: m.offset, code, reason: (err as Error).message }, 'table record skipped: not a valid value');
              this.metrics.tableSkipped.inc({ table, code });
            }
          }
        }
        await store.restore(records, BigInt(messages.at(-1)!.offset), partition);
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
