/**
 * The HTTP API on in-memory ports, driven with fastify's inject(): what each route sends to
 * its port, and every error it answers carries a documented code.
 */
import { readFileSync } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ApiPorts, QueryAnswer, QueryOptions } from '../api/ports.ts';
import { FORWARDED_HEADER, buildApi } from '../api/server.ts';
import { ERROR_CODES } from '../errors.ts';
import { notificationId } from '../processors/ids.ts';
import { loadRules } from '../rules/rules.ts';
import { Authenticator, newKeyRecord } from '../auth/keys.ts';
import { parseAllowList } from '../channels/outbound.ts';
import type { ApiKeyRecord, DomainEvent, LifecycleEvent, UserProfile } from '../schemas/types.ts';

// Real keys, hashed as herald keys create hashes them, held in memory.
const keyRecords = new Map<string, ApiKeyRecord>();
const KEYS = { acme: '', acmePublish: '', acmeRead: '', globex: '', revoked: '' };
async function makeKeys() {
  for (const [name, tenant, scopes] of [['acme', 'acme', ['admin']], ['acmePublish', 'acme', ['publish']], ['acmeRead', 'acme', ['read']], ['globex', 'globex', ['admin']], ['revoked', 'acme', ['admin']]] as const) {
    const { key, record } = await newKeyRecord({ tenant, scopes: [...scopes] });
    keyRecords.set(record.keyId, name === 'revoked' ? { ...record, revokedAt: Date.now() } : record);
    KEYS[name] = key;
  }
}

const published: DomainEvent[] = [];
const recorded: LifecycleEvent[] = [];
const users = new Map<string, UserProfile>();
const queries: { kind: string; key: string; opts: QueryOptions }[] = [];
let nextAnswer: QueryAnswer<never> = { status: 'not_found', detail: 'nothing' };

let refuse: Error | null = null;
const ports: ApiPorts = {
  publisher: {
    publish: async (ev) => {
      if (refuse) throw refuse;
      published.push(ev);
    },
    record: async (ev) => void recorded.push(ev),
  },
  profiles: {
    putUser: async (p) => void users.set(`${p.tenant}/${p.userId}`, p),
    deleteUser: async (tenant, id) => void users.delete(`${tenant}/${id}`),
    getUser: async (tenant, id) => users.get(`${tenant}/${id}`),
    putPreferences: async () => undefined,
    getPreferences: async () => undefined,
    updateAudience: async () => undefined,
    audienceMembers: async () => null,
  },
  lifecycle: {
    notification: async (id, opts) => (queries.push({ kind: 'notification', key: id, opts }), nextAnswer),
    inbox: async (_tenant, userId, _o, opts) => (queries.push({ kind: 'inbox', key: userId, opts }), nextAnswer),
    inboxStream: async () => ({ kind: 'unavailable', detail: 'not in this test' }),
    digest: async () => ({ status: 'unavailable', detail: 'not in this test' }),
    userNotifications: async (_tenant, userId, _limit, opts) => (queries.push({ kind: 'user', key: userId, opts }), nextAnswer),
  },
  health: {
    readiness: () => ({ ready: false, stages: { outcome: 'restarting' } }),
    metrics: async () => ({ contentType: 'text/plain; version=0.0.4', body: 'herald_up 1\n' }),
  },
  keys: new Authenticator((id) => keyRecords.get(id)),
  outbound: { requireHttps: true, allow: parseAllowList('127.0.0.1') },
  rate: { perSecond: 1000, burst: 1000 },
  rules: loadRules('rules/default.json'),
  maxPayloadBytes: 16384,
  idempotencyCacheBytes: 1 << 20,
  log: { error: () => undefined, warn: () => undefined },
};

let app: FastifyInstance;
/** Requests with acme's admin key unless the test sends its own Authorization. */
type InjectOptions = import('fastify').InjectOptions;
const inject = (o: InjectOptions) => app.inject({ ...o, headers: { authorization: `Bearer ${KEYS.acme}`, ...o.headers } });
beforeAll(async () => {
  await makeKeys();
  app = await buildApi(ports);
});
afterAll(async () => {
  await app.close();
});

