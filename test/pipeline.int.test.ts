/**
 * The end-to-end path through all seven stages on the embedded broker, driven through
 * the HTTP API, with a real webhook receiver.
 */
import { execFile } from 'node:child_process';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyWebhookSignature } from '../channels/webhook.ts';
import type { NotificationView } from '../processors/outcome.ts';
import type { Herald } from '../app/herald.ts';
import { topicName } from '../topology.ts';
import { api, collect, eventually, removeDir, startTestHerald, AUTH, TEST_KEY } from './support/herald.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';

let h: Herald & { stateDir: string };
const hooks = new WebhookReceiver();

beforeAll(async () => {
  await hooks.start();
  h = await startTestHerald();
  for (const [id, extra] of [['ada', {}], ['bob', { locale: 'de' }], ['flaky', {}], ['gone', { active: false }]] as const) {
    const res = await api(h, 'PUT', `/v1/users/${id}`, { name: id, webhookUrl: `${hooks.url}/${id}`, ...extra });
    expect(res.status).toBe(202);
  }
  await eventually(async () => (await api(h, 'GET', '/v1/users/gone')).status === 200);
});

afterAll(async () => {
  await h?.stop();
  await hooks.stop();
  if (h) removeDir(h.stateDir);
});

const lifecycle = (id: string) => api<NotificationView>(h, 'GET', `/v1/notifications/${id}`);
async function terminal(id: string, count = 1): Promise<NotificationView> {
  return eventually(async () => {
    const r = await lifecycle(id);
    return r.status === 200 && r.body.terminal.length >= count ? r.body : false;
  });
}

