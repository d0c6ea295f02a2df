/**
 * API keys per tenant, the way Stripe and Knock issue them: a random secret shown once,
 * stored only as a scrypt hash on the compacted keys topic (so every instance knows every
 * key), revoked by writing the record again with `revokedAt`. A key's id is derived from
 * the secret (a SHA-256 prefix), so a presented key finds its record without a scan, and
 * the id can be listed and revoked without ever showing the secret.
 */
import { createHash, randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';

const scrypt = promisify(scryptCb) as (password: string, salt: Buffer, keylen: number, options: { N: number; r: number; p: number; maxmem: number }) => Promise<Buffer>;

import type { ApiKeyRecord, Scope } from '../schemas/types.ts';

export type { ApiKeyRecord, Scope };
export const SCOPES: readonly Scope[] = ['publish', 'read', 'admin'];

/** What a scope lets a key do: admin includes the others. */
export function allows(scopes: readonly Scope[], needed: Scope): boolean {
  return scopes.includes('admin') || scopes.includes(needed);
}


/** Longest key accepted in an Authorization header (ours are 46 characters). */
export const MAX_KEY_LENGTH = 256;
const PARAMS = { N: 16384, r: 8, p: 1 };
const KEYLEN = 32;

/** A new secret: `hk_` + 32 random bytes, base64url. */
export function generateKey(): string {
  return `hk_${randomBytes(32).toString('base64url')}`;
}

/** The id of a key, derived from its secret. */
export function keyIdOf(key: string): string {
  return `key_${createHash('sha256').update(key).digest('hex').slice(0, 16)}`;
}

export async function hashKey(key: string, params = PARAMS): Promise<string> {
  const salt = randomBytes(16);
  const hash = await scrypt(key, salt, KEYLEN, { ...params, maxmem: 64 * 1024 * 1024 });
  return `scrypt$${params.N}$${params.r}$${params.p}$${salt.toString('base64url')}$${hash.toString('base64url')}`;
}

export async function verifyKey(key: string, stored: string): Promise<boolean> {
  const [kind, n, r, p, salt, hash] = stored.split('$');
  if (kind !== 'scrypt' || !salt || !hash) return false;
  const expected = Buffer.from(hash, 'base64url');
  const got = await scrypt(key, Buffer.from(salt, 'base64url'), expected.length, { N: Number(n), r: Number(r), p: Number(p), maxmem: 64 * 1024 * 1024 });
  return got.length === expected.length && timingSafeEqual(got, expected);
}

/** Tenant names are ids: bounded and printable (they become parts of Kafka keys). */
export const TENANT_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export async function newKeyRecord(o: { tenant: string; scopes: Scope[]; label?: string | null; key?: string; now?: number }): Promise<{ key: string; record: ApiKeyRecord }> {
  if (!TENANT_PATTERN.test(o.tenant)) throw new Error(`--tenant: expected 1-64 letters, digits, '.', '_' or '-', got "${o.tenant.slice(0, 80)}"`);
  const bad = o.scopes.filter((s) => !SCOPES.includes(s));
  if (bad.length || o.scopes.length === 0) throw new Error(`--scope: expected some of ${SCOPES.join(', ')}, got "${o.scopes.join(',')}"`);
  const key = o.key ?? generateKey();
  return { key, record: { keyId: keyIdOf(key), tenant: o.tenant, scopes: [...new Set(o.scopes)], hash: await hashKey(key), label: o.label ?? null, createdAt: o.now ?? Date.now(), revokedAt: null } };
}

export interface Principal {
  keyId: string;
  tenant: string;
  scopes: Scope[];
}

export type AuthResult = { ok: true; principal: Principal } | { ok: false; why: string };

/**
 * Checks presented keys against the records a directory holds. scrypt costs ~50 ms of a
 * pool thread, so a key once verified is remembered (by a digest of the secret) until
 * its record changes; revocation is seen on the next request.
 */
export class Authenticator {
  private readonly verified = new Map<string, { digest: string; hash: string }>();
  private readonly lookup: (keyId: string) => ApiKeyRecord | undefined;

  constructor(lookup: (keyId: string) => ApiKeyRecord | undefined) {
    this.lookup = lookup;
  }

  /** Whether the key `keyId` (one that authenticated) is still live: not revoked, not gone. Synchronous, for open streams. */
  isLive(keyId: string): boolean {
    const record = this.lookup(keyId);
    return record !== undefined && record.revokedAt === null;
  }

  async authenticate(key: string): Promise<AuthResult> {
    if (key.length > MAX_KEY_LENGTH) return { ok: false, why: `the key is longer than ${MAX_KEY_LENGTH} characters` };
    const keyId = keyIdOf(key);
    const record = this.lookup(keyId);
    if (!record) return { ok: false, why: 'unknown API key' };
    if (record.revokedAt !== null) return { ok: false, why: `API key ${keyId} was revoked at ${new Date(record.revokedAt).toISOString()}` };
    const digest = createHash('sha256').update(key).digest('base64url');
    const known = this.verified.get(keyId);
    if (!(known && known.hash === record.hash && known.digest === digest)) {
      if (!(await verifyKey(key, record.hash))) return { ok: false, why: 'unknown API key' };
      if (this.verified.size >= 10_000) this.verified.delete(this.verified.keys().next().value!);
      this.verified.set(keyId, { digest, hash: record.hash });
    }
    return { ok: true, principal: { keyId, tenant: record.tenant, scopes: record.scopes } };
  }
}
