/**
 * The hostile caller's probes, against Herald as a user runs it (`npm start`, its own
 * process) and through real HTTP: tenants cannot read, write or redirect each other's
 * data; revoked keys stop working; webhook URLs cannot reach Herald's own network; huge
 * ids never stall the process. Keys are made and revoked with the CLI, as an operator does.
 */
import { type ChildProcess, execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AUTH, eventually, TEST_KEY } from './support/herald.ts';
import { startWithNpm, type NpmHerald } from './support/processes.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';

const run = promisify(execFile);
const children: ChildProcess[] = [];
let herald: NpmHerald;
let stateDir: string;
// Receivers on 127.0.0.2: the only address the policy allows, so 127.0.0.1 (where Herald
// itself and other local services listen) stays off limits, as a private network would.
const acmeHooks = new WebhookReceiver();
const evilHooks = new WebhookReceiver();
const keys = { globex: '', acmeRead: '' };

/** `npm run herald -- <args>` against the running instance's state dir. */
async function cli(...args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, ['cli/herald.ts', ...args], { env: { ...process.env, HERALD_STATE_DIR: stateDir, KAFKA_BROKERS: '', HERALD_LOG_LEVEL: 'warn' } });
  return stdout;
}

async function call(method: string, path: string, o: { key?: string | null; body?: unknown; headers?: Record<string, string> } = {}) {
  const key = o.key === undefined ? TEST_KEY : o.key;
  const res = await fetch(`${herald.url}${path}`, {
    method,
    headers: { ...(key ? { authorization: `Bearer ${key}` } : {}), ...(o.body !== undefined ? { 'content-type': 'application/json' } : {}), ...o.headers },
    ...(o.body !== undefined ? { body: typeof o.body === 'string' ? o.body : JSON.stringify(o.body) } : {}),
  });
  const text = await res.text();
  let json: Record<string, unknown> = {};
  try {
    json = JSON.parse(text) as Record<string, unknown>;
  } catch {
    // not JSON (Node's own 431, say)
  }
  return { status: res.status, json, text };
}

beforeAll(async () => {
  await acmeHooks.start('127.0.0.2');
  await evilHooks.start('127.0.0.2');
  herald = await startWithNpm({ HERALD_OUTBOUND_ALLOW: '127.0.0.2/32', HERALD_MAX_DELIVERY_ATTEMPTS: '1' }, children);
  stateDir = herald.stateDir;
}, 90_000);

afterAll(async () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
  await Promise.all([acmeHooks.stop(), evilHooks.stop()]);
});

