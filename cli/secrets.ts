/**
 * `herald secrets rotate|retire|list`: per-tenant webhook signing secrets on the compacted
 * signing-secrets topic (the API's /v1/signing-secrets routes do the same for a tenant's
 * own admin key). Like `herald keys`, they reach the running embedded instance's broker,
 * or KAFKA_BROKERS.
 */
import { SigningSecrets } from '../app/signing-secrets.ts';
import { describeSecrets, retire, rotate, type SigningSecretRecord } from '../auth/signing-secrets.ts';
import { secretsOf } from '../channels/webhook.ts';
import type { HeraldConfig } from '../config.ts';
import { HeraldError } from '../errors.ts';
import { topicName } from '../topology.ts';
import { withCluster } from '../app/cluster.ts';

async function withSecrets<T>(config: HeraldConfig, fn: (s: SigningSecrets, write: (r: SigningSecretRecord) => Promise<void>) => Promise<T>): Promise<T> {
  return withCluster(config, 'secrets', async ({ kafka, admin, producer, log }) => {
    const signing = new SigningSecrets(kafka, admin, topicName(config.topicPrefix, 'signingSecrets'), config.topicPrefix, log, secretsOf(config.webhookSecret));
    try {
      await signing.start();
      return await fn(signing, (r) => signing.write(producer, r));
    } finally {
      await signing.stop();
    }
  });
}

export async function rotateSecret(config: HeraldConfig, tenant: string, graceMs: number): Promise<{ id: string; secret: string; record: SigningSecretRecord }> {
  return withSecrets(config, async (signing, write) => {
    const made = rotate(signing.get(tenant), tenant, Date.now(), graceMs);
    await write(made.record);
    return { id: made.secret.id, secret: made.secret.secret, record: made.record };
  });
}

export async function retireSecrets(config: HeraldConfig, tenant: string): Promise<SigningSecretRecord> {
  return withSecrets(config, async (signing, write) => {
    const r = signing.get(tenant);
    if (!r) throw new HeraldError('HRL_NOT_FOUND', `tenant ${tenant} has no signing secret of its own (its webhooks are signed with HERALD_WEBHOOK_SECRET); \`npm run herald -- secrets rotate --tenant ${tenant}\` makes one`);
    const retired = retire(r, Math.max(Date.now(), r.updatedAt + 1));
    await write(retired);
    return retired;
  });
}

export async function listSecrets(config: HeraldConfig, tenant?: string): Promise<SigningSecretRecord[]> {
  return withSecrets(config, async (signing) => signing.table.values().filter((r) => !tenant || r.tenant === tenant).sort((a, b) => a.tenant.localeCompare(b.tenant)));
}

export function formatSecrets(records: SigningSecretRecord[], now = Date.now()): string[] {
  const rows = records.flatMap((r) => {
    const d = describeSecrets(r, now);
    const own = d.secrets.map((s) => [r.tenant, s.id, s.createdAt, s.status, s.expiresAt ?? '']);
    return d.deploymentSecretUntil ? [...own, [r.tenant, '(HERALD_WEBHOOK_SECRET)', '', 'signing until expiry', d.deploymentSecretUntil]] : own;
  });
  const head = ['TENANT', 'SECRET ID', 'CREATED', 'STATUS', 'EXPIRES'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [head, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd());
}
