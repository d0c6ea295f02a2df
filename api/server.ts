/**
 * The HTTP API (Fastify), built on ports (api/ports.ts) only: publish events (for agents
 * and services without a Kafka client), manage profiles, preferences and audiences, read
 * a notification's lifecycle and a user's notifications (from whichever instance holds
 * them), and the operational endpoints. Every error answers `{ error, field?, message }`
 * with a documented `HRL_…` code (README, "Error codes").
 */
import { createHash, randomUUID } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest, type HTTPMethods } from 'fastify';
import { allows, type Principal } from '../auth/keys.ts';
import { isMailbox } from '../channels/mailbox.ts';
import { urlRefusal } from '../channels/outbound.ts';
import { type ErrorCode, HeraldError } from '../errors.ts';
import { eventIdFromIdempotencyKey, notificationId } from '../processors/ids.ts';
import { isTimeZone, minutesOf } from '../processors/quiet-hours.ts';
import { domainEventFromJson, firstInvalidUtf8, idRefusal, illFormedText, MAX_ID_LENGTH, MAX_NESTING, nestedDeeperThan } from '../runtime/codec.ts';
import { CHANNELS, parseDuration } from '../rules/rules.ts';
import { validate } from '../schemas/index.ts';
import type { Scope, UserPreferences, UserProfile } from '../schemas/types.ts';
import { once } from 'node:events';
import { Readable } from 'node:stream';
import { decisionIdOf } from '../schemas/lifecycle.ts';
import { metricsRefusal } from './metrics-auth.ts';
import type { ApiPorts, InboxItemView, QueryAnswer } from './ports.ts';
import { TenantRateLimiter } from './rate-limit.ts';
import { INBOX_STREAM_PATH, retryLaterStream, wantsEventStream } from './sse.ts';

declare module 'fastify' {
  interface FastifyRequest {
    /** The API key's tenant and scopes (every /v1 route has one). */
    principal: Principal | null;
  }
}

/** An inbox item's id: what the stream sends as an event id and the inbox pages as `next`. */
const INBOX_ITEM_ID = /^\d{15}:(\d{19}:)?[^\s:]+$/;

/** What a caller controls, and how much of it (the README's limits table is this list). */
export const LIMITS = {
  /** Ids: event id, recipients, user ids, audience names, member ids, notification ids (characters). */
  idLength: MAX_ID_LENGTH,
  /** Idempotency-Key header (characters). */
  idempotencyKeyLength: 256,
  /** Explicit recipients of one event published through the API. */
  recipientsPerEvent: 1000,
  /** Audience members added plus removed in one call. */
  membersPerCall: 10_000,
  /** Body of one audience members call (bytes). */
  audienceBodyBytes: 4 * 1024 * 1024,
  /** Body of a profile or preferences write (bytes). */
  profileBodyBytes: 64 * 1024,
  /** Nesting depth of an event body (data included). */
  depth: MAX_NESTING,
} as const;

/** Requests carrying it were forwarded by another instance: answer locally, never forward again. */
export const FORWARDED_HEADER = 'x-herald-forwarded';
/** On a forwarded request: the instance it is meant for. */
export const FORWARDED_TO_HEADER = 'x-herald-forwarded-to';

interface ErrorBody { error: ErrorCode; field?: string | null; message: string }

const fail = (reply: FastifyReply, status: number, error: ErrorCode, message: string, field?: string) =>
  reply.code(status).send({ error, ...(field !== undefined ? { field } : {}), message } satisfies ErrorBody);

/** Messages and field paths are bounded: a 400 never echoes a large value back. */
const clip = (s: string, max: number) => (s.length > max ? `${s.slice(0, max)}…` : s);

function badRequest(reply: FastifyReply, err: unknown) {
  if (err instanceof HeraldError) return fail(reply, 400, err.code, clip(err.message, 500), err.field ? clip(err.field, 200) : undefined);
  throw err;
}

/** How deep `v` nests, stopping once past `limit` (iterative: no stack to overflow). */
const MAX_DEPTH = LIMITS.depth;
const STRICT_UTF8 = new TextDecoder('utf-8', { fatal: true });

/** Fastify's own client errors, mapped to Herald's codes. */
function clientErrorCode(err: { code?: string; statusCode?: number }): ErrorCode {
  if (err.statusCode === 413) return 'HRL_PAYLOAD_TOO_LARGE';
  if (err.statusCode === 401) return 'HRL_UNAUTHORIZED';
  if (err.statusCode === 415) return 'HRL_UNSUPPORTED_MEDIA_TYPE';
  return 'HRL_BAD_REQUEST';
}