describe('HTTP API on ports', () => {
  it('publishes a valid event through the publisher port and answers the derived notification ids', async () => {
    const res = await inject({ method: 'POST', url: '/v1/events', payload: { id: 'e1', type: 'comment.created', tenant: 'acme', recipients: ['ada'], data: { commentId: 'c1' } } });
    expect(res.statusCode).toBe(202);
    expect(published.at(-1)).toMatchObject({ id: 'e1', tenant: 'acme', recipients: ['ada'] });
    expect(res.json().notifications).toEqual([{ recipient: 'ada', ruleId: 'comment-created', notificationId: notificationId('acme', 'e1', 'ada', 'comment-created') }]);
  });

  it('refuses an invalid event with the field and publishes nothing', async () => {
    const before = published.length;
    const res = await inject({ method: 'POST', url: '/v1/events', payload: { id: 'e2', type: 'comment.created', tenant: 'acme', recipients: 'ada' } });
    expect(res.statusCode).toBe(400);
    expect(res.json()).toMatchObject({ error: 'HRL_SCHEMA_VIOLATION', field: 'recipients' });
    expect(published.length).toBe(before);
  });

  it('refuses a page cursor that no page answered, instead of starting over at the first page', async () => {
    for (const url of ['/v1/users/ada/notifications?before=garbage', '/v1/users/ada/inbox?before=garbage']) {
      const res = await inject({ method: 'GET', url });
      expect(res.statusCode).toBe(400);
      expect(res.json()).toMatchObject({ error: 'HRL_SCHEMA_VIOLATION', field: 'before' });
      expect(res.json().message).toMatch(/^before: expected the "next" of a previous page .*, got "garbage"$/);
    }
  });

  it('refuses a PUT without a body, or naming another user, instead of wiping the profile', async () => {
    users.set('acme/kim', { userId: 'kim', tenant: 'acme', name: 'Kim', email: 'kim@example.com', phone: null, locale: 'en', timezone: 'UTC', webhookUrl: null, chatWebhookUrl: null, active: true, updatedAt: 1 });
    for (const url of ['/v1/users/kim', '/v1/users/kim/preferences', '/v1/audiences/team/members']) {
      const res = await inject({ method: 'PUT', url });
      expect(res.statusCode).toBe(400);
      expect(res.json()).toMatchObject({ error: 'HRL_SCHEMA_VIOLATION', field: 'body' });
      expect(res.json().message).toMatch(/^body: expected a JSON object \(.*\), got no body$/);
    }
    expect((await inject({ method: 'PUT', url: '/v1/users/kim', payload: [] })).json().message).toMatch(/got an array$/);
    const other = await inject({ method: 'PUT', url: '/v1/users/kim', payload: { userId: 'lee', name: 'Lee' } });
    expect(other.statusCode).toBe(400);
    expect(other.json()).toMatchObject({ field: 'userId' });
    expect(users.get('acme/kim')!.name).toBe('Kim');
  });

  it('answers GET for preferences, what a PUT replaces, and 404 with the defaults when there are none', async () => {
    const none = await inject({ method: 'GET', url: '/v1/users/kim/preferences' });
    expect(none.statusCode).toBe(404);
    expect(none.json().message).toContain('every channel and category is on');
    const prefs = { userId: 'kim', tenant: 'acme', channels: { email: false }, categories: {}, quietHours: null, updatedAt: 5 };
    const withPrefs = await buildApi({ ...ports, profiles: { ...ports.profiles, getPreferences: async (tenant, id) => (tenant === 'acme' && id === 'kim' ? prefs : undefined) } });
    try {
      const res = await withPrefs.inject({ method: 'GET', url: '/v1/users/kim/preferences', headers: { authorization: `Bearer ${KEYS.acmeRead}` } });
      expect(res.statusCode).toBe(200);
      expect(res.json()).toEqual(prefs);
      expect((await withPrefs.inject({ method: 'GET', url: '/v1/users/kim/preferences', headers: { authorization: `Bearer ${KEYS.globex}` } })).statusCode).toBe(404);
    } finally {
      await withPrefs.close();
    }
  });

  it('refuses path ids that are empty, blank or carry control or bidirectional characters, naming the field', async () => {
    const cases: [string, string, RegExp][] = [
      ['PUT', '/v1/users/', /^userId: expected a non-empty id$/],
      ['PUT', '/v1/users/%20%20', /^userId: expected an id, got only white space$/],
      ['GET', '/v1/users/a%00b', /^userId: expected no control characters, got U\+0000 at character 2$/],
      ['GET', '/v1/users/a%0Ab/inbox', /^userId: expected no control characters, got U\+000A at character 2$/],
      ['PUT', '/v1/audiences//members', /^audience: expected a non-empty id$/],
      ['GET', '/v1/notifications/', /^id: expected a non-empty id$/],
      ['GET', '/v1/users/txt%E2%80%AEexe.bat', /^userId: expected no bidirectional control characters, got U\+202E at character 4$/],
    ];
    for (const [method, url, message] of cases) {
      const res = await inject({ method: method as 'GET', url, ...(method === 'PUT' ? { payload: {} } : {}) });
      expect([url, res.statusCode]).toEqual([url, 400]);
      expect(res.json().message).toMatch(message);
    }
    const member = await inject({ method: 'PUT', url: '/v1/audiences/team/members', payload: { add: ['ok', 'bad\nid'] } });
    expect(member.json()).toMatchObject({ field: 'add[1]', message: 'add[1]: expected no control characters, got U+000A at character 4' });
    const recipient = await inject({ method: 'POST', url: '/v1/events', payload: { type: 'comment.created', recipients: ['ada', 'x\u001b[31m'], data: { commentId: 'c' } } });
    expect(recipient.json()).toMatchObject({ field: 'recipients[1]' });
  });

  it('refuses query parameters a route does not take, naming the ones it does, and a Last-Event-ID it never sent', async () => {
    const after = await inject({ method: 'GET', url: '/v1/users/ada/notifications?after=001764582892660:ntf_x' });
    expect(after.statusCode).toBe(400);
    expect(after.json()).toMatchObject({ error: 'HRL_SCHEMA_VIOLATION', field: 'after', message: 'after: unknown query parameter; this route takes limit, before' });
    expect((await inject({ method: 'GET', url: '/v1/users/ada?tenant=globex' })).json().message).toBe('tenant: unknown query parameter; this route takes none');
    for (const headers of [{ 'last-event-id': 'garbage' }, {}]) {
      const res = await inject({ method: 'GET', url: `/v1/users/ada/inbox/stream${'last-event-id' in headers ? '' : '?lastEventId=garbage'}`, headers: { accept: 'application/json', ...headers } });
      expect(res.statusCode).toBe(400);
      expect(res.json().message).toMatch(/^(Last-Event-ID|lastEventId): expected the id of an inbox item this stream sent/);
    }
  });

  it('counts every answer by route pattern (never the ids in the path), status and duration', async () => {
    const seen: [string, string, number, number][] = [];
    const counted = await buildApi({ ...ports, httpMetrics: { observe: (method, route, status, seconds) => void seen.push([method, route, status, seconds]) } });
    try {
      await counted.inject({ method: 'GET', url: '/v1/users/kim-secret-id', headers: { authorization: `Bearer ${KEYS.acme}` } });
      await counted.inject({ method: 'GET', url: '/v1/users/kim', headers: { authorization: 'Bearer nope' } });
      await counted.inject({ method: 'GET', url: '/no/such/path' });
      // A query another instance forwarded (one of the owners asked for a notification id) is not the API's traffic.
      await counted.inject({ method: 'GET', url: '/v1/notifications/ntf_x', headers: { authorization: `Bearer ${KEYS.acme}`, 'x-herald-forwarded': 'inst-A' } });
      expect(seen.map(([m, r, s]) => [m, r, s])).toEqual([['GET', '/v1/users/:userId', 404], ['GET', '/v1/users/:userId', 401], ['GET', 'unmatched', 404]]);
      expect(seen.every(([, , , t]) => t >= 0 && t < 5)).toBe(true);
    } finally {
      await counted.close();
    }
  });

  it('answers HEAD on the inbox stream with its headers, without opening a stream', async () => {
    let opened = 0;
    const live = await buildApi({ ...ports, lifecycle: { ...ports.lifecycle, inboxStream: async () => ({ kind: 'local', servedBy: 'test', open: async () => (opened++, { backlog: (async function* () {})(), close: () => undefined }) }) } });
    try {
      const res = await live.inject({ method: 'HEAD', url: '/v1/users/ada/inbox/stream', headers: { authorization: `Bearer ${KEYS.acmeRead}` } });
      expect(res.statusCode).toBe(200);
      expect(res.headers['content-type']).toMatch(/^text\/event-stream/);
      // The headers the GET answers with, proxy buffering off among them.
      expect([res.headers['cache-control'], res.headers['x-accel-buffering']]).toEqual(['no-cache, no-transform', 'no']);
      expect(opened).toBe(0);
    } finally {
      await live.close();
    }
  }, 10_000);

  it('refuses a JSON body declared in another charset than UTF-8', async () => {
    const res = await inject({ method: 'PUT', url: '/v1/users/kim', headers: { 'content-type': 'application/json; charset=iso-8859-1' }, payload: '{"name":"K"}' });
    expect(res.statusCode).toBe(415);
    expect(res.json()).toMatchObject({ error: 'HRL_UNSUPPORTED_MEDIA_TYPE', field: 'Content-Type' });
    expect((await inject({ method: 'PUT', url: '/v1/users/kim', headers: { 'content-type': 'application/json; charset=UTF-8' }, payload: '{"name":"Kim"}' })).statusCode).toBe(202);
  });

  it('honours Idempotency-Key on a signing secret rotation: the retry gets the first answer, and no second secret is made', async () => {
    let made = 0;
    const signing = {
      describe: () => ({ tenant: 'acme', secrets: [] }) as never,
      rotate: async () => ({ id: `sec_${++made}`, secret: `whsec_${made}`, view: { tenant: 'acme', secrets: [] } as never }),
      retire: async () => null,
    };
    const withSigning = await buildApi({ ...ports, signing });
    try {
      const rotate = (key: string, body: unknown = {}) => withSigning.inject({ method: 'POST', url: '/v1/signing-secrets/rotate', headers: { authorization: `Bearer ${KEYS.acme}`, 'idempotency-key': key }, payload: body as object });
      const first = await rotate('rot-1');
      const again = await rotate('rot-1');
      expect([first.statusCode, again.statusCode]).toEqual([201, 201]);
      expect(again.json()).toEqual(first.json());
      expect(again.headers['idempotent-replayed']).toBe('true');
      expect(made).toBe(1);
      expect((await rotate('rot-1', { gracePeriod: '1h' })).statusCode).toBe(422);
      expect((await rotate('rot-2')).json().id).toBe('sec_2');
    } finally {
      await withSigning.close();
    }
  });

  it('refuses a lone surrogate anywhere in a body (an event, a profile), naming where, and writes nothing', async () => {
    const before = published.length;
    const event = await inject({ method: 'POST', url: '/v1/events', headers: { 'content-type': 'application/json' }, payload: '{"id":"e3","type":"comment.created","tenant":"acme","recipients":["ada"],"data":{"text":"lone \\ud800 x"}}' });
    expect(event.statusCode).toBe(400);
    expect(event.json()).toMatchObject({ error: 'HRL_SCHEMA_VIOLATION', field: 'data.text', message: 'data.text: expected well-formed Unicode text, got a lone surrogate (U+D800) at character 6' });
    expect(published.length).toBe(before);
    const profile = await inject({ method: 'PUT', url: '/v1/users/ada', headers: { 'content-type': 'application/json' }, payload: '{"name":"Ada \\udfff"}' });
    expect(profile.statusCode).toBe(400);
    expect(profile.json()).toMatchObject({ field: 'name' });
    // However deep a body nests, the answer is 400 naming the limit, not a stack overflow (500).
    const deepBody = `{"type":"comment.created","recipients":["ada"],"data":${'['.repeat(5_000)}${']'.repeat(5_000)}}`;
    const deep = await inject({ method: 'POST', url: '/v1/events', headers: { 'content-type': 'application/json' }, payload: deepBody });
    expect(deep.statusCode).toBe(400);
    expect(deep.json()).toMatchObject({ error: 'HRL_SCHEMA_VIOLATION', field: 'body', message: 'body: nested deeper than 32 levels' });
    const deepText = await inject({ method: 'POST', url: '/v1/events', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ type: 'comment.created', recipients: ['ada'], data: `${'['.repeat(5_000)}${']'.repeat(5_000)}` }) });
    expect(deepText.statusCode).toBe(400);
    expect(deepText.json()).toMatchObject({ error: 'HRL_SCHEMA_VIOLATION', field: 'data', message: 'data: nested deeper than 32 levels' });
    expect(published.length).toBe(before);
    // A pair written as escapes is one emoji: fine.
    expect((await inject({ method: 'POST', url: '/v1/events', headers: { 'content-type': 'application/json' }, payload: '{"id":"e4","type":"comment.created","tenant":"acme","recipients":["ada"],"data":{"text":"\\ud83d\\ude00"}}' })).statusCode).toBe(202);
  });

  it('answers a query the owner cannot serve yet with 503, Retry-After and HRL_OWNER_UNAVAILABLE', async () => {
    nextAnswer = { status: 'unavailable', detail: 'no instance holds partition 3 of the outcome stage yet' };
    const res = await inject({ method: 'GET', url: '/v1/users/ada/notifications' });
    expect(res.statusCode).toBe(503);
    expect(res.headers['retry-after']).toBe('1');
    expect(res.json()).toEqual({ error: 'HRL_OWNER_UNAVAILABLE', message: 'no instance holds partition 3 of the outcome stage yet' });
  });

  it('passes the forwarded marker to the queries, so a forwarded query is never forwarded again', async () => {
    nextAnswer = { status: 'ok', value: { notificationId: 'n1', tenant: 'acme' } as never, servedBy: 'i-2' };
    const direct = await inject({ method: 'GET', url: '/v1/notifications/n1' });
    const forwarded = await inject({ method: 'GET', url: '/v1/notifications/n1', headers: { [FORWARDED_HEADER]: 'i-1' } });
    expect([direct.statusCode, forwarded.statusCode]).toEqual([200, 200]);
    expect(direct.headers['x-herald-served-by']).toBe('i-2');
    expect(queries.slice(-2).map((q) => q.opts.forwarded)).toEqual([false, true]);
  });

  it('answers 404 with HRL_NOT_FOUND for an unknown notification, user and route', async () => {
    nextAnswer = { status: 'not_found', detail: 'no lifecycle for notification "nope" yet' };
    for (const url of ['/v1/notifications/nope', '/v1/users/nobody', '/v1/nowhere']) {
      const res = await inject({ method: 'GET', url });
      expect([url, res.statusCode, res.json().error]).toEqual([url, 404, 'HRL_NOT_FOUND']);
    }
  });

  it('answers 405 with Allow for a path that exists under other methods, and 404 for one that does not', async () => {
    const del = await inject({ method: 'DELETE', url: '/v1/events' });
    expect([del.statusCode, del.headers.allow, del.json().error]).toEqual([405, 'POST', 'HRL_METHOD_NOT_ALLOWED']);
    const patch = await inject({ method: 'PATCH', url: '/v1/users/ada' });
    expect([patch.statusCode, patch.json().error]).toEqual([405, 'HRL_METHOD_NOT_ALLOWED']);
    expect(String(patch.headers.allow).split(', ').sort()).toEqual(['DELETE', 'GET', 'HEAD', 'PUT']);
    expect((await inject({ method: 'DELETE', url: '/v1/nowhere' })).statusCode).toBe(404);
  });

  it('maps malformed and oversized bodies to documented codes', async () => {
    const bad = await inject({ method: 'POST', url: '/v1/events', headers: { 'content-type': 'application/json' }, payload: '{"id":' });
    expect([bad.statusCode, bad.json().error, bad.json().field]).toEqual([400, 'HRL_BAD_REQUEST', 'body']);
    // JSON.parse's reason, which says where (not the framework's "Body is not valid JSON").
    expect(bad.json().message).toMatch(/^body: not valid JSON \(.*(position|end of JSON input)/i);
    // Bytes that are not UTF-8 are refused, naming the first, as on the Kafka path (not turned into U+FFFD).
    const latin1 = await inject({ method: 'POST', url: '/v1/events', headers: { 'content-type': 'application/json' }, payload: Buffer.from('{"type":"comment.created","recipients":["ada"],"actor":"li\xffnus"}', 'latin1') });
    expect([latin1.statusCode, latin1.json().field, latin1.json().message]).toEqual([400, 'body', 'body: not valid JSON (JSON must be UTF-8 (RFC 8259), and byte 58 (0xff) is not valid UTF-8 there)']);
    // Declared in another charset, it is that the body is refused for (415), whatever its bytes.
    const declared = await inject({ method: 'POST', url: '/v1/events', headers: { 'content-type': 'application/json; charset=iso-8859-1' }, payload: Buffer.from('{"type":"comment.created","recipients":["ada"],"actor":"li\xffnus"}', 'latin1') });
    expect([declared.statusCode, declared.json().field]).toEqual([415, 'Content-Type']);
    // Each names the field and the limit, as the README's limits table says.
    const big = await inject({ method: 'POST', url: '/v1/events', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ pad: 'x'.repeat(20_000) }) });
    expect([big.statusCode, big.json().error, big.json().field]).toEqual([413, 'HRL_PAYLOAD_TOO_LARGE', 'body']);
    expect(big.json().message).toMatch(/^body: at most \d+ bytes on this route \(HERALD_MAX_PAYLOAD_BYTES\)/);
    const profile = await inject({ method: 'PUT', url: '/v1/users/ada', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ name: 'x'.repeat(70_000) }) });
    expect([profile.statusCode, profile.json().message]).toEqual([413, `body: at most ${64 * 1024} bytes on this route; this one is larger`]);
    const text = await inject({ method: 'POST', url: '/v1/events', headers: { 'content-type': 'text/plain' }, payload: 'hi' });
    expect([text.statusCode, text.json().field, text.json().message]).toEqual([415, 'Content-Type', 'Content-Type: expected application/json, got "text/plain"']);
  });

  it('answers 503 with Retry-After when the publisher pushes back, and publishes nothing', async () => {
    const { HeraldError } = await import('../errors.ts');
    refuse = new HeraldError('HRL_BACKPRESSURE', 'not accepted: herald.outcome has 3100 KiB unread', { retriable: true });
    const before = published.length;
    const res = await inject({ method: 'POST', url: '/v1/events', headers: { 'idempotency-key': 'bp-1' }, payload: { type: 'comment.created', tenant: 'acme', recipients: ['ada'], data: {} } });
    refuse = null;
    expect([res.statusCode, res.headers['retry-after'], res.json().error]).toEqual([503, '1', 'HRL_BACKPRESSURE']);
    expect(published.length).toBe(before);
    // The same Idempotency-Key is not remembered as answered: the retry is published.
    const retry = await inject({ method: 'POST', url: '/v1/events', headers: { 'idempotency-key': 'bp-1' }, payload: { type: 'comment.created', tenant: 'acme', recipients: ['ada'], data: {} } });
    expect(retry.statusCode).toBe(202);
    expect(published.length).toBe(before + 1);
  });

  it('answers what fails before routing (a bad URL, headers too large, not HTTP) with Herald\'s error body', async () => {
    const bad = await inject({ method: 'GET', url: '/v1/users/%zz' });
    expect(bad.statusCode).toBe(400);
    expect(bad.json()).toEqual({ error: 'HRL_BAD_REQUEST', field: 'url', message: 'URL: /v1/users/%zz is not a valid path: a % must start an escape such as %2F' });
    const notUtf8 = await inject({ method: 'GET', url: '/v1/users/%FF' });
    expect(notUtf8.json()).toMatchObject({ error: 'HRL_BAD_REQUEST', field: 'url', message: 'URL: /v1/users/%FF is not a valid path: its %-escapes are not UTF-8 (ids are UTF-8 text, such as %C3%A9 for é)' });
    // Node's parser refuses these before Fastify sees a request: over a real socket
    const address = await app.listen({ port: 0, host: '127.0.0.1' });
    const raw = (text: string) => new Promise<string>((resolve, reject) => {
      const { port } = new URL(address);
      const socket = connect(Number(port), '127.0.0.1', () => socket.write(text));
      let got = '';
      socket.on('data', (d: Buffer) => (got += d.toString()));
      socket.on('end', () => resolve(got));
      socket.on('error', reject);
    });
    const big = await raw(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
    expect(big).toMatch(/^HTTP\/1\.1 431 Request Header Fields Too Large\r\n/);
    expect(JSON.parse(big.slice(big.indexOf('\r\n\r\n') + 4))).toMatchObject({ error: 'HRL_LIMIT_EXCEEDED', field: 'headers' });
    const junk = await raw('HELLO THERE\r\n\r\n');
    expect(junk).toMatch(/^HTTP\/1\.1 400 Bad Request\r\n/);
    expect(JSON.parse(junk.slice(junk.indexOf('\r\n\r\n') + 4))).toMatchObject({ error: 'HRL_BAD_REQUEST' });
  });

  it('refuses hostile bodies with a bounded, specific 400 or 415, and publishes nothing', async () => {
    const before = published.length;
    const post = (payload: string, type = 'application/json') => inject({ method: 'POST', url: '/v1/events', headers: { 'content-type': type }, payload });
    const ok = { type: 'comment.created', tenant: 'acme', recipients: ['ada'], data: { commentId: 'c' } };
    const text = await post(JSON.stringify(ok), 'text/plain');
    expect([text.statusCode, text.json().error]).toEqual([415, 'HRL_UNSUPPORTED_MEDIA_TYPE']);
    const deep = `${'{"d":'.repeat(600)}{}${'}'.repeat(600)}`; // built as text: too deep for JSON.stringify here
    const nested = await post(`${JSON.stringify(ok).slice(0, -1)},"data":${deep}}`);
    expect([nested.statusCode, nested.json().error, nested.json().field]).toEqual([400, 'HRL_SCHEMA_VIOLATION', 'body']);
    const huge = 'x'.repeat(3000);
    for (const [field, body, status] of [['id', { ...ok, id: huge }, 400], ['recipients[1]', { ...ok, recipients: ['ada', huge] }, 400], ['tenant', { ...ok, tenant: huge }, 403]] as const) {
      const r = await post(JSON.stringify(body));
      expect([field, r.statusCode, r.json().field]).toEqual([field, status, field]);
      expect(r.body.length).toBeLessThan(1000); // the value is not echoed back
    }
    for (const [k, v] of [['occurredAt', 8.6e15], ['occurredAt', -8.6e15], ['expiresAt', -1]] as const) {
      const r = await post(JSON.stringify({ ...ok, [k]: v }));
      expect([k, r.statusCode, r.json().field]).toEqual([k, 400, k]);
    }
    const notObject = await post(JSON.stringify([ok]));
    expect(notObject.statusCode).toBe(400);
    expect(published.length).toBe(before);
  });

  it('reports readiness from the health port', async () => {
    const res = await inject({ method: 'GET', url: '/readyz' });
    expect([res.statusCode, res.json()]).toEqual([503, { ready: false, stages: { outcome: 'restarting' } }]);
  });

  it('answers 401 without a key, with an unknown key and with a revoked key; health and metrics stay open', async () => {
    for (const authorization of [undefined, 'Basic YWRhOnB3', 'Bearer hk_nope_nope_nope', `Bearer ${KEYS.revoked}`]) {
      const res = await app.inject({ method: 'GET', url: '/v1/users/ada', headers: authorization ? { authorization } : {} });
      expect([authorization, res.statusCode, res.json().error]).toEqual([authorization, 401, 'HRL_UNAUTHORIZED']);
      expect(res.headers['www-authenticate']).toMatch(/^Bearer realm="herald"/);
    }
    const revoked = await app.inject({ method: 'GET', url: '/v1/users/ada', headers: { authorization: `Bearer ${KEYS.revoked}` } });
    expect(revoked.json().message).toMatch(/revoked/);
    for (const url of ['/healthz', '/metrics']) expect((await app.inject({ method: 'GET', url })).statusCode).toBe(200);
  });

  it('serves /metrics only with HERALD_METRICS_TOKEN when it is set, as the starting server does', async () => {
    const { StartingServer } = await import('../app/starting.ts');
    const { Registry } = await import('prom-client');
    const token = 'scrape-secret-0123456789';
    const guarded = await buildApi({ ...ports, metricsToken: token });
    const starting = await StartingServer.listen('127.0.0.1', 0, { registry: new Registry(), detail: () => [], metricsToken: token });
    try {
      const viaApi = (authorization?: string) => guarded.inject({ method: 'GET', url: '/metrics', headers: authorization ? { authorization } : {} });
      const viaStart = (authorization?: string) => fetch(`http://127.0.0.1:${starting.port}/metrics`, { headers: authorization ? { authorization } : {} });
      for (const [authorization, challenge] of [[undefined, 'Bearer realm="metrics"'], ['Bearer wrong', 'Bearer realm="metrics", error="invalid_token"'], [`Basic ${Buffer.from(`x:${token}`).toString('base64')}`, 'Bearer realm="metrics"']] as const) {
        const a = await viaApi(authorization);
        expect([a.statusCode, a.json().error, a.headers['www-authenticate']]).toEqual([401, 'HRL_UNAUTHORIZED', challenge]);
        expect(a.body).not.toContain('herald_up');
        const b = await viaStart(authorization);
        expect([b.status, ((await b.json()) as { error: string }).error, b.headers.get('www-authenticate')]).toEqual([401, 'HRL_UNAUTHORIZED', challenge]);
      }
      expect((await viaApi(`Bearer ${token}`)).body).toBe('herald_up 1\n');
      expect((await viaApi(`bearer  ${token}`)).statusCode).toBe(200);
      expect((await viaStart(`Bearer ${token}`)).status).toBe(200);
      // Only /metrics: probes need no token.
      expect((await guarded.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
    } finally {
      await guarded.close();
      await starting.close();
    }
  });

  it('lets each scope do its part only: publish cannot read or write profiles, read cannot publish', async () => {
    const as = (key: string, method: 'GET' | 'PUT' | 'POST', url: string, payload?: object) => inject({ method, url, headers: { authorization: `Bearer ${key}` }, ...(payload ? { payload } : {}) });
    const event = { type: 'comment.created', recipients: ['ada'], data: { commentId: 'c' } };
    expect((await as(KEYS.acmePublish, 'POST', '/v1/events', event)).statusCode).toBe(202);
    expect((await as(KEYS.acmePublish, 'GET', '/v1/users/ada')).json().error).toBe('HRL_FORBIDDEN');
    expect((await as(KEYS.acmePublish, 'PUT', '/v1/users/ada', { name: 'x' })).statusCode).toBe(403);
    expect((await as(KEYS.acmeRead, 'POST', '/v1/events', event)).statusCode).toBe(403);
    expect((await as(KEYS.acmeRead, 'PUT', '/v1/audiences/a/members', { add: ['x'] })).statusCode).toBe(403);
  });

  it('takes the tenant from the key: absent in the body it is filled in, another one is refused', async () => {
    const res = await inject({ method: 'POST', url: '/v1/events', payload: { type: 'comment.created', recipients: ['ada'], data: { commentId: 'c' } } });
    expect(res.statusCode).toBe(202);
    expect(published.at(-1)!.tenant).toBe('acme');
    const before = published.length;
    const other = await inject({ method: 'POST', url: '/v1/events', headers: { authorization: `Bearer ${KEYS.globex}` }, payload: { type: 'comment.created', tenant: 'acme', recipients: ['ada'], data: {} } });
    expect([other.statusCode, other.json().error, other.json().field]).toEqual([403, 'HRL_TENANT_MISMATCH', 'tenant']);
    expect(published.length).toBe(before);
  });

  it('refuses another tenant in every body that can name one (preferences and audiences too), and unknown audience fields', async () => {
    const globex = { authorization: `Bearer ${KEYS.globex}` };
    for (const [url, payload] of [['/v1/users/carol', { tenant: 'acme', name: 'C' }], ['/v1/users/carol/preferences', { tenant: 'acme', channels: { email: false } }], ['/v1/audiences/team/members', { tenant: 'acme', add: ['carol'] }]] as const) {
      const r = await inject({ method: 'PUT', url, headers: globex, payload });
      expect([url, r.statusCode, r.json().error, r.json().field]).toEqual([url, 403, 'HRL_TENANT_MISMATCH', 'tenant']);
    }
    const bogus = await inject({ method: 'PUT', url: '/v1/audiences/team/members', payload: { bogus: 1 } });
    expect([bogus.statusCode, bogus.json().error, bogus.json().field, bogus.json().message]).toEqual([400, 'HRL_SCHEMA_VIOLATION', 'bogus', 'bogus: unknown field; expected add and/or remove']);
    expect((await inject({ method: 'PUT', url: '/v1/audiences/team/members', payload: { tenant: 'acme', add: ['carol'] } })).statusCode).toBe(202);
  });

  it('lets no cache keep a /v1 answer (tenant data; a rotation answers its secret once), while /healthz may be', async () => {
    expect((await inject({ method: 'GET', url: '/v1/users/ada/inbox' })).headers['cache-control']).toBe('no-store');
    expect((await inject({ method: 'GET', url: '/v1/users/nobody' })).headers['cache-control']).toBe('no-store');
    expect((await inject({ method: 'GET', url: '/healthz' })).headers['cache-control']).toBeUndefined();
  });

  it('refuses query parameters it cannot use, naming them, instead of guessing', async () => {
    for (const [url, field, message] of [
      ['/v1/users/ada/inbox?limit=abc', 'limit', 'limit: expected an integer from 1 to 500, got "abc"'],
      ['/v1/users/ada/inbox?limit=0', 'limit', 'limit: expected an integer from 1 to 500, got "0"'],
      ['/v1/users/ada/notifications?limit=-1', 'limit', 'limit: expected an integer from 1 to 500, got "-1"'],
      ['/v1/users/ada/notifications?limit=501', 'limit', 'limit: expected an integer from 1 to 500, got "501"'],
      ['/v1/audiences/team/members?limit=1.5', 'limit', 'limit: expected an integer from 1 to 100000, got "1.5"'],
      ['/v1/users/ada/inbox?unread=yes', 'unread', 'unread: expected true or false, got "yes"'],
    ] as const) {
      const r = await inject({ method: 'GET', url });
      expect([url, r.statusCode, r.json()]).toEqual([url, 400, { error: 'HRL_SCHEMA_VIOLATION', field, message }]);
    }
    expect((await inject({ method: 'GET', url: '/v1/users/ada/inbox?limit=500&unread=false' })).statusCode).not.toBe(400);
  });

  it('keeps user ids per tenant: another tenant\'s key neither sees nor overwrites acme\'s carol', async () => {
    await inject({ method: 'PUT', url: '/v1/users/carol', payload: { email: 'carol@acme.example', webhookUrl: 'https://hooks.acme.example/carol' } });
    const globex = { authorization: `Bearer ${KEYS.globex}` };
    const read = await inject({ method: 'GET', url: '/v1/users/carol', headers: globex });
    const missing = await inject({ method: 'GET', url: '/v1/users/nobody', headers: globex });
    expect(read.statusCode).toBe(404);
    expect(read.json().message).toBe(missing.json().message.replace('nobody', 'carol')); // nothing tells them apart
    await inject({ method: 'PUT', url: '/v1/users/carol', headers: globex, payload: { webhookUrl: 'https://evil.example/x' } });
    await inject({ method: 'DELETE', url: '/v1/users/carol', headers: globex });
    const acme = await inject({ method: 'GET', url: '/v1/users/carol' });
    expect(acme.json()).toMatchObject({ tenant: 'acme', webhookUrl: 'https://hooks.acme.example/carol' });
  });

  it('answers another tenant\'s notification exactly like an unknown one', async () => {
    nextAnswer = { status: 'ok', value: { notificationId: 'n-acme', tenant: 'acme', events: [] } as never, servedBy: 'i-1' };
    const theirs = await inject({ method: 'GET', url: '/v1/notifications/n-acme', headers: { authorization: `Bearer ${KEYS.globex}` } });
    nextAnswer = { status: 'not_found', detail: 'no lifecycle for notification "n-acme" yet' };
    const unknown = await inject({ method: 'GET', url: '/v1/notifications/n-acme', headers: { authorization: `Bearer ${KEYS.globex}` } });
    expect([theirs.statusCode, theirs.body]).toEqual([404, unknown.body]);
  });

  it('refuses webhook URLs that reach Herald\'s own network, carry credentials, or are not https', async () => {
    for (const url of ['http://169.254.169.254/latest/meta-data/', 'http://0:9300', 'http://[::ffff:127.0.0.1]:9300'.replace('127.0.0.1', '10.0.0.1'), 'https://10.1.2.3/x', 'https://100.64.0.1/', 'https://[fd00::1]/', 'https://user:pass@hooks.example/x', 'http://hooks.example/x', 'ftp://hooks.example/']) {
      const res = await inject({ method: 'PUT', url: '/v1/users/dave', payload: { webhookUrl: url } });
      expect([url, res.statusCode, res.json().error, res.json().field]).toEqual([url, 400, 'HRL_DESTINATION_REFUSED', 'webhookUrl']);
      expect(res.body).not.toContain('pass');
    }
    // The allowlisted loopback receiver of tests and development is accepted over http.
    expect((await inject({ method: 'PUT', url: '/v1/users/dave', payload: { webhookUrl: 'http://127.0.0.1:9300/hooks' } })).statusCode).toBe(202);
  });

  it('answers over-long ids in paths and bodies with 400 naming the field and the limit, before using them', async () => {
    const long = 'u'.repeat(300);
    for (const [method, url] of [['GET', `/v1/users/${long}`], ['PUT', `/v1/users/${long}`], ['GET', `/v1/notifications/${long}`], ['GET', `/v1/users/${long}/notifications`], ['PUT', `/v1/audiences/${long}/members`]] as const) {
      const res = await inject({ method, url, ...(method === 'PUT' ? { payload: {} } : {}) });
      expect([url.slice(0, 20), res.statusCode, res.json().error]).toEqual([url.slice(0, 20), 400, 'HRL_LIMIT_EXCEEDED']);
      expect(res.json().message).toMatch(/at most 256 characters/);
    }
    const member = await inject({ method: 'PUT', url: '/v1/audiences/team/members', payload: { add: ['ok', long] } });
    expect([member.statusCode, member.json().field]).toEqual([400, 'add[1]']);
    const many = await inject({ method: 'PUT', url: '/v1/audiences/team/members', payload: { add: Array.from({ length: 10_001 }, (_, i) => `m${i}`) } });
    expect([many.statusCode, many.json().error]).toEqual([400, 'HRL_LIMIT_EXCEEDED']);
    const recipients = await inject({ method: 'POST', url: '/v1/events', payload: { type: 'comment.created', recipients: Array.from({ length: 1001 }, (_, i) => String(i)), data: {} } });
    expect([recipients.statusCode, recipients.json().field]).toEqual([400, 'recipients']);
    const key = await inject({ method: 'POST', url: '/v1/events', headers: { 'idempotency-key': 'k'.repeat(257) }, payload: { type: 'comment.created', recipients: ['ada'], data: {} } });
    expect([key.statusCode, key.json().field]).toEqual([400, 'Idempotency-Key']);
  });

  it('limits each tenant\'s publish rate with a token bucket: 429 with Retry-After, other tenants unaffected', async () => {
    const limited = await buildApi({ ...ports, rate: { perSecond: 1, burst: 2 } });
    try {
      const post = (key: string) => limited.inject({ method: 'POST', url: '/v1/events', headers: { authorization: `Bearer ${key}` }, payload: { type: 'comment.created', recipients: ['ada'], data: {} } });
      const codes = [];
      for (let i = 0; i < 3; i++) codes.push((await post(KEYS.acme)).statusCode);
      expect(codes).toEqual([202, 202, 429]);
      const refused = await post(KEYS.acme);
      expect([refused.json().error, Number(refused.headers['retry-after'])]).toEqual(['HRL_RATE_LIMITED', 1]);
      expect((await post(KEYS.globex)).statusCode).toBe(202);
    } finally {
      await limited.close();
    }
  });

  it('bounds the Idempotency-Key memory in bytes: old answers are forgotten, not the heap grown', async () => {
    const small = await buildApi({ ...ports, idempotencyCacheBytes: 64 * 1024 });
    try {
      const post = (key: string, commentId: string) => small.inject({ method: 'POST', url: '/v1/events', headers: { authorization: `Bearer ${KEYS.acme}`, 'idempotency-key': key }, payload: { type: 'comment.created', recipients: Array.from({ length: 100 }, (_, i) => `r${i}`), data: { commentId } } });
      expect((await post('first', 'a')).statusCode).toBe(202);
      expect((await post('first', 'b')).statusCode).toBe(422); // remembered: same key, other body
      for (let i = 0; i < 100; i++) await post(`filler-${i}`, 'x'); // ~10 KB answers each
      expect((await post('first', 'b')).statusCode).toBe(202); // forgotten under the byte bound
    } finally {
      await small.close();
    }
  });

  it('refuses a preference for a channel that does not exist (a misspelt opt-out would silently do nothing)', async () => {
    const bad = await inject({ method: 'PUT', url: '/v1/users/ada/preferences', payload: { channels: { pigeon: false } } });
    expect([bad.statusCode, bad.json().error, bad.json().field]).toEqual([400, 'HRL_SCHEMA_VIOLATION', 'channels.pigeon']);
    expect(bad.json().message).toBe('channels.pigeon: unknown channel; expected one of webhook, email, inapp, chat');
    expect((await inject({ method: 'PUT', url: '/v1/users/ada/preferences', payload: { channels: { email: false, chat: true } } })).statusCode).toBe(202);
  });

  it('checks quiet hours and time zones where they are written', async () => {
    const bad = await inject({ method: 'PUT', url: '/v1/users/ada/preferences', payload: { quietHours: { start: '25:00', end: '07:00' } } });
    expect([bad.statusCode, bad.json().field]).toEqual([400, 'quietHours.start']);
    expect((await inject({ method: 'PUT', url: '/v1/users/ada/preferences', payload: { quietHours: { start: '22:00', end: '07:00' } } })).statusCode).toBe(202);
    const zone = await inject({ method: 'PUT', url: '/v1/users/ada', payload: { timezone: 'Mars/Olympus' } });
    expect([zone.statusCode, zone.json().field]).toEqual([400, 'timezone']);
  });

  it('only ever sends error codes that are documented', () => {
    const source = ['api/server.ts', 'app/queries.ts'].map((f) => readFileSync(f, 'utf8')).join('\n');
    const sent = [...source.matchAll(/'(HRL_[A-Z_]+)'/g)].map((m) => m[1]!);
    expect(sent.length).toBeGreaterThan(5);
    expect(sent.filter((c) => !(c in ERROR_CODES))).toEqual([]);
  });
});
