/**
 * Each stage driven in memory with a controllable clock: given records and state, then
 * the emitted records and the decisions on the outcome topic.
 */
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { parseRules } from '../rules/rules.ts';
import { userKey } from '../topology.ts';
import { domainEventFromJson } from '../runtime/codec.ts';
import { HeraldError } from '../errors.ts';
import { createLogger } from '../runtime/logger.ts';
import { dedupe } from '../processors/dedupe.ts';
import { enrich } from '../processors/enrich.ts';
import { ingest } from '../processors/ingest.ts';
import { route } from '../processors/route.ts';
import { deliver } from '../processors/deliver.ts';
import { outcome, type NotificationView, readNotification } from '../processors/outcome.ts';
import type { ChannelProvider, SendResult } from '../channels/channel.ts';
import type { DeliveryTask, EnrichedNotification, NotificationRequest, UserProfile } from '../schemas/types.ts';
import { StageDriver } from './support/driver.ts';
import { MemoryTables } from './support/memory-tables.ts';

/** A channel that answers from a script, then succeeds; it records every call. */
class ScriptedDeliver implements ChannelProvider {
  readonly name = 'webhook';
  calls: DeliveryTask[] = [];
  private readonly script: SendResult[];
  constructor(script: SendResult[]) {
    this.script = script;
  }
  async send(task: DeliveryTask): Promise<SendResult> {
    this.calls.push(task);
    return this.script.shift() ?? { ok: true, providerMessageId: 'm', detail: 'HTTP 200' };
  }
}

const T0 = Date.parse('2026-03-01T12:00:00Z');
const HOUR = 3_600_000;
const drivers: StageDriver[] = [];
const driver = (...args: ConstructorParameters<typeof StageDriver>) => {
  const d = new StageDriver(...args);
  drivers.push(d);
  return d;
};
afterEach(async () => {
  for (const d of drivers.splice(0)) await d.close();
});

const event = (over: Record<string, unknown> = {}) =>
  domainEventFromJson({ id: 'e1', type: 'comment.created', tenant: 'acme', recipients: ['ada', 'bob'], actor: 'linus', data: { commentId: 'c1', documentTitle: 'Plan', excerpt: 'hi' }, ...over });

const user = (over: Partial<UserProfile> = {}): UserProfile => ({
  userId: 'ada', tenant: null, name: 'Ada', email: null, phone: null, locale: 'en', timezone: 'UTC', webhookUrl: 'http://127.0.0.1:9/hook', chatWebhookUrl: null, active: true, updatedAt: null, ...over,
});

async function requestsFor(ev: ReturnType<typeof event>, at = T0): Promise<NotificationRequest[]> {
  const r = await driver('ingest', ingest).pipe([{ value: ev, timestamp: at }]);
  return r.emitted.map((e) => e.value as NotificationRequest);
}

describe('ingest', () => {
  it('fans out one request per recipient with derived ids and the rule expiry', async () => {
    const d = driver('ingest', ingest);
    const r = await d.pipe([{ value: event(), timestamp: T0 }]);
    expect(r.emitted.map((e) => [e.topic, e.key])).toEqual([['requests', 'acme/ada'], ['requests', 'acme/bob']]); // keyed per tenant
    const req = r.emitted[0]!.value as NotificationRequest;
    expect(req).toMatchObject({ ruleId: 'comment-created', category: 'collaboration', occurredAt: T0, expiresAt: T0 + 7 * 24 * HOUR });
    expect(req.notificationId).toMatch(/^ntf_[0-9a-f]{32}$/);
    expect(r.outcomes.map((o) => o.status)).toEqual(['ACCEPTED', 'ACCEPTED']);
    // Replaying the same event derives the same ids.
    const again = await d.pipe([{ value: event(), timestamp: T0 + 5 }]);
    expect(again.emitted.map((e) => (e.value as NotificationRequest).notificationId)).toEqual(r.emitted.map((e) => (e.value as NotificationRequest).notificationId));
  });

  it('rejects an unknown event type with a reason and dead-letters it, without stopping its neighbours', async () => {
    const r = await driver('ingest', ingest).pipe([
      { value: event({ id: 'bad', type: 'nobody.cares' }), timestamp: T0 },
      { value: event({ id: 'good' }), timestamp: T0 },
    ]);
    expect(r.dlq).toEqual([expect.objectContaining({ offset: '0', code: 'HRL_UNKNOWN_EVENT_TYPE', field: 'type' })]);
    expect(r.dlq[0]!.reason).toContain('"nobody.cares"');
    const rejected = r.outcomes.filter((o) => o.status === 'REJECTED');
    expect(rejected.map((o) => [o.recipient, o.reasonCode, o.terminal])).toEqual([['ada', 'unknown_event_type', true], ['bob', 'unknown_event_type', true]]);
    expect(r.emitted.map((e) => e.key)).toEqual(['acme/ada', 'acme/bob']);
  });

  it('dead-letters an undecodable record and goes on to its neighbour even when its REJECTED decision cannot be derived', async () => {
    const violation = new HeraldError('HRL_SCHEMA_VIOLATION', 'recipients[0]: expected well-formed Unicode text', { field: 'recipients[0]' });
    // A lone surrogate (JSON's "\\ud800") can be no part of a key: the REJECTED decision names the others.
    const lone = await driver('ingest', ingest).pipeWithRejected([{ raw: Buffer.from('{"id":"ls","tenant":"acme","type":"comment.created","recipients":["ada\\ud800","bob"]}'), error: violation }], [{ value: event({ id: 'good' }), timestamp: T0 }]);
    expect(lone.dlq).toEqual([expect.objectContaining({ offset: '0', code: 'HRL_SCHEMA_VIOLATION', field: 'recipients[0]' })]);
    expect(lone.outcomes.filter((o) => o.status === 'REJECTED').map((o) => o.recipient)).toEqual(['bob']);
    expect(lone.emitted.map((e) => e.key)).toEqual(['acme/ada', 'acme/bob']);
    // And a stage whose hook throws on such a record: the record is dead-lettered all the same, the neighbour handled.
    const throwing = driver('ingest', (deps) => ({ ...ingest(deps), rejected: () => { throw new URIError('URI malformed'); } }));
    const r = await throwing.pipeWithRejected([{ raw: Buffer.from('x'), error: violation }], [{ value: event({ id: 'good' }), timestamp: T0 }]);
    expect(r.dlq).toEqual([expect.objectContaining({ offset: '0', code: 'HRL_SCHEMA_VIOLATION' })]);
    expect(r.outcomes.map((o) => o.status)).toEqual(['ACCEPTED', 'ACCEPTED']);
    expect(r.emitted.map((e) => e.key)).toEqual(['acme/ada', 'acme/bob']);
  });

  it('logs a dead-lettered record\'s code and field, never its content (the reason quotes it; it stays in the record\'s headers)', async () => {
    const lines: string[] = [];
    const log = createLogger('info', { write: (l: string) => void lines.push(l) });
    const d = new StageDriver('ingest', ingest, { log });
    const r = await d.pipe([
      { value: event({ id: 'pii', type: 'ada.lovelace@example.com' }), timestamp: T0 },
      { value: event({ id: 'pii2', recipients: [] }), timestamp: T0 },
    ]);
    const rejected = await d.pipeWithRejected([{ raw: Buffer.from('{}'), error: new HeraldError('HRL_SCHEMA_VIOLATION', 'actor: expected a string, got {"name":"Grace Hopper","phone":"+44 20 7946 0958"}', { field: 'actor' }) }]);
    expect(r.dlq.map((x) => x.reason).join(' ')).toContain('ada.lovelace@example.com');
    expect(rejected.dlq[0]!.reason).toContain('Grace Hopper');
    const logged = lines.join('');
    expect(logged).toContain('"code":"HRL_UNKNOWN_EVENT_TYPE"');
    expect(logged).toContain('"field":"actor"');
    expect(logged).not.toMatch(/lovelace|Grace|7946/);
  });

  it('rejects an event without recipients, naming the field', async () => {
    const r = await driver('ingest', ingest).pipe([{ value: event({ recipients: [] }), timestamp: T0 }]);
    expect(r.dlq[0]).toMatchObject({ code: 'HRL_NO_RECIPIENTS', field: 'recipients' });
    expect(r.outcomes).toEqual([expect.objectContaining({ status: 'REJECTED', reasonCode: 'no_recipients', recipient: '' })]);
  });
});

describe('enrich', () => {
  const tables = (users: Record<string, UserProfile>) => {
    const t = new MemoryTables();
    for (const [k, v] of Object.entries(users)) t.set('users', userKey(v.tenant ?? 'acme', k), v);
    return t;
  };

  it('joins the profile, and drops unknown and deactivated recipients with their reasons', async () => {
    const reqs = await requestsFor(event({ recipients: ['ada', 'ghost', 'gone'] }));
    const d = driver('enrich', enrich, { tables: tables({ ada: user(), gone: user({ userId: 'gone', active: false }) }) });
    const r = await d.pipe(reqs.map((value) => ({ value, timestamp: T0 })));
    expect(r.emitted).toHaveLength(1);
    expect((r.emitted[0]!.value as EnrichedNotification).user.userId).toBe('ada');
    expect(r.outcomes.map((o) => [o.recipient, o.status, o.reasonCode])).toEqual([
      ['ada', 'ENRICHED', 'profile_joined'],
      ['ghost', 'DROPPED', 'unknown_recipient'],
      ['gone', 'DROPPED', 'recipient_inactive'],
    ]);
  });

  it('never joins a profile of another tenant with the same user id', async () => {
    const reqs = await requestsFor(event({ recipients: ['ada'] }));
    const d = driver('enrich', enrich, { tables: tables({ ada: user({ tenant: 'globex' }) }) });
    const r = await d.pipe(reqs.map((value) => ({ value, timestamp: T0 })));
    expect(r.emitted).toHaveLength(0);
    expect(r.outcomes.map((o) => [o.recipient, o.status, o.reasonCode])).toEqual([['ada', 'DROPPED', 'unknown_recipient']]);
  });
});

