/**
 * The HTTP API (Fastify), built on ports (api/ports.ts) only: publish events (for agents
 * and services without a Kafka client), manage profiles, preferences and audiences, read
 * a notification's lifecycle and a user's notifications (from whichever instance holds
 * them), and the operational endpoints. Every error answers `{ error, field?, message }`
 * with a documented `HRL_…` code (README, "Error codes").
 */
import { createHash, randomUUID } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { type ErrorCode, HeraldError } from '../errors.ts';
import { eventIdFromIdempotencyKey, notificationId } from '../processors/ids.ts';
import { domainEventFromJson } from '../runtime/codec.ts';
import { validate } from '../schemas/index.ts';
import type { UserPreferences, UserProfile } from '../schemas/types.ts';
import type { ApiPorts, QueryAnswer } from './ports.ts';

/** Requests carrying it were forwarded by another instance: answer locally, never forward again. */
export const FORWARDED_HEADER = 'x-herald-forwarded';

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
function nestedDeeperThan(v: unknown, limit: number): boolean {
  const stack: [unknown, number][] = [[v, 0]];
  while (stack.length) {
    const [x, d] = stack.pop()!;
    if (d > limit) return true;
    if (x && typeof x === 'object') for (const c of Object.values(x)) if (c && typeof c === 'object') stack.push([c, d + 1]);
  }
  return false;
}

/** Deepest nesting an event body may have (data included). */
const MAX_DEPTH = 32;

/** Fastify's own client errors, mapped to Herald's codes. */
function clientErrorCode(err: { code?: string; statusCode?: number }): ErrorCode {
  if (err.statusCode === 413) return 'HRL_PAYLOAD_TOO_LARGE';
  if (err.statusCode === 415) return 'HRL_UNSUPPORTED_MEDIA_TYPE';
  return 'HRL_BAD_REQUEST';
}

function answer<T>(reply: FastifyReply, a: QueryAnswer<T>) {
  if (a.status === 'ok') return reply.header('x-herald-served-by', a.servedBy).send(a.value);
  if (a.status === 'not_found') return fail(reply, 404, 'HRL_NOT_FOUND', a.detail);
  return reply.header('retry-after', '1').code(503).send({ error: 'HRL_OWNER_UNAVAILABLE', message: a.detail } satisfies ErrorBody);
}

