/**
 * Per-tenant webhook signing secrets on the embedded broker: rotated with the CLI
 * (`herald secrets`, against the running instance) and the API, read by a real HTTP
 * receiver that verifies each request the way the README tells receivers to.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Herald } from '../app/herald.ts';
import { verifyWebhookSignature } from '../channels/webhook.ts';
import { api, eventually, removeDir, startTestHerald, TEST_ENV } from './support/herald.ts';
import { type Received, WebhookReceiver } from './support/webhook-receiver.ts';

const run = promisify(execFile);
let h: Herald & { stateDir: string };
let receiver: WebhookReceiver;
let globexKey = '';
const DEPLOYMENT = TEST_ENV.HERALD_WEBHOOK_SECRET;

/** `npm run herald -- <args>` against the running instance's state dir. */
async function herald(...args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, ['cli/herald.ts', ...args], { env: { ...process.env, HERALD_STATE_DIR: h.stateDir, KAFKA_BROKERS: '', HERALD_LOG_LEVEL: 'warn' } });
  return stdout;
}

beforeAll(async () => {
  receiver = await new WebhookReceiver().start();
  h = await startTestHerald();
  globexKey = (JSON.parse(await herald('keys', 'create', '--tenant', 'globex', '--json')) as { key: string }).key;
  expect((await api(h, 'PUT', '/v1/users/ada', { webhookUrl: `${receiver.url}/acme-ada` })).status).toBe(202);
  expect((await api(h, 'PUT', '/v1/users/bob', { webhookUrl: `${receiver.url}/globex-bob` }, { authorization: `Bearer ${globexKey}` })).status).toBe(202);
  await eventually(async () => (await api(h, 'GET', '/v1/users/ada')).status === 200 && (await api(h, 'GET', '/v1/users/bob', undefined, { authorization: `Bearer ${globexKey}` })).status === 200);
}, 90_000);

afterAll(async () => {
  await h?.stop();
  await receiver?.stop();
  if (h) removeDir(h.stateDir);
});

let n = 0;
/** Publishes one event for a user and returns the webhook request it caused. */
async function deliver(path: string, user: string, headers: Record<string, string> = {}): Promise<Received> {
  const taskId = `t-${++n}`;
  const r = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'agent.task_completed', recipients: [user], data: { taskId, summary: 's' } }, headers);
  expect(r.status).toBe(202);
  return eventually(() => receiver.for(path).find((x) => (x.json.data as { taskId?: string } | undefined)?.taskId === taskId), 30_000);
}

const signatures = (r: Received) => String(r.headers['herald-signature']).split(',').filter((p) => p.startsWith('v1='));
const verifies = (secret: string, r: Received) => verifyWebhookSignature(secret, String(r.headers['herald-signature']), r.body);