describe('tenants and keys', () => {
  it('makes keys with the CLI, and a revoked key answers 401 on the running instance', async () => {
    const made = JSON.parse(await cli('keys', 'create', '--tenant', 'globex', '--scope', 'admin', '--json')) as { key: string; keyId: string };
    keys.globex = made.key;
    keys.acmeRead = (JSON.parse(await cli('keys', 'create', '--tenant', 'acme', '--scope', 'read', '--json')) as { key: string }).key;
    const doomed = JSON.parse(await cli('keys', 'create', '--tenant', 'acme', '--scope', 'publish', '--json')) as { key: string; keyId: string };
    const listed = await cli('keys', 'list');
    expect(listed).toContain(made.keyId);
    expect(listed).not.toContain(made.key); // never the secret
    await eventually(async () => (await call('GET', '/v1/users/nobody', { key: keys.globex })).status === 404);
    const event = { type: 'comment.created', recipients: ['nobody'], data: { commentId: 'c0' } };
    await eventually(async () => (await call('POST', '/v1/events', { key: doomed.key, body: event })).status === 202);
    expect(await cli('keys', 'revoke', doomed.keyId)).toContain(`revoked ${doomed.keyId}`);
    await eventually(async () => (await call('POST', '/v1/events', { key: doomed.key, body: event })).status === 401, 10_000);
    const refused = await call('POST', '/v1/events', { key: doomed.key, body: event });
    expect(refused.json).toMatchObject({ error: 'HRL_UNAUTHORIZED' });
    expect(String(refused.json.message)).toContain('revoked');
    expect((await call('GET', '/v1/users/nobody', { key: null })).status).toBe(401);
    expect((await call('GET', '/healthz', { key: null })).status).toBe(200);
  }, 60_000);

  it('ends an inbox stream open with a key once the key is revoked, and sends it nothing after', async () => {
    const reader = JSON.parse(await cli('keys', 'create', '--tenant', 'acme', '--scope', 'read', '--json')) as { key: string; keyId: string };
    await eventually(async () => (await call('GET', '/v1/users/nobody', { key: reader.key })).status === 404);
    expect((await call('PUT', '/v1/users/rita', { body: { name: 'Rita' } })).status).toBe(202);
    const res = await fetch(`${herald.url}/v1/users/rita/inbox/stream`, { headers: { authorization: `Bearer ${reader.key}`, accept: 'text/event-stream' }, signal: AbortSignal.timeout(30_000) });
    expect(res.status).toBe(200);
    let text = '';
    const ended = (async () => {
      const decoder = new TextDecoder();
      for await (const chunk of res.body!) text += decoder.decode(chunk as Uint8Array, { stream: true });
      return 'ended';
    })();
    await eventually(async () => text.includes(': connected'), 10_000);
    expect(await cli('keys', 'revoke', reader.keyId)).toContain(`revoked ${reader.keyId}`);
    await eventually(async () => (await call('GET', '/v1/users/nobody', { key: reader.key })).status === 401, 10_000);
    expect((await call('POST', '/v1/events', { body: { type: 'agent.task_completed', recipients: ['rita'], data: { taskId: 'after-revoke' } } })).status).toBe(202);
    expect(await ended).toBe('ended');
    expect(text).not.toContain('after-revoke');
  }, 60_000);

  it('checks a key\'s scope before the body: a read key writing gets 403 whatever it sent', async () => {
    await eventually(async () => (await call('GET', '/v1/users/nobody', { key: keys.acmeRead })).status === 404);
    expect((await call('PUT', '/v1/users/carol', { key: keys.acmeRead, body: '{not json' })).json).toMatchObject({ error: 'HRL_FORBIDDEN' });
    expect((await call('PUT', '/v1/users/carol', { key: keys.acmeRead, body: 'x', headers: { 'content-type': 'text/plain' } })).status).toBe(403);
  });

  it('keeps one tenant out of another\'s users, notifications and audiences, and their webhooks where they belong', async () => {
    const globex = { key: keys.globex };
    expect((await call('PUT', '/v1/users/carol', { body: { email: 'carol@acme.example', webhookUrl: `${acmeHooks.url}/carol` } })).status).toBe(202);
    await eventually(async () => (await call('GET', '/v1/users/carol')).status === 200);
    // globex reads: nothing of acme's carol
    const read = await call('GET', '/v1/users/carol', globex);
    expect([read.status, read.text]).not.toContain('carol@acme.example');
    expect(read.status).toBe(404);
    // globex writes: its own carol, not acme's
    expect((await call('PUT', '/v1/users/carol', { ...globex, body: { webhookUrl: `${evilHooks.url}/stolen` } })).status).toBe(202);
    await eventually(async () => (await call('GET', '/v1/users/carol', globex)).status === 200);
    expect((await call('DELETE', '/v1/users/carol', globex)).status).toBe(202);
    expect((await call('PUT', '/v1/users/carol/preferences', { ...globex, body: { categories: { collaboration: false } } })).status).toBe(202);
    // globex cannot publish as acme
    const spoof = await call('POST', '/v1/events', { ...globex, body: { type: 'comment.created', tenant: 'acme', recipients: ['carol'], data: { commentId: 'x' } } });
    expect([spoof.status, spoof.json.error]).toEqual([403, 'HRL_TENANT_MISMATCH']);
    // acme's notification still reaches acme's receiver only
    const sent = await call('POST', '/v1/events', { body: { type: 'comment.created', recipients: ['carol'], data: { commentId: 'c1', documentTitle: 'Plan', excerpt: 'hi' } } });
    expect(sent.status).toBe(202);
    const id = (sent.json.notifications as { notificationId: string }[])[0]!.notificationId;
    await eventually(() => acmeHooks.for('/carol').length === 1, 30_000);
    expect(evilHooks.received).toHaveLength(0);
    const mine = await eventually(async () => {
      const r = await call('GET', `/v1/notifications/${id}`);
      return r.status === 200 && r.json.status === 'DELIVERED' ? r : null;
    }, 20_000);
    expect(mine.json.tenant).toBe('acme');
    // globex asks for acme's notification: the same 404 as for one that does not exist
    const theirs = await call('GET', `/v1/notifications/${id}`, globex);
    const none = await call('GET', `/v1/notifications/ntf_${'0'.repeat(32)}`, globex);
    expect([theirs.status, theirs.json.error]).toEqual([none.status, none.json.error]);
    expect(theirs.status).toBe(404);
    const list = await call('GET', '/v1/users/carol/notifications', globex);
    expect(list.json.notifications).toEqual([]);
    // audiences: globex's edits land in globex's audience
    expect((await call('PUT', '/v1/audiences/team/members', { body: { add: ['carol', 'dave'] } })).status).toBe(202);
    expect((await call('PUT', '/v1/audiences/team/members', { ...globex, body: { add: ['mallory'], remove: ['carol'] } })).status).toBe(202);
    await eventually(async () => ((await call('GET', '/v1/audiences/team/members')).json.members as string[] | undefined)?.length === 2);
    await new Promise((r) => setTimeout(r, 500)); // globex's records are read by now too
    expect((await call('GET', '/v1/audiences/team/members')).json.members).toEqual(['carol', 'dave']);
    expect((await call('GET', '/v1/audiences/team/members', globex)).json.members).toEqual(['mallory']);
    // a read-only key cannot change anything
    expect((await call('PUT', '/v1/users/carol', { key: keys.acmeRead, body: { webhookUrl: `${evilHooks.url}/x` } })).status).toBe(403);
  }, 90_000);
});