describe('dedupe', () => {
  const enriched = async (ev: ReturnType<typeof event>, at = T0): Promise<EnrichedNotification> => ({ request: (await requestsFor(ev, at))[0]!, user: user(), preferences: null });

  it('suppresses a repeat of the idempotency key inside the window, naming the first notification', async () => {
    const d = driver('dedupe', dedupe);
    const first = await enriched(event({ id: 'e1', recipients: ['ada'], idempotencyKey: 'k1' }));
    const second = await enriched(event({ id: 'e2', recipients: ['ada'], idempotencyKey: 'k1' }));
    const r1 = await d.pipe([{ value: first, timestamp: T0 }]);
    const r2 = await d.pipe([{ value: second, timestamp: T0 + HOUR }]);
    expect(r1.outcomes[0]!.status).toBe('UNIQUE');
    expect(r2.emitted).toHaveLength(0);
    expect(r2.outcomes[0]).toMatchObject({ status: 'SUPPRESSED_DUPLICATE', terminal: true, reasonCode: 'duplicate_idempotency_key' });
    expect(r2.outcomes[0]!.reason).toContain(first.request.notificationId);
    expect(r2.outcomes[0]!.reason).toContain('2026-03-01T12:00:00.000Z');
  });

  it('keeps the rule\'s key when an event brings an idempotency key: a repeat of either is a duplicate', async () => {
    const d = driver('dedupe', dedupe);
    // Two requests with their own Idempotency-Key each (as an HTTP client sends them), about the same comment.
    const first = await enriched(event({ id: 'k-a', recipients: ['ada'], idempotencyKey: 'req-1' }));
    const again = await enriched(event({ id: 'k-b', recipients: ['ada'], idempotencyKey: 'req-2' }));
    const r = await d.pipe([{ value: first, timestamp: T0 }, { value: again, timestamp: T0 + 500 }]);
    expect(r.outcomes.map((o) => [o.status, o.reasonCode])).toEqual([['UNIQUE', 'first_seen'], ['SUPPRESSED_DUPLICATE', 'duplicate_key']]);
    expect(r.outcomes[0]!.reason).toBe('dedupe key not seen inside the window (idempotency key req-1; recipient, data.commentId=c1)');
    expect(r.outcomes[1]!.reason).toMatch(/^same dedupe key \(recipient, data.commentId=c1\) as ntf_/);
    // The idempotency key alone still dedupes another comment.
    const other = await enriched(event({ id: 'k-c', recipients: ['ada'], idempotencyKey: 'req-1', data: { commentId: 'c2', documentTitle: 'Plan', excerpt: 'x' } }));
    expect((await d.pipe([{ value: other, timestamp: T0 + 1000 }])).outcomes[0]).toMatchObject({ status: 'SUPPRESSED_DUPLICATE', reasonCode: 'duplicate_idempotency_key' });
  });

  it('suppresses duplicates inside one batch and admits the key again after the window, in stream time', async () => {
    const d = driver('dedupe', dedupe);
    const a = await enriched(event({ id: 'a', recipients: ['ada'] }));
    const b = await enriched(event({ id: 'b', recipients: ['ada'] })); // same data.commentId -> same key
    const c = await enriched(event({ id: 'c', recipients: ['ada'] }));
    const r = await d.pipe([{ value: a, timestamp: T0 }, { value: b, timestamp: T0 + 1 }]);
    expect(r.outcomes.map((o) => o.status)).toEqual(['UNIQUE', 'SUPPRESSED_DUPLICATE']);
    // The rule's window is 24h: one ms before it ends is still a duplicate; at the end it is new.
    d.now = T0; // wall clock does not matter
    const last = (await d.pipe([{ value: c, timestamp: T0 + 24 * HOUR - 1 }])).outcomes[0]!;
    expect(last.status).toBe('SUPPRESSED_DUPLICATE');
    // The reason says when the window ends, and that repeats do not move it.
    expect(last.reason).toBe(`same dedupe key (recipient, data.commentId=c1) as ${a.request.notificationId}, first seen 24 h earlier (${new Date(T0).toISOString()}); window 24 h, open until ${new Date(T0 + 24 * HOUR).toISOString()} (suppressed repeats do not extend it)`);
    const fresh = (await d.pipe([{ value: c, timestamp: T0 + 24 * HOUR + 101_000 }])).outcomes[0]!;
    expect(fresh).toMatchObject({ status: 'UNIQUE', reasonCode: 'window_expired' });
    // First seen, by whom, and how long ago the window closed, to the second.
    expect(fresh.reason).toBe(`key first seen ${new Date(T0).toISOString()} by ${a.request.notificationId}; its 24 h window closed at ${new Date(T0 + 24 * HOUR).toISOString()}, 1 min 41 s before this one's time`);
  });

  it('dedupes nothing a rule did not ask for: a rule without dedupe, or an event missing a field of the key, passes unchecked; an idempotencyKey still dedupes', async () => {
    // given the default rules, with comment-created's dedupe block removed, and the default rule as it is
    const doc = JSON.parse(readFileSync('rules/default.json', 'utf8')) as { rules: { id: string; dedupe?: unknown }[] };
    const plain = { ...doc, rules: doc.rules.map((r) => (r.id === 'comment-created' ? { ...r, dedupe: undefined } : r)) };
    const noKey = driver('dedupe', dedupe, { rules: parseRules(plain, 'no-dedupe.json') });
    const keyed = driver('dedupe', dedupe);
    const a = await enriched(event({ id: 'a', recipients: ['ada'] }));
    const b = await enriched(event({ id: 'b', recipients: ['ada'] }));
    // then two events with the same data pass a rule without dedupe
    const r = await noKey.pipe([{ value: a, timestamp: T0 }, { value: b, timestamp: T0 + 1 }]);
    expect(r.outcomes.map((o) => [o.status, o.reasonCode])).toEqual([['UNIQUE', 'not_deduplicated'], ['UNIQUE', 'not_deduplicated']]);
    expect(r.outcomes[0]!.reason).toBe('rule comment-created sets no dedupe key and the event has no idempotencyKey: not deduplicated');
    expect(r.emitted).toHaveLength(2);
    // and events without the key's data field are not one key under the default rule (recipient + data.commentId)
    const m1 = await enriched(event({ id: 'm1', recipients: ['ada'], data: { documentTitle: 'Plan' } }));
    const m2 = await enriched(event({ id: 'm2', recipients: ['ada'], data: { documentTitle: 'Other' } }));
    const missing = await keyed.pipe([{ value: m1, timestamp: T0 }, { value: m2, timestamp: T0 + 1 }]);
    expect(missing.outcomes.map((o) => o.reasonCode)).toEqual(['not_deduplicated', 'not_deduplicated']);
    expect(missing.outcomes[0]!.reason).toContain('the event has no data.commentId');
    // while an idempotencyKey dedupes under a rule without dedupe too
    const i1 = await enriched(event({ id: 'i1', recipients: ['ada'], idempotencyKey: 'same' }));
    const i2 = await enriched(event({ id: 'i2', recipients: ['ada'], idempotencyKey: 'same' }));
    const idem = await noKey.pipe([{ value: i1, timestamp: T0 }, { value: i2, timestamp: T0 + 1 }]);
    expect(idem.outcomes.map((o) => o.status)).toEqual(['UNIQUE', 'SUPPRESSED_DUPLICATE']);
  });

  it('passes the same notification again (a replay) instead of suppressing it', async () => {
    const d = driver('dedupe', dedupe);
    const a = await enriched(event({ id: 'a', recipients: ['ada'] }));
    await d.pipe([{ value: a, timestamp: T0 }]);
    const again = await d.pipe([{ value: a, timestamp: T0 }]);
    expect(again.emitted).toHaveLength(1);
    expect(again.outcomes[0]).toMatchObject({ status: 'UNIQUE', reasonCode: 'replayed' });
  });
});

describe('route', () => {
  const admitted = async (over: Partial<UserProfile> = {}, ev = event({ recipients: ['ada'] }), prefs: EnrichedNotification['preferences'] = null): Promise<EnrichedNotification> => ({ request: (await requestsFor(ev))[0]!, user: user(over), preferences: prefs });

  it('renders the template in the user locale, falling back by language, one task per reachable channel', async () => {
    const d = driver('route', route);
    const r = await d.pipe([{ value: await admitted({ locale: 'de-AT' }), timestamp: T0 }]);
    expect(r.emitted).toHaveLength(1);
    const task = r.emitted[0]!.value as DeliveryTask;
    expect(task).toMatchObject({ channel: 'webhook', locale: 'de', subject: 'Neuer Kommentar von linus', body: 'linus hat Plan kommentiert: hi', address: 'http://127.0.0.1:9/hook' });
    expect(task.deliveryId).toBe(`${task.notificationId}:webhook`);
    expect(r.outcomes[0]).toMatchObject({ status: 'ROUTED' });
    expect(r.outcomes[0]!.reason).toContain('email: not configured');
  });

  it('drops a notification that no channel can reach, and one past its expiry', async () => {
    const d = driver('route', route);
    const unreachable = await admitted({ webhookUrl: null });
    const stale = await admitted({}, event({ recipients: ['ada'], expiresAt: T0 + 1000 }));
    const r = await d.pipe([{ value: unreachable, timestamp: T0 }, { value: stale, timestamp: T0 + 1000 }]);
    expect(r.emitted).toHaveLength(0);
    expect(r.outcomes.map((o) => [o.status, o.reasonCode])).toEqual([['DROPPED', 'no_reachable_channel'], ['EXPIRED', 'expired_before_routing']]);
    expect(r.outcomes[0]!.reason).toContain('webhook: no address in profile');
  });

  it('honours channel and category opt-outs', async () => {
    const d = driver('route', route);
    const optedOut = await admitted({}, undefined, { userId: 'ada', tenant: 'acme', channels: { webhook: false }, categories: {}, quietHours: null, updatedAt: null });
    const category = await admitted({}, undefined, { userId: 'ada', tenant: 'acme', channels: {}, categories: { collaboration: false }, quietHours: null, updatedAt: null });
    const r = await d.pipe([{ value: optedOut, timestamp: T0 }, { value: category, timestamp: T0 }]);
    expect(r.outcomes.map((o) => o.reasonCode)).toEqual(['no_reachable_channel', 'category_opted_out']);
    expect(r.outcomes[0]!.reason).toContain('webhook: opted out');
  });
});