/** A request Fastify refused before Herald's handler, in Herald's words: what was wrong and what is expected. */
function clientErrorMessage(err: { code?: string; statusCode?: number; name?: string; message: string }, bodyLimit: number, contentType: string | undefined): string {
  if (err.statusCode === 413) return `body: at most ${bodyLimit} bytes on this route${bodyLimit === LIMITS.profileBodyBytes || bodyLimit === LIMITS.audienceBodyBytes ? '' : ' (HERALD_MAX_PAYLOAD_BYTES)'}; this one is larger`;
  if (err.statusCode === 415) return `Content-Type: expected application/json, got ${contentType ? `"${clip(contentType, 100)}"` : 'none'}`;
  if (err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') return 'body: expected a JSON document, got an empty body with Content-Type application/json (send no Content-Type without a body)';
  if (err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err.name === 'SyntaxError') return `body: not valid JSON (${clip(err.message, 200)})`;
  return err.message;
}

function clientErrorField(err: { code?: string; statusCode?: number; name?: string }): string | undefined {
  if (err.statusCode === 413 || err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err.name === 'SyntaxError') return 'body';
  if (err.statusCode === 415) return 'Content-Type';
  return undefined;
}

function answer<T>(reply: FastifyReply, a: QueryAnswer<T>) {
  if (a.status === 'ok') return reply.header('x-herald-served-by', a.servedBy).send(a.value);
  if (a.status === 'not_found') return fail(reply, 404, 'HRL_NOT_FOUND', a.detail);
  return reply.header('retry-after', '1').code(503).send({ error: 'HRL_OWNER_UNAVAILABLE', message: a.detail } satisfies ErrorBody);
}

/** How long a stop waits for requests in flight before it closes their connections. */
const CLOSE_GRACE_MS = 10_000;
/** How long a stop goes on answering (503) the requests already on their way before it closes idle connections. */
const DRAIN_MS = 300;

export async function buildApi(ports: ApiPorts): Promise<FastifyInstance> {
  const { publisher, profiles, lifecycle, health, rules, log, keys, outbound } = ports;
  // Path ids are checked against LIMITS.idLength by the routes (a clear 400, not a 404).
  // A stop answers the requests in flight (a publish waits for its journal write) and closes
  // idle keep-alive connections; new requests meanwhile get 503 with Connection: close. Open
  // event streams are ended first (preClose below), or the close would wait for them.
  const app = Fastify({
    ...(ports.serverFactory ? { serverFactory: ports.serverFactory } : {}),
    logger: false, bodyLimit: ports.maxPayloadBytes, forceCloseConnections: false, return503OnClosing: false, routerOptions: { maxParamLength: 4 * MAX_ID_LENGTH },
    // Errors before routing answer with Herald's error body too.
    frameworkErrors: (error, req, reply) => {
      if (error.code === 'FST_ERR_BAD_URL') {
        // A % not followed by two hex digits, or escapes that are not UTF-8 (%FF alone).
        const path = req.url.split('?')[0] ?? '';
        const why = /%(?![0-9A-Fa-f]{2})/.test(path) ? 'a % must start an escape such as %2F' : 'its %-escapes are not UTF-8 (ids are UTF-8 text, such as %C3%A9 for é)';
        return void fail(reply, 400, 'HRL_BAD_REQUEST', `URL: ${clip(path, 200)} is not a valid path: ${why}`, 'url');
      }
      return void fail(reply, error.statusCode && error.statusCode < 500 ? error.statusCode : 400, 'HRL_BAD_REQUEST', clip(error.message, 300));
    },
    // Requests Node's HTTP parser refuses before Fastify sees them (headers too large, not HTTP).
    clientErrorHandler: (err, socket) => {
      if ((err as NodeJS.ErrnoException).code === 'ECONNRESET' || !socket.writable) return void socket.destroy();
      const overflow = (err as NodeJS.ErrnoException).code === 'HPE_HEADER_OVERFLOW';
      const body = JSON.stringify(overflow
        ? { error: 'HRL_LIMIT_EXCEEDED', field: 'headers', message: 'headers: larger together than the server takes (16 KB); send long values in the body' }
        : { error: 'HRL_BAD_REQUEST', message: `not a valid HTTP/1.1 request (${(err as NodeJS.ErrnoException).code ?? 'parse error'})` });
      socket.end(`HTTP/1.1 ${overflow ? '431 Request Header Fields Too Large' : '400 Bad Request'}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    },
  });
  const streams = new Set<() => void>();
  let closing = false;
  app.addHook('preClose', (done) => {
    closing = true;
    for (const end of [...streams]) end();
    // A request that never finishes must not hold the stop for ever.
    setTimeout(() => app.server.closeAllConnections(), CLOSE_GRACE_MS).unref();
    // Requests already on their way (a connection accepted, its request not read yet) are
    // answered too, with 503 and Connection: close, before the server closes the idle
    // connections: a client gets an answer it can act on, never a reset.
    setTimeout(done, DRAIN_MS);
  });
  // Every answer counted by route pattern (`/v1/users/:userId`, never the ids), status and time taken.
  // Queries another instance forwarded are not: a lookup by notification id asks every owner,
  // and the owners without it answer 404, which counted made a 404-rate alert fire on 200s.
  const httpMetrics = ports.httpMetrics;
  if (httpMetrics) {
    app.addHook('onResponse', async (req, reply) => {
      if (req.headers[FORWARDED_HEADER] !== undefined) return;
      httpMetrics.observe(req.method, req.routeOptions.url ?? 'unmatched', reply.statusCode, reply.elapsedTime / 1000);
    });
  }
  // A request that arrives while the server closes: Herald's 503, with when to retry.
  app.addHook('onRequest', (req, reply, done) => {
    if (!closing) return done();
    const message = 'this instance is stopping; retry (with the same Idempotency-Key), here after its restart or at another instance';
    if (INBOX_STREAM_PATH.test(req.url.split('?')[0] ?? '') && wantsEventStream(req.headers.accept)) {
      reply.hijack();
      return retryLaterStream(reply.raw, 1000, 'HRL_SHUTTING_DOWN', message);
    }
    void fail(reply.header('retry-after', '1'), 503, 'HRL_SHUTTING_DOWN', message);
  });
  // Answers given while closing close their connection, so the close does not wait out keep-alive.
  app.addHook('onSend', (req, reply, payload, done) => {
    if (closing) reply.header('connection', 'close');
    // Tenant data and secrets (a rotation answers its new secret once): no cache keeps them, as Stripe's API says.
    if (req.url.startsWith('/v1/') && !reply.hasHeader('cache-control')) reply.header('cache-control', 'no-store');
    done(null, payload);
  });
  // JSON only: a text/plain body is refused with 415, not parsed as something else.
  app.removeContentTypeParser('text/plain');
  // JSON is UTF-8 (RFC 8259): bytes that are not are refused, naming the first, as on the
  // Kafka path (they used to become U+FFFD, altered silently). Fastify's own parser does the
  // rest (its prototype-poisoning checks); its "not valid JSON" gets JSON.parse's reason,
  // which says where.
  const jsonParser = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (req, body, done) => {
    const buf = body as Buffer;
    // A body declared in another charset is refused with 415 by the hook below, whatever its bytes.
    const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(String(req.headers['content-type'] ?? ''))?.[1];
    let text: string;
    try {
      text = charset !== undefined && !/^utf-?8$/i.test(charset) ? buf.toString('utf8') : STRICT_UTF8.decode(buf);
    } catch {
      const at = firstInvalidUtf8(buf);
      done(Object.assign(new Error(`JSON must be UTF-8 (RFC 8259), and byte ${at} (0x${buf.subarray(at, at + 1).toString('hex')}) is not valid UTF-8 there`), { statusCode: 400, code: 'FST_ERR_CTP_INVALID_JSON_BODY' }), undefined);
      return;
    }
    jsonParser(req, text, (err, parsed) => {
      if (err && (err as { code?: string }).code === 'FST_ERR_CTP_INVALID_JSON_BODY') {
        try {
          JSON.parse(text);
        } catch (syntax) {
          done(Object.assign(new Error((syntax as Error).message), { statusCode: 400, code: 'FST_ERR_CTP_INVALID_JSON_BODY' }), undefined);
          return;
        }
      }
      done(err, parsed);
    });
  });
  app.decorateRequest('principal', null);

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, req, reply) => {
    if (err.statusCode && err.statusCode < 500) return fail(reply, err.statusCode, clientErrorCode(err), clientErrorMessage(err, req.routeOptions.bodyLimit ?? ports.maxPayloadBytes, req.headers['content-type']), clientErrorField(err));
    if (err instanceof HeraldError && (err.code === 'HRL_JOURNAL_BEHIND' || err.code === 'HRL_BACKPRESSURE')) return fail(reply.header('retry-after', '1'), 503, err.code, err.message);
    if (err instanceof HeraldError && err.code === 'HRL_BROKER_UNREACHABLE') return fail(reply.header('retry-after', '5'), 503, err.code, err.message);
    // kafkajs gave up on a write (its retries spent, the connection lost): the brokers, not Herald.
    if (/^KafkaJS(NumberOfRetriesExceeded|Connection|RequestTimeout|BrokerNotFound|Timeout)/.test(err.name ?? '')) {
      log.warn({ err: { name: err.name, message: err.message } }, 'a write through the API failed at the brokers');
      return fail(reply.header('retry-after', '5'), 503, 'HRL_BROKER_UNREACHABLE', `the brokers did not take the write (${err.name}); it may still be written: send it again with the same Idempotency-Key (or id)`);
    }
    log.error({ err, method: req.method, url: req.routeOptions.url }, 'api error');
    return fail(reply, 500, 'HRL_INTERNAL', 'internal error');
  });
  app.setNotFoundHandler((req, reply) => {
    const path = clip(req.url.split('?')[0] ?? '', 200);
    // A path that exists with other methods: 405 and the ones it takes (RFC 9110), not 404.
    const allow = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH'].filter((method) => method !== req.method && app.findRoute({ method: method as HTTPMethods, url: req.url.split('?')[0] ?? '' }) !== null);
    if (allow.length) return fail(reply.header('allow', allow.join(', ')), 405, 'HRL_METHOD_NOT_ALLOWED', `${req.method} ${path}: this path takes ${allow.join(', ')}`);
    return fail(reply, 404, 'HRL_NOT_FOUND', `no route ${req.method} ${path}`);
  });

  // A worker's API is for forwarded queries: a write here would skip the primary's journal
  // wait and back-pressure, so it is refused before anything else.
  if (ports.workerOf) {
    const primary = ports.workerOf;
    app.addHook('onRequest', async (req, reply) => {
      if (req.method !== 'GET' && req.method !== 'HEAD' && req.url.startsWith('/v1/')) return fail(reply, 421, 'HRL_WORKER_READ_ONLY', `this is a worker process of Herald instance ${primary}: it answers forwarded queries only; send ${req.method} ${clip(req.url.split('?')[0] ?? '', 200)} to that instance's API`);
    });
  }
  // Every /v1 route needs `Authorization: Bearer <API key>`; the tenant comes from the key.
  app.addHook('onRequest', async (req, reply) => {
    if (!req.url.startsWith('/v1/') && req.url !== '/v1') return;
    const m = /^Bearer +(\S+)$/i.exec(req.headers.authorization ?? '');
    if (!m) {
      return fail(reply.header('www-authenticate', 'Bearer realm="herald"'), 401, 'HRL_UNAUTHORIZED', 'Authorization: expected "Bearer <API key>"; create a key with `npm run herald -- keys create --tenant <tenant>`', 'Authorization');
    }
    const r = await keys.authenticate(m[1]!);
    if (!r.ok) return fail(reply.header('www-authenticate', 'Bearer realm="herald", error="invalid_token"'), 401, 'HRL_UNAUTHORIZED', `Authorization: ${r.why}`, 'Authorization');
    req.principal = r.principal;
  });
  // Text no UTF-8 can carry (a lone surrogate, "\ud800" alone in JSON) is refused in every
  // body, naming where: Avro would write it as replacement characters, altered silently.
  app.addHook('preValidation', async (req, reply) => {
    // JSON is UTF-8 (RFC 8259): a body declared in another charset would be read as UTF-8 anyway.
    const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(String(req.headers['content-type'] ?? ''))?.[1];
    if (charset !== undefined && !/^utf-?8$/i.test(charset)) return fail(reply, 415, 'HRL_UNSUPPORTED_MEDIA_TYPE', `Content-Type: expected application/json in UTF-8, got charset ${clip(charset, 40)}`, 'Content-Type');
    if (req.body === null || typeof req.body !== 'object') return;
    // Depth first: every check after this one walks the body.
    if (nestedDeeperThan(req.body, MAX_DEPTH)) return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `body: nested deeper than ${MAX_DEPTH} levels`, 'body');
    const bad = illFormedText(req.body);
    if (bad) return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', clip(bad, 500), clip(bad.slice(0, bad.indexOf(':')), 200));
  });
  const need = (scope: Scope) => async (req: FastifyRequest, reply: FastifyReply) => {
    const p = req.principal!;
    if (!allows(p.scopes, scope)) return fail(reply, 403, 'HRL_FORBIDDEN', `API key ${p.keyId} has scope ${p.scopes.join(', ')}; this route needs ${scope}`, 'Authorization');
  };
  const tenantOf = (req: FastifyRequest) => req.principal!.tenant;
  /** A body that is not a JSON object (none at all, an array, null): 400 saying what the route takes (true: answered). */
  /** A body naming another user than the path: 400 (true: answered); it used to be overridden silently. */
  const userMismatch = (reply: FastifyReply, body: unknown, userId: string): boolean => {
    const named = body && typeof body === 'object' ? (body as { userId?: unknown }).userId : undefined;
    if (named === undefined || named === null || named === userId) return false;
    void fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `userId: the path names user "${clip(userId, 80)}"; omit the field or send the same id`, 'userId');
    return true;
  };
  const notAnObject = (reply: FastifyReply, body: unknown, takes: string): boolean => {
    if (body !== null && typeof body === 'object' && !Array.isArray(body)) return false;
    void fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `body: expected a JSON object (${takes}), got ${body === undefined ? 'no body' : body === null ? 'null' : Array.isArray(body) ? 'an array' : typeof body}`, 'body');
    return true;
  };
  /** A body naming another tenant than the key's: 403, as the tenant always comes from the key (true: answered). */
  const tenantMismatch = (reply: FastifyReply, body: unknown, tenant: string): boolean => {
    const named = body && typeof body === 'object' ? (body as { tenant?: unknown }).tenant : undefined;
    if (named === undefined || named === null || named === tenant) return false;
    void fail(reply, 403, 'HRL_TENANT_MISMATCH', `tenant: this API key belongs to tenant "${tenant}"; omit the field or send that tenant`, 'tenant');
    return true;
  };
  /** `?limit=`: absent, the default; an integer from 1 to `max`, that; anything else 400 naming it (null: answered). */
  const queryLimit = (reply: FastifyReply, raw: unknown, fallback: number, max: number): number | null => {
    if (raw === undefined) return fallback;
    const text = String(raw);
    const n = /^\d{1,9}$/.test(text) ? Number(text) : NaN;
    if (n >= 1 && n <= max) return n;
    void fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `limit: expected an integer from 1 to ${max}, got "${clip(text, 40)}"`, 'limit');
    return null;
  };
  /** Every /v1 route names the query parameters it takes (`config.query`); any other is refused, naming it, not ignored (a paginator sending ?after= to a ?before= list would loop on page one). */
  app.addHook('preValidation', async (req, reply) => {
    if (!req.url.startsWith('/v1/')) return;
    const takes = (req.routeOptions.config as { query?: readonly string[] }).query ?? [];
    const extra = Object.keys((req.query as Record<string, unknown> | undefined) ?? {}).find((k) => !takes.includes(k));
    if (extra !== undefined) return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `${clip(extra, 40)}: unknown query parameter; this route takes ${takes.length ? takes.join(', ') : 'none'}`, clip(extra, 40));
  });
  /** A path id over the limit, blank or with control characters: 400 naming it (before any lookup or key is made of it). */
  const badId = (reply: FastifyReply, field: string, v: string) => {
    if (v.length > MAX_ID_LENGTH) return fail(reply, 400, 'HRL_LIMIT_EXCEEDED', `${field}: expected at most ${MAX_ID_LENGTH} characters, got ${v.length}`, field);
    const why = idRefusal(v);
    return why ? fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `${field}: ${why}`, field) : null;
  };
  const forwardedOpts = (req: FastifyRequest) => {
    const to = req.headers[FORWARDED_TO_HEADER];
    return { forwarded: req.headers[FORWARDED_HEADER] !== undefined, authorization: req.headers.authorization ?? '', ...(typeof to === 'string' ? { forwardedTo: to } : {}) };
  };

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const r = health.readiness();
    return reply.code(r.ready ? 200 : 503).send(r);
  });
  app.get('/metrics', async (req, reply) => {
    const refused = metricsRefusal(ports.metricsToken ?? '', req.headers.authorization);
    if (refused) return reply.code(401).header('www-authenticate', refused.challenge).send(refused.body);
    const m = await health.metrics();
    return reply.header('content-type', m.contentType).send(m.body);
  });

  // Responses to requests with an Idempotency-Key, per instance, for 24 h: a retried POST
  // gets the first answer and publishes nothing. (Across instances a retry publishes the
  // same event again, with the same derived ids, which the pipeline absorbs.) Bounded in
  // bytes: each entry is charged its key, fingerprint and answer.
  type Remembered = { fingerprint: string; body: Promise<{ status: number; body: object }>; bytes: number };
  const answered = new LRUCache<string, Remembered>({ maxSize: ports.idempotencyCacheBytes, sizeCalculation: (v, k) => Math.max(1, k.length + v.bytes + 200), ttl: 86_400_000 });
  const limiter = new TenantRateLimiter(ports.rate.perSecond, ports.rate.burst);

  app.post<{ Body: Record<string, unknown> }>('/v1/events', { onRequest: need('publish') }, async (req, reply) => {
    const tenant = tenantOf(req);
    const wait = limiter.take(tenant);
    if (wait > 0) return fail(reply.header('retry-after', String(Math.ceil(wait / 1000))), 429, 'HRL_RATE_LIMITED', `tenant ${tenant} publishes faster than ${ports.rate.perSecond} events/s (burst ${ports.rate.burst}); retry in ${Math.ceil(wait / 1000)} s`);
    if (notAnObject(reply, req.body, 'a DomainEvent')) return reply;
    if (nestedDeeperThan(req.body, MAX_DEPTH)) return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `body: nested deeper than ${MAX_DEPTH} levels`, 'body');
    if (req.body.tenant !== undefined && req.body.tenant !== tenant) return fail(reply, 403, 'HRL_TENANT_MISMATCH', `tenant: this API key belongs to tenant "${tenant}"; omit the field or send that tenant`, 'tenant');
    if (Array.isArray(req.body.recipients) && req.body.recipients.length > LIMITS.recipientsPerEvent) {
      return fail(reply, 400, 'HRL_LIMIT_EXCEEDED', `recipients: at most ${LIMITS.recipientsPerEvent} per event, got ${req.body.recipients.length}; use an audience for more`, 'recipients');
    }
    const key = req.headers['idempotency-key'];
    if (typeof key === 'string' && key.length > LIMITS.idempotencyKeyLength) {
      return fail(reply, 400, 'HRL_LIMIT_EXCEEDED', `Idempotency-Key: expected at most ${LIMITS.idempotencyKeyLength} characters, got ${key.length}`, 'Idempotency-Key');
    }
    const body: Record<string, unknown> = { ...req.body, tenant };
    const cacheKey = typeof key === 'string' && key ? `${tenant}\u0000${key}` : null;
    const fingerprint = createHash('sha256').update(JSON.stringify(req.body)).digest('hex');
    const previous = cacheKey ? answered.get(cacheKey) : undefined;
    if (previous) {
      if (previous.fingerprint !== fingerprint) return fail(reply, 422, 'HRL_IDEMPOTENCY_KEY_REUSED', 'Idempotency-Key: this key was used with a different request body', 'Idempotency-Key');
      // The same request again (possibly still in flight): the first answer, nothing published.
      const first = await previous.body;
      return reply.code(first.status).header('idempotent-replayed', 'true').send(first.body);
    }
    if (typeof key === 'string' && key) {
      body.idempotencyKey ??= key;
      if (body.id === undefined) body.id = eventIdFromIdempotencyKey(tenant, key);
    }
    body.id ??= `evt_${randomUUID()}`;
    const handled = publish(body);
    // Remember the request before the first await, so a concurrent retry waits for this one.
    if (cacheKey) answered.set(cacheKey, { fingerprint, body: handled, bytes: 1024 });
    const result = await handled.catch((err: unknown) => {
      if (cacheKey) answered.delete(cacheKey);
      throw err;
    });
    if (cacheKey) {
      if (result.status !== 202) answered.delete(cacheKey); // only accepted requests are remembered
      else answered.set(cacheKey, { fingerprint, body: handled, bytes: JSON.stringify(result.body).length });
    }
    return reply.code(result.status).send(result.body);
  });

  async function publish(body: Record<string, unknown>): Promise<{ status: number; body: object }> {
    let ev;
    try {
      ev = domainEventFromJson(body);
    } catch (err) {
      if (err instanceof HeraldError) return { status: 400, body: { error: err.code, field: err.field ? clip(err.field, 200) : null, message: clip(err.message, 500) } };
      throw err;
    }
    const matched = rules.forEventType(ev.type);
    if (matched.length === 0) {
      return { status: 400, body: { error: 'HRL_UNKNOWN_EVENT_TYPE', field: 'type', message: `type: no rule matches event type "${ev.type}"; known types: ${[...new Set(rules.rules.map((r) => r.eventType))].join(', ')}` } };
    }
    if (ev.recipients.length === 0 && !ev.audience) {
      return { status: 400, body: { error: 'HRL_NO_RECIPIENTS', field: 'recipients', message: 'recipients: expected at least one recipient id, or an audience' } };
    }
    const blank = ev.recipients.findIndex((r) => idRefusal(r) !== null);
    if (blank >= 0) {
      const why = ev.recipients[blank]!.trim() === '' ? 'expected a non-empty user id' : idRefusal(ev.recipients[blank]!)!;
      return { status: 400, body: { error: 'HRL_SCHEMA_VIOLATION', field: `recipients[${blank}]`, message: `recipients[${blank}]: ${why}` } };
    }
    ev.occurredAt ??= Date.now();
    await publisher.publish(ev);
    // Ids of explicit recipients are known now; an audience is resolved by ingest.
    const notifications = matched.flatMap((r) => [...new Set(ev.recipients)].map((recipient) => ({ recipient, ruleId: r.id, notificationId: notificationId(ev.tenant, ev.id, recipient, r.id) })));
    return { status: 202, body: { eventId: ev.id, notifications, ...(ev.audience ? { audience: ev.audience } : {}) } };
  }

  const profileRoute = { bodyLimit: LIMITS.profileBodyBytes };

  app.put<{ Params: { userId: string }; Body: Record<string, unknown> }>('/v1/users/:userId', { ...profileRoute, onRequest: need('admin') }, async (req, reply) => {
    const tenant = tenantOf(req);
    if (badId(reply, 'userId', req.params.userId)) return reply;
    if (notAnObject(reply, req.body, 'a UserProfile: name, email, locale, timezone, webhookUrl, …; {} for none')) return reply;
    if (tenantMismatch(reply, req.body, tenant) || userMismatch(reply, req.body, req.params.userId)) return reply;
    let profile: UserProfile;
    try {
      profile = validate<UserProfile>('UserProfile', { ...req.body, userId: req.params.userId, tenant, updatedAt: Date.now() });
      for (const k of ['webhookUrl', 'chatWebhookUrl'] as const) {
        const u = profile[k];
        if (u === null) continue;
        if (u.length > 2048) throw new HeraldError('HRL_LIMIT_EXCEEDED', `${k}: expected at most 2048 characters, got ${u.length}`, { field: k });
        const why = urlRefusal(u, outbound);
        if (why) throw new HeraldError('HRL_DESTINATION_REFUSED', `${k}: ${why}`, { field: k });
      }
      if (!isTimeZone(profile.timezone)) throw new HeraldError('HRL_SCHEMA_VIOLATION', `timezone: expected an IANA time zone such as Europe/Berlin, got "${clip(profile.timezone, 60)}"`, { field: 'timezone' });
      if (profile.email !== null && !isMailbox(profile.email)) throw new HeraldError('HRL_SCHEMA_VIOLATION', 'email: expected one plain e-mail address (local@domain: no name, list, spaces or line breaks)', { field: 'email' });
    } catch (err) {
      return badRequest(reply, err);
    }
    await profiles.putUser(profile);
    return reply.code(202).send({ userId: profile.userId });
  });

  app.delete<{ Params: { userId: string } }>('/v1/users/:userId', { onRequest: need('admin') }, async (req, reply) => {
    if (badId(reply, 'userId', req.params.userId)) return reply;
    await profiles.deleteUser(tenantOf(req), req.params.userId);
    return reply.code(202).send({ userId: req.params.userId, deleted: true });
  });

  app.get<{ Params: { userId: string } }>('/v1/users/:userId', { onRequest: need('read') }, async (req, reply) => {
    if (badId(reply, 'userId', req.params.userId)) return reply;
    const user = await profiles.getUser(tenantOf(req), req.params.userId);
    return user ?? fail(reply, 404, 'HRL_NOT_FOUND', `no profile for user "${req.params.userId}"`);
  });

  app.put<{ Params: { userId: string }; Body: Record<string, unknown> }>('/v1/users/:userId/preferences', { ...profileRoute, onRequest: need('admin') }, async (req, reply) => {
    const tenant = tenantOf(req);
    if (badId(reply, 'userId', req.params.userId)) return reply;
    if (notAnObject(reply, req.body, 'UserPreferences: channels, categories, quietHours; {} for none')) return reply;
    if (nestedDeeperThan(req.body, MAX_DEPTH)) return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `body: nested deeper than ${MAX_DEPTH} levels`, 'body');
    if (tenantMismatch(reply, req.body, tenant) || userMismatch(reply, req.body, req.params.userId)) return reply;
    let prefs: UserPreferences;
    try {
      prefs = validate<UserPreferences>('UserPreferences', { ...req.body, userId: req.params.userId, tenant, updatedAt: Date.now() });
      // A misspelt channel would be stored and never match: an opt-out that silently does nothing.
      const unknown = Object.keys(prefs.channels).find((c) => !(CHANNELS as readonly string[]).includes(c));
      if (unknown !== undefined) throw new HeraldError('HRL_SCHEMA_VIOLATION', `channels.${clip(unknown, 40)}: unknown channel; expected one of ${CHANNELS.join(', ')}`, { field: `channels.${clip(unknown, 40)}` });
      for (const k of ['start', 'end'] as const) {
        const v = prefs.quietHours?.[k];
        if (v !== undefined && minutesOf(v) === null) throw new HeraldError('HRL_SCHEMA_VIOLATION', `quietHours.${k}: expected HH:MM (00:00 to 23:59), got "${clip(v, 40)}"`, { field: `quietHours.${k}` });
      }
    } catch (err) {
      return badRequest(reply, err);
    }
    await profiles.putPreferences(prefs);
    return reply.code(202).send({ userId: req.params.userId });
  });

  // What a PUT replaces, to read, change and write back.
  app.get<{ Params: { userId: string } }>('/v1/users/:userId/preferences', { onRequest: need('read') }, async (req, reply) => {
    if (badId(reply, 'userId', req.params.userId)) return reply;
    const prefs = await profiles.getPreferences(tenantOf(req), req.params.userId);
    if (prefs === null) return fail(reply, 404, 'HRL_NOT_FOUND', 'this instance does not hold the preferences table');
    return prefs ?? fail(reply, 404, 'HRL_NOT_FOUND', `no preferences for user "${req.params.userId}" (every channel and category is on, no quiet hours)`);
  });

  app.put<{ Params: { audience: string }; Body: { add?: unknown; remove?: unknown } }>('/v1/audiences/:audience/members', { bodyLimit: LIMITS.audienceBodyBytes, onRequest: need('admin') }, async (req, reply) => {
    const tenant = tenantOf(req);
    const { audience } = req.params;
    if (badId(reply, 'audience', audience)) return reply;
    if (notAnObject(reply, req.body, '{ "add": [user ids], "remove": [user ids] }')) return reply;
    if (tenantMismatch(reply, req.body, tenant)) return reply;
    const extra = Object.keys(req.body ?? {}).find((k) => k !== 'add' && k !== 'remove' && k !== 'tenant');
    if (extra !== undefined) return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `${clip(extra, 40)}: unknown field; expected add and/or remove`, clip(extra, 40));
    const lists: Record<'add' | 'remove', string[]> = { add: [], remove: [] };
    for (const k of ['add', 'remove'] as const) {
      const v = req.body?.[k] ?? [];
      if (!Array.isArray(v)) return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `${k}: expected an array of user ids`, k);
      const bad = v.findIndex((x) => typeof x !== 'string' || idRefusal(x) !== null || x.length > MAX_ID_LENGTH);
      if (bad >= 0) {
        const why = typeof v[bad] === 'string' && v[bad].length <= MAX_ID_LENGTH ? idRefusal(v[bad]) : null;
        return fail(reply, 400, typeof v[bad] === 'string' && v[bad].length > MAX_ID_LENGTH ? 'HRL_LIMIT_EXCEEDED' : 'HRL_SCHEMA_VIOLATION', `${k}[${bad}]: ${why ?? `expected a non-empty user id of at most ${MAX_ID_LENGTH} characters`}`, `${k}[${bad}]`);
      }
      lists[k] = v as string[];
    }
    if (lists.add.length + lists.remove.length > LIMITS.membersPerCall) {
      return fail(reply, 400, 'HRL_LIMIT_EXCEEDED', `add, remove: at most ${LIMITS.membersPerCall} members per call, got ${lists.add.length + lists.remove.length}`, 'add');
    }
    await profiles.updateAudience(tenant, audience, lists.add, lists.remove);
    return reply.code(202).send({ audience, added: lists.add.length, removed: lists.remove.length });
  });

  app.get<{ Params: { audience: string }; Querystring: { limit?: string; after?: string } }>('/v1/audiences/:audience/members', { onRequest: need('read'), config: { query: ['limit', 'after'] } }, async (req, reply) => {
    if (badId(reply, 'audience', req.params.audience)) return reply;
    const limit = queryLimit(reply, req.query.limit, 1000, 100_000);
    if (limit === null) return reply;
    const after = req.query.after;
    if (after !== undefined && badId(reply, 'after', after)) return reply;
    // One more than asked: whether there is a next page.
    const members = await profiles.audienceMembers(tenantOf(req), req.params.audience, limit + 1, after);
    if (members === null) return fail(reply, 404, 'HRL_NOT_FOUND', 'this instance does not hold the audiences table (it runs without ingest)');
    const page = members.slice(0, limit);
    // `next`: pass it as ?after= for the following page; null on the last one.
    return { audience: req.params.audience, members: page, next: members.length > limit ? page.at(-1)! : null };
  });

  // The tenant's webhook signing secrets: listed without the secrets; a rotation shows the new one once.
  const signing = (reply: FastifyReply) => ports.signing ?? (fail(reply, 404, 'HRL_NOT_FOUND', 'this instance does not follow the signing secrets'), null);
  app.get('/v1/signing-secrets', { onRequest: need('admin') }, async (req, reply) => {
    const s = signing(reply);
    return s ? s.describe(tenantOf(req)) : reply;
  });
  app.post<{ Body: { gracePeriod?: unknown } | null }>('/v1/signing-secrets/rotate', { onRequest: need('admin') }, async (req, reply) => {
    const s = signing(reply);
    if (!s) return reply;
    if (tenantMismatch(reply, req.body, tenantOf(req))) return reply;
    const extra = Object.keys(req.body ?? {}).find((k) => k !== 'gracePeriod' && k !== 'tenant');
    if (extra !== undefined) return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `${clip(extra, 40)}: unknown field; the body takes gracePeriod (e.g. "24h") or nothing`, clip(extra, 40));
    const grace = req.body?.gracePeriod ?? '24h';
    let graceMs: number;
    try {
      if (typeof grace !== 'string') throw new Error('not a string');
      graceMs = parseDuration(grace);
    } catch {
      return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `gracePeriod: expected a duration such as "24h", "30m" or "0s", got ${clip(JSON.stringify(grace) ?? 'undefined', 80)}`, 'gracePeriod');
    }
    // With an Idempotency-Key, a retried rotation (its answer lost to a timeout, say) gets the
    // first answer, secret included, and makes no second secret; per instance, for 24 h.
    const key = req.headers['idempotency-key'];
    if (typeof key === 'string' && key.length > LIMITS.idempotencyKeyLength) {
      return fail(reply, 400, 'HRL_LIMIT_EXCEEDED', `Idempotency-Key: expected at most ${LIMITS.idempotencyKeyLength} characters, got ${key.length}`, 'Idempotency-Key');
    }
    const tenant = tenantOf(req);
    const cacheKey = typeof key === 'string' && key ? `${tenant}\u0000rotate\u0000${key}` : null;
    const fingerprint = createHash('sha256').update(JSON.stringify(req.body ?? null)).digest('hex');
    const previous = cacheKey ? answered.get(cacheKey) : undefined;
    if (previous) {
      if (previous.fingerprint !== fingerprint) return fail(reply, 422, 'HRL_IDEMPOTENCY_KEY_REUSED', 'Idempotency-Key: this key was used with a different request body', 'Idempotency-Key');
      const first = await previous.body;
      return reply.code(first.status).header('idempotent-replayed', 'true').send(first.body);
    }
    const handled = s.rotate(tenant, graceMs).then((made) => ({ status: 201, body: { id: made.id, secret: made.secret, ...made.view } }));
    if (cacheKey) answered.set(cacheKey, { fingerprint, body: handled, bytes: 1024 });
    let result: { status: number; body: object };
    try {
      result = await handled;
    } catch (err) {
      if (cacheKey) answered.delete(cacheKey);
      // Too many secrets live: a conflict with the tenant's state, not a malformed request.
      if (err instanceof HeraldError && err.code === 'HRL_LIMIT_EXCEEDED') return fail(reply, 409, err.code, err.message, 'gracePeriod');
      throw err;
    }
    return reply.code(result.status).send(result.body);
  });
  app.post('/v1/signing-secrets/retire', { onRequest: need('admin') }, async (req, reply) => {
    const s = signing(reply);
    if (!s) return reply;
    const v = await s.retire(tenantOf(req));
    return v ?? fail(reply, 404, 'HRL_NOT_FOUND', 'this tenant has no signing secret of its own (its webhooks are signed with the deployment secret); rotate to make one');
  });

  app.get<{ Querystring: { to?: string; limit?: string } }>('/v1/dev/mailbox', { onRequest: need('read'), config: { query: ['to', 'limit'] } }, async (req, reply) => {
    if (!ports.mailbox) return fail(reply, 404, 'HRL_NOT_FOUND', 'the dev mailbox runs only on the embedded default without HERALD_SMTP_URL');
    const limit = queryLimit(reply, req.query.limit, 50, 500);
    if (limit === null) return reply;
    return { mails: ports.mailbox.list({ tenant: tenantOf(req), ...(req.query.to ? { to: req.query.to } : {}), limit }) };
  });

  app.get<{ Params: { id: string } }>('/v1/notifications/:id', { onRequest: need('read') }, async (req, reply) => {
    if (badId(reply, 'id', req.params.id)) return reply;
    const a = await lifecycle.notification(req.params.id, forwardedOpts(req));
    // Another tenant's notification is answered exactly like one that does not exist.
    if (a.status === 'ok' && a.value.tenant !== tenantOf(req)) return answer(reply, { status: 'not_found', detail: `no lifecycle for notification "${req.params.id}" yet` });
    if (a.status !== 'ok') return answer(reply, a);
    // The timeline: each step with the time since the one before it, as `herald explain` prints it.
    const events = (a.value.events ?? []).map((e, i, all) => ({ ...e, sincePreviousMs: i === 0 ? null : e.timestamp - all[i - 1]!.timestamp }));
    return answer(reply, { ...a, value: { ...a.value, events } });
  });

  // The tenant's projection digest: equal to `herald lifecycle rebuild`'s when the projection is whole.
  app.get('/v1/lifecycle/digest', { onRequest: need('admin') }, async (req, reply) => answer(reply, await lifecycle.digest(tenantOf(req), forwardedOpts(req))));

  /** A page cursor is what a previous page answered as `next` (an inbox item id for the inbox); anything else is refused, not guessed at. */
  const badCursor = (reply: FastifyReply, before: string, inbox: boolean): boolean => {
    if ((inbox ? INBOX_ITEM_ID : /^\d{15}:[^\s:]+$/).test(before)) return false;
    fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `before: expected the "next" of a previous page (${inbox ? 'an inbox item id' : 'a cursor'} such as 001764582892660:ntf_…), got "${clip(before, 80)}"`, 'before');
    return true;
  };
  app.get<{ Params: { userId: string }; Querystring: { limit?: string; before?: string } }>('/v1/users/:userId/notifications', { onRequest: need('read'), config: { query: ['limit', 'before'] } }, async (req, reply) => {
    if (badId(reply, 'userId', req.params.userId)) return reply;
    const limit = queryLimit(reply, req.query.limit, 50, 500);
    if (limit === null) return reply;
    const before = req.query.before;
    if (before !== undefined && (badId(reply, 'before', before) || badCursor(reply, before, false))) return reply;
    return answer(reply, await lifecycle.userNotifications(tenantOf(req), req.params.userId, limit, { ...forwardedOpts(req), ...(before ? { before } : {}) }));
  });

  app.get<{ Params: { userId: string }; Querystring: { limit?: string; unread?: string; before?: string } }>('/v1/users/:userId/inbox', { onRequest: need('read'), config: { query: ['limit', 'unread', 'before'] } }, async (req, reply) => {
    if (badId(reply, 'userId', req.params.userId)) return reply;
    const limit = queryLimit(reply, req.query.limit, 50, 500);
    if (limit === null) return reply;
    const before = req.query.before;
    if (before !== undefined && (badId(reply, 'before', before) || badCursor(reply, before, true))) return reply;
    if (req.query.unread !== undefined && req.query.unread !== 'true' && req.query.unread !== 'false') return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `unread: expected true or false, got "${clip(String(req.query.unread), 40)}"`, 'unread');
    return answer(reply, await lifecycle.inbox(tenantOf(req), req.params.userId, { unread: req.query.unread === 'true', limit, ...(before ? { before } : {}) }, forwardedOpts(req)));
  });

  // READ and SEEN are lifecycle events like any other: recorded on outcomes.v1, projected by
  // the outcome stage, shown in GET /v1/notifications/:id.
  for (const action of ['read', 'seen'] as const) {
    app.post<{ Params: { userId: string; notificationId: string } }>(`/v1/users/:userId/inbox/:notificationId/${action}`, { onRequest: need('publish') }, async (req, reply) => {
      const { userId, notificationId: id } = req.params;
      if (badId(reply, 'userId', userId) || badId(reply, 'notificationId', id)) return reply;
      const tenant = tenantOf(req);
      const a = await lifecycle.notification(id, forwardedOpts(req));
      if (a.status === 'unavailable') return answer(reply, a);
      if (a.status !== 'ok' || a.value.tenant !== tenant || a.value.recipient !== userId || !(a.value.channels as Record<string, string> | undefined)?.inapp) {
        return fail(reply, 404, 'HRL_NOT_FOUND', `no notification "${id}" in the inbox of user "${userId}"`);
      }
      const n = a.value;
      const status = action === 'read' ? 'READ' : 'SEEN';
      const base = { notificationId: id, stage: 'inbox', status, deliveryId: `${id}:inapp`, attempt: null };
      await publisher.record({
        ...base, decisionId: decisionIdOf(base), tenant, recipient: userId, eventId: String(n.eventId), eventType: String(n.eventType), ruleId: (n.ruleId as string | null) ?? null,
        terminal: false, reasonCode: action === 'read' ? 'read_by_user' : 'seen_by_user', reason: action === 'read' ? 'read in the in-app inbox' : 'shown in the in-app inbox',
        channel: 'inapp', providerMessageId: null, sourceTopic: 'api', sourcePartition: -1, sourceOffset: '-1', timestamp: Date.now(), traceId: String(n.traceId), content: null,
      });
      return reply.code(202).send({ notificationId: id, status });
    });
  }

  // Server-sent events: new inbox items (with ids, so EventSource resumes with Last-Event-ID)
  // and changes to items (READ, SEEN; no id). Served by the instance holding the user's partition.
  app.get<{ Params: { userId: string }; Querystring: { lastEventId?: string } }>('/v1/users/:userId/inbox/stream', { onRequest: need('read'), config: { query: ['lastEventId'] } }, async (req, reply) => {
    if (badId(reply, 'userId', req.params.userId)) return reply;
    const lastHeader = req.headers['last-event-id'];
    const last = (typeof lastHeader === 'string' ? lastHeader : null) ?? req.query.lastEventId ?? null;
    // An id this stream never sent would silently resume from nowhere: refused, naming it.
    if (last !== null && last !== '' && !INBOX_ITEM_ID.test(last)) {
      return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `${lastHeader !== undefined ? 'Last-Event-ID' : 'lastEventId'}: expected the id of an inbox item this stream sent (such as 001764582892660:0000000000000000021:ntf_…), got "${clip(last, 80)}"`, lastHeader !== undefined ? 'Last-Event-ID' : 'lastEventId');
    }
    // HEAD: the headers a GET would answer with, and no stream.
    if (req.method === 'HEAD') return reply.code(200).header('content-type', 'text/event-stream').header('cache-control', 'no-cache, no-transform').header('x-accel-buffering', 'no').send();
    const s = await lifecycle.inboxStream(tenantOf(req), req.params.userId, last && last.length <= 2 * MAX_ID_LENGTH ? last : null, forwardedOpts(req));
    // An EventSource takes any answer but 200 as the end: while the owner is unknown it is told to come back.
    const eventSource = wantsEventStream(req.headers.accept);
    const unavailable = (detail: string) => {
      if (!eventSource) return answer(reply, { status: 'unavailable', detail });
      reply.hijack();
      retryLaterStream(reply.raw, 1000, 'HRL_OWNER_UNAVAILABLE', detail);
      return reply;
    };
    if (s.kind === 'unavailable') return unavailable(s.detail);
    const ac = new AbortController();
    req.raw.on('close', () => ac.abort());
    const end = () => {
      ac.abort();
      // The stream's connection goes with it (a kept-alive one would hold the close).
      reply.raw.end(() => req.raw.socket.destroy());
    };
    streams.add(end);
    ac.signal.addEventListener('abort', () => streams.delete(end));
    if (s.kind === 'forward') {
      // One hop to the owner; its stream is passed through as it comes.
      const res = await fetch(s.url, { headers: { authorization: req.headers.authorization ?? '', [FORWARDED_HEADER]: 'stream', ...(last ? { 'last-event-id': last } : {}) }, signal: ac.signal }).catch(() => null);
      if (!res?.ok || !res.body) return unavailable(`the instance that holds this user's inbox did not answer (${res?.status ?? 'no connection'})`);
      reply.hijack();
      const by = res.headers.get('x-herald-served-by');
      reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache, no-transform', 'x-accel-buffering': 'no', ...(by ? { 'x-herald-served-by': by } : {}) });
      Readable.fromWeb(res.body as import('node:stream/web').ReadableStream).on('error', () => reply.raw.end()).pipe(reply.raw);
      return reply;
    }
    reply.hijack();
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache, no-transform', 'x-accel-buffering': 'no', connection: 'keep-alive', 'x-herald-served-by': s.servedBy });
    // New items carry their id (the client's Last-Event-ID moves forward); changes to items
    // (READ, SEEN) carry none, so a resumed stream never goes back.
    const sent = new Set<string>();
    // A write after the stream ended (the client went, a read failed) would be an 'error' with no listener.
    reply.raw.on('error', () => ac.abort());
    // A key revoked while its stream is open ends the stream: at the next item, or within
    // seconds (the client's reconnect then gets 401, which an EventSource does not retry).
    const keyId = req.principal!.keyId;
    const revoked = (): boolean => {
      if (keys.isLive(keyId)) return false;
      end();
      return true;
    };
    const write = (item: InboxItemView, isNew: boolean): boolean => {
      if (reply.raw.writableEnded || reply.raw.destroyed || revoked()) return true;
      sent.add(item.id);
      return reply.raw.write(`${isNew ? `id: ${item.id}\nevent: item` : 'event: update'}\ndata: ${JSON.stringify(item)}\n\n`);
    };
    const live = (item: InboxItemView) => write(item, !sent.has(item.id) && item.readAt === null && item.seenAt === null);
    // Items that arrive while the backlog is written wait for it, so ids go out in order
    // and the client's Last-Event-ID never passes an item it has not had.
    let queued: InboxItemView[] | null = [];
    const { backlog, close } = await s.open((item) => (queued ? queued.push(item) : live(item)));
    // retry: reconnect a second after the stream ends (a stop), not the browsers' default 3 s.
    reply.raw.write('retry: 1000\n: connected\n\n');
    try {
      for await (const item of backlog) {
        if (ac.signal.aborted) break;
        if (!sent.has(item.id) && !write(item, true)) await once(reply.raw, 'drain', { signal: ac.signal }).catch(() => undefined);
      }
    } catch (err) {
      // The partition moved away mid-read, say: the client reconnects and resumes where it got to.
      log.warn({ err }, 'inbox stream: reading the backlog failed; the stream ends and the client resumes');
      close();
      end();
      return reply;
    }
    for (const item of queued) live(item);
    queued = null;
    const ping = setInterval(() => reply.raw.write(': ping\n\n'), 15_000);
    const watch = setInterval(revoked, 2_000);
    const stop = () => {
      clearInterval(ping);
      clearInterval(watch);
      close();
    };
    // Closed while it opened (the client went, or the server stops): nothing may be left running.
    if (ac.signal.aborted) stop();
    else ac.signal.addEventListener('abort', stop);
    return reply;
  });

  await app.ready();
  return app;
}