describe('end-to-end through the HTTP API', () => {
  it('a profile PUT right before the publish is there when enrich looks the recipient up (it is not dropped as unknown)', async () => {
    // given users created and, at once, without waiting for GET /v1/users to see them, sent an event
    const ids: string[] = [];
    for (const u of ['fresh-1', 'fresh-2', 'fresh-3']) {
      expect((await api(h, 'PUT', `/v1/users/${u}`, { name: u, webhookUrl: `${hooks.url}/${u}` })).status).toBe(202);
      const res = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'comment.created', recipients: [u], actor: 'linus', data: { commentId: `c-${u}`, documentTitle: 'Plan', excerpt: 'hi' } });
      expect(res.status).toBe(202);
      ids.push(res.body.notifications[0]!.notificationId);
    }
    // then each one is delivered, and enrich says it joined the profile
    for (const id of ids) {
      const view = await terminal(id);
      expect(view.terminal).toEqual(['webhook:DELIVERED']);
      expect(view.events.find((e) => e.stage === 'enrich')).toMatchObject({ status: 'ENRICHED' });
    }
    // and a recipient nobody created is still dropped as unknown
    const nobody = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'comment.created', recipients: ['never-created'], actor: 'linus', data: { commentId: 'c-n', documentTitle: 'Plan', excerpt: 'hi' } });
    const dropped = await eventually(async () => {
      const r = await lifecycle(nobody.body.notifications[0]!.notificationId);
      return r.status === 200 && r.body.status === 'DROPPED' ? r.body : false;
    });
    expect(dropped.events.find((e) => e.stage === 'enrich')).toMatchObject({ reasonCode: 'unknown_recipient' });
  });

  it('a GET right after a PUT reads it (profiles and audience members)', async () => {
    expect((await api(h, 'PUT', '/v1/users/read-after', { name: 'Rae', webhookUrl: `${hooks.url}/read-after` })).status).toBe(202);
    const user = await api<{ name: string }>(h, 'GET', '/v1/users/read-after');
    expect(user.status).toBe(200);
    expect(user.body.name).toBe('Rae');
    expect((await api(h, 'PUT', '/v1/audiences/read-after/members', { add: ['m1', 'm2'] })).status).toBe(202);
    expect((await api<{ members: string[] }>(h, 'GET', '/v1/audiences/read-after/members')).body.members).toEqual(['m1', 'm2']);
  });

  it('audience members added right before the publish are all notified', async () => {
    for (const u of ['aud-1', 'aud-2']) expect((await api(h, 'PUT', `/v1/users/${u}`, { name: u, webhookUrl: `${hooks.url}/${u}` })).status).toBe(202);
    expect((await api(h, 'PUT', '/v1/audiences/reviewers-now/members', { add: ['aud-1', 'aud-2'] })).status).toBe(202);
    const res = await api<{ eventId: string }>(h, 'POST', '/v1/events', { type: 'comment.created', audience: 'reviewers-now', actor: 'linus', data: { commentId: 'c-aud', documentTitle: 'Plan', excerpt: 'hi' } });
    expect(res.status).toBe(202);
    for (const u of ['aud-1', 'aud-2']) await eventually(() => hooks.received.some((r) => r.path === `/${u}`), 30_000);
  });

  it('delivers email over SMTP to the embedded sink and shows it in the dev mailbox, next to the webhook', async () => {
    expect((await api(h, 'PUT', '/v1/users/mia', { name: 'Mia', email: 'mia@example.com', webhookUrl: `${hooks.url}/mia` })).status).toBe(202);
    await eventually(async () => (await api(h, 'GET', '/v1/users/mia')).status === 200);
    const res = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'billing.invoice_paid', recipients: ['mia'], data: { invoiceNumber: 'INV-7', amount: '12.00', currency: 'EUR' } });
    const id = res.body.notifications[0]!.notificationId;
    const view = await terminal(id, 2);
    expect(view.terminal.sort()).toEqual(['email:DELIVERED', 'webhook:DELIVERED']);
    const box = await api<{ mails: { to: string[]; subject: string; text: string; html: string; headers: Record<string, string> }[] }>(h, 'GET', '/v1/dev/mailbox?to=mia@example.com');
    expect(box.status).toBe(200);
    expect(box.body.mails).toHaveLength(1);
    expect(box.body.mails[0]).toMatchObject({ to: ['mia@example.com'], subject: 'Receipt for invoice INV-7' });
    expect(box.body.mails[0]!.text).toContain('We received your payment of 12.00 EUR.');
    expect(box.body.mails[0]!.headers['x-herald-notification']).toBe(id);
  });

  it('delivers a posted event as a signed webhook and records every stage in the lifecycle', async () => {
    const res = await api<{ eventId: string; notifications: { recipient: string; notificationId: string }[] }>(h, 'POST', '/v1/events', {
      id: 'evt-1', type: 'comment.created', tenant: 'acme', recipients: ['ada'], actor: 'linus', data: { commentId: 'c-1', documentTitle: 'Plan', excerpt: 'ship it' },
    });
    expect(res.status).toBe(202);
    expect(res.body.eventId).toBe('evt-1');
    const id = res.body.notifications[0]!.notificationId;
    const n = await terminal(id);
    expect(n.terminal).toEqual(['webhook:DELIVERED']);
    expect(n.events.map((e) => `${e.stage}:${e.status}`)).toEqual([
      'ingest:ACCEPTED', 'enrich:ENRICHED', 'dedupe:UNIQUE', 'throttle:ADMITTED', 'route:ROUTED', 'deliver:ATTEMPTED', 'deliver:DELIVERED',
    ]);
    expect(n.events.every((e) => e.reason.length > 0 && e.sourceTopic.startsWith('herald.'))).toBe(true);
    // The timeline: each step after the first with the time since the one before it.
    const since = n.events.map((e) => (e as { sincePreviousMs?: number | null }).sincePreviousMs);
    expect(since[0]).toBeNull();
    expect(since.slice(1).every((ms, i) => ms === n.events[i + 1]!.timestamp - n.events[i]!.timestamp)).toBe(true);

    const [hook] = hooks.for('/ada');
    expect(hook!.headers['idempotency-key']).toBe(`${id}:webhook`);
    expect(verifyWebhookSignature(h.config.webhookSecret, String(hook!.headers['herald-signature']), hook!.body)).toBe(true);
    expect(verifyWebhookSignature('another-secret', String(hook!.headers['herald-signature']), hook!.body)).toBe(false);
    expect(hook!.json).toMatchObject({ notificationId: id, eventType: 'comment.created', subject: 'New comment from linus', body: 'linus commented on Plan: ship it', data: { commentId: 'c-1' } });

    const list = await api<{ notifications: { notificationId: string; status: string }[] }>(h, 'GET', '/v1/users/ada/notifications');
    expect(list.body.notifications).toContainEqual(expect.objectContaining({ notificationId: id, status: 'DELIVERED' }));

    // `herald explain` tells the same story, one decision per line with its reason.
    // (Asynchronously: this process serves the API the command asks.)
    const { stdout: explained } = await promisify(execFile)(process.execPath, ['cli/herald.ts', 'explain', id, '--url', h.httpUrl!], { encoding: 'utf8', env: { ...process.env, HERALD_API_KEY: TEST_KEY } });
    expect(explained).toContain('terminal: webhook:DELIVERED');
    // A wrong key is the API's own refusal, and a URL nobody answers at is said as such.
    const failure = (args: string[], key: string) => promisify(execFile)(process.execPath, ['cli/herald.ts', ...args], { encoding: 'utf8', env: { ...process.env, HERALD_API_KEY: key } }).then(() => '', (e: { stderr: string }) => e.stderr);
    expect(await failure(['explain', id, '--url', h.httpUrl!], 'hk_wrong')).toMatch(/^herald: HRL_UNAUTHORIZED: http:\/\/127\.0\.0\.1:\d+: HTTP 401: /);
    expect(await failure(['lifecycle', 'digest', '--url', h.httpUrl!], 'hk_wrong')).toMatch(/^herald: HRL_UNAUTHORIZED: /);
    // Something that is no notification id is said to be one; one the key's tenant has not is "not found", saying why that may be.
    expect(await failure(['explain', 'hello', '--url', h.httpUrl!], TEST_KEY)).toContain('herald: HRL_NOT_FOUND: "hello" is not a notification id: expected ntf_ and 32 hex digits');
    expect(await failure(['explain', `ntf_${'0'.repeat(32)}`, '--url', h.httpUrl!], TEST_KEY)).toMatch(/HRL_NOT_FOUND: .*HTTP 404: .* \(or not this API key's tenant's: the API shows each key only its own tenant's notifications; set HERALD_API_KEY/);
    expect(await failure(['explain', '--event', 'evt-1', '--url', h.httpUrl!], TEST_KEY)).toContain('herald: HRL_CONFIG_INVALID: explain --event reads outcomes.v1 through the brokers (the running embedded instance\'s, or KAFKA_BROKERS), not an API: --url cannot be used with it');
    const closed = await new Promise<number>((resolve) => {
      const srv = createServer().listen(0, '127.0.0.1', () => {
        const { port } = srv.address() as AddressInfo;
        srv.close(() => resolve(port));
      });
    });
    expect(await failure(['explain', id, '--url', `http://127.0.0.1:${closed}`], TEST_KEY)).toContain(`herald: HRL_CONFIG_INVALID: http://127.0.0.1:${closed}: could not reach a Herald API there (ECONNREFUSED)`);
    const steps = explained.split('\n').map((l) => /^\s+(\+\d+(?:\.\d)? (?:ms|s|min|h|d)\S*)?\s*\d{4}-\d\d-\d\dT\S+\s+(\S+)\s+(\S+)/.exec(l)).filter((m) => m !== null);
    // Every step after the first says how long after the one before it came.
    expect(steps.slice(1).every((m) => m[1]?.startsWith('+'))).toBe(true);
    expect(steps.map((m) => `${m[2]}:${m[3]}`)).toEqual([
      'ingest:ACCEPTED', 'enrich:ENRICHED', 'dedupe:UNIQUE', 'throttle:ADMITTED', 'route:ROUTED', 'deliver:ATTEMPTED', 'deliver:DELIVERED',
    ]);
    expect(explained).toContain('matched rule comment-created');
  });

  it('delivers once when the same Idempotency-Key is posted twice, and suppresses a new event with a repeated idempotency key', async () => {
    const body = { type: 'pull_request.review_requested', tenant: 'acme', recipients: ['bob'], actor: 'ada', data: { pullRequestId: 7, title: 'x' } };
    const first = await api<{ eventId: string; notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', body, { 'idempotency-key': 'req-7' });
    const again = await fetch(`${h.httpUrl}/v1/events`, { method: 'POST', headers: { 'content-type': 'application/json', ...AUTH, 'idempotency-key': 'req-7' }, body: JSON.stringify(body) });
    expect(again.status).toBe(202);
    expect(again.headers.get('idempotent-replayed')).toBe('true');
    expect(((await again.json()) as { eventId: string }).eventId).toBe(first.body.eventId);
    const reused = await api<{ error: string }>(h, 'POST', '/v1/events', { ...body, actor: 'someone-else' }, { 'idempotency-key': 'req-7' });
    expect(reused.status).toBe(422);
    expect(reused.body.error).toBe('HRL_IDEMPOTENCY_KEY_REUSED');
    const other = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { ...body, id: 'different-event', idempotencyKey: 'req-7' });
    // The two events travel through different events.v1 partitions; whichever reaches
    // dedupe first is delivered, the other is suppressed naming it.
    const a = await terminal(first.body.notifications[0]!.notificationId);
    const b = await terminal(other.body.notifications[0]!.notificationId);
    const [delivered, suppressed] = a.terminal[0] === 'webhook:DELIVERED' ? [a, b] : [b, a];
    expect(delivered.terminal).toEqual(['webhook:DELIVERED']);
    expect(suppressed.terminal).toEqual(['SUPPRESSED_DUPLICATE']);
    expect(suppressed.events.at(-1)!.reason).toContain(delivered.notificationId);
    expect(hooks.for('/bob')).toHaveLength(1);
  });

  it('retries a provider that answers 503 through the retry topic, then delivers', async () => {
    hooks.script.set('/flaky', [503, 503]);
    const res = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'agent.task_completed', tenant: 'acme', recipients: ['flaky'], actor: 'bot', data: { taskId: 't1', summary: 'done' } });
    const n = await terminal(res.body.notifications[0]!.notificationId);
    expect(n.events.filter((e) => e.stage === 'deliver').map((e) => `${e.status}#${e.attempt}`)).toEqual([
      'ATTEMPTED#1', 'RETRY_SCHEDULED#1', 'ATTEMPTED#2', 'RETRY_SCHEDULED#2', 'ATTEMPTED#3', 'DELIVERED#3',
    ]);
    expect(hooks.for('/flaky').map((r) => r.headers['herald-attempt'])).toEqual(['1', '2', '3']);
  });

  it('answers concurrent requests with one Idempotency-Key by publishing once', async () => {
    const body = { type: 'pull_request.review_requested', tenant: 'acme', recipients: ['bob'], data: { pullRequestId: 99, title: 'y' } };
    const post = () => fetch(`${h.httpUrl}/v1/events`, { method: 'POST', headers: { 'content-type': 'application/json', ...AUTH, 'idempotency-key': 'concurrent-1' }, body: JSON.stringify(body) });
    const answers = await Promise.all([post(), post(), post()]);
    expect(answers.map((a) => a.status)).toEqual([202, 202, 202]);
    expect(answers.filter((a) => a.headers.get('idempotent-replayed') === 'true')).toHaveLength(2);
    const ids = await Promise.all(answers.map(async (a) => ((await a.json()) as { notifications: { notificationId: string }[] }).notifications[0]!.notificationId));
    expect(new Set(ids).size).toBe(1);
    expect((await terminal(ids[0]!)).terminal).toEqual(['webhook:DELIVERED']);
  });

  it('keeps delivering fresh notifications while a retry waits for its Retry-After', async () => {
    hooks.script.set('/flaky', [[503, { 'retry-after': '3' }]]);
    const slow = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'agent.task_completed', tenant: 'acme', recipients: ['flaky'], data: { taskId: 'slow', summary: 's' } });
    await eventually(async () => (await lifecycle(slow.body.notifications[0]!.notificationId)).body?.events?.some((e) => e.status === 'RETRY_SCHEDULED'));
    const scheduledAt = Date.now();
    const fresh = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'agent.task_completed', tenant: 'acme', recipients: ['ada'], data: { taskId: 'fresh', summary: 's' } });
    const n = await terminal(fresh.body.notifications[0]!.notificationId);
    const deliveredAt = Date.now();
    expect(n.terminal).toEqual(['webhook:DELIVERED']);
    const retried = await terminal(slow.body.notifications[0]!.notificationId);
    expect(retried.terminal).toEqual(['webhook:DELIVERED']);
    // The fresh one did not wait behind the 3 s retry.
    const retryArrived = hooks.times[hooks.received.findLastIndex((r) => r.path === '/flaky')]!;
    expect(deliveredAt - scheduledAt).toBeLessThan(retryArrived - scheduledAt);
  });

  it('delivers to a healthy user while another user\'s endpoint in the same partition hangs', async () => {
    const { partitionOf } = await import('../app/queries.ts');
    const { userKey } = await import('../topology.ts');
    const part = (u: string) => partitionOf(userKey('acme', u), 2);
    const healthy = ['n-0', 'n-1', 'n-2', 'n-3', 'n-4', 'n-5'].find((u) => part(u) === part('hangs'))!;
    for (const [u, path] of [['hangs', '/hangs'], [healthy, `/${healthy}`]]) expect((await api(h, 'PUT', `/v1/users/${u}`, { webhookUrl: `${hooks.url}${path}` })).status).toBe(202);
    await eventually(async () => (await api(h, 'GET', `/v1/users/${healthy}`)).status === 200 && (await api(h, 'GET', '/v1/users/hangs')).status === 200);
    hooks.script.set('/hangs', ['hang']);
    const stuck = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'agent.task_completed', recipients: ['hangs'], data: { taskId: 'h1', summary: 'x' } });
    await eventually(() => hooks.hanging === 1);
    const fine = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'agent.task_completed', recipients: [healthy], data: { taskId: 'h2', summary: 'y' } });
    const n = await terminal(fine.body.notifications[0]!.notificationId);
    expect(n.terminal).toEqual(['webhook:DELIVERED']);
    expect(hooks.hanging).toBe(1); // delivered while the other call still hangs (it times out after 10 s)
    const view = (await lifecycle(stuck.body.notifications[0]!.notificationId)).body;
    expect(view.events.at(-1)!.status).toBe('ATTEMPTED');
  });

  it('drops unknown and deactivated recipients with their reasons', async () => {
    const res = await api<{ notifications: { recipient: string; notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'comment.created', tenant: 'acme', recipients: ['nobody', 'gone'], data: { commentId: 'c-9' } });
    const byRecipient = Object.fromEntries(res.body.notifications.map((n) => [n.recipient, n.notificationId]));
    expect((await terminal(byRecipient.nobody!)).events.at(-1)).toMatchObject({ status: 'DROPPED', reasonCode: 'unknown_recipient' });
    expect((await terminal(byRecipient.gone!)).events.at(-1)).toMatchObject({ status: 'DROPPED', reasonCode: 'recipient_inactive' });
  });

  it('answers 400 with the field path and the expectation', async () => {
    const bad = await api<{ error: string; field: string; message: string }>(h, 'POST', '/v1/events', { type: 'comment.created', tenant: 'acme', recipients: ['ada', 42] });
    expect(bad.status).toBe(400);
    expect(bad.body).toMatchObject({ error: 'HRL_SCHEMA_VIOLATION', field: 'recipients[1]' });
    expect(bad.body.message).toContain('expected a string');
    const unknown = await api<{ error: string; message: string }>(h, 'POST', '/v1/events', { type: 'nope', tenant: 'acme', recipients: ['ada'] });
    expect(unknown.status).toBe(400);
    expect(unknown.body.error).toBe('HRL_UNKNOWN_EVENT_TYPE');
    const user = await api<{ field: string }>(h, 'PUT', '/v1/users/x', { webhookUrl: 'ftp://nope' });
    expect(user.status).toBe(400);
    expect(user.body.field).toBe('webhookUrl');
  });

  it('sends bad records on events.v1 to the DLQ with reason headers and keeps processing their neighbours', async () => {
    const dlq = await collect(h, topicName('herald.', 'dlq'));
    const events = topicName('herald.', 'events');
    const good = { id: 'neighbour', type: 'comment.created', tenant: 'acme', recipients: ['ada'], data: { commentId: 'c-n' } };
    await h.producer.send({
      topic: events, acks: -1,
      messages: [
        { key: 'k', value: Buffer.from([0xff, 0x00, 0x13]) },
        { key: 'k', value: JSON.stringify({ id: 'v1', type: 'comment.created', tenant: 'acme', recipients: 'ada' }) },
        { key: 'k', value: JSON.stringify({ id: 'u1', type: 'unknown.type', tenant: 'acme', recipients: ['ada'] }) },
        { key: 'k', value: JSON.stringify(good) },
      ],
    });
    const found = await eventually(() => dlq.messages.length >= 3 && dlq.messages);
    await dlq.stop();
    const headers = found.map((m) => Object.fromEntries(Object.entries(m.headers ?? {}).map(([k, v]) => [k, String(v)])));
    expect(headers.map((x) => x['herald.error.code'])).toEqual(['HRL_DECODE_FAILED', 'HRL_SCHEMA_VIOLATION', 'HRL_UNKNOWN_EVENT_TYPE']);
    expect(headers[1]!['herald.error.field']).toBe('recipients');
    expect(headers[1]!['herald.error.reason']).toContain('expected an array');
    expect(headers.every((x) => x['herald.source.topic'] === events && x['herald.error.stage'] === 'ingest')).toBe(true);
    expect(found[0]!.value).toEqual(Buffer.from([0xff, 0x00, 0x13]));
    await eventually(() => hooks.received.some((r) => (r.json as { eventId?: string }).eventId === 'neighbour'));
  });

  it('dead-letters a tombstone on every stage input with HRL_TOMBSTONE and a null value, and keeps going', async () => {
    const { STAGES } = await import('../topology.ts');
    const inputs = [...new Set(Object.values(STAGES).flatMap((st) => [...st.inputs]))];
    const dlq = await collect(h, topicName('herald.', 'dlq'));
    for (const t of inputs) await h.producer.send({ topic: topicName('herald.', t), acks: -1, messages: [{ key: `tomb-${t}`, value: null }] });
    const found = await eventually(() => {
      const mine = dlq.messages.filter((m) => m.key?.toString().startsWith('tomb-'));
      return mine.length >= inputs.length && mine;
    });
    await dlq.stop();
    expect(found.map((m) => m.key!.toString()).sort()).toEqual(inputs.map((t) => `tomb-${t}`).sort());
    for (const m of found) {
      expect(m.value, m.key!.toString()).toBeNull();
      expect(String(m.headers!['herald.error.code'])).toBe('HRL_TOMBSTONE');
      expect(String(m.headers!['herald.source.topic'])).toBe(topicName('herald.', m.key!.toString().slice('tomb-'.length) as never));
    }
    // The fused stages were not handed these records: they read them back from the broker.
    const metrics = await h.metrics.registry.getSingleMetricAsString('herald_fused_read_back_records_total');
    for (const stage of ['dedupe', 'throttle', 'route']) expect(metrics).toMatch(new RegExp(`herald_fused_read_back_records_total\\{stage="${stage}",reason="(check|gap)"\\} [1-9]`));
    const after = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'comment.created', tenant: 'acme', recipients: ['ada'], data: { commentId: 'after-tombstones' } });
    expect((await terminal(after.body.notifications[0]!.notificationId)).terminal).toEqual(['webhook:DELIVERED']);
  });

  it('gives every lifecycle event a decisionId that names the decision, the same when it is recorded again', async () => {
    const res = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'comment.created', tenant: 'acme', recipients: ['ada'], data: { commentId: 'decision-ids' } });
    const n = await terminal(res.body.notifications[0]!.notificationId);
    const ids = n.events.map((e) => (e as unknown as { decisionId: string }).decisionId);
    expect(ids.every((id) => /^dec_[0-9a-f]{32}$/.test(id))).toBe(true);
    expect(new Set(ids).size).toBe(ids.length);
    const { decisionIdOf } = await import('../schemas/lifecycle.ts');
    expect(ids[0]).toBe(decisionIdOf({ notificationId: n.notificationId, stage: 'ingest', status: 'ACCEPTED', deliveryId: null, attempt: null }));
  });

  it('serves readiness, health and prom-client metrics', async () => {
    const res = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'security.new_login', tenant: 'acme', recipients: ['ada'], data: { sessionId: 's1', location: 'Oslo', device: 'phone' } });
    await terminal(res.body.notifications[0]!.notificationId);
    expect((await api(h, 'GET', '/healthz')).status).toBe(200);
    const ready = await api<{ ready: boolean; tables: Record<string, boolean> }>(h, 'GET', '/readyz');
    expect(ready.body).toMatchObject({ ready: true, tables: { users: true, preferences: true } });
    const metrics = await fetch(`${h.httpUrl}/metrics`).then((r) => r.text());
    expect(metrics).toMatch(/herald_stage_records_total\{stage="deliver",result="in"\} [1-9]/);
    expect(metrics).toContain('herald_stage_batch_duration_seconds_bucket');
    // Requests to the brokers by client and API, as Kafka's clients count them.
    const requests = (client: string, api: string) => Number(new RegExp(`^herald_kafka_requests_total\\{client="${client}",api="${api}"\\} (\\d+)$`, 'm').exec(metrics)?.[1] ?? 0);
    for (const api of ['Fetch', 'JoinGroup', 'OffsetCommit']) expect(requests('herald\\.deliver', api), api).toBeGreaterThan(0);
    expect(requests('producer', 'Produce')).toBeGreaterThan(0);
    // Kafka Streams' record-e2e-latency: per stage, the time since the event was published,
    // growing along the chain (stream time flows downstream with each record's timestamp).
    const e2e = (stage: string) => {
      const sum = Number(new RegExp(`herald_stage_record_e2e_latency_seconds_sum\\{stage="${stage}"\\} (\\S+)`).exec(metrics)?.[1]);
      const count = Number(new RegExp(`herald_stage_record_e2e_latency_seconds_count\\{stage="${stage}"\\} (\\S+)`).exec(metrics)?.[1]);
      return { count, mean: sum / count };
    };
    const [ingest, deliver] = [e2e('ingest'), e2e('deliver')];
    expect(ingest.count).toBeGreaterThan(0);
    expect(deliver.count).toBeGreaterThan(0);
    expect(deliver.mean).toBeGreaterThan(ingest.mean);
  });
});