describe('deliver', () => {
  const taskFor = async (): Promise<DeliveryTask> => {
    const r = await driver('route', route).pipe([{ value: { request: (await requestsFor(event({ recipients: ['ada'] })))[0]!, user: user(), preferences: null }, timestamp: T0 }]);
    return r.emitted[0]!.value as DeliveryTask;
  };

  it('delivers once: a redelivered task whose result is recorded is skipped', async () => {
    const channel = new ScriptedDeliver([]);
    const d = driver('deliver', deliver(new Map([['webhook', channel]])));
    const task = await taskFor();
    const r1 = await d.pipe([{ value: task, timestamp: T0 }]);
    const r2 = await d.pipe([{ value: task, timestamp: T0 }]);
    expect(r1.outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'DELIVERED']);
    // One row per settled delivery: the result names its attempt; no separate attempt row.
    const results = d.stores.get('results')!.view();
    expect(await results.get(task.deliveryId)).toMatchObject({ status: 'DELIVERED', attempt: 1 });
    expect(await results.get(`a:${task.deliveryId}`)).toBeUndefined();
    // The recorded terminal decision is written again (idempotent in the projection), without a call.
    expect(r2.outcomes.map((o) => [o.status, o.reasonCode, o.attempt])).toEqual([['DELIVERED', 'already_recorded', 1]]);
    expect(channel.calls).toHaveLength(1);
  });

  it('remembers a settled delivery for HERALD_DELIVERY_RESULT_RETENTION_MS, then the timer deletes it', async () => {
    const channel = new ScriptedDeliver([]);
    const d = driver('deliver', deliver(new Map([['webhook', channel]])));
    const task = await taskFor();
    await d.pipe([{ value: task, timestamp: T0 }]);
    const week = 7 * 24 * HOUR;
    // A day short of the retention: the result is there, and a task read again is not sent.
    await d.advance(week - 24 * HOUR);
    expect((await d.pipe([{ value: task, timestamp: T0 }])).outcomes.map((o) => o.reasonCode)).toEqual(['already_recorded']);
    expect(channel.calls).toHaveLength(1);
    // Past it: the timer's sweep deletes the row (and, through the changelog, everywhere).
    await d.advance(24 * HOUR + 1000);
    expect(await d.stores.get('results')!.view().get(task.deliveryId)).toBeUndefined();
  });

  it('sweeps a backlog of expired results a bounded load per timer run, run after run', async () => {
    const d = driver('deliver', deliver(new Map([['webhook', new ScriptedDeliver([])]])));
    const task = await taskFor();
    const ids = Array.from({ length: 620 }, (_, i) => `${task.deliveryId}-${i}`);
    await d.pipe(ids.map((deliveryId) => ({ value: { ...task, deliveryId }, timestamp: T0 })));
    const left = async () => (await d.stores.get('results')!.view().getMany(ids)).filter((r) => r !== undefined).length;
    expect(await left()).toBe(620);
    await d.advance(7 * 24 * HOUR + 1000);
    expect(await left()).toBe(120); // 500 a run
    await d.advance(100); // the next run, not a second later
    expect(await left()).toBe(0);
  });

  it('sends a retry to the address the profile has now, and nothing more once the user opted out of the channel or was deleted', async () => {
    const fail503: SendResult = { ok: false, retriable: true, code: 'http_503', detail: 'HTTP 503' };
    const channel = new ScriptedDeliver([fail503, fail503, fail503]);
    const tables = new MemoryTables({ caughtUp: true });
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 1), { tables });
    const task = await taskFor();
    const key = userKey('acme', 'ada');
    tables.set('users', key, user());
    const retryOf = (r: Awaited<ReturnType<typeof d.pipe>>) => d.pipe([{ value: r.emitted.find((e) => e.topic === 'deliverRetry')!.value, timestamp: d.now, topicKey: 'deliverRetry' }]);
    const r1 = await d.pipe([{ value: task, timestamp: T0 }]);
    expect(channel.calls.map((c) => c.address)).toEqual(['http://127.0.0.1:9/hook']);
    // The user moves the webhook: the retry goes to the new one, and says so.
    tables.set('users', key, user({ webhookUrl: 'http://127.0.0.1:9/moved' }));
    await retryOf(r1);
    const r2 = await d.advance(60_000);
    expect(channel.calls.map((c) => c.address)).toEqual(['http://127.0.0.1:9/hook', 'http://127.0.0.1:9/moved']);
    expect(r2.outcomes[0]!.reason).toBe('attempt 2 via webhook (to the address the profile has now: it changed after routing)');
    expect(r2.emitted[0]!.value).toMatchObject({ attempt: 3, address: 'http://127.0.0.1:9/moved' });
    // The user turns webhooks off: no third call, and the channel ends DROPPED (terminal), recorded.
    tables.set('preferences', key, { userId: 'ada', tenant: null, channels: { webhook: false }, categories: {}, quietHours: null, updatedAt: null });
    await d.pipe([{ value: r2.emitted[0]!.value, timestamp: d.now, topicKey: 'deliverRetry' }]);
    const r3 = await d.advance(60_000);
    expect(channel.calls).toHaveLength(2);
    expect(r3.outcomes.map((o) => [o.status, o.reasonCode, o.terminal, o.reason])).toEqual([['DROPPED', 'channel_opted_out', true, 'user opted out of webhook after routing; not sent on it']]);
    expect(await d.stores.get('results')!.view().get(task.deliveryId)).toMatchObject({ status: 'DROPPED', attempt: 3 });

    // Another notification's retry, after the user was deleted: nothing more either.
    const other = { ...task, deliveryId: `${task.deliveryId}-2`, notificationId: `${task.notificationId}-2` };
    tables.delete('preferences', key);
    const o1 = await d.pipe([{ value: other, timestamp: T0 }]);
    tables.delete('users', key);
    await retryOf(o1);
    const o2 = await d.advance(60_000);
    expect(channel.calls).toHaveLength(3);
    expect(o2.outcomes.map((o) => [o.status, o.reasonCode])).toEqual([['DROPPED', 'unknown_recipient']]);
    expect(o2.outcomes[0]!.reason).toBe('user "ada" has no profile any more (deleted after routing); not sent');
  });

  it('treats 429 as flow control: waits Retry-After plus jitter, and goes past the attempts (up to three times as many)', async () => {
    const slowDown: SendResult = { ok: false, retriable: true, code: 'http_429', detail: 'HTTP 429', retryAfterMs: 1000 };
    const channel = new ScriptedDeliver(Array.from({ length: 20 }, () => slowDown));
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 1)); // jitter at its top: half as much again
    let r = await d.pipe([{ value: await taskFor(), timestamp: T0 }]);
    const reasons: string[] = [];
    for (;;) {
      const retry = r.emitted.find((e) => e.topic === 'deliverRetry');
      reasons.push(r.outcomes.at(-1)!.reason);
      if (!retry) break;
      expect((retry.value as DeliveryTask).notBefore! - d.now).toBe(1500);
      await d.pipe([{ value: retry.value, timestamp: d.now, topicKey: 'deliverRetry' }]);
      r = await d.advance(1500);
    }
    expect(channel.calls).toHaveLength(15);
    expect(reasons[4]).toMatch(/^HTTP 429 \(http_429\); attempt 6 \(beyond 5: the endpoint asked to slow down\) at \S+; Retry-After asked for 1.0 s$/);
    expect(r.outcomes.at(-1)).toMatchObject({ status: 'DEAD_LETTERED', reasonCode: 'attempts_exhausted', attempt: 15 });
  });

  it('says how long a call that timed out waited for its answer', async () => {
    const { loadConfig } = await import('../config.ts');
    const config = loadConfig({}, { stateBackend: 'memory', logLevel: 'silent', deliveryTimeoutMs: 4000 });
    const channel = new ScriptedDeliver([{ ok: false, retriable: true, code: 'TimeoutError', detail: 'request failed: no response within HERALD_DELIVERY_TIMEOUT_MS' }]);
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 0), { config });
    const r = await d.pipe([{ value: await taskFor(), timestamp: T0 }]);
    expect(r.outcomes.find((o) => o.status === 'RETRY_SCHEDULED')!.reason).toMatch(/^request failed: no response within 4.0 s \(HERALD_DELIVERY_TIMEOUT_MS\) \(TimeoutError\); attempt 2 of 5 at /);
  });

  it('says what Retry-After asked for when the wait is cut to HERALD_MAX_RETRY_DELAY_MS', async () => {
    const { loadConfig } = await import('../config.ts');
    const config = loadConfig({}, { stateBackend: 'memory', logLevel: 'silent' });
    const channel = new ScriptedDeliver([{ ok: false, retriable: true, code: 'http_429', detail: 'HTTP 429', retryAfterMs: 7_200_000 }]);
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 0), { config });
    const r = await d.pipe([{ value: await taskFor(), timestamp: T0 }]);
    const retry = r.outcomes.find((o) => o.status === 'RETRY_SCHEDULED')!;
    expect(retry.reason).toBe(`HTTP 429 (http_429); attempt 2 of 5 at ${new Date(d.now + config.maxRetryDelayMs).toISOString()}; Retry-After asked for 2 h, cut to HERALD_MAX_RETRY_DELAY_MS (5 min)`);
  });

  it('sends as routed while the tables cannot say they are caught up (a lagging table never reverts an address)', async () => {
    const channel = new ScriptedDeliver([]);
    const d = driver('deliver', deliver(new Map([['webhook', channel]])), { tables: new MemoryTables().set('users', userKey('acme', 'ada'), user({ webhookUrl: 'http://127.0.0.1:9/older' })) });
    const r = await d.pipe([{ value: await taskFor(), timestamp: T0 }]);
    expect(r.outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'DELIVERED']);
    expect(channel.calls.map((c) => c.address)).toEqual(['http://127.0.0.1:9/hook']);
  });

  it('falls back to the next channel (strategy first) when the user opted out of the first after routing', async () => {
    const rules = parseRules({ version: 1, rules: [{ id: 'r1', eventType: 'comment.created', category: 'collaboration', priority: 'NORMAL', strategy: 'first', channels: ['webhook', 'email'], templates: { webhook: { en: { body: 'b' } }, email: { en: { subject: 's', body: 'b' } } } }] }, 'inline');
    const channel = new ScriptedDeliver([]);
    const tables = new MemoryTables({ caughtUp: true });
    const key = userKey('acme', 'ada');
    tables.set('users', key, user({ email: 'ada@example.com' }));
    const routed = await driver('route', route, { rules, availableChannels: new Set(['webhook', 'email']) }).pipe([{ value: { request: { ...(await requestsFor(event({ recipients: ['ada'] })))[0]!, ruleId: 'r1' }, user: user({ email: 'ada@example.com' }), preferences: null }, timestamp: T0 }]);
    tables.set('preferences', key, { userId: 'ada', tenant: null, channels: { webhook: false }, categories: {}, quietHours: null, updatedAt: null });
    const d = driver('deliver', deliver(new Map([['webhook', channel], ['email', channel]])), { rules, tables });
    const r = await d.pipe([{ value: routed.emitted[0]!.value, timestamp: T0 }]);
    expect(r.outcomes.map((o) => [o.status, o.channel])).toEqual([['FALLBACK', 'webhook'], ['DROPPED', 'webhook']]);
    expect(r.outcomes[1]!.reason).toBe('user opted out of webhook after routing; not sent on it; fell back to email');
    const next = await d.pipe([{ value: r.emitted[0]!.value, timestamp: T0, topicKey: 'deliverRetry' }]);
    expect(next.outcomes.map((o) => [o.status, o.channel])).toEqual([['ATTEMPTED', 'email'], ['DELIVERED', 'email']]);
  });

  it('schedules a retry with backoff on a retriable failure and dead-letters a permanent one', async () => {
    const channel = new ScriptedDeliver([
      { ok: false, retriable: true, code: 'http_503', detail: 'HTTP 503' },
      { ok: false, retriable: false, code: 'http_410', detail: 'HTTP 410' },
    ]);
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 1)); // jitter at its top: the full step
    const task = await taskFor();
    const r1 = await d.pipe([{ value: task, timestamp: T0 }]);
    expect(r1.outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'RETRY_SCHEDULED']);
    // The delivery stays open: the attempt made is recorded, so a redelivered task for it is not called again.
    expect(await d.stores.get('results')!.view().get(`a:${task.deliveryId}`)).toEqual({ attempt: 1 });
    const retry = r1.emitted[0]!;
    expect(retry.topic).toBe('deliverRetry');
    expect(retry.value).toMatchObject({ attempt: 2, notBefore: d.now + 1000 });
    // The retry record is held, not sent, until its due time; a timer releases it.
    const held = await d.pipe([{ value: retry.value, timestamp: T0, topicKey: 'deliverRetry' }]);
    expect(held.outcomes).toEqual([]);
    expect(channel.calls).toHaveLength(1);
    expect((await d.advance(999)).outcomes).toEqual([]);
    const r2 = await d.advance(1);
    expect(r2.outcomes.map((o) => [o.status, o.attempt])).toEqual([['ATTEMPTED', 2], ['FAILED', 2], ['DEAD_LETTERED', 2]]);
    expect(r2.outcomes.at(-1)).toMatchObject({ terminal: true, reasonCode: 'permanent_failure' });
    // Provenance: the released attempt points at the retry record that scheduled it.
    expect(r2.outcomes[0]).toMatchObject({ sourceTopic: 'herald.deliver.retry.v1', sourceOffset: '1' });
    // Released once: later timer runs find nothing, and the same retry record read again is not sent again.
    expect((await d.advance(10_000)).outcomes).toEqual([]);
    const again = await d.pipe([{ value: retry.value, timestamp: T0, topicKey: 'deliverRetry' }]);
    expect(again.outcomes.map((o) => o.reasonCode)).toEqual(['already_recorded']);
    expect(channel.calls).toHaveLength(2);
  });
});

