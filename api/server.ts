/**
 * The HTTP API (Fastify): publish events (for agents and services without a Kafka
 * client), manage profiles and preferences through their compacted topics, read a
 * notification's lifecycle and a user's notifications, and the operational endpoints.
 * Validation errors answer 400 with the field path and what was expected.
 */
import { createHash, randomUUID } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { HeraldError } from '../errors.ts';
import { eventIdFromIdempotencyKey, notificationId } from '../processors/ids.ts';
import { type AudienceMember, audienceKey } from '../processors/ingest.ts';
import { type NotificationView, notificationKey, userIndexPrefix } from '../processors/outcome.ts';
import type { UserProfile } from '../schemas/types.ts';
import { domainEventFromJson } from '../runtime/codec.ts';
import type { Herald } from '../app/herald.ts';
import { validate } from '../schemas/index.ts';
import { topicName } from '../topology.ts';

function badRequest(reply: FastifyReply, err: unknown) {
  if (err instanceof HeraldError) {
    return reply.code(400).send({ error: err.code, field: err.field ?? null, message: err.message });
  }
  throw err;
}

export async function buildApi(h: Herald): Promise<FastifyInstance> {
  const { config } = h;
  const app = Fastify({ logger: false, bodyLimit: config.maxPayloadBytes });
  const topic = (k: 'events' | 'users' | 'preferences' | 'audiences') => topicName(config.topicPrefix, k);

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    const status = err.statusCode && err.statusCode < 500 ? err.statusCode : 500;
    if (status === 500) h.log.error({ err: err.message }, 'api error');
    void reply.code(status).send({ error: err.code ?? 'HRL_INTERNAL', message: status === 500 ? 'internal error' : err.message });
  });

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const stages = Object.fromEntries([...h.runners].map(([name, r]) => [name, r.member]));
    const tables = Object.fromEntries((['users', 'preferences', 'audiences'] as const).filter((t) => h.tables.has(t)).map((t) => [t, h.tables.isCaughtUp(t)]));
    const ready = h.isReady() && Object.values(stages).every((m) => m === 'joined') && Object.values(tables).every(Boolean);
    return reply.code(ready ? 200 : 503).send({ ready, stages, tables });
  });
  app.get('/metrics', async (_req, reply) => {
    return reply.header('content-type', h.metrics.registry.contentType).send(await h.metrics.registry.metrics());
  });

  // Responses to requests with an Idempotency-Key, per instance, for 24 h: a retried POST
  // gets the first answer and publishes nothing. (Across instances a retry publishes the
  // same event again, with the same derived ids, which the pipeline absorbs.)
  const answered = new LRUCache<string, { fingerprint: string; body: Promise<{ status: number; body: object }> }>({ max: 50_000, ttl: 86_400_000 });

  app.post<{ Body: Record<string, unknown> }>('/v1/events', async (req, reply) => {
    const body = { ...(req.body ?? {}) };
    const key = req.headers['idempotency-key'];
    const cacheKey = typeof key === 'string' && key ? `${String(body.tenant)}\u0000${key}` : null;
    const fingerprint = createHash('sha256').update(JSON.stringify(req.body ?? {})).digest('hex');
    const previous = cacheKey ? answered.get(cacheKey) : undefined;
    if (previous) {
      if (previous.fingerprint !== fingerprint) {
        return reply.code(422).send({ error: 'HRL_IDEMPOTENCY_KEY_REUSED', field: 'Idempotency-Key', message: 'Idempotency-Key: this key was used with a different request body' });
      }
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
      if (err instanceof HeraldError) return { status: 400, body: { error: err.code, field: err.field ?? null, message: err.message } };
      throw err;
    }
    const rules = h.rules.forEventType(ev.type);
    if (rules.length === 0) {
      return { status: 400, body: { error: 'HRL_UNKNOWN_EVENT_TYPE', field: 'type', message: `type: no rule matches event type "${ev.type}"; known types: ${[...new Set(h.rules.rules.map((r) => r.eventType))].join(', ')}` } };
    }
    if (ev.recipients.length === 0 && !ev.audience) {
      return { status: 400, body: { error: 'HRL_NO_RECIPIENTS', field: 'recipients', message: 'recipients: expected at least one recipient id, or an audience' } };
    }
    ev.occurredAt ??= Date.now();
    const value = await h.serde.encode(topic('events'), ev);
    await h.producer.send({ topic: topic('events'), acks: -1, messages: [{ key: ev.id, value }] });
    // Ids of explicit recipients are known now; an audience is resolved by ingest.
    const notifications = rules.flatMap((r) => [...new Set(ev.recipients)].map((recipient) => ({ recipient, ruleId: r.id, notificationId: notificationId(ev.tenant, ev.id, recipient, r.id) })));
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
    await h.producer.send({ topic: topic('users'), acks: -1, messages: [{ key: profile.userId, value: await h.serde.encode(topic('users'), profile) }] });
    return reply.code(202).send({ userId: profile.userId });
  });

  app.delete<{ Params: { userId: string } }>('/v1/users/:userId', async (req, reply) => {
    await h.producer.send({ topic: topic('users'), acks: -1, messages: [{ key: req.params.userId, value: null }] });
    return reply.code(202).send({ userId: req.params.userId, deleted: true });
  });

  app.get<{ Params: { userId: string } }>('/v1/users/:userId', async (req, reply) => {
    const [user] = await h.tables.getMany<UserProfile>('users', [req.params.userId]);
    return user ? user : reply.code(404).send({ error: 'not_found', message: `no profile for user "${req.params.userId}"` });
  });

  app.put<{ Params: { userId: string }; Body: Record<string, unknown> }>('/v1/users/:userId/preferences', async (req, reply) => {
    let prefs;
    try {
      prefs = validate<Record<string, unknown>>('UserPreferences', { ...(req.body ?? {}), userId: req.params.userId, updatedAt: Date.now() });
    } catch (err) {
      return badRequest(reply, err);
    }
    await h.producer.send({ topic: topic('preferences'), acks: -1, messages: [{ key: req.params.userId, value: await h.serde.encode(topic('preferences'), prefs) }] });
    return reply.code(202).send({ userId: req.params.userId });
  });

  // Member lists are not events: they get their own body limit (about 500k ids).
  app.put<{ Params: { tenant: string; audience: string }; Body: { add?: unknown; remove?: unknown } }>('/v1/audiences/:tenant/:audience/members', { bodyLimit: 16 * 1024 * 1024 }, async (req, reply) => {
    const { tenant, audience } = req.params;
    const lists: Record<'add' | 'remove', string[]> = { add: [], remove: [] };
    for (const k of ['add', 'remove'] as const) {
      const v = req.body?.[k] ?? [];
      if (!Array.isArray(v) || v.some((x) => typeof x !== 'string' || x === '')) {
        return reply.code(400).send({ error: 'HRL_SCHEMA_VIOLATION', field: k, message: `${k}: expected an array of user ids` });
      }
      lists[k] = v as string[];
    }
    const now = Date.now();
    const t = topic('audiences');
    const messages = [
      ...(await Promise.all(lists.add.map(async (userId) => ({ key: audienceKey(tenant, audience, userId), value: await h.serde.encode(t, { tenant, audience, userId, addedAt: now }) })))),
      ...lists.remove.map((userId) => ({ key: audienceKey(tenant, audience, userId), value: null })),
    ];
    for (let i = 0; i < messages.length; i += 5000) await h.producer.send({ topic: t, acks: -1, messages: messages.slice(i, i + 5000) });
    return reply.code(202).send({ tenant, audience, added: lists.add.length, removed: lists.remove.length });
  });

  app.get<{ Params: { tenant: string; audience: string }; Querystring: { limit?: string } }>('/v1/audiences/:tenant/:audience/members', async (req, reply) => {
    if (!h.tables.has('audiences')) return reply.code(404).send({ error: 'not_found', message: 'this instance does not hold the audiences table (it runs without ingest)' });
    const limit = Math.min(Math.max(Number(req.query.limit ?? 1000) || 1000, 1), 100_000);
    const members: string[] = [];
    for await (const [, m] of h.tables.scan<AudienceMember>('audiences', audienceKey(req.params.tenant, req.params.audience))) {
      members.push(m.userId);
      if (members.length >= limit) break;
    }
    return { tenant: req.params.tenant, audience: req.params.audience, members };
  });

  const lifecycleStores = () => [...(h.runners.get('outcome')?.stores('lifecycle').values() ?? [])];
  /** A notification's lifecycle from whichever local outcome partition holds it. */
  async function findNotification(id: string): Promise<NotificationView | undefined> {
    for (const store of lifecycleStores()) {
      const [n] = await store.view().getMany<NotificationView>([notificationKey(id)]);
      if (n) return n;
    }
    return undefined;
  }

  app.get<{ Params: { id: string } }>('/v1/notifications/:id', async (req, reply) => {
    const n = await findNotification(req.params.id);
    if (n) return n;
    const hint = h.runners.has('outcome') ? '' : ' (this instance does not run the outcome stage)';
    return reply.code(404).send({ error: 'not_found', message: `no lifecycle for notification "${req.params.id}" yet${hint}` });
  });

  app.get<{ Params: { userId: string }; Querystring: { limit?: string } }>('/v1/users/:userId/notifications', async (req) => {
    const limit = Math.min(Math.max(Number(req.query.limit ?? 50) || 50, 1), 500);
    const prefix = userIndexPrefix(req.params.userId);
    const ids: { id: string; at: number }[] = [];
    for (const store of lifecycleStores()) {
      for await (const [k] of store.range(prefix, `${prefix}\uffff`)) {
        const [at, id] = k.slice(prefix.length).split(':');
        ids.push({ id: id!, at: Number(at) });
      }
    }
    ids.sort((a, b) => b.at - a.at);
    const out: Omit<NotificationView, 'events'>[] = [];
    for (const { id } of ids.slice(0, limit)) {
      const n = await findNotification(id);
      if (n) {
        const { events: _events, ...summary } = n;
        out.push(summary);
      }
    }
    return { userId: req.params.userId, notifications: out };
  });

  await app.ready();
  return app;
}