describe('outbound safety', () => {
  it('refuses every SSRF form of webhook URL at the API, without echoing credentials', async () => {
    const port = new URL(herald.url).port;
    for (const url of ['http://169.254.169.254/latest/meta-data/', `http://0:${port}/`, `http://[::ffff:127.0.0.1]:${port}/`, `http://127.0.0.1:${port}/v1/events`, `http://2130706433:${port}/`, 'http://10.0.0.5/', 'http://100.64.1.1/', 'http://[fe80::1]/', 'https://ops:hunter2@hooks.example/x', 'file:///etc/passwd']) {
      const r = await call('PUT', '/v1/users/probe', { body: { webhookUrl: url } });
      expect([url, r.status, r.json.error, r.json.field]).toEqual([url, 400, 'HRL_DESTINATION_REFUSED', 'webhookUrl']);
      expect(r.text).not.toContain('hunter2');
    }
  });

  it('refuses at delivery a name that resolves to a refused address, and says so without internals', async () => {
    const port = new URL(herald.url).port;
    // localhost is not a literal address: accepted at the API, refused after DNS at delivery.
    expect((await call('PUT', '/v1/users/rebind', { body: { webhookUrl: `http://localhost:${port}/v1/users/carol` } })).status).toBe(202);
    await eventually(async () => (await call('GET', '/v1/users/rebind')).status === 200);
    const sent = await call('POST', '/v1/events', { body: { type: 'comment.created', recipients: ['rebind'], data: { commentId: 'c2' } } });
    const id = (sent.json.notifications as { notificationId: string }[])[0]!.notificationId;
    const failed = await eventually(async () => {
      const r = await call('GET', `/v1/notifications/${id}`);
      return r.status === 200 && (r.json.events as { status: string }[]).some((e) => e.status === 'DEAD_LETTERED' || e.status === 'FAILED') ? r : null;
    }, 30_000);
    const reasons = (failed.json.events as { reason: string }[]).map((e) => e.reason).join('\n');
    expect(reasons).toContain('destination refused');
    expect(reasons).not.toMatch(/HRL_UNAUTHORIZED|Bearer|Authorization|401/); // nothing of what the target (Herald's own API) would have answered
  }, 60_000);
});

