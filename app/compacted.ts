/**
 * A small compacted topic (API keys, signing secrets, instance claims) held in memory on every instance:
 * read to its end at start, then followed, so a record written anywhere is known
 * everywhere within moments. Records are JSON, keyed by id; a tombstone deletes.
 */
import { HeraldError } from '../errors.ts';
import type { Admin, Kafka } from 'kafkajs';
import type { Logger } from '../runtime/logger.ts';
import { TopicReader } from '../runtime/reader.ts';

export class CompactedTopic<T> {
  private readonly records = new Map<string, T>();
  private reader: TopicReader | null = null;
  private readonly kafka: Kafka;
  private readonly admin: Admin;
  readonly topic: string;
  private readonly groupPrefix: string;
  private readonly log: Logger;
  /** Parses a record, or throws saying what is wrong with it (the record is then skipped). */
  private readonly parse: (id: string, value: unknown, offset: bigint) => T;

  constructor(o: { kafka: Kafka; admin: Admin; topic: string; groupPrefix: string; log: Logger; parse: (id: string, value: unknown, offset: bigint) => T }) {
    this.kafka = o.kafka;
    this.admin = o.admin;
    this.topic = o.topic;
    this.groupPrefix = o.groupPrefix;
    this.log = o.log;
    this.parse = o.parse;
  }

  /** Reads the topic to its end, then keeps following it. */
  async start(): Promise<void> {
    this.reader = new TopicReader(this.kafka, this.admin, {
      topic: this.topic,
      groupPrefix: this.groupPrefix,
      onBatch: async ({ messages }) => {
        for (const m of messages) {
          const id = m.key?.toString();
          if (!id) continue;
          if (m.value === null) {
            this.records.delete(id);
            continue;
          }
          try {
            this.records.set(id, this.parse(id, JSON.parse(m.value.toString()) as unknown, BigInt(m.offset)));
          } catch (err) {
            // Not the message: JSON.parse's quotes the text, and these topics hold key hashes and signing secrets.
            const why = err instanceof HeraldError ? { code: err.code, ...(err.field !== undefined ? { field: err.field } : {}) } : { error: (err as Error).name };
            this.log.warn({ topic: this.topic, offset: m.offset, ...why }, 'unreadable record skipped');
          }
        }
      },
    });
    await this.reader.start();
    await this.reader.caughtUp;
  }

  get(id: string): T | undefined {
    return this.records.get(id);
  }

  values(): T[] {
    return [...this.records.values()];
  }

  /** Resolves once the record with this id satisfies `until` (by default: exists), e.g. after this process wrote it. */
  async waitFor(id: string, until: (r: T) => boolean = () => true, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = this.records.get(id);
      if (r !== undefined && until(r)) return;
      if (Date.now() > deadline) throw new Error(`a record for ${id} was written but not read back from ${this.topic} within ${timeoutMs} ms`);
      await new Promise((res) => setTimeout(res, 20));
    }
  }

  async stop(): Promise<void> {
    await this.reader?.stop();
  }
}