describe('outcome', () => {
  it('keeps the ordered lifecycle and ignores an event applied twice', async () => {
    const d = driver('outcome', outcome);
    const base = { notificationId: 'ntf_1', deliveryId: null, tenant: 'acme', recipient: 'ada', eventId: 'e', eventType: 'comment.created', ruleId: 'comment-created', terminal: false, channel: null, attempt: null, providerMessageId: null, sourceTopic: 't', sourcePartition: 0, sourceOffset: '1', traceId: 'tr' };
    const evs = [
      { ...base, stage: 'ingest', status: 'ACCEPTED', reasonCode: 'x', reason: 'x', timestamp: T0 },
      { ...base, stage: 'deliver', status: 'DELIVERED', terminal: true, channel: 'webhook', deliveryId: 'ntf_1:webhook', attempt: 1, reasonCode: 'y', reason: 'y', timestamp: T0 + 5 },
    ];
    await d.pipe(evs.map((value) => ({ value, timestamp: value.timestamp })));
    await d.pipe([{ value: evs[1], timestamp: T0 + 5 }]);
    const view: NotificationView | undefined = await readNotification(d.stores.get('lifecycle')!.view(), 'ntf_1');
    expect(view!.events.map((e) => e.status)).toEqual(['ACCEPTED', 'DELIVERED']);
    expect(view).toMatchObject({ status: 'DELIVERED', terminal: ['webhook:DELIVERED'], channels: { webhook: 'DELIVERED' } });
  });
});

describe('outcome inbox ids', () => {
  it('number a user\'s items in its own inbox, not by the partition\'s offsets, which count every tenant\'s decisions', async () => {
    const { readInbox } = await import('../processors/outcome.ts');
    const d = driver('outcome', outcome);
    const delivered = (tenant: string, recipient: string, id: string, t: number) => ({ notificationId: id, deliveryId: `${id}:inapp`, tenant, recipient, eventId: 'e', eventType: 'comment.created', ruleId: 'comment-created', stage: 'deliver', status: 'DELIVERED', terminal: true, reasonCode: 'y', reason: 'y', channel: 'inapp', attempt: 1, providerMessageId: null, content: JSON.stringify({ subject: 's', body: 'b' }), sourceTopic: 't', sourcePartition: 0, sourceOffset: '1', timestamp: t, traceId: 'tr' });
    // Another tenant's user on the same partition gets 50 items between acme's two.
    await d.pipe([{ value: delivered('acme', 'ada', 'ntf_a1', T0), timestamp: T0 }]);
    await d.pipe(Array.from({ length: 50 }, (_, i) => ({ value: delivered('globex', 'hal', `ntf_g${i}`, T0), timestamp: T0 })));
    await d.pipe([{ value: delivered('acme', 'ada', 'ntf_a2', T0), timestamp: T0 }, { value: delivered('acme', 'ada', 'ntf_a2', T0), timestamp: T0 }]);
    const items = await readInbox(d.stores.get('lifecycle')!.view(), 'acme', 'ada', { limit: 10 });
    const pad = (n: number) => String(n).padStart(19, '0');
    expect(items.map((i) => i.id)).toEqual([`${String(T0).padStart(15, '0')}:${pad(2)}:ntf_a2`, `${String(T0).padStart(15, '0')}:${pad(1)}:ntf_a1`]);
    expect((await readInbox(d.stores.get('lifecycle')!.view(), 'globex', 'hal', { limit: 1 }))[0]!.id).toContain(`:${pad(50)}:`);
  });
});

describe('outcome projection layout', () => {
  it('reads a summary an earlier version wrote with its events inline, and moves them to their own keys on the next event', async () => {
    const d = driver('outcome', outcome);
    const base = { notificationId: 'ntf_2', deliveryId: null, tenant: 'acme', recipient: 'ada', eventId: 'e', eventType: 'comment.created', ruleId: 'comment-created', terminal: false, channel: null, attempt: null, providerMessageId: null, sourceTopic: 't', sourcePartition: 0, sourceOffset: '1', traceId: 'tr' };
    const accepted = { ...base, stage: 'ingest', status: 'ACCEPTED', reasonCode: 'x', reason: 'x', timestamp: T0 };
    await d.pipe([]); // opens the stores
    const store = d.stores.get('lifecycle')!;
    const old = store.view();
    old.put('n:ntf_2', { notificationId: 'ntf_2', tenant: 'acme', recipient: 'ada', eventId: 'e', eventType: 'comment.created', ruleId: 'comment-created', traceId: 'tr', status: 'ACCEPTED', channels: {}, terminal: [], createdAt: T0, updatedAt: T0, events: [accepted] });
    await old.flush(null);
    expect((await readNotification(store.view(), 'ntf_2'))!.events.map((e) => e.status)).toEqual(['ACCEPTED']);
    const delivered = { ...base, stage: 'deliver', status: 'DELIVERED', terminal: true, channel: 'webhook', deliveryId: 'ntf_2:webhook', attempt: 1, reasonCode: 'y', reason: 'y', timestamp: T0 + 5 };
    await d.pipe([{ value: accepted, timestamp: T0 }, { value: delivered, timestamp: T0 + 5 }]);
    const view = (await readNotification(store.view(), 'ntf_2'))!;
    expect(view.events.map((e) => e.status)).toEqual(['ACCEPTED', 'DELIVERED']);
    expect(view).not.toHaveProperty('ids');
    const keys: string[] = [];
    for await (const [k] of store.range('e:ntf_2:', 'e:ntf_2:\uffff')) keys.push(k);
    expect(keys).toEqual(['e:ntf_2:000000', 'e:ntf_2:000001']);
  });
});

describe('dedupe with out-of-order stream time', () => {
  it('suppresses a record older than the first one seen when it falls inside the window', async () => {
    const d = new StageDriver('dedupe', dedupe);
    drivers.push(d);
    const req = async (id: string) => ({ request: (await requestsFor(event({ id, recipients: ['ada'], idempotencyKey: 'same' })))[0]!, user: user(), preferences: null });
    await d.pipe([{ value: await req('late'), timestamp: T0 + 10_000 }]);
    const r = await d.pipe([{ value: await req('early'), timestamp: T0 }]);
    expect(r.outcomes[0]).toMatchObject({ status: 'SUPPRESSED_DUPLICATE' });
  });

  it('keeps the later window when a record older than it comes: a repeat of the later one is still suppressed', async () => {
    const d = new StageDriver('dedupe', dedupe);
    drivers.push(d);
    const req = async (id: string) => ({ request: (await requestsFor(event({ id, recipients: ['ada'], idempotencyKey: 'same' })))[0]!, user: user(), preferences: null });
    const DAY = 24 * HOUR; // the idempotency key's window
    await d.pipe([{ value: await req('later'), timestamp: T0 + 3 * DAY }]);
    const old = await d.pipe([{ value: await req('old'), timestamp: T0 }]);
    expect(old.outcomes[0]).toMatchObject({ status: 'UNIQUE', reasonCode: 'window_expired' });
    expect(old.outcomes[0]!.reason).toMatch(/and this one is stamped 3 d before that first one, outside its window/);
    const repeat = await d.pipe([{ value: await req('repeat'), timestamp: T0 + 3 * DAY + HOUR }]);
    expect(repeat.outcomes[0]).toMatchObject({ status: 'SUPPRESSED_DUPLICATE' });
  });
});

