/**
 * Every instance follows the compacted keys topic and holds its records in memory (a few
 * hundred bytes a key), so a key created or revoked anywhere is known everywhere within
 * moments. `herald keys create|list|revoke` write and read the same topic.
 */
import type { Admin, Kafka, Producer } from 'kafkajs';
import { type ApiKeyRecord, Authenticator } from '../auth/keys.ts';
import type { Logger } from '../runtime/logger.ts';
import { CompactedTopic } from './compacted.ts';

function parseKeyRecord(id: string, value: unknown): ApiKeyRecord {
  const r = value as ApiKeyRecord;
  if (r?.keyId !== id || typeof r.tenant !== 'string' || !Array.isArray(r.scopes) || typeof r.hash !== 'string') throw new Error('not a key record');
  return r;
}

export class KeyDirectory {
  private readonly table: CompactedTopic<ApiKeyRecord>;
  readonly authenticator = new Authenticator((id) => this.table.get(id));

  constructor(kafka: Kafka, admin: Admin, topic: string, groupPrefix: string, log: Logger) {
    this.table = new CompactedTopic({ kafka, admin, topic, groupPrefix, log, parse: parseKeyRecord });
  }

  start(): Promise<void> {
    return this.table.start();
  }

  get(keyId: string): ApiKeyRecord | undefined {
    return this.table.get(keyId);
  }

  list(): ApiKeyRecord[] {
    return this.table.values().sort((a, b) => a.tenant.localeCompare(b.tenant) || a.createdAt - b.createdAt);
  }

  /** Resolves once the record is read back (so the key works on this instance when it returns). */
  waitFor(keyId: string, timeoutMs = 10_000): Promise<void> {
    return this.table.waitFor(keyId, () => true, timeoutMs);
  }

  stop(): Promise<void> {
    return this.table.stop();
  }
}

export async function writeKeyRecord(producer: Pick<Producer, 'send'>, topic: string, record: ApiKeyRecord): Promise<void> {
  await producer.send({ topic, acks: -1, messages: [{ key: record.keyId, value: JSON.stringify(record) }] });
}
