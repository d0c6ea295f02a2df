/**
 * throttle with an injected clock: every decision (admit, defer and release, digest, drop,
 * CRITICAL bypass, expiry while held, quiet hours across daylight-saving changes), driven
 * through the real stage context and stores.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { throttle } from '../processors/throttle.ts';
import { localTime, quietUntil } from '../processors/quiet-hours.ts';
import { parseRules } from '../rules/rules.ts';
import type { EnrichedNotification, NotificationRequest, UserPreferences, UserProfile } from '../schemas/types.ts';
import { Metrics } from '../runtime/metrics.ts';
import { StageDriver } from './support/driver.ts';

const T0 = Date.parse('2026-03-02T09:00:00Z');
const MIN = 60_000;
const HOUR = 60 * MIN;

const template = { webhook: { en: { body: 'b' } } };
const RULES = parseRules({
  version: 2,
  limits: [{ scope: 'user', max: 5, per: '1h' }],
  rules: [
    { id: 'comment', eventType: 'comment.created', category: 'collaboration', channels: ['webhook'], templates: template, throttle: { limits: [{ scope: 'category', max: 3, per: '1h' }], onExceed: 'defer' } },
    { id: 'mention', eventType: 'mention.created', category: 'collaboration', channels: ['webhook'], templates: template },
    { id: 'like', eventType: 'like.created', category: 'social', channels: ['webhook'], templates: template, throttle: { limits: [{ scope: 'rule', max: 2, per: '10m' }], onExceed: 'drop' } },
    { id: 'digest', eventType: 'doc.edited', category: 'docs', channels: ['webhook'], templates: template, throttle: { limits: [{ scope: 'rule', max: 1, per: '1h' }], digest: { window: '30m', key: ['recipient', 'data.documentId'], maxItems: 3, templates: { webhook: { en: { subject: '{{count}} edits', body: '{{#items}}{{data.by}} {{/items}}' } } } } } },
    { id: 'alarm', eventType: 'security.alarm', category: 'security', priority: 'CRITICAL', channels: ['webhook'], templates: template, throttle: { limits: [{ scope: 'rule', max: 1, per: '1h' }] } },
  ],
}, 'test-rules.json');

const user: UserProfile = { userId: 'ada', tenant: 'acme', name: 'Ada', email: null, phone: null, locale: 'en', timezone: 'Europe/Berlin', webhookUrl: 'https://hooks.example/ada', chatWebhookUrl: null, active: true, updatedAt: null };

let seq = 0;
function n(ruleId: string, over: Partial<NotificationRequest> = {}, prefs: Partial<UserPreferences> | null = null): EnrichedNotification {
  const rule = RULES.byId(ruleId)!;
  seq++;
  const request: NotificationRequest = {
    notificationId: `ntf_${ruleId}_${seq}`, tenant: 'acme', eventId: `e${seq}`, eventType: rule.eventType, ruleId, recipient: 'ada', category: rule.category,
    priority: rule.priority, data: JSON.stringify({ documentId: 'doc-1', by: `u${seq}` }), idempotencyKey: null, actor: 'linus', occurredAt: T0 + seq, expiresAt: null, traceId: 't', digestOf: [], ...over,
  };
  return { request, user, preferences: prefs ? { userId: 'ada', tenant: 'acme', channels: {}, categories: {}, quietHours: null, updatedAt: null, ...prefs } : null };
}

const drivers: StageDriver[] = [];
function driver(metrics = new Metrics()): StageDriver {
  const d = new StageDriver('throttle', throttle, { rules: RULES, metrics });
  d.now = T0;
  drivers.push(d);
  return d;
}
afterEach(async () => {
  for (const d of drivers.splice(0)) await d.close();
});

const decisions = (r: { outcomes: { notificationId: string; status: string; reasonCode: string }[] }) => r.outcomes.map((o) => [o.notificationId, o.status, o.reasonCode]);

describe('throttle: limits', () => {
  it('admits N in the window, defers the rest with the count and release time, and releases them oldest first when the window has room', async () => {
    const metrics = new Metrics();
    const held = async () => (await metrics.registry.getSingleMetric('herald_throttle_held')!.get()).values[0]?.value;
    const d = driver(metrics);
    const items = Array.from({ length: 5 }, () => n('comment'));
    const r = await d.pipe(items.map((value, i) => ({ value, timestamp: T0 + i * MIN })));
    expect(r.outcomes.map((o) => o.status)).toEqual(['ADMITTED', 'ADMITTED', 'ADMITTED', 'DEFERRED', 'DEFERRED']);
    expect(r.emitted).toHaveLength(3);
    expect(r.outcomes[0]!.reason).toBe('within limits: 1 of 5 per 1 h (user); 1 of 3 per 1 h (category)');
    expect(r.outcomes[3]).toMatchObject({ reasonCode: 'limit_deferred', terminal: false });
    expect(r.outcomes[3]!.reason).toBe('deferred: 3 of 3 collaboration notifications in the last 1 h; released at 11:00 Europe/Berlin');
    // Nothing before the oldest admission leaves the window.
    expect((await d.advance(HOUR - 1)).outcomes).toEqual([]);
    expect(await held()).toBe(2);
    const first = await d.advance(1);
    expect(await held()).toBe(1);
    expect(decisions(first)).toEqual([[items[3]!.request.notificationId, 'RELEASED', 'released']]);
    expect(first.emitted.map((e) => (e.value as EnrichedNotification).request.notificationId)).toEqual([items[3]!.request.notificationId]);
    const second = await d.advance(MIN);
    expect(decisions(second)).toEqual([[items[4]!.request.notificationId, 'RELEASED', 'released']]);
    expect((await d.advance(HOUR)).outcomes).toEqual([]); // each released once
  });

  it('promises each deferred notification the release time it gets, counting those held ahead of it', async () => {
    const d = driver();
    const items = Array.from({ length: 8 }, () => n('comment'));
    const r = await d.pipe(items.map((value, i) => ({ value, timestamp: T0 + i * MIN })));
    const deferred = r.outcomes.filter((o) => o.status === 'DEFERRED');
    expect(deferred).toHaveLength(5);
    expect(deferred[0]!.reason).toBe('deferred: 3 of 3 collaboration notifications in the last 1 h; released at 11:00 Europe/Berlin');
    expect(deferred[1]!.reason).toBe('deferred: 3 of 3 collaboration notifications in the last 1 h, and 1 held to go first; released at 11:01 Europe/Berlin');
    // The fourth held one waits for the first release's hour to pass: 2 h after the first admission.
    expect(deferred[3]!.reason).toBe('deferred: 3 of 3 collaboration notifications in the last 1 h, and 3 held to go first; released at 12:00 Europe/Berlin');
    const released: { notificationId: string; timestamp: number }[] = [];
    for (let k = 0; k < 4 * 60; k++) released.push(...(await d.advance(MIN)).outcomes.filter((o) => o.status === 'RELEASED'));
    expect(released.map((o) => o.notificationId)).toEqual(deferred.map((o) => o.notificationId));
    for (const [i, o] of released.entries()) expect(deferred[i]!.reason.endsWith(`released at ${localTime(o.timestamp, 'Europe/Berlin')}`)).toBe(true);
    const passedAt = [...r.outcomes.filter((o) => o.status === 'ADMITTED'), ...released].map((o) => o.timestamp);
    for (const t of passedAt) expect(passedAt.filter((x) => x > t - HOUR && x <= t).length).toBeLessThanOrEqual(3);
  });

  it('does not let a fresh notification take the room promised to a held one, when the timer runs late', async () => {
    const d = driver();
    const items = Array.from({ length: 4 }, () => n('comment'));
    const r = await d.pipe(items.map((value, i) => ({ value, timestamp: T0 + [0, 30, 31, 32][i]! * MIN })));
    expect(r.outcomes[3]!.reason).toMatch(/released at 11:00 Europe\/Berlin$/);
    // Stream time passes the held one's release before the wall-clock timer has run: the
    // window (10:01, 11:01] holds 10:30, 10:31 and the release promised at 11:00.
    const fresh = await d.pipe([{ value: n('comment'), timestamp: T0 + 61 * MIN }]);
    expect(fresh.outcomes.map((o) => [o.status, o.reason])).toEqual([['DEFERRED', 'deferred: 2 of 3 collaboration notifications in the last 1 h, and 1 held to go first; released at 11:30 Europe/Berlin']]);
    const timer = await d.advance(3 * HOUR);
    // The held one is released at the time it was promised, then the fresh one at its own.
    expect(timer.outcomes.map((o) => [o.status, (o.timestamp - T0) / MIN])).toEqual([['RELEASED', 60], ['RELEASED', 90]]);
    expect(timer.outcomes[0]!.notificationId).toBe(items[3]!.request.notificationId);
  });

  it('decides a record read again (redelivery after a crash) the same way, counting it once', async () => {
    const d = driver();
    const items = Array.from({ length: 4 }, () => n('comment'));
    const once = await d.pipe(items.map((value) => ({ value, timestamp: T0 })));
    const again = await d.pipe(items.map((value) => ({ value, timestamp: T0 })));
    expect(once.outcomes.map((o) => o.status)).toEqual(['ADMITTED', 'ADMITTED', 'ADMITTED', 'DEFERRED']);
    // Admitted ones pass again (downstream ids absorb them); the held one stays held, once.
    expect(again.outcomes.map((o) => [o.status, o.reasonCode])).toEqual([['ADMITTED', 'replayed'], ['ADMITTED', 'replayed'], ['ADMITTED', 'replayed']]);
    expect(again.emitted.map((e) => (e.value as EnrichedNotification).request.notificationId)).toEqual(items.slice(0, 3).map((i) => i.request.notificationId));
    const fresh = await d.pipe([{ value: n('comment'), timestamp: T0 + 1 }]);
    expect(fresh.outcomes[0]!.reason).toContain('3 of 3'); // not 6 of 3: nothing counted twice
    expect((await d.advance(HOUR)).outcomes.map((o) => o.status)).toEqual(['RELEASED', 'RELEASED']); // the held one (once) and the fresh one
  });

  it('counts what took the room when records stamped later were read first, and says they were', async () => {
    const d = driver();
    // Events of one user reach throttle in the order they reached the partition, not by time.
    const later = Array.from({ length: 3 }, () => n('comment'));
    const early = n('comment');
    const r = await d.pipe([...later.map((value, i) => ({ value, timestamp: T0 + (i + 1) * 10 * MIN })), { value: early, timestamp: T0 }]);
    expect(r.outcomes.map((o) => o.status)).toEqual(['ADMITTED', 'ADMITTED', 'ADMITTED', 'DEFERRED']);
    // Not "0 of 3 … in the last 1 h", which reads as room.
    expect(r.outcomes[3]!.reason).toBe('deferred: 3 of 3 collaboration notifications within 1 h of it (3 stamped after it, admitted first); released at 11:10 Europe/Berlin');
  });

  it('counts the user scope across rules, so one noisy rule cannot get around the user\'s limit', async () => {
    const d = driver();
    const r = await d.pipe([...Array.from({ length: 3 }, () => n('comment')), ...Array.from({ length: 3 }, () => n('mention'))].map((value, i) => ({ value, timestamp: T0 + i })));
    // comment: 3 admitted (category 3/1h); mention: same category has no room left either,
    // but mention has no limits of its own: it counts against the user's 5/1h only.
    expect(r.outcomes.map((o) => [o.ruleId, o.status])).toEqual([['comment', 'ADMITTED'], ['comment', 'ADMITTED'], ['comment', 'ADMITTED'], ['mention', 'ADMITTED'], ['mention', 'ADMITTED'], ['mention', 'DEFERRED']]);
    expect(r.outcomes[5]!.reason).toContain('5 of 5 notifications in the last 1 h');
  });

  it('keeps every sliding window to its limit for M > N arrivals: 2 per 10 min for the rule, 5 per hour for the user', async () => {
    const d = driver();
    const admittedAt: number[] = [];
    for (let i = 0; i < 40; i++) {
      const r = await d.pipe([{ value: n('like'), timestamp: T0 + i * MIN }]);
      if (r.outcomes[0]!.status === 'ADMITTED') admittedAt.push(T0 + i * MIN);
    }
    for (const t of admittedAt) expect(admittedAt.filter((x) => x > t - 10 * MIN && x <= t).length).toBeLessThanOrEqual(2);
    for (const t of admittedAt) expect(admittedAt.filter((x) => x > t - HOUR && x <= t).length).toBeLessThanOrEqual(5);
    // The rule alone would allow 8 in 40 minutes; the user's 5 per hour stops it at 5, exactly.
    expect(admittedAt).toEqual([0, 1, 10, 11, 20].map((m) => T0 + m * MIN));
  });

  it('admits exactly N per window for M > N arrivals interleaved with rebalances, deferring the rest and releasing each once', async () => {
    const d = driver();
    const items = Array.from({ length: 9 }, () => n('comment'));
    const outcomes: { notificationId: string; status: string; timestamp: number }[] = [];
    for (const [i, value] of items.entries()) {
      outcomes.push(...(await d.pipe([{ value, timestamp: T0 + i * 5 * MIN }])).outcomes);
      if (i % 3 === 2) await d.rebalance(); // the partition moves: state comes back from the stores
    }
    for (let k = 0; k < 6; k++) {
      outcomes.push(...(await d.advance(HOUR)).outcomes);
      if (k % 2 === 0) await d.rebalance();
    }
    const passedAt = outcomes.filter((o) => o.status === 'ADMITTED' || o.status === 'RELEASED').map((o) => o.timestamp).sort((a, b) => a - b);
    // Every notification passed exactly once, and no hour holds more than 3 (category 3 per 1 h).
    expect(new Set(outcomes.filter((o) => o.status === 'ADMITTED' || o.status === 'RELEASED').map((o) => o.notificationId)).size).toBe(9);
    expect(passedAt).toHaveLength(9);
    for (const t of passedAt) expect(passedAt.filter((x) => x > t - HOUR && x <= t).length).toBeLessThanOrEqual(3);
    expect(outcomes.filter((o) => o.status === 'ADMITTED')).toHaveLength(3);
  });

  it('drops over the limit when the rule says so: THROTTLED, terminal, with the count', async () => {
    const d = driver();
    const r = await d.pipe(Array.from({ length: 3 }, () => ({ value: n('like'), timestamp: T0 })));
    expect(r.outcomes.map((o) => [o.status, o.terminal])).toEqual([['ADMITTED', false], ['ADMITTED', false], ['THROTTLED', true]]);
    expect(r.outcomes[2]!.reason).toBe('throttled: 2 of 2 notifications of rule like in the last 10 min; the rule drops what exceeds it');
  });

  it('sweeps no counter past the wall clock: a record stamped in the year 9000 leaves the others\' counts, and the next over the limit is still dropped', async () => {
    const d = driver();
    d.now = T0 + MIN;
    const first = await d.pipe(Array.from({ length: 2 }, () => ({ value: n('like'), timestamp: T0 })));
    expect(first.outcomes.map((o) => o.status)).toEqual(['ADMITTED', 'ADMITTED']);
    await d.pipe([{ value: n('like', { recipient: 'bob' }), timestamp: Date.parse('9000-01-01T00:00:00Z') }]);
    d.now = T0 + 2 * MIN;
    const third = await d.pipe([{ value: n('like'), timestamp: T0 + MIN }]);
    expect(third.outcomes.map((o) => o.status)).toEqual(['THROTTLED']);
  });

  it('lets CRITICAL through over its limits and says so', async () => {
    const d = driver();
    const r = await d.pipe([{ value: n('alarm'), timestamp: T0 }, { value: n('alarm'), timestamp: T0 + 1 }]);
    expect(decisions(r).map((x) => x.slice(1))).toEqual([['ADMITTED', 'critical_bypass'], ['ADMITTED', 'critical_bypass']]);
    expect(r.emitted).toHaveLength(2);
    // They count in the user's scope: past its limit, the reason does not read "6 of 5".
    await d.pipe(Array.from({ length: 4 }, (_, i) => ({ value: n('alarm'), timestamp: T0 + 2 + i })));
    const over = await d.pipe([{ value: n('like'), timestamp: T0 + 10 }]);
    expect(over.outcomes[0]!.reason).toBe('throttled: 6 notifications in the last 1 h, over the limit of 5; the rule drops what exceeds it');
  });

  it('expires a deferred notification whose expiry passes while held: never sent', async () => {
    const d = driver();
    await d.pipe(Array.from({ length: 3 }, () => ({ value: n('comment'), timestamp: T0 })));
    const late = n('comment', { expiresAt: T0 + 30 * MIN });
    expect((await d.pipe([{ value: late, timestamp: T0 }])).outcomes[0]!.status).toBe('DEFERRED');
    // Held until its expiry (before the release at T0 + 1 h), and EXPIRED then, not at the release.
    expect((await d.advance(30 * MIN - 1)).outcomes).toEqual([]);
    const r = await d.advance(1);
    expect(decisions(r)).toEqual([[late.request.notificationId, 'EXPIRED', 'expired_while_held']]);
    expect(r.outcomes[0]!.timestamp).toBe(T0 + 30 * MIN);
    expect(r.emitted).toEqual([]);
    expect((await d.advance(HOUR)).outcomes).toEqual([]);
  });
});

describe('throttle: digests', () => {
  it('collects over-limit items by digest key and sends one notification listing them when the window closes', async () => {
    const d = driver();
    const items = [n('digest'), n('digest'), n('digest', { data: JSON.stringify({ documentId: 'doc-2', by: 'x' }) }), n('digest')];
    const r = await d.pipe(items.map((value, i) => ({ value, timestamp: T0 + i * MIN })));
    expect(r.outcomes.map((o) => [o.status, o.reasonCode])).toEqual([['ADMITTED', 'within_limits'], ['DEFERRED', 'digest_collected'], ['DEFERRED', 'digest_collected'], ['DEFERRED', 'digest_collected']]);
    const digestId = /digest (ntf_\w+)/.exec(r.outcomes[1]!.reason)![1]!;
    expect(r.outcomes[3]!.reason).toContain(digestId); // same key, same digest
    expect(r.outcomes[2]!.reason).not.toContain(digestId); // another document, another digest
    const sent = await d.advance(30 * MIN + 3 * MIN);
    const digests = sent.emitted.map((e) => (e.value as EnrichedNotification).request);
    expect(digests).toHaveLength(2);
    const doc1 = digests.find((x) => x.notificationId === digestId)!;
    expect(doc1.digestOf).toEqual([items[1]!.request.notificationId, items[3]!.request.notificationId]);
    expect(JSON.parse(doc1.data)).toMatchObject({ count: 2, items: [{ notificationId: items[1]!.request.notificationId }, { notificationId: items[3]!.request.notificationId }] });
    expect(sent.outcomes.filter((o) => o.notificationId === digestId).map((o) => [o.status, o.reasonCode])).toEqual([['ADMITTED', 'digest_emitted']]);
    expect(sent.outcomes.filter((o) => o.status === 'DIGESTED').map((o) => [o.notificationId, o.terminal])).toEqual([
      [items[1]!.request.notificationId, true], [items[3]!.request.notificationId, true], [items[2]!.request.notificationId, true],
    ].sort((a, b) => (digests.findIndex((x) => x.digestOf.includes(String(a[0]))) - digests.findIndex((x) => x.digestOf.includes(String(b[0]))))));
    expect((await d.advance(HOUR)).emitted).toEqual([]); // sent once
  });

  it('keeps only the reference of the record that caused a held item, not its value, headers or raw bytes', async () => {
    const [deferring, collecting] = [driver(), driver()];
    await deferring.pipe(Array.from({ length: 5 }, (_, i) => ({ value: n('comment'), timestamp: T0 + i })));
    await collecting.pipe(Array.from({ length: 3 }, (_, i) => ({ value: n('digest'), timestamp: T0 + i })));
    const held: unknown[] = [];
    for (const d of [deferring, collecting]) for await (const [key, v] of d.stores.get('held')!.range('\u0001', '\uffff')) if (!key.startsWith('\u0000')) held.push(v);
    const causes = held.flatMap((v) => {
      const x = v as { kind: string; cause?: unknown; items?: { cause: unknown }[] };
      return x.kind === 'digest' ? x.items!.map((i) => i.cause) : [x.cause];
    });
    expect(causes).toHaveLength(4); // 2 deferred comments, 2 collected into the digest
    for (const c of causes) expect(Object.keys(c as object).sort()).toEqual(['offset', 'partition', 'timestamp', 'topic']);
  });

  it('sends a digest at once when it reaches maxItems', async () => {
    const d = driver();
    const r = await d.pipe(Array.from({ length: 4 }, (_, i) => ({ value: n('digest'), timestamp: T0 + i })));
    // 1 admitted, then 3 collected: the third fills the digest (maxItems 3) and sends it.
    expect(r.emitted.map((e) => (e.value as EnrichedNotification).request.digestOf.length)).toEqual([0, 3]);
    expect(r.outcomes.filter((o) => o.status === 'DIGESTED')).toHaveLength(3);
    expect((await d.advance(HOUR)).emitted).toEqual([]);
  });
});

describe('throttle: quiet hours', () => {
  it('defers inside the user\'s quiet hours and releases at their end in the user\'s zone', async () => {
    const d = driver();
    const night = Date.parse('2026-03-02T22:30:00Z'); // 23:30 in Berlin
    d.now = night;
    const item = n('mention', {}, { quietHours: { start: '22:00', end: '07:00' } });
    const r = await d.pipe([{ value: item, timestamp: night }]);
    expect(decisions(r)).toEqual([[item.request.notificationId, 'DEFERRED', 'quiet_hours']]);
    // 07:00 is tomorrow's, in Berlin: the date says so.
    expect(r.outcomes[0]!.reason).toBe('deferred: quiet hours 22:00–07:00 Europe/Berlin; released at 07:00 Europe/Berlin on 2026-03-03');
    expect((await d.advance(Date.parse('2026-03-03T06:00:00Z') - night - 1)).outcomes).toEqual([]);
    const released = await d.advance(1);
    expect(decisions(released)).toEqual([[item.request.notificationId, 'RELEASED', 'released']]);
    expect(released.emitted).toHaveLength(1);
  });

  it('lets CRITICAL through quiet hours', async () => {
    const d = driver();
    const night = Date.parse('2026-03-02T23:30:00Z');
    const r = await d.pipe([{ value: n('alarm', {}, { quietHours: { start: '22:00', end: '07:00' } }), timestamp: night }]);
    expect(r.outcomes[0]).toMatchObject({ status: 'ADMITTED', reasonCode: 'critical_bypass' });
  });

  // [zone, window, instant, expected end (or null = outside the window)]
  const cases: [string, string, string, string, string | null][] = [
    ['Europe/Berlin', '22:00', '07:00', '2026-03-28T22:00:00Z', '2026-03-29T05:00:00Z'], // spring forward: 23:00 CET -> 07:00 CEST
    ['Europe/Berlin', '22:00', '07:00', '2026-10-24T21:00:00Z', '2026-10-25T06:00:00Z'], // fall back: 23:00 CEST -> 07:00 CET
    ['Europe/Berlin', '22:00', '07:00', '2026-03-29T04:30:00Z', '2026-03-29T05:00:00Z'], // 06:30 CEST, after the change
    ['Europe/Berlin', '22:00', '07:00', '2026-03-29T05:00:00Z', null], // 07:00 CEST: over
    ['Europe/Berlin', '22:00', '02:30', '2026-03-28T23:00:00Z', '2026-03-29T01:00:00Z'], // 02:30 does not exist that night: 03:00 CEST
    ['America/New_York', '21:00', '08:00', '2026-03-08T03:00:00Z', '2026-03-08T12:00:00Z'], // 22:00 EST -> 08:00 EDT
    ['America/New_York', '21:00', '08:00', '2026-11-01T02:00:00Z', '2026-11-01T13:00:00Z'], // 22:00 EDT -> 08:00 EST
    ['America/New_York', '21:00', '08:00', '2026-11-01T06:30:00Z', '2026-11-01T13:00:00Z'], // 01:30 EST (the second one)
    ['America/New_York', '21:00', '08:00', '2026-07-01T16:00:00Z', null], // noon: outside
    ['UTC', '13:00', '15:00', '2026-07-01T14:59:00Z', '2026-07-01T15:00:00Z'], // a daytime window
    ['UTC', '23:30', '00:30', '2026-07-01T23:45:00Z', '2026-07-02T00:30:00Z'], // across midnight
    ['UTC', '23:30', '00:30', '2026-07-02T00:15:00Z', '2026-07-02T00:30:00Z'],
    ['UTC', '23:30', '00:30', '2026-07-02T00:30:00Z', null],
  ];
  it.each(cases)('%s %s–%s at %s ends at %s', (zone, start, end, at, expected) => {
    const until = quietUntil(Date.parse(at), { start, end }, zone);
    expect(until === null ? null : new Date(until).toISOString().replace('.000Z', 'Z')).toBe(expected);
  });
});

describe('release times in reasons', () => {
  it('give seconds when the time is not on a whole minute (a 20 s window), in the user\'s zone', () => {
    expect(localTime(Date.parse('2026-03-01T10:00:00Z'), 'Europe/Berlin')).toBe('11:00 Europe/Berlin');
    expect(localTime(Date.parse('2026-03-01T10:00:20.500Z'), 'Europe/Berlin')).toBe('11:00:20 Europe/Berlin');
  });

  it('give the date when it is another day than the decision\'s, in the user\'s zone', () => {
    const decided = Date.parse('2026-12-03T22:43:00Z'); // 23:43 in Berlin
    expect(localTime(Date.parse('2026-12-03T22:50:00Z'), 'Europe/Berlin', decided)).toBe('23:50 Europe/Berlin');
    expect(localTime(Date.parse('2026-12-03T23:10:00Z'), 'Europe/Berlin', decided)).toBe('00:10 Europe/Berlin on 2026-12-04');
    expect(localTime(Date.parse('2026-12-04T21:00:00Z'), 'Europe/Berlin', decided)).toBe('22:00 Europe/Berlin on 2026-12-04');
    // The same instants in UTC are still the 3rd.
    expect(localTime(Date.parse('2026-12-03T23:10:00Z'), 'UTC', decided)).toBe('23:10 UTC');
  });
});