describe('hostile sizes', () => {
  it('answers a 10 MB id on every route with a bounded error, cut off at the limit; /healthz answers throughout', async () => {
    const huge = 'x'.repeat(10 * 1024 * 1024);
    // Herald's own event-loop delay (prom-client's monitor, reset at each scrape), not the
    // test client's: on a loaded 2-core machine the client's round trips jitter by themselves.
    const loopLagMax = async () => Number(/^nodejs_eventloop_lag_max_seconds\{process="primary"\} (\S+)$/m.exec(await (await fetch(`${herald.url}/metrics`)).text())?.[1]);
    await loopLagMax();
    const latencies: number[] = [];
    let polling = true;
    // The poller has connections of its own: a socket the server closes after cutting off a
    // 10 MB probe (431/413) must not be the keep-alive socket a /healthz request is sent on.
    const own = new Agent();
    const poller = (async () => {
      while (polling) {
        const t = performance.now();
        const r = await request(`${herald.url}/healthz`, { dispatcher: own });
        await r.body.text();
        expect(r.statusCode).toBe(200);
        latencies.push(performance.now() - t);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const probes: [string, string, unknown][] = [
      ['GET', `/v1/users/${huge}`, undefined],
      ['PUT', '/v1/users/ada', { name: huge }],
      ['POST', '/v1/events', { type: 'comment.created', id: huge, recipients: ['ada'], data: {} }],
      ['POST', '/v1/events', { type: 'comment.created', recipients: [huge], data: {} }],
      ['PUT', '/v1/audiences/team/members', { add: [huge] }],
      ['PUT', '/v1/audiences/team/members', { add: ['x'.repeat(3 * 1024 * 1024)] }],
      ['PUT', '/v1/users/ada/preferences', { categories: { [huge]: true } }],
      ['GET', `/v1/notifications/${huge}`, undefined],
    ];
    poller.catch(() => undefined); // a failure is reported where the poller is awaited, not as an unhandled rejection
    await new Promise((r) => setTimeout(r, 100)); // the poller is under way before the first probe
    const answers: number[] = [];
    for (const [method, path, body] of probes) {
      const r = await call(method, path, body !== undefined ? { body } : {}).catch(() => ({ status: 0, text: '' }));
      answers.push(r.status);
      expect(r.text.length).toBeLessThan(2000); // never echoed back
    }
    const during = latencies.length;
    polling = false;
    await poller;
    await own.close();
    // Over a limit, Node (431) and Fastify (413) answer and close the socket, sometimes
    // before the client has finished sending 10 MB: it then sees the connection closed (0).
    // Either way the request was cut off at the limit; /healthz answered throughout.
    expect(answers.every((s) => [0, 400, 413, 431].includes(s)), `answers ${answers.join(', ')}`).toBe(true);
    expect(answers.filter((s) => s !== 0).length, `answers ${answers.join(', ')}`).toBeGreaterThan(0);
    const lag = await loopLagMax();
    // How long the loop stalled is a speed figure (the bench's business), printed, not asserted: it moves with the machine's load.
    console.info(`[security] event loop lag max ${Math.round(lag * 1000)} ms during the 10 MB probes; healthz round trips max ${Math.round(Math.max(...latencies))} ms`);
    expect(during).toBeGreaterThan(0); // /healthz was polled from before the first probe to after the last
  }, 60_000);
});

describe('the development key', () => {
  it('is made at first start, printed on its own line before the ready line, kept in the state dir, and works', async () => {
    const h = await startWithNpm({ HERALD_DEV_KEY: '' }, children);
    const out = h.output();
    const key = /^herald dev key (hk_\S+)$/m.exec(out)?.[1];
    expect(key).toBeDefined();
    expect(out.indexOf('herald dev key')).toBeLessThan(out.indexOf('herald ready'));
    expect(readFileSync(join(h.stateDir, 'dev-key'), 'utf8').trim()).toBe(key);
    const ok = await fetch(`${h.url}/v1/users/nobody`, { headers: { authorization: `Bearer ${key}` } });
    expect(ok.status).toBe(404); // authenticated: the user just does not exist
    const wrong = await fetch(`${h.url}/v1/users/nobody`, { headers: AUTH });
    expect(wrong.status).toBe(401); // TEST_KEY was not configured for this one
    h.npm.kill('SIGTERM');
  }, 90_000);
});
