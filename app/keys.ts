/**
 * Every instance follows the compacted keys topic and holds its records in memory (a few
 * hundred bytes a key), so a key created or revoked anywhere is known everywhere within
 * moments. `herald keys create|list|revoke` write and read the same topic.
 */
import type { Admin, Kafka, Producer } from 'kafkajs';
import { type ApiKeyRecord, Authenticator } from '../auth/keys.ts';
import type { Logger } from '../runtime/logger.ts';
import { TopicReader } from '../runtime/reader.ts';

export class KeyDirectory {
  private readonly records = new Map<string, ApiKeyRecord>();
  private reader: TopicReader | null = null;
  readonly authenticator = new Authenticator((id) => this.records.get(id));
  private readonly kafka: Kafka;
  private readonly admin: Admin;
  private readonly topic: string;
  private readonly groupPrefix: string;
  private readonly log: Logger;

  constructor(kafka: Kafka, admin: Admin, topic: string, groupPrefix: string, log: Logger) {
    this.kafka = kafka;
    this.admin = admin;
    this.topic = topic;
    this.groupPrefix = groupPrefix;
    this.log = log;
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
            const r = JSON.parse(m.value.toString()) as ApiKeyRecord;
            if (r.keyId !== id || typeof r.tenant !== 'string' || !Array.isArray(r.scopes) || typeof r.hash !== 'string') throw new Error('not a key record');
            this.records.set(id, r);
          } catch (err) {
            this.log.warn({ offset: m.offset, err }, 'unreadable API key record skipped');
          }
        }
      },
    });
    await this.reader.start();
    await this.reader.caughtUp;
  }

  get(keyId: string): ApiKeyRecord | undefined {
    return this.records.get(keyId);
  }

  list(): ApiKeyRecord[] {
    return [...this.records.values()].sort((a, b) => a.tenant.localeCompare(b.tenant) || a.createdAt - b.createdAt);
  }

  /** Resolves once the record is read back (so the key works on this instance when it returns). */
  async waitFor(keyId: string, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.records.has(keyId)) {
      if (Date.now() > deadline) throw new Error(`API key ${keyId} was written but not read back from ${this.topic} within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  async stop(): Promise<void> {
    await this.reader?.stop();
  }
}

export async function writeKeyRecord(producer: Pick<Producer, 'send'>, topic: string, record: ApiKeyRecord): Promise<void> {
  await producer.send({ topic, acks: -1, messages: [{ key: record.keyId, value: JSON.stringify(record) }] });
}