describe('dedupe store hygiene', () => {
  it('sweeps nothing past the wall clock: a record stamped in the year 9000 leaves the partition\'s keys, and their repeats are still suppressed', async () => {
    const d = new StageDriver('dedupe', dedupe);
    drivers.push(d);
    d.now = T0 + 60_000;
    const mk = async (id: string, recipient: string, commentId: string) => ({ request: (await requestsFor(event({ id, recipients: [recipient], data: { commentId } })))[0]!, user: user({ userId: recipient }), preferences: null });
    expect((await d.pipe([{ value: await mk('t01', 'ada', 'c-1'), timestamp: T0 }])).outcomes[0]!.status).toBe('UNIQUE');
    await d.pipe([{ value: await mk('t02', 'bob', 'c-2'), timestamp: Date.parse('9000-01-01T00:00:00Z') }]);
    d.now = T0 + 120_000;
    const repeat = await d.pipe([{ value: await mk('t20', 'ada', 'c-1'), timestamp: T0 + 60_000 }]);
    expect(repeat.outcomes[0]).toMatchObject({ status: 'SUPPRESSED_DUPLICATE' });
  });

  it('sweeps keys whose window closed in stream time, by the time index', async () => {
    const d = new StageDriver('dedupe', dedupe);
    drivers.push(d);
    d.now = T0 + 100 * HOUR; // a backlog: the wall clock is past every record's time
    const mk = async (id: string, commentId: string) => ({ request: (await requestsFor(event({ id, recipients: ['ada'], data: { commentId } })))[0]!, user: user(), preferences: null });
    await d.pipe([{ value: await mk('a', 'c-a'), timestamp: T0 }, { value: await mk('b', 'c-b'), timestamp: T0 + 12 * HOUR }]);
    const keys = async () => {
      const out: string[] = [];
      for await (const [k] of d.stores.get('seen')!.range('fld:', 'fld;')) out.push(k);
      return out.length;
    };
    expect(await keys()).toBe(2);
    await d.pipe([{ value: await mk('c', 'c-c'), timestamp: T0 + 24 * HOUR }]); // a's window closes; its grace (1h) runs
    expect(await keys()).toBe(3);
    await d.pipe([{ value: await mk('d', 'c-d'), timestamp: T0 + 25 * HOUR }]); // a's grace is over
    expect(await keys()).toBe(3); // a swept, d added
    await d.pipe([{ value: await mk('e', 'c-e'), timestamp: T0 + 60 * HOUR }]); // b, c and d are long closed
    expect(await keys()).toBe(1);
  });
});

describe('delivery policy: jitter, per-rule retries, strategy first', () => {
  const RULES_FILE = JSON.parse(readFileSync('rules/default.json', 'utf8')) as { rules: Record<string, unknown>[] };
  const rulesWith = (over: Record<string, unknown>) => parseRules({ ...RULES_FILE, rules: RULES_FILE.rules.map((r) => (r.id === 'comment-created' ? { ...r, ...over } : r)) }, 'test');
  const taskWith = async (rules: ReturnType<typeof parseRules>, u = user({ email: 'ada@example.com' })) => {
    const r = await driver('route', route, { rules, availableChannels: new Set(['webhook', 'email']) }).pipe([{ value: { request: (await requestsFor(event({ recipients: ['ada'] })))[0]!, user: u, preferences: null }, timestamp: T0 }]);
    return r;
  };
  const fail503: SendResult = { ok: false, retriable: true, code: 'http_503', detail: 'HTTP 503' };

  it('spreads retries with jitter between half and all of the backoff step', async () => {
    for (const [random, expected] of [[0, 500], [0.5, 750], [1, 1000]] as const) {
      const d = driver('deliver', deliver(new Map([['webhook', new ScriptedDeliver([fail503])]]), () => random));
      const r = await d.pipe([{ value: (await taskWith(rulesWith({}))).emitted.find((e) => (e.value as DeliveryTask).channel === 'webhook')!.value, timestamp: T0 }]);
      expect((r.emitted[0]!.value as DeliveryTask).notBefore! - d.now).toBe(expected);
    }
  });

  it('dead-letters after the rule\'s maxAttempts, not the configured default', async () => {
    const rules = rulesWith({ retry: { maxAttempts: 2 } });
    const channel = new ScriptedDeliver([fail503, fail503, fail503]);
    const d = driver('deliver', deliver(new Map([['webhook', channel], ['email', channel]]), () => 1), { rules });
    const task = (await taskWith(rules, user())).emitted[0]!.value as DeliveryTask;
    const r1 = await d.pipe([{ value: task, timestamp: T0 }]);
    expect(r1.outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'RETRY_SCHEDULED']);
    expect(r1.outcomes[1]!.reason).toContain('attempt 2 of 2');
    const r2 = await d.pipe([{ value: { ...(r1.emitted[0]!.value as DeliveryTask), notBefore: null }, timestamp: T0, topicKey: 'deliverRetry' }]);
    expect(r2.outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'FAILED', 'DEAD_LETTERED']);
    expect(r2.outcomes.at(-1)!.reason).toContain('gave up after 2 attempts');
  });

  it('strategy first: routes to the first channel only, then falls back to the next on a permanent failure', async () => {
    const rules = rulesWith({ channels: ['email', 'webhook'], strategy: 'first' });
    const routed = await taskWith(rules);
    expect(routed.emitted.map((e) => (e.value as DeliveryTask).channel)).toEqual(['email']);
    expect(routed.outcomes[0]!.reason).toBe('routed to email first, then webhook on failure (strategy first)');
    const email = routed.emitted[0]!.value as DeliveryTask;
    const smtp = new ScriptedDeliver([{ ok: false, retriable: false, code: 'smtp_550', detail: 'SMTP 550' }]);
    const hook = new ScriptedDeliver([]);
    const d = driver('deliver', deliver(new Map<string, ChannelProvider>([['email', smtp], ['webhook', hook]])), { rules });
    const r1 = await d.pipe([{ value: email, timestamp: T0 }]);
    expect(r1.outcomes.map((o) => [o.channel, o.status])).toEqual([['email', 'ATTEMPTED'], ['email', 'FAILED'], ['email', 'FALLBACK'], ['email', 'DEAD_LETTERED']]);
    expect(r1.outcomes[2]!.reason).toBe('email failed for good (SMTP 550); falling back to webhook');
    const next = r1.emitted[0]!.value as DeliveryTask;
    expect(next).toMatchObject({ channel: 'webhook', address: 'http://127.0.0.1:9/hook', attempt: 1, fallback: [], deliveryId: `${email.notificationId}:webhook` });
    const r2 = await d.pipe([{ value: next, timestamp: T0, topicKey: 'deliverRetry' }]);
    expect(r2.outcomes.map((o) => [o.channel, o.status])).toEqual([['webhook', 'ATTEMPTED'], ['webhook', 'DELIVERED']]);
    expect(hook.calls).toHaveLength(1);
  });
});

describe('ingest audiences', () => {
  it('fans out to the audience members only, not to an audience whose name extends it', async () => {
    const { audienceKey } = await import('../processors/ingest.ts');
    const tables = new MemoryTables();
    for (const [audience, userId] of [['team', 'ada'], ['team', 'bob'], ['team/ops', 'eve'], ['teamx', 'mal']] as const) tables.set('audiences', audienceKey('acme', audience, userId), { tenant: 'acme', audience, userId, addedAt: null });
    const d = new StageDriver('ingest', ingest, { tables });
    drivers.push(d);
    const r = await d.pipe([{ value: event({ recipients: [], audience: 'team' }), timestamp: T0 }]);
    expect(r.emitted.map((e) => e.key).sort()).toEqual(['acme/ada', 'acme/bob']);
    expect(r.outcomes[0]!.reason).toContain('audience team');
  });

  it('rejects an event that would fan out past HERALD_MAX_FANOUT without reading the whole audience, and keeps its neighbour', async () => {
    const { audienceKey } = await import('../processors/ingest.ts');
    const { loadConfig } = await import('../config.ts');
    const tables = new MemoryTables();
    for (let i = 0; i < 50; i++) tables.set('audiences', audienceKey('acme', 'everyone', `u${i}`), { tenant: 'acme', audience: 'everyone', userId: `u${i}`, addedAt: null });
    const d = new StageDriver('ingest', ingest, { tables, config: loadConfig({}, { stateBackend: 'memory', logLevel: 'silent', maxFanout: 10 }) });
    drivers.push(d);
    const r = await d.pipe([{ value: event({ id: 'big', recipients: [], audience: 'everyone' }), timestamp: T0 }, { value: event({ id: 'small', recipients: ['ada'] }), timestamp: T0 }]);
    expect(r.outcomes.filter((o) => o.eventId === 'big').map((o) => [o.status, o.reasonCode])).toEqual([['REJECTED', 'fanout_too_large']]);
    expect(r.dlq.map((x) => x.code)).toEqual(['HRL_LIMIT_EXCEEDED']);
    expect(r.emitted.map((e) => e.key)).toEqual(['acme/ada']);
  });
});

describe('outcome user index', () => {
  it('never lists the notifications of user "a:b" under user "a"', async () => {
    const { userIndexPrefix } = await import('../processors/outcome.ts');
    const d = new StageDriver('outcome', outcome);
    drivers.push(d);
    const ev = (recipient: string, id: string) => ({ notificationId: id, deliveryId: null, tenant: 't', recipient, eventId: 'e', eventType: 'x', ruleId: null, stage: 'ingest', status: 'ACCEPTED', terminal: false, reasonCode: 'r', reason: 'r', channel: null, attempt: null, providerMessageId: null, sourceTopic: 't', sourcePartition: 0, sourceOffset: '0', timestamp: T0, traceId: 'tr' });
    await d.pipe([{ value: ev('a', 'ntf_a'), timestamp: T0 }, { value: ev('a:b', 'ntf_ab'), timestamp: T0 }]);
    const keys: string[] = [];
    const prefix = userIndexPrefix('t', 'a');
    for await (const [k] of d.stores.get('lifecycle')!.range(prefix, `${prefix}\uffff`)) keys.push(k);
    expect(keys).toHaveLength(1);
    expect(keys[0]).toContain('ntf_a');
    expect(keys[0]).not.toContain('ntf_ab');
  });
});


