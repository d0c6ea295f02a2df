/**
 * Global tables: compacted topics (users.v1, preferences.v1) materialised in full on
 * every instance that needs them. Start-up waits until each is caught up to the end
 * offsets captured when it started; `/readyz` reports it. Tombstones delete.
 */
import type { Admin, Kafka } from 'kafkajs';
import type { TableLookup } from '../processors/contract.ts';
import type { Serde } from '../schemas/index.ts';
import { type TopicKey, topicName } from '../topology.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import { TopicReader } from './reader.ts';

export class GlobalTables implements TableLookup {
  private readonly data = new Map<string, Map<string, unknown>>();
  private readonly readers: TopicReader[] = [];
  private readonly caught = new Set<string>();

  private readonly kafka: Kafka;
  private readonly admin: Admin;
  private readonly serde: Serde;
  private readonly prefix: string;
  private readonly log: Logger;
  private readonly metrics: Metrics;

  constructor(kafka: Kafka, admin: Admin, serde: Serde, prefix: string, log: Logger, metrics: Metrics) {
    this.kafka = kafka;
    this.admin = admin;
    this.serde = serde;
    this.prefix = prefix;
    this.log = log;
    this.metrics = metrics;
  }

  /** Starts following the tables and resolves when all are caught up. */
  async start(tables: readonly TopicKey[]): Promise<void> {
    await Promise.all(tables.map(async (t) => {
      const rows = new Map<string, unknown>();
      this.data.set(t, rows);
      const reader = new TopicReader(this.kafka, this.admin, {
        topic: topicName(this.prefix, t),
        groupPrefix: this.prefix,
        onBatch: async ({ messages }) => {
          for (const m of messages) {
            const key = m.key?.toString();
            if (!key) continue;
            if (m.value === null) rows.delete(key);
            else {
              try {
                rows.set(key, await this.serde.decode(m.value));
              } catch (err) {
                this.log.warn({ table: t, offset: m.offset, err: (err as Error).message }, 'table record skipped: undecodable');
              }
            }
          }
          this.metrics.tableRecords.inc({ table: t }, messages.length);
        },
      });
      this.readers.push(reader);
      await reader.start();
      await reader.caughtUp;
      this.caught.add(t);
      this.log.info({ table: t, rows: rows.size }, 'global table caught up');
    }));
  }

  get<T>(table: 'users' | 'preferences', key: string): T | undefined {
    return this.data.get(table)?.get(key) as T | undefined;
  }

  isCaughtUp(table: string): boolean {
    return this.caught.has(table);
  }

  async stop(): Promise<void> {
    await Promise.all(this.readers.map((r) => r.stop()));
  }
}
