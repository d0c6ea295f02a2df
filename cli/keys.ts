/**
 * `herald keys create|list|revoke`: API keys on the compacted keys topic. Against real
 * Kafka (KAFKA_BROKERS) they work with or without a running Herald; on the embedded
 * broker they reach the running instance's broker through HERALD_STATE_DIR/endpoints.json.
 */
import { KeyDirectory, writeKeyRecord } from '../app/keys.ts';
import { newKeyRecord, type Scope } from '../auth/keys.ts';
import type { HeraldConfig } from '../config.ts';
import { HeraldError } from '../errors.ts';
import { withCluster } from '../app/cluster.ts';
import type { ApiKeyRecord } from '../schemas/types.ts';
import { topicName } from '../topology.ts';

async function withKeys<T>(config: HeraldConfig, fn: (o: { directory: KeyDirectory; write: (r: ApiKeyRecord) => Promise<void> }) => Promise<T>): Promise<T> {
  return withCluster(config, 'keys', async ({ kafka, admin, producer, log }) => {
    const topic = topicName(config.topicPrefix, 'keys');
    const directory = new KeyDirectory(kafka, admin, topic, config.topicPrefix, log);
    try {
      await directory.start();
      return await fn({ directory, write: (r) => writeKeyRecord(producer, topic, r) });
    } finally {
      await directory.stop();
    }
  });
}

export function parseScopes(text: string): Scope[] {
  return text.split(',').map((s) => s.trim()).filter(Boolean) as Scope[];
}

export async function createKey(config: HeraldConfig, o: { tenant: string; scopes: Scope[]; label?: string }): Promise<{ key: string; record: ApiKeyRecord }> {
  const made = await newKeyRecord({ tenant: o.tenant, scopes: o.scopes, label: o.label ?? null });
  await withKeys(config, async ({ directory, write }) => {
    await write(made.record);
    await directory.waitFor(made.record.keyId);
  });
  return made;
}

export async function listKeys(config: HeraldConfig, tenant?: string): Promise<ApiKeyRecord[]> {
  return withKeys(config, async ({ directory }) => directory.list().filter((r) => !tenant || r.tenant === tenant));
}

export async function revokeKey(config: HeraldConfig, keyId: string): Promise<ApiKeyRecord> {
  return withKeys(config, async ({ directory, write }) => {
    const r = directory.get(keyId);
    if (!r) throw new HeraldError('HRL_NOT_FOUND', `no API key ${keyId}; \`npm run herald -- keys list\` shows the ids`);
    if (r.revokedAt !== null) return r;
    const revoked = { ...r, revokedAt: Date.now() };
    await write(revoked);
    return revoked;
  });
}

export function formatKeys(records: Omit<ApiKeyRecord, 'hash'>[]): string[] {
  const rows = records.map((r) => [r.keyId, r.tenant, r.scopes.join(','), new Date(r.createdAt).toISOString(), r.revokedAt ? `revoked ${new Date(r.revokedAt).toISOString()}` : 'active', r.label ?? '']);
  const head = ['KEY ID', 'TENANT', 'SCOPES', 'CREATED', 'STATUS', 'LABEL'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  return [head, ...rows].map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd());
}
