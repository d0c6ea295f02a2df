/**
 * Per-tenant webhook signing secrets, rotated the way Stripe and Standard Webhooks do it:
 * a rotation makes a new secret the current one and keeps the previous one signing for a
 * grace period (24 h unless told otherwise), so every request carries one `v1=` signature
 * per live secret and receivers switch at their own pace; `retire` ends the grace period
 * at once. A tenant without a record is signed with HERALD_WEBHOOK_SECRET; its first
 * rotation keeps that secret signing for the grace period too, as any rotated-out secret.
 */
import { createHash, randomBytes } from 'node:crypto';
import { HeraldError } from '../errors.ts';
import type { SigningSecret, SigningSecretRecord } from '../schemas/types.ts';
import { TENANT_PATTERN } from './keys.ts';

export type { SigningSecret, SigningSecretRecord };

/**
 * Secrets of its own a tenant may have signing at once (the current one and those in their
 * grace period). Each adds a `v1=` to every Herald-Signature header: unbounded, automated
 * rotations grew the header past receivers' limits (431), and every delivery failed.
 */
export const MAX_LIVE_SECRETS = 5;

/** How long a rotated-out secret keeps signing unless told otherwise. */
export const DEFAULT_GRACE_MS = 24 * 3600_000;

export function generateSigningSecret(): string {
  return `whsec_${randomBytes(32).toString('base64url')}`;
}

export function signingSecretId(secret: string): string {
  return `ss_${createHash('sha256').update(secret).digest('hex').slice(0, 12)}`;
}

/** The secrets that sign at `now`, newest first; `deployment` (HERALD_WEBHOOK_SECRET's) last, while the first rotation's grace period lasts. */
export function liveSecrets(record: SigningSecretRecord | undefined, now: number, deployment: readonly string[] = []): string[] {
  const own = (record?.secrets ?? []).filter((s) => s.expiresAt === null || s.expiresAt > now).map((s) => s.secret);
  return (record?.deploymentSecretUntil ?? 0) > now ? [...own, ...deployment.filter((d) => !own.includes(d))] : own;
}

/**
 * A new current secret for the tenant; the previous live ones keep signing until
 * `now + graceMs` (or their own earlier expiry). Expired ones are dropped.
 */
export function rotate(record: SigningSecretRecord | undefined, tenant: string, now: number, graceMs = DEFAULT_GRACE_MS, secret = generateSigningSecret()): { record: SigningSecretRecord; secret: SigningSecret } {
  if (!TENANT_PATTERN.test(tenant)) throw new Error(`--tenant: expected 1-64 letters, digits, '.', '_' or '-', got "${tenant.slice(0, 80)}"`);
  if (!Number.isFinite(graceMs) || graceMs < 0) throw new Error(`grace period: expected a duration of 0 or more, got ${graceMs}`);
  const fresh: SigningSecret = { id: signingSecretId(secret), secret, createdAt: now, expiresAt: null };
  const kept = (record?.secrets ?? [])
    .filter((s) => s.expiresAt === null || s.expiresAt > now)
    .map((s) => ({ ...s, expiresAt: Math.min(s.expiresAt ?? Infinity, now + graceMs) }))
    .filter((s) => s.expiresAt > now);
  if (kept.length + 1 > MAX_LIVE_SECRETS) {
    const until = new Date(Math.min(...kept.map((s) => s.expiresAt))).toISOString();
    throw new HeraldError('HRL_LIMIT_EXCEEDED', `tenant ${tenant} already has ${kept.length} signing secrets live (the current one and ${kept.length - 1} rotated out, still in their grace period), the most it may have is ${MAX_LIVE_SECRETS}: each adds a v1= signature to every webhook. Retire the rotated-out ones first (POST /v1/signing-secrets/retire, or npm run herald -- secrets retire --tenant ${tenant}), rotate with a shorter gracePeriod (it shortens theirs too; "0s" ends it), or wait until ${until}`, { field: 'gracePeriod' });
  }
  // The deployment's secret signed until now (the first rotation) or is still in its grace period.
  const deploymentUntil = record === undefined ? now + graceMs : Math.min(record.deploymentSecretUntil ?? 0, now + graceMs);
  return { record: { tenant, secrets: [fresh, ...kept], updatedAt: now, ...(deploymentUntil > now ? { deploymentSecretUntil: deploymentUntil } : {}) }, secret: fresh };
}

/** Only the current secret signs from now on. */
export function retire(record: SigningSecretRecord, now: number): SigningSecretRecord {
  return { tenant: record.tenant, secrets: record.secrets.slice(0, 1), updatedAt: now };
}

export function parseSigningSecretRecord(id: string, value: unknown): SigningSecretRecord {
  const r = value as SigningSecretRecord;
  if (r?.tenant !== id || !Array.isArray(r.secrets) || r.secrets.some((s) => typeof s?.secret !== 'string' || typeof s.id !== 'string')) throw new Error('not a signing secret record');
  return r;
}

/** What may be shown of a record: ids and times, never the secrets. */
export function describeSecrets(record: SigningSecretRecord, now: number): { tenant: string; deploymentSecretUntil: string | null; secrets: { id: string; createdAt: string; expiresAt: string | null; status: 'current' | 'signing until expiry' | 'expired' }[] } {
  const until = record.deploymentSecretUntil ?? 0;
  return {
    tenant: record.tenant,
    deploymentSecretUntil: until > now ? new Date(until).toISOString() : null,
    secrets: record.secrets.map((s, i) => ({
      id: s.id,
      createdAt: new Date(s.createdAt).toISOString(),
      expiresAt: s.expiresAt === null ? null : new Date(s.expiresAt).toISOString(),
      status: s.expiresAt !== null && s.expiresAt <= now ? 'expired' : i === 0 ? 'current' : 'signing until expiry',
    })),
  };
}