describe('deliver timers', () => {
  it('releases a later attempt that comes due together with a replayed earlier one', async () => {
    const channel = new ScriptedDeliver([{ ok: false, retriable: true, code: 'http_503', detail: 'HTTP 503' }, { ok: false, retriable: true, code: 'http_503', detail: 'HTTP 503' }]);
    const d = new StageDriver('deliver', deliver(new Map([['webhook', channel]])));
    drivers.push(d);
    const r = await new StageDriver('route', route).pipe([{ value: { request: (await requestsFor(event({ recipients: ['ada'] })))[0]!, user: user(), preferences: null }, timestamp: T0 }]);
    const first = await d.pipe([{ value: r.emitted[0]!.value, timestamp: T0 }]);
    const retry2 = first.emitted[0]!.value as DeliveryTask;
    await d.pipe([{ value: retry2, timestamp: T0, topicKey: 'deliverRetry' }]);
    const second = await d.advance(1000);
    const retry3 = second.emitted[0]!.value as DeliveryTask;
    expect([retry2.attempt, retry3.attempt]).toEqual([2, 3]);
    // After a crash, attempt 2's retry record is read again and held again, next to attempt 3.
    await d.pipe([{ value: { ...retry2, notBefore: d.now + 100 }, timestamp: T0, topicKey: 'deliverRetry' }, { value: retry3, timestamp: T0, topicKey: 'deliverRetry' }]);
    const third = await d.advance(5000);
    expect(third.outcomes.map((o) => [o.status, o.attempt])).toEqual([['ATTEMPTED', 3], ['DELIVERED', 3]]);
    expect(channel.calls.map((t) => t.attempt)).toEqual([1, 2, 3]);
  });
});

describe('deliver re-run', () => {
  it('does not call the channel again when the same attempt is processed again before its result was written', async () => {
    const calls: string[] = [];
    const channel = { name: 'webhook', send: async (t: DeliveryTask) => { calls.push(t.deliveryId); return { ok: true as const, providerMessageId: null, detail: 'HTTP 204' }; } };
    const d = new StageDriver('deliver', deliver(new Map([['webhook', channel]])));
    drivers.push(d);
    const r = await new StageDriver('route', route).pipe([{ value: { request: (await requestsFor(event({ recipients: ['ada'] })))[0]!, user: user(), preferences: null }, timestamp: T0 }]);
    const task = r.emitted[0]!.value as DeliveryTask;
    // Same processor instance, store not yet holding the result: as in a record-by-record re-run.
    await d.pipe([{ value: task, timestamp: T0 }]);
    const wipe = d.stores.get('results')!.view();
    wipe.delete(task.deliveryId);
    wipe.delete(`a:${task.deliveryId}`);
    await wipe.flush(null);
    const again = await d.pipe([{ value: task, timestamp: T0 }]);
    expect(calls).toHaveLength(1);
    expect(again.outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'DELIVERED']);
  });
});

describe('deliver: circuit breaker per endpoint', () => {
  const fail503: SendResult = { ok: false, retriable: true, code: 'http_503', detail: 'HTTP 503' };
  const taskTo = async (recipient: string, address: string): Promise<DeliveryTask> => {
    const r = await driver('route', route).pipe([{ value: { request: (await requestsFor(event({ id: `e-${recipient}`, recipients: [recipient] })))[0]!, user: user({ userId: recipient, webhookUrl: address }), preferences: null }, timestamp: T0 }]);
    return r.emitted[0]!.value as DeliveryTask;
  };

  it('opens after consecutive failures of one host: its tasks wait without calls or attempts, other hosts go on; one probe closes it', async () => {
    const channel = new ScriptedDeliver([]);
    let down = true;
    channel.send = async (task: DeliveryTask) => {
      channel.calls.push(task);
      return down && task.address.includes('down.example') ? fail503 : { ok: true, providerMessageId: null, detail: 'HTTP 200' };
    };
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 1));
    const failing = await Promise.all(Array.from({ length: 5 }, (_, i) => taskTo(`u${i}`, `https://down.example/hook/${i}`)));
    const r1 = await d.pipe(failing.map((value) => ({ value, timestamp: T0 })));
    expect(r1.outcomes.filter((o) => o.status === 'RETRY_SCHEDULED' && o.reasonCode === 'transient_failure')).toHaveLength(5);
    // The circuit is open now: more tasks for that host are not called, and use no attempt.
    const more = await taskTo('u9', 'https://down.example/hook/9');
    const healthy = await taskTo('ok', 'https://up.example/hook');
    const calls = channel.calls.length;
    const r2 = await d.pipe([{ value: more, timestamp: T0 }, { value: healthy, timestamp: T0 }]);
    expect(channel.calls.length - calls).toBe(1); // only the healthy host was called
    const waiting = r2.outcomes.find((o) => o.recipient === 'u9')!;
    expect(waiting).toMatchObject({ status: 'RETRY_SCHEDULED', reasonCode: 'circuit_open', attempt: 1 });
    expect(waiting.reason).toMatch(/^circuit open for down\.example since \d\d:\d\d:\d\d UTC; attempt 1 waits until /);
    expect(r2.outcomes.find((o) => o.recipient === 'ok')!.status).toBe('ATTEMPTED');
    const held = r2.emitted.find((e) => (e.value as DeliveryTask).recipient === 'u9')!.value as DeliveryTask;
    expect(held.attempt).toBe(1);
    // Held again while the circuit stays open: a decision of its own, which the lifecycle shows
    // (same status, same attempt: it used to be taken for a repeat of the first hold and hidden).
    d.now += 5_000;
    const r2b = await d.pipe([{ value: { ...held, notBefore: null }, timestamp: T0, topicKey: 'deliverRetry' }]);
    const heldAgain = r2b.outcomes[0]!;
    expect(heldAgain).toMatchObject({ status: 'RETRY_SCHEDULED', reasonCode: 'circuit_open', attempt: 1 });
    expect(heldAgain.decisionId).not.toBe(waiting.decisionId);
    const projection = driver('outcome', outcome);
    await projection.pipe([waiting, heldAgain, heldAgain].map((value) => ({ value, timestamp: value.timestamp })));
    const lifecycle = await readNotification(projection.stores.get('lifecycle')!.view(), waiting.notificationId);
    expect(lifecycle!.events.map((e) => e.reason)).toEqual([waiting.reason, heldAgain.reason]);
    // The host recovers; after the open period one probe goes through and closes the circuit.
    down = false;
    d.now += 30_000;
    const r3 = await d.pipe([{ value: { ...held, notBefore: null }, timestamp: T0, topicKey: 'deliverRetry' }]);
    expect(r3.outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'DELIVERED']);
    const after = await taskTo('u10', 'https://down.example/hook/10');
    expect((await d.pipe([{ value: after, timestamp: T0 }])).outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'DELIVERED']);
  });
});

describe('deliver: circuits are each tenant\'s own', () => {
  const fail503: SendResult = { ok: false, retriable: true, code: 'http_503', detail: 'HTTP 503' };
  const taskTo = async (tenant: string, recipient: string, address: string) => (await driver('route', route).pipe([{ value: { request: (await requestsFor(event({ id: `e-${tenant}-${recipient}`, tenant, recipients: [recipient] })))[0]!, user: user({ userId: recipient, tenant, webhookUrl: address }), preferences: null }, timestamp: T0 }])).emitted[0]!.value as DeliveryTask;

  it('one tenant\'s failing URLs on a shared host never hold another tenant\'s deliveries there, nor show it their failures', async () => {
    const channel = new ScriptedDeliver([]);
    channel.send = async (task: DeliveryTask) => {
      channel.calls.push(task);
      return task.tenant === 'globex' ? fail503 : { ok: true, providerMessageId: null, detail: 'HTTP 200' };
    };
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 1));
    // given globex's URLs on a shared receiver failing, enough (and on enough URLs) to open a circuit of the host
    const failing = await Promise.all(Array.from({ length: 6 }, (_, i) => taskTo('globex', `f${i}`, `https://hooks.shared.example/globex/f${i}`)));
    await d.pipe(failing.map((value) => ({ value, timestamp: T0 })));
    const globexNext = await d.pipe([{ value: await taskTo('globex', 'f9', 'https://hooks.shared.example/globex/f9'), timestamp: T0 }]);
    expect(globexNext.outcomes.map((o) => [o.status, o.reasonCode])).toEqual([['RETRY_SCHEDULED', 'circuit_open']]);
    // then acme's URL on the same host is called at once
    const acme = await d.pipe([{ value: await taskTo('acme', 'carol', 'https://hooks.shared.example/acme/carol'), timestamp: T0 }]);
    expect(acme.outcomes.map((o) => [o.status, o.reasonCode])).toEqual([['ATTEMPTED', 'channel_called'], ['DELIVERED', 'accepted_by_provider']]);
  });
});