export async function buildApi(ports: ApiPorts): Promise<FastifyInstance> {
  const { publisher, profiles, lifecycle, health, rules, log } = ports;
  const app = Fastify({ logger: false, bodyLimit: ports.maxPayloadBytes });
  // JSON only: a text/plain body is refused with 415, not parsed as something else.
  app.removeContentTypeParser('text/plain');

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, req, reply) => {
    if (err.statusCode && err.statusCode < 500) return fail(reply, err.statusCode, clientErrorCode(err), err.message);
    if (err instanceof HeraldError && (err.code === 'HRL_JOURNAL_BEHIND' || err.code === 'HRL_BACKPRESSURE')) return fail(reply.header('retry-after', '1'), 503, err.code, err.message);
    log.error({ err, method: req.method, url: req.routeOptions.url }, 'api error');
    return fail(reply, 500, 'HRL_INTERNAL', 'internal error');
  });
  app.setNotFoundHandler((req, reply) => fail(reply, 404, 'HRL_NOT_FOUND', `no route ${req.method} ${req.url.split('?')[0]}`));

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const r = health.readiness();
    return reply.code(r.ready ? 200 : 503).send(r);
  });
  app.get('/metrics', async (_req, reply) => {
    const m = await health.metrics();
    return reply.header('content-type', m.contentType).send(m.body);
  });

  // Responses to requests with an Idempotency-Key, per instance, for 24 h: a retried POST
  // gets the first answer and publishes nothing. (Across instances a retry publishes the
  // same event again, with the same derived ids, which the pipeline absorbs.)
  const answered = new LRUCache<string, { fingerprint: string; body: Promise<{ status: number; body: object }> }>({ max: 50_000, ttl: 86_400_000 });

  app.post<{ Body: Record<string, unknown> }>('/v1/events', async (req, reply) => {
    if (req.body === null || typeof req.body !== 'object' || Array.isArray(req.body)) return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', 'body: expected a JSON object (a DomainEvent)', '');
    if (nestedDeeperThan(req.body, MAX_DEPTH)) return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `body: nested deeper than ${MAX_DEPTH} levels`, 'data');
    const body = { ...req.body };
    const key = req.headers['idempotency-key'];
    const cacheKey = typeof key === 'string' && key ? `${String(body.tenant)}\u0000${key}` : null;
    const fingerprint = createHash('sha256').update(JSON.stringify(req.body ?? {})).digest('hex');
    const previous = cacheKey ? answered.get(cacheKey) : undefined;
    if (previous) {
      if (previous.fingerprint !== fingerprint) return fail(reply, 422, 'HRL_IDEMPOTENCY_KEY_REUSED', 'Idempotency-Key: this key was used with a different request body', 'Idempotency-Key');
      // The same request again (possibly still in flight): the first answer, nothing published.
      const first = await previous.body;
      return reply.code(first.status).header('idempotent-replayed', 'true').send(first.body);
    }
    if (typeof key === 'string' && key) {
      body.idempotencyKey ??= key;
      if (body.id === undefined && typeof body.tenant === 'string') body.id = eventIdFromIdempotencyKey(body.tenant, key);
    }
    body.id ??= `evt_${randomUUID()}`;
    const handled = publish(body);
    // Remember the request before the first await, so a concurrent retry waits for this one.
    if (cacheKey) answered.set(cacheKey, { fingerprint, body: handled });
    const result = await handled.catch((err: unknown) => {
      if (cacheKey) answered.delete(cacheKey);
      throw err;
    });
    if (result.status !== 202 && cacheKey) answered.delete(cacheKey); // only accepted requests are remembered
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
    ev.occurredAt ??= Date.now();
    await publisher.publish(ev);
    // Ids of explicit recipients are known now; an audience is resolved by ingest.
    const notifications = matched.flatMap((r) => [...new Set(ev.recipients)].map((recipient) => ({ recipient, ruleId: r.id, notificationId: notificationId(ev.tenant, ev.id, recipient, r.id) })));
    return { status: 202, body: { eventId: ev.id, notifications, ...(ev.audience ? { audience: ev.audience } : {}) } };
  }

  app.put<{ Params: { userId: string }; Body: Record<string, unknown> }>('/v1/users/:userId', async (req, reply) => {
    let profile: UserProfile;
    try {
      profile = validate<UserProfile>('UserProfile', { ...(req.body ?? {}), userId: req.params.userId, updatedAt: Date.now() });
      for (const k of ['webhookUrl', 'chatWebhookUrl'] as const) {
        const u = profile[k];
        if (u !== null && !/^https?:\/\/[^\s]+$/.test(u)) throw new HeraldError('HRL_SCHEMA_VIOLATION', `${k}: expected an http(s) URL`, { field: k });
      }
      if (profile.email !== null && !/^[^@\s]+@[^@\s]+$/.test(profile.email)) throw new HeraldError('HRL_SCHEMA_VIOLATION', 'email: expected an e-mail address', { field: 'email' });
    } catch (err) {
      return badRequest(reply, err);
    }
    await profiles.putUser(profile);
    return reply.code(202).send({ userId: profile.userId });
  });

  app.delete<{ Params: { userId: string } }>('/v1/users/:userId', async (req, reply) => {
    await profiles.deleteUser(req.params.userId);
    return reply.code(202).send({ userId: req.params.userId, deleted: true });
  });

  app.get<{ Params: { userId: string } }>('/v1/users/:userId', async (req, reply) => {
    const user = await profiles.getUser(req.params.userId);
    return user ?? fail(reply, 404, 'HRL_NOT_FOUND', `no profile for user "${req.params.userId}"`);
  });

  app.put<{ Params: { userId: string }; Body: Record<string, unknown> }>('/v1/users/:userId/preferences', async (req, reply) => {
    let prefs: UserPreferences;
    try {
      prefs = validate<UserPreferences>('UserPreferences', { ...(req.body ?? {}), userId: req.params.userId, updatedAt: Date.now() });
    } catch (err) {
      return badRequest(reply, err);
    }
    await profiles.putPreferences(prefs);
    return reply.code(202).send({ userId: req.params.userId });
  });

  // Member lists are not events: they get their own body limit (about 500k ids).
  app.put<{ Params: { tenant: string; audience: string }; Body: { add?: unknown; remove?: unknown } }>('/v1/audiences/:tenant/:audience/members', { bodyLimit: 16 * 1024 * 1024 }, async (req, reply) => {
    const { tenant, audience } = req.params;
    const lists: Record<'add' | 'remove', string[]> = { add: [], remove: [] };
    for (const k of ['add', 'remove'] as const) {
      const v = req.body?.[k] ?? [];
      if (!Array.isArray(v) || v.some((x) => typeof x !== 'string' || x === '')) return fail(reply, 400, 'HRL_SCHEMA_VIOLATION', `${k}: expected an array of user ids`, k);
      lists[k] = v as string[];
    }
    await profiles.updateAudience(tenant, audience, lists.add, lists.remove);
    return reply.code(202).send({ tenant, audience, added: lists.add.length, removed: lists.remove.length });
  });

  app.get<{ Params: { tenant: string; audience: string }; Querystring: { limit?: string } }>('/v1/audiences/:tenant/:audience/members', async (req, reply) => {
    const limit = Math.min(Math.max(Number(req.query.limit ?? 1000) || 1000, 1), 100_000);
    const members = await profiles.audienceMembers(req.params.tenant, req.params.audience, limit);
    if (members === null) return fail(reply, 404, 'HRL_NOT_FOUND', 'this instance does not hold the audiences table (it runs without ingest)');
    return { tenant: req.params.tenant, audience: req.params.audience, members };
  });

  app.get<{ Params: { id: string } }>('/v1/notifications/:id', async (req, reply) => {
    return answer(reply, await lifecycle.notification(req.params.id, { forwarded: req.headers[FORWARDED_HEADER] !== undefined }));
  });

  app.get<{ Params: { userId: string }; Querystring: { limit?: string } }>('/v1/users/:userId/notifications', async (req, reply) => {
    const limit = Math.min(Math.max(Number(req.query.limit ?? 50) || 50, 1), 500);
    return answer(reply, await lifecycle.userNotifications(req.params.userId, limit, { forwarded: req.headers[FORWARDED_HEADER] !== undefined }));
  });

  await app.ready();
  return app;
}
