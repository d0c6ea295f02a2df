import { describe, expect, it } from 'vitest';
import { describeSecrets, liveSecrets, MAX_LIVE_SECRETS, retire, rotate, signingSecretId } from '../auth/signing-secrets.ts';
import { signWebhook, verifyWebhookSignature } from '../channels/webhook.ts';

const H = 3600_000;

describe('signing secret rotation', () => {
  it('makes the new secret current and keeps the previous one for the grace period only', () => {
    const a = rotate(undefined, 'acme', 0);
    expect(a.record.secrets).toHaveLength(1);
    expect(liveSecrets(a.record, 10 * H)).toEqual([a.secret.secret]);
    const b = rotate(a.record, 'acme', 10 * H, 2 * H);
    expect(liveSecrets(b.record, 10 * H)).toEqual([b.secret.secret, a.secret.secret]);
    expect(liveSecrets(b.record, 12 * H - 1)).toEqual([b.secret.secret, a.secret.secret]);
    expect(liveSecrets(b.record, 12 * H)).toEqual([b.secret.secret]);
    expect(describeSecrets(b.record, 13 * H).secrets.map((s) => s.status)).toEqual(['current', 'expired']);
  });

  it('refuses a rotation that would have more than five secrets signing, saying how to get out of it', () => {
    let r = rotate(undefined, 'acme', 0).record;
    for (let i = 1; i < MAX_LIVE_SECRETS; i++) r = rotate(r, 'acme', i * 60_000).record;
    expect(liveSecrets(r, 5 * 60_000)).toHaveLength(5);
    let refused: unknown;
    try {
      rotate(r, 'acme', 5 * 60_000);
    } catch (err) {
      refused = err;
    }
    expect(refused).toMatchObject({ code: 'HRL_LIMIT_EXCEEDED' });
    expect((refused as Error).message).toMatch(/^tenant acme already has 5 signing secrets live .* the most it may have is 5: .*\(POST \/v1\/signing-secrets\/retire.* "0s" ends it\), or wait until 1970-01-02T00:01:00.000Z$/);
    // A shorter grace period shortens the older ones' too: with none, the rotation goes through.
    expect(liveSecrets(rotate(r, 'acme', 5 * 60_000, 0).record, 5 * 60_000)).toHaveLength(1);
    expect(liveSecrets(rotate(retire(r, 5 * 60_000), 'acme', 5 * 60_000).record, 5 * 60_000)).toHaveLength(2);
  });

  it('never extends an earlier expiry, and drops expired secrets at the next rotation', () => {
    const a = rotate(undefined, 'acme', 0);
    const b = rotate(a.record, 'acme', 0, H);
    const c = rotate(b.record, 'acme', 30 * 60_000, 24 * H);
    expect(c.record.secrets.map((s) => s.expiresAt)).toEqual([null, 24 * H + 30 * 60_000, H]);
    const d = rotate(c.record, 'acme', 2 * H, 24 * H);
    expect(d.record.secrets.map((s) => s.id)).toEqual([d.secret.id, c.secret.id, b.secret.id]);
  });

  it('keeps the deployment secret (HERALD_WEBHOOK_SECRET) signing through the first rotation\'s grace period, as any rotated-out secret', () => {
    const deployment = ['herald-dev-secret'];
    const a = rotate(undefined, 'acme', 0, 2 * H);
    expect(liveSecrets(a.record, H, deployment)).toEqual([a.secret.secret, 'herald-dev-secret']);
    expect(liveSecrets(a.record, 2 * H, deployment)).toEqual([a.secret.secret]);
    expect(describeSecrets(a.record, H).deploymentSecretUntil).toBe(new Date(2 * H).toISOString());
    // A second rotation never extends it; retire ends it at once.
    const b = rotate(a.record, 'acme', H, 24 * H);
    expect(b.record.deploymentSecretUntil).toBe(2 * H);
    expect(liveSecrets(b.record, H, deployment)).toEqual([b.secret.secret, a.secret.secret, 'herald-dev-secret']);
    expect(liveSecrets(retire(b.record, H), H, deployment)).toEqual([b.secret.secret]);
    // A first rotation with no grace period switches at once.
    expect(liveSecrets(rotate(undefined, 'acme', 0, 0).record, 0, deployment)).toHaveLength(1);
  });

  it('retire leaves only the current secret', () => {
    const b = rotate(rotate(undefined, 'acme', 0).record, 'acme', 1, H);
    expect(liveSecrets(retire(b.record, 2), 2)).toEqual([b.secret.secret]);
  });

  it('refuses a tenant name that is not an id and a negative grace period', () => {
    expect(() => rotate(undefined, 'a b', 0)).toThrow(/--tenant/);
    expect(() => rotate(undefined, 'acme', 0, -1)).toThrow(/grace period/);
  });

  it('ids name a secret without showing it', () => {
    const s = rotate(undefined, 'acme', 0).secret;
    expect(s.id).toBe(signingSecretId(s.secret));
    expect(s.id).toMatch(/^ss_[0-9a-f]{12}$/);
    expect(s.secret).not.toContain(s.id.slice(3));
  });

  it('a signature with both live secrets verifies under either, and not under a retired one', () => {
    const [n, o] = ['new-secret', 'old-secret'];
    const header = signWebhook([n, o], 1000, '{}');
    expect(verifyWebhookSignature(n, header, '{}', 1000)).toBe(true);
    expect(verifyWebhookSignature(o, header, '{}', 1000)).toBe(true);
    expect(verifyWebhookSignature(o, signWebhook([n], 1000, '{}'), '{}', 1000)).toBe(false);
  });
});