describe('deliver: one URL failing on a shared host is not an outage of the host', () => {
  const ok: SendResult = { ok: true, providerMessageId: null, detail: 'HTTP 200' };
  const fail503: SendResult = { ok: false, retriable: true, code: 'http_503', detail: 'HTTP 503' };
  const taskTo = async (recipient: string, address: string) => (await driver('route', route).pipe([{ value: { request: (await requestsFor(event({ id: `e-${recipient}`, recipients: [recipient] })))[0]!, user: user({ userId: recipient, webhookUrl: address }), preferences: null }, timestamp: T0 }])).emitted[0]!.value as DeliveryTask;

  it('keeps the circuit closed when the host answered another call of the same batch', async () => {
    const channel = new ScriptedDeliver([]);
    channel.send = async (task: DeliveryTask) => {
      channel.calls.push(task);
      return task.address.includes('/bad/') ? fail503 : ok;
    };
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 1));
    // One success, then six failures (more than HERALD_BREAKER_FAILURES) of other URLs on the host.
    const tasks = [await taskTo('good', 'https://shared.example/good'), ...(await Promise.all(Array.from({ length: 6 }, (_, i) => taskTo(`bad${i}`, `https://shared.example/bad/${i}`))))];
    const r1 = await d.pipe(tasks.map((value) => ({ value, timestamp: T0 })));
    expect(r1.outcomes.filter((o) => o.status === 'RETRY_SCHEDULED' && o.reasonCode === 'transient_failure')).toHaveLength(6);
    const later = await taskTo('later', 'https://shared.example/good2');
    expect((await d.pipe([{ value: later, timestamp: T0 }])).outcomes.map((o) => [o.status, o.reasonCode])).toEqual([['ATTEMPTED', 'channel_called'], ['DELIVERED', expect.any(String)]]);
  });

  it('keeps it closed when hanging calls time out together after the host answered others meanwhile', async () => {
    const { loadConfig } = await import('../config.ts');
    const config = loadConfig({}, { stateBackend: 'memory', logLevel: 'silent', deliveryBatchWaitMs: 50, deliveryTimeoutMs: 2000 });
    const answers: ((r: SendResult) => void)[] = [];
    const channel: ChannelProvider = { name: 'webhook', send: (task) => (task.address.includes('/hang/') ? new Promise<SendResult>((r) => answers.push(r)) : Promise.resolve(ok)) };
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 1), { config });
    const hanging = await Promise.all(Array.from({ length: 6 }, (_, i) => taskTo(`hang${i}`, `https://shared.example/hang/${i}`)));
    await d.pipe(hanging.map((value) => ({ value, timestamp: T0 })));
    // The host answers another user's call while those hang.
    d.now += 10;
    expect((await d.pipe([{ value: await taskTo('fine', 'https://shared.example/fine'), timestamp: T0 }])).outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'DELIVERED']);
    // Then all six time out at once and settle back to back from the timer.
    for (const answer of answers) answer({ ok: false, retriable: true, code: 'timeout', detail: 'no answer within 2000 ms' });
    await new Promise((r) => setImmediate(r));
    const timedOut = await d.advance(100);
    expect(timedOut.outcomes.filter((o) => o.status === 'RETRY_SCHEDULED')).toHaveLength(6);
    // The circuit stayed closed: the next user of the host is called, not held.
    const next = await d.pipe([{ value: await taskTo('next', 'https://shared.example/next'), timestamp: T0 }]);
    expect(next.outcomes.map((o) => [o.status, o.reasonCode])).toEqual([['ATTEMPTED', 'channel_called'], ['DELIVERED', expect.any(String)]]);
  });

  it('opens only the URL\'s own circuit when one URL hangs and nothing else is called: the host\'s other URLs are called at once', async () => {
    const { loadConfig } = await import('../config.ts');
    const config = loadConfig({}, { stateBackend: 'memory', logLevel: 'silent', deliveryBatchWaitMs: 50, deliveryTimeoutMs: 2000, breakerFailures: 2 });
    const channel: ChannelProvider = { name: 'webhook', send: (task) => Promise.resolve(task.address.includes('/hang') ? { ok: false, retriable: true, code: 'timeout', detail: 'no response within 2 s' } : ok) };
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 1), { config });
    // Two timeouts in a row from one URL (two users' tasks; HERALD_BREAKER_FAILURES 2), and no other call to the host meanwhile.
    for (let i = 0; i < 2; i++) {
      d.now += 10;
      const r = await d.pipe([{ value: await taskTo(`hal${i}`, 'https://shared.example/hang'), timestamp: T0 }]);
      expect(r.outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'RETRY_SCHEDULED']);
    }
    d.now += 10;
    const other = await d.pipe([{ value: await taskTo('ivy', 'https://shared.example/ivy'), timestamp: T0 }]);
    expect(other.outcomes.map((o) => [o.status, o.reasonCode])).toEqual([['ATTEMPTED', 'channel_called'], ['DELIVERED', expect.any(String)]]);
    d.now += 10;
    const same = await d.pipe([{ value: await taskTo('hal3', 'https://shared.example/hang'), timestamp: T0 }]);
    expect(same.outcomes.map((o) => [o.status, o.reasonCode])).toEqual([['RETRY_SCHEDULED', 'circuit_open']]);
    expect(same.outcomes[0]!.reason).toMatch(/^circuit open for this URL \(on shared\.example; /);
  });
});

describe('deliver: one URL answering errors opens its own circuit, not its host\'s', () => {
  const fail500: SendResult = { ok: false, retriable: true, code: 'http_500', detail: 'HTTP 500' };
  const taskTo = async (recipient: string, address: string, id = recipient) => (await driver('route', route).pipe([{ value: { request: (await requestsFor(event({ id: `e-${id}`, recipients: [recipient] })))[0]!, user: user({ userId: recipient, webhookUrl: address }), preferences: null }, timestamp: T0 }])).emitted[0]!.value as DeliveryTask;

  it('holds the failing URL\'s tasks, calls the host\'s other URLs at once, and closes with one probe', async () => {
    const channel = new ScriptedDeliver([]);
    let broken = true;
    channel.send = async (task: DeliveryTask) => {
      channel.calls.push(task);
      return broken && task.address.endsWith('/broken') ? fail500 : { ok: true, providerMessageId: null, detail: 'HTTP 200' };
    };
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 1));
    // given one URL answering 500 to five notifications in a row (HERALD_BREAKER_FAILURES), nothing else calling the host meanwhile
    for (let i = 0; i < 5; i++) await d.pipe([{ value: await taskTo('mallory', 'https://hooks.shared.example/t/broken', `m${i}`), timestamp: T0 }]);
    expect(channel.calls).toHaveLength(5);
    // then the next task for that URL waits without a call, naming the URL's circuit, not the host's
    const held = await d.pipe([{ value: await taskTo('mallory', 'https://hooks.shared.example/t/broken', 'm9'), timestamp: T0 }]);
    expect(channel.calls).toHaveLength(5);
    expect(held.outcomes[0]).toMatchObject({ status: 'RETRY_SCHEDULED', reasonCode: 'circuit_open' });
    expect(held.outcomes[0]!.reason).toMatch(/^circuit open for this URL \(on hooks\.shared\.example; its calls failed in a row, and the host's other URLs are called as usual\) since /);
    expect(held.outcomes[0]!.reason).not.toContain('/t/broken');
    // and another user's URL on the same host is called at once
    const other = await d.pipe([{ value: await taskTo('ada', 'https://hooks.shared.example/t/ada'), timestamp: T0 }]);
    expect(other.outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'DELIVERED']);
    // once the URL is fixed, one probe after the open period closes its circuit
    broken = false;
    d.now += 30_000;
    const task = held.emitted.find((e) => e.topic === 'deliverRetry')!.value as DeliveryTask;
    expect((await d.pipe([{ value: { ...task, notBefore: null }, timestamp: T0, topicKey: 'deliverRetry' }])).outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'DELIVERED']);
    expect((await d.pipe([{ value: await taskTo('mallory', 'https://hooks.shared.example/t/broken', 'm10'), timestamp: T0 }])).outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'DELIVERED']);
  });
});

describe('deliver: an SMTP server answering 4xx about some recipients is up', () => {
  it('retries those recipients after minutes, and never opens the circuit every other user\'s mail goes through', async () => {
    const emailTo = async (recipient: string, email: string) => {
      const r = await driver('route', route, { availableChannels: new Set(['email']) }).pipe([{ value: { request: (await requestsFor(event({ id: `e-${recipient}`, recipients: [recipient] })))[0]!, user: user({ userId: recipient, email, webhookUrl: null }), preferences: null }, timestamp: T0 }]);
      return r.emitted.map((e) => e.value as DeliveryTask).find((t) => t.channel === 'email')!;
    };
    const calls: string[] = [];
    const channel: ChannelProvider = {
      name: 'email',
      send: async (task) => {
        calls.push(task.recipient);
        return task.address.startsWith('grey') ? { ok: false, retriable: true, code: 'smtp_451', detail: 'SMTP 451', retryAfterMs: 60_000 } : { ok: true, providerMessageId: null, detail: 'SMTP 250' };
      },
    };
    const d = driver('deliver', deliver(new Map([['email', channel]]), () => 1));
    // given eight recipients greylisted, one batch each (more than HERALD_BREAKER_FAILURES in a row)
    for (let i = 0; i < 8; i++) {
      const r = await d.pipe([{ value: await emailTo(`g${i}`, `grey${i}@example.test`), timestamp: T0 }]);
      const retry = r.emitted.find((e) => e.topic === 'deliverRetry')!.value as DeliveryTask;
      // then each waits the minute the reply asks for
      expect(retry.notBefore! - d.now).toBeGreaterThanOrEqual(60_000);
    }
    // and the next user's mail is sent at once, not held behind an open circuit
    const next = await d.pipe([{ value: await emailTo('ok', 'ok@example.test'), timestamp: T0 }]);
    expect(next.outcomes.map((o) => [o.status, o.reasonCode])).toEqual([['ATTEMPTED', 'channel_called'], ['DELIVERED', expect.any(String)]]);
    expect(calls).toHaveLength(9);
    // while 421 (service not available, for everyone) is the server's outage: it opens the circuit
    const down: ChannelProvider = { name: 'email', send: async () => ({ ok: false, retriable: true, code: 'smtp_421', detail: 'SMTP 421', retryAfterMs: 60_000 }) };
    const d421 = driver('deliver', deliver(new Map([['email', down]]), () => 1));
    for (let i = 0; i < 5; i++) await d421.pipe([{ value: await emailTo(`x${i}`, `x${i}@example.test`), timestamp: T0 }]);
    const held = await d421.pipe([{ value: await emailTo('y', 'y@example.test'), timestamp: T0 }]);
    expect(held.outcomes[0]).toMatchObject({ status: 'RETRY_SCHEDULED', reasonCode: 'circuit_open' });
  });
});

