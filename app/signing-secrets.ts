/**
 * The signing-secrets topic, followed by every instance that delivers or serves the API:
 * `secretsFor(tenant)` is what the webhook and chat channels sign with.
 */
import type { Admin, Kafka, Producer } from 'kafkajs';
import type { SigningSecretsPort, SigningSecretsView } from '../api/ports.ts';
import { describeSecrets, liveSecrets, parseSigningSecretRecord, retire, rotate, type SigningSecretRecord } from '../auth/signing-secrets.ts';
import type { Logger } from '../runtime/logger.ts';
import { CompactedTopic } from './compacted.ts';

export class SigningSecrets {
  readonly table: CompactedTopic<SigningSecretRecord>;
  private readonly fallback: readonly string[];

  /** `fallback`: HERALD_WEBHOOK_SECRET's secrets, for tenants without a record. */
  constructor(kafka: Kafka, admin: Admin, topic: string, groupPrefix: string, log: Logger, fallback: readonly string[]) {
    this.table = new CompactedTopic({ kafka, admin, topic, groupPrefix, log, parse: parseSigningSecretRecord });
    this.fallback = fallback;
  }

  start(): Promise<void> {
    return this.table.start();
  }

  stop(): Promise<void> {
    return this.table.stop();
  }

  get(tenant: string): SigningSecretRecord | undefined {
    return this.table.get(tenant);
  }

  /** The secrets a tenant's webhooks are signed with now, newest first. */
  secretsFor(tenant: string, now = Date.now()): readonly string[] {
    const own = liveSecrets(this.table.get(tenant), now, this.fallback);
    return own.length ? own : this.fallback;
  }

  /** Writes a record and waits until this instance reads it back (so it signs with it from then on). */
  async write(producer: Pick<Producer, 'send'>, record: SigningSecretRecord): Promise<void> {
    await writeSigningSecrets(producer, this.table.topic, record);
    await this.table.waitFor(record.tenant, (r) => r.updatedAt >= record.updatedAt);
  }
}

export async function writeSigningSecrets(producer: Pick<Producer, 'send'>, topic: string, record: SigningSecretRecord): Promise<void> {
  await producer.send({ topic, acks: -1, messages: [{ key: record.tenant, value: JSON.stringify(record) }] });
}

/** The API's view of the secrets: rotations and retirements are written with `send` (acks=-1, journaled). */
export function signingPort(signing: SigningSecrets, producer: Pick<Producer, 'send'>): SigningSecretsPort {
  const view = (tenant: string): SigningSecretsView => {
    const r = signing.get(tenant);
    return r ? { deploymentSecret: false, ...describeSecrets(r, Date.now()) } : { tenant, deploymentSecret: true, deploymentSecretUntil: null, secrets: [] };
  };
  return {
    describe: view,
    async rotate(tenant, graceMs) {
      const made = rotate(signing.get(tenant), tenant, Date.now(), graceMs);
      await signing.write(producer, made.record);
      return { id: made.secret.id, secret: made.secret.secret, view: view(tenant) };
    },
    async retire(tenant) {
      const r = signing.get(tenant);
      if (!r) return null;
      await signing.write(producer, retire(r, Math.max(Date.now(), r.updatedAt + 1)));
      return view(tenant);
    },
  };
}