describe('per-tenant signing secrets', () => {
  let first = '';
  let second = '';

  it('signs with the deployment secret until a tenant has its own', async () => {
    expect((await api(h, 'GET', '/v1/signing-secrets')).body).toEqual({ tenant: 'acme', deploymentSecret: true, deploymentSecretUntil: null, secrets: [] });
    const r = await deliver('/acme-ada', 'ada');
    expect(verifies(DEPLOYMENT, r)).toBe(true);
  }, 60_000);

  it('`herald secrets rotate` gives acme a secret of its own, and the deployment secret keeps signing through the grace period; globex is still signed with the deployment secret alone', async () => {
    const made = JSON.parse(await herald('secrets', 'rotate', '--tenant', 'acme', '--json')) as { id: string; secret: string };
    expect(made.secret).toMatch(/^whsec_[A-Za-z0-9_-]{43}$/);
    first = made.secret;
    // Every instance follows the topic: the running one signs with it once it has read it.
    const r = await eventually(async () => {
      const got = await deliver('/acme-ada', 'ada');
      return verifies(first, got) ? got : false;
    }, 30_000);
    // Receivers still verifying with HERALD_WEBHOOK_SECRET keep working until they switch.
    expect(signatures(r)).toHaveLength(2);
    expect(verifies(DEPLOYMENT, r)).toBe(true);
    const g = await deliver('/globex-bob', 'bob', { authorization: `Bearer ${globexKey}` });
    expect(verifies(DEPLOYMENT, g)).toBe(true);
    expect(verifies(first, g)).toBe(false);
  }, 90_000);

  it('rotating through the API sends both signatures during the grace period, and lists ids, never secrets', async () => {
    const rotated = await api<{ id: string; secret: string; secrets: { id: string; status: string; expiresAt: string | null }[] }>(h, 'POST', '/v1/signing-secrets/rotate', { gracePeriod: '1h' });
    expect(rotated.status).toBe(201);
    second = rotated.body.secret;
    expect(second).not.toBe(first);
    expect(rotated.body.secrets.map((s) => s.status)).toEqual(['current', 'signing until expiry']);
    const expires = Date.parse(rotated.body.secrets[1]!.expiresAt!);
    expect(expires - Date.now()).toBeGreaterThan(55 * 60_000);
    expect(expires - Date.now()).toBeLessThanOrEqual(3600_000);
    const r = await deliver('/acme-ada', 'ada');
    // The new secret, the one before, and the deployment secret (its grace period cut to this one's).
    expect(signatures(r)).toHaveLength(3);
    expect(verifies(second, r)).toBe(true);
    expect(verifies(first, r)).toBe(true);
    expect(verifies(DEPLOYMENT, r)).toBe(true);
    const listed = await api(h, 'GET', '/v1/signing-secrets');
    const text = JSON.stringify(listed.body);
    expect(text).not.toContain(first);
    expect(text).not.toContain(second);
    expect(listed.body).toMatchObject({ tenant: 'acme', deploymentSecret: false });
    expect(Date.parse((listed.body as { deploymentSecretUntil: string }).deploymentSecretUntil)).toBe(expires);
    const cli = await herald('secrets', 'list', '--tenant', 'acme');
    expect(cli).toContain(rotated.body.id);
    expect(cli).toContain('signing until expiry');
    expect(cli).toContain('(HERALD_WEBHOOK_SECRET)');
    expect(cli).not.toContain(first);
    expect(cli).not.toContain(second);
  }, 60_000);

  it('another tenant sees only its own secrets, and cannot rotate without admin scope', async () => {
    expect((await api(h, 'GET', '/v1/signing-secrets', undefined, { authorization: `Bearer ${globexKey}` })).body).toEqual({ tenant: 'globex', deploymentSecret: true, deploymentSecretUntil: null, secrets: [] });
    const reader = (JSON.parse(await herald('keys', 'create', '--tenant', 'acme', '--scope', 'read', '--json')) as { key: string }).key;
    const denied = await api(h, 'POST', '/v1/signing-secrets/rotate', {}, { authorization: `Bearer ${reader}` });
    expect(denied.status).toBe(403);
  }, 60_000);

  it('refuses an unknown field in a rotation (a misspelt gracePeriod would rotate with the default)', async () => {
    const bad = await api<{ error: string; field: string; message: string }>(h, 'POST', '/v1/signing-secrets/rotate', { grace: '1h' });
    expect([bad.status, bad.body.error, bad.body.field]).toEqual([400, 'HRL_SCHEMA_VIOLATION', 'grace']);
    expect(bad.body.message).toContain('gracePeriod');
  });

  it('refuses an unreadable grace period, naming the field', async () => {
    const bad = await api<{ error: string; field: string; message: string }>(h, 'POST', '/v1/signing-secrets/rotate', { gracePeriod: 'tomorrow' });
    expect(bad.status).toBe(400);
    expect(bad.body.field).toBe('gracePeriod');
    expect(bad.body.message).toContain('"tomorrow"');
  });

  it('retire stops the previous secret at once', async () => {
    const retired = await api<{ secrets: unknown[] }>(h, 'POST', '/v1/signing-secrets/retire');
    expect(retired.status).toBe(200);
    expect(retired.body.secrets).toHaveLength(1);
    const r = await deliver('/acme-ada', 'ada');
    expect(signatures(r)).toHaveLength(1);
    expect(verifies(second, r)).toBe(true);
    expect(verifies(first, r)).toBe(false);
    expect(verifies(DEPLOYMENT, r)).toBe(false);
  }, 60_000);

  it('refuses a sixth live secret through the API with 409, and rotates again once the old ones are retired', async () => {
    // Another tenant's admin key, so the secrets of the tests above stay as they are.
    const key = { authorization: `Bearer ${(JSON.parse(await herald('keys', 'create', '--tenant', 'umbrella', '--json')) as { key: string }).key}` };
    const rotate = () => api<{ error?: string; message?: string; secrets?: unknown[] }>(h, 'POST', '/v1/signing-secrets/rotate', {}, key);
    for (let i = 0; i < 5; i++) expect((await rotate()).status).toBe(201);
    const refused = await rotate();
    expect(refused.status).toBe(409);
    expect(refused.body).toMatchObject({ error: 'HRL_LIMIT_EXCEEDED' });
    expect(refused.body.message).toMatch(/^tenant umbrella already has 5 signing secrets live/);
    expect((await api(h, 'POST', '/v1/signing-secrets/retire', undefined, key)).status).toBe(200);
    expect((await rotate()).body.secrets).toHaveLength(2);
  }, 60_000);

  it('`herald secrets rotate` names each secret still signing with its own expiry (a shorter grace shortens the older ones)', async () => {
    const rotate = async (grace: string) => {
      const { stdout, stderr } = await run(process.execPath, ['cli/herald.ts', 'secrets', 'rotate', '--tenant', 'initech', '--grace', grace], { env: { ...process.env, HERALD_STATE_DIR: h.stateDir, KAFKA_BROKERS: '', HERALD_LOG_LEVEL: 'warn' } });
      return { secret: stdout.trim(), said: stderr };
    };
    const t0 = Date.now();
    const a = await rotate('24h');
    expect(a.said).toMatch(/^ss_\w+ is now tenant initech's signing secret; it is shown only now: give it to the tenant's receivers\. Still signing: HERALD_WEBHOOK_SECRET until (\S+) \(/);
    const b = await rotate('5m');
    const m = /Still signing: (ss_\w+) until (\S+), HERALD_WEBHOOK_SECRET until (\S+) \(/.exec(b.said);
    expect(m).not.toBeNull();
    const [, id, mine, deployment] = m!;
    expect(a.said.startsWith(id!)).toBe(true);
    // both now end 5 minutes after the second rotation, as `secrets list` shows
    for (const at of [mine!, deployment!]) expect(Math.abs(Date.parse(at) - (t0 + 5 * 60_000))).toBeLessThan(60_000);
    const list = await herald('secrets', 'list', '--tenant', 'initech');
    expect(list).toContain(id!);
    expect(list).toContain(mine!);
  }, 60_000);
});