describe('deliver: a slow endpoint never holds back the others', () => {
  it('detaches a call that outlives the batch wait, records its result from the timer, and remakes it from the lease after a move', async () => {
    const { loadConfig } = await import('../config.ts');
    const config = loadConfig({}, { stateBackend: 'memory', logLevel: 'silent', deliveryBatchWaitMs: 50, deliveryTimeoutMs: 2000 });
    let answer!: (r: SendResult) => void;
    const calls: string[] = [];
    const channel: ChannelProvider = {
      name: 'webhook',
      send: (task) => {
        calls.push(task.recipient);
        return task.address.includes('hang') ? new Promise<SendResult>((r) => (answer = r)) : Promise.resolve({ ok: true, providerMessageId: null, detail: 'HTTP 200' });
      },
    };
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 1), { config });
    const taskTo = async (recipient: string, address: string) => (await driver('route', route).pipe([{ value: { request: (await requestsFor(event({ id: `e-${recipient}`, recipients: [recipient] })))[0]!, user: user({ userId: recipient, webhookUrl: address }), preferences: null }, timestamp: T0 }])).emitted[0]!.value as DeliveryTask;
    const slow = await taskTo('slow', 'https://hang.example/hook');
    const fast = await taskTo('fast', 'https://ok.example/hook');
    const r1 = await d.pipe([{ value: slow, timestamp: T0 }, { value: fast, timestamp: T0 }]);
    // The batch ended without the slow answer: the fast one is delivered, the slow one only attempted.
    expect(r1.outcomes.map((o) => [o.recipient, o.status])).toEqual([['slow', 'ATTEMPTED'], ['fast', 'ATTEMPTED'], ['fast', 'DELIVERED']]);
    expect((await d.advance(100)).outcomes).toEqual([]);
    answer({ ok: false, retriable: true, code: 'http_503', detail: 'HTTP 503' });
    await new Promise((r) => setImmediate(r));
    const r2 = await d.advance(100);
    expect(r2.outcomes.map((o) => [o.recipient, o.status, o.attempt])).toEqual([['slow', 'RETRY_SCHEDULED', 1]]);
    expect((r2.emitted[0]!.value as DeliveryTask).attempt).toBe(2);

    // Another detached call, then the partition moves before it answers: the lease brings the attempt back.
    const slow2 = await taskTo('slow2', 'https://hang.example/hook2');
    await d.pipe([{ value: slow2, timestamp: T0 }]);
    await d.rebalance();
    expect((await d.advance(1000)).outcomes).toEqual([]); // the lease is not due yet
    const again = await d.advance(2000 + 5000);
    expect(again.outcomes.map((o) => [o.recipient, o.status, o.attempt])).toEqual([['slow2', 'ATTEMPTED', 1]]);
    expect(calls.filter((c) => c === 'slow2')).toHaveLength(2); // the same attempt, made again (same Idempotency-Key)
  });
});

describe('deliver: the lease of a call that runs past it', () => {
  it('is renewed once for another call\'s timeout, not every timer run, and deleted by the answer', async () => {
    const { loadConfig } = await import('../config.ts');
    const config = loadConfig({}, { stateBackend: 'memory', logLevel: 'silent', deliveryBatchWaitMs: 50, deliveryTimeoutMs: 2000 });
    let answer!: (r: SendResult) => void;
    let calls = 0;
    const channel: ChannelProvider = { name: 'webhook', send: () => { calls++; return new Promise<SendResult>((r) => (answer = r)); } };
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 1), { config });
    const task = (await driver('route', route).pipe([{ value: { request: (await requestsFor(event({ id: 'e-w', recipients: ['w'] })))[0]!, user: user({ userId: 'w', webhookUrl: 'https://wait.example/hook' }), preferences: null }, timestamp: T0 }])).emitted[0]!.value as DeliveryTask;
    await d.pipe([{ value: task, timestamp: T0 }]);
    const leases = async () => (await d.stores.get('retries')!.view().due<unknown>(Number.MAX_SAFE_INTEGER)).map((l) => l.dueAt);
    const first = await leases();
    expect(first).toEqual([d.now + 2000 + 5000]);
    // The lease comes due while the call is still here (a host's slots all busy): renewed,
    // not made again.
    expect((await d.advance(7000)).outcomes).toEqual([]);
    expect(await leases()).toEqual([d.now + 2000 + 5000]);
    const renewed = await leases();
    for (let i = 0; i < 3; i++) expect((await d.advance(1000)).outcomes).toEqual([]);
    expect(await leases()).toEqual(renewed);
    expect(calls).toBe(1);
    answer({ ok: true, providerMessageId: null, detail: 'HTTP 200' });
    await new Promise((r) => setImmediate(r));
    expect((await d.advance(100)).outcomes.map((o) => o.status)).toEqual(['DELIVERED']);
    expect(await leases()).toEqual([]);
  });
});

describe('deliver: a hanging URL gets a slow lane of its own', () => {
  it('runs its later calls one at a time outside the host\'s slots, so a healthy URL on the same host is called at once', async () => {
    const { loadConfig } = await import('../config.ts');
    const config = loadConfig({}, { stateBackend: 'memory', logLevel: 'silent', deliveryBatchWaitMs: 50, endpointConcurrency: 3 });
    let hanging = 0;
    let most = 0;
    const release: (() => void)[] = [];
    const channel: ChannelProvider = {
      name: 'webhook',
      send: async (task) => {
        if (task.address.endsWith('/ok')) return { ok: true, providerMessageId: null, detail: 'HTTP 200' };
        hanging++;
        most = Math.max(most, hanging);
        await new Promise<void>((r) => release.push(r));
        hanging--;
        return { ok: true, providerMessageId: null, detail: 'HTTP 200' };
      },
    };
    const { Metrics } = await import('../runtime/metrics.ts');
    const metrics = new Metrics();
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 1), { config, metrics });
    const taskTo = async (recipient: string, address: string) => (await driver('route', route).pipe([{ value: { request: (await requestsFor(event({ id: `e-${recipient}`, recipients: [recipient] })))[0]!, user: user({ userId: recipient, webhookUrl: address }), preferences: null }, timestamp: T0 }])).emitted[0]!.value as DeliveryTask;
    const hang = 'https://shared.example/hooks/hang';
    // Two calls hang: they hold two of the host's three slots, and outlive the batch's wait.
    const first = await d.pipe([await taskTo('h1', hang), await taskTo('h2', hang)].map((value) => ({ value, timestamp: T0 })));
    expect(first.outcomes.map((o) => o.status)).toEqual(['ATTEMPTED', 'ATTEMPTED']);
    await new Promise((r) => setTimeout(r, 80)); // the calls are now older than the batch wait
    expect(await metrics.registry.getSingleMetricAsString('herald_deliver_slow_lanes')).toMatch(/herald_deliver_slow_lanes 1$/m);
    // Two more for the hanging URL and one for a healthy URL on the same host: the hanging
    // ones queue in their lane (one at a time), the healthy one takes the free host slot.
    const second = await d.pipe([await taskTo('h3', hang), await taskTo('h4', hang), await taskTo('ok', 'https://shared.example/hooks/ok')].map((value) => ({ value, timestamp: T0 })));
    expect(second.outcomes.filter((o) => o.status === 'DELIVERED').map((o) => o.recipient)).toEqual(['ok']);
    while (hanging < 3) await new Promise((r) => setImmediate(r));
    expect([hanging, most]).toEqual([3, 3]); // h1, h2 in host slots, h3 in the lane; h4 waits behind h3
    // The lane holds 4: of four more, two join it and two wait a call's timeout without a call.
    const third = await d.pipe(await Promise.all(['h5', 'h6', 'h7', 'h8'].map(async (r) => ({ value: await taskTo(r, hang), timestamp: T0 }))));
    const waiting = third.outcomes.filter((o) => o.reasonCode === 'slow_endpoint');
    expect(waiting.map((o) => o.recipient)).toEqual(['h7', 'h8']);
    expect(waiting[0]).toMatchObject({ status: 'RETRY_SCHEDULED', attempt: 1 });
    expect(third.emitted.filter((e) => e.topic === 'deliverRetry')).toHaveLength(2);
    // The URL recovers: every call answers, the timer records them, and the lane ends.
    while (release.length) {
      release.shift()!();
      await new Promise((r) => setTimeout(r, 5));
    }
    const settled = await d.advance(100);
    expect(settled.outcomes.filter((o) => o.status === 'DELIVERED').map((o) => o.recipient).sort()).toEqual(['h1', 'h2', 'h3', 'h4', 'h5', 'h6']);
    expect(most).toBe(3);
    expect(await metrics.registry.getSingleMetricAsString('herald_deliver_slow_lanes')).toMatch(/herald_deliver_slow_lanes 0$/m);
  });
});

describe('deliver: calls in flight are capped per endpoint', () => {
  it('lets at most HERALD_ENDPOINT_CONCURRENCY calls reach one host at once, while another host is called at once', async () => {
    const { loadConfig } = await import('../config.ts');
    const config = loadConfig({}, { stateBackend: 'memory', logLevel: 'silent', deliveryBatchWaitMs: 50, endpointConcurrency: 2 });
    let inFlight = 0;
    let most = 0;
    const waiting: (() => void)[] = [];
    const otherHost: number[] = [];
    const channel: ChannelProvider = {
      name: 'webhook',
      send: async (task) => {
        if (task.address.includes('other.example')) {
          otherHost.push(inFlight);
          return { ok: true, providerMessageId: null, detail: 'HTTP 200' };
        }
        inFlight++;
        most = Math.max(most, inFlight);
        await new Promise<void>((r) => waiting.push(r));
        inFlight--;
        return { ok: true, providerMessageId: null, detail: 'HTTP 200' };
      },
    };
    const d = driver('deliver', deliver(new Map([['webhook', channel]]), () => 1), { config });
    const taskTo = async (recipient: string, address: string) => (await driver('route', route).pipe([{ value: { request: (await requestsFor(event({ id: `e-${recipient}`, recipients: [recipient] })))[0]!, user: user({ userId: recipient, webhookUrl: address }), preferences: null }, timestamp: T0 }])).emitted[0]!.value as DeliveryTask;
    const busy = await Promise.all(Array.from({ length: 5 }, (_, i) => taskTo(`b${i}`, `https://busy.example/h/${i}`)));
    const r = await d.pipe([...busy, await taskTo('o', 'https://other.example/h')].map((value) => ({ value, timestamp: T0 })));
    expect(most).toBe(2);
    expect(otherHost).toEqual([2]); // called while the busy host had its 2 calls in flight
    expect(r.outcomes.filter((o) => o.status === 'DELIVERED').map((o) => o.recipient)).toEqual(['o']);
    // The busy host's calls finish one slot at a time; the timer records each.
    for (let i = 0; i < 5; i++) {
      while (waiting.length === 0) await new Promise((res) => setImmediate(res));
      waiting.shift()!();
      await new Promise((res) => setImmediate(res));
    }
    const settled = await d.advance(100);
    expect(settled.outcomes.filter((o) => o.status === 'DELIVERED')).toHaveLength(5);
    expect(most).toBe(2);
  });
});
