/**
 * throttle: per-user rate limits, quiet hours and digests, on the stage's keyed state.
 * One user's notifications all live in one partition (topics are keyed <tenant>/<user>),
 * so the counts are exact, across every rule (`user` scope), per category or per rule.
 *
 * - Windows slide over stream time: the `counters` store keeps, per scope, the admission
 *   times inside the longest window, so a replay decides the same.
 * - Over a limit, the rule's `onExceed` decides: `defer` holds the notification until the
 *   window has room (oldest first), `digest` collects it by digest key for the digest's
 *   window (or until maxItems) and then sends ONE notification listing the items, `drop`
 *   ends it THROTTLED.
 * - Quiet hours (the user's preferences, read in the profile's time zone) defer
 *   non-critical notifications to the end of the window. CRITICAL bypasses both.
 * - Held notifications and open digests sit in the `held` store, indexed by release time;
 *   a wall-clock timer releases what is due. A held item whose expiry passes is EXPIRED.
 */
import type { Limit, Rule, RuleSet } from '../rules/rules.ts';
import { recordRef, type RecordRef, type StageContext, type StageFactory } from '../runtime/contract.ts';
import type { Metrics } from '../runtime/metrics.ts';
import type { EnrichedNotification, NotificationRequest } from '../schemas/types.ts';
import type { StoreView } from '../state/store.ts';
import { userKey } from '../topology.ts';
import { about } from './about.ts';
import { field } from './dedupe.ts';
import { hashKey } from './ids.ts';
import { localTime, quietUntil } from './quiet-hours.ts';

/**
 * A deferred notification, held until `dueAt`. `deferrals` numbers its DEFERRED/RELEASED pairs.
 * `reservedAt`: the release time it holds a place at in its scopes' queues (deferred over a
 * limit; absent when held for quiet hours, or written by an older version).
 */
interface Deferred { kind: 'deferred'; item: EnrichedNotification; cause: RecordRef; deferrals: number; reservedAt?: number }
/** An open digest: its items, sent at `closesAt` or when full. */
interface Digest { kind: 'digest'; digestId: string; ruleId: string; openedAt: number; closesAt: number; items: { item: EnrichedNotification; cause: RecordRef }[] }
type Held = Deferred | Digest;

const RELEASE_LIMIT = 500;

function scopeKey(limit: Limit, req: NotificationRequest): string {
  const user = userKey(req.tenant, req.recipient);
  return limit.scope === 'user' ? `u|${user}` : limit.scope === 'category' ? `c|${user}|${req.category}` : `r|${user}|${req.ruleId}`;
}

/**
 * The release times reserved in a scope by the notifications held over its limit, oldest
 * first: the places they hold in the queue. Fresh notifications count them as admissions to
 * come, so they neither take the room a held one was promised nor get promised a release
 * time that those waiting ahead will take.
 */
const waitKey = (scope: string) => `w|${scope}`;

const scopeName = (limit: Limit, req: NotificationRequest) => (limit.scope === 'user' ? 'notifications' : limit.scope === 'category' ? `${req.category} notifications` : `notifications of rule ${req.ruleId}`);
const ago = (ms: number) => (ms % 86_400_000 === 0 ? `${ms / 86_400_000} d` : ms % 3_600_000 === 0 ? `${ms / 3_600_000} h` : ms % 60_000 === 0 ? `${ms / 60_000} min` : `${ms / 1000} s`);
const utc = (t: number) => new Date(t).toISOString().replace('.000Z', 'Z');

/** `count`: admissions in the busiest window holding `t`, `later` of them stamped after `t` (a record read after a later one of the same user). */
interface Verdict { over: { limit: Limit; count: number; later: number; waiting: number } | null; roomAt: number; counts: string[] }

/**
 * The counters store with a read-through cache for one batch or timer run: a batch's keys
 * are read in one `getMany` up front (sequential per-record reads were most of the stage's
 * time), and later reads in the same run see the run's own writes.
 */
class Counters {
  private readonly cache = new Map<string, unknown>();
  readonly store: StoreView;
  /**
   * How many scopes of the partition have notifications held in their queue (`w|` keys),
   * counted when the partition opens and kept since (it may only run high: a queue that
   * expires unseen): while none has, no queue is read (most batches of most users).
   */
  readonly queues: { keys: number | undefined };

  constructor(store: StoreView, queues: { keys: number | undefined }) {
    this.store = store;
    this.queues = queues;
  }

  /** The queues of `keys` (`w|` keys): nothing read while the partition has none. */
  async waits(keys: string[]): Promise<(number[] | undefined)[]> {
    return this.queues.keys === 0 ? keys.map(() => undefined) : this.getMany<number[]>(keys);
  }

  async load(keys: string[]): Promise<void> {
    const missing = [...new Set(keys)].filter((k) => !this.cache.has(k));
    if (!missing.length) return;
    const values = await this.store.getMany(missing);
    missing.forEach((k, i) => this.cache.set(k, values[i]));
  }

  async getMany<T>(keys: string[]): Promise<(T | undefined)[]> {
    await this.load(keys);
    return keys.map((k) => this.cache.get(k) as T | undefined);
  }

  putUntil(key: string, value: unknown, expiresAt: number): void {
    this.cache.set(key, value);
    this.store.putUntil(key, value, expiresAt);
  }

  delete(key: string): void {
    this.cache.set(key, undefined);
    this.store.delete(key);
  }
}

/**
 * The limits a notification is subject to, checked at time `t` against the admission times
 * in `counters` and the release times reserved by the notifications held in the same scopes.
 * Over a limit (or with others waiting so that admitting it now would take their room),
 * `roomAt` is the earliest time at which it fits behind all of them: the admissions and
 * reservations inside the window slide out, and none of those waiting is overtaken.
 * `reservedAt`: the place of a held notification coming back, whose own reservation is
 * already given up; only those reserved no later than it are ahead.
 */
async function check(rules: RuleSet, rule: Rule, req: NotificationRequest, t: number, counters: Counters, reservedAt?: number): Promise<Verdict> {
  const limits = rules.limitsFor(rule);
  if (limits.length === 0) return { over: null, roomAt: t, counts: [] };
  const scopes = limits.map((l) => scopeKey(l, req));
  const [times, waits] = await Promise.all([counters.getMany<number[]>(scopes), counters.waits(scopes.map(waitKey))]);
  const counts: string[] = [];
  const scoped = limits.map((limit, i) => {
    const admitted = (times[i] ?? []).filter((x) => x > t - limit.perMs);
    // A held one coming back goes before those queued behind it (their times counted on it).
    const waiting = (waits[i] ?? []).filter((x) => reservedAt === undefined || x <= reservedAt);
    const inWindow = admitted.filter((x) => x <= t).length;
    counts.push(`${inWindow + 1} of ${limit.max} per ${ago(limit.perMs)} (${limit.scope})`);
    // What the windows holding `t` or a later time hold: the admissions (a release decided at
    // its due time can come after later ones) and the releases promised to those ahead.
    const taken = [...admitted, ...waiting.filter((x) => x > t - limit.perMs)].sort((a, b) => a - b);
    return { limit, taken, inWindow, waiting, admitted };
  });
  // Never before the last one waiting ahead; then the first time at which every window that
  // would hold it has room: `t`, or when one of those taken leaves a window.
  const base = Math.max(t, ...scoped.map((s) => s.waiting.at(-1) ?? t));
  const candidates = [...new Set([base, ...scoped.flatMap((s) => s.taken.map((x) => x + s.limit.perMs))])].filter((c) => c >= base).sort((a, b) => a - b);
  const roomAt = candidates.find((r) => scoped.every((s) => fits(s.taken, r, s.limit))) ?? candidates.at(-1)!;
  // Named in the reason: a limit that is full, else one with others waiting to go first.
  const first = scoped.find((s) => !fits(s.taken, t, s.limit)) ?? scoped.find((s) => s.waiting.some((x) => x > t)) ?? scoped[0]!;
  if (roomAt <= t) return { over: null, roomAt, counts };
  const { count: busiestCount, later } = busiest(first.admitted, t, first.limit);
  return { over: { limit: first.limit, count: Math.max(first.inWindow, busiestCount), later: busiestCount > first.inWindow ? later : 0, waiting: first.waiting.length }, roomAt, counts };
}

/**
 * The most admissions (sorted) in one window of `limit` that holds `t`, and how many of those
 * came after `t`: records are read in the order they reach the partition, and one stamped
 * later can take the room first.
 */
function busiest(admitted: number[], t: number, limit: Limit): { count: number; later: number } {
  let best = { count: 0, later: 0 };
  for (const end of [t, ...admitted.filter((x) => x > t && x < t + limit.perMs)]) {
    const inside = admitted.filter((x) => x > end - limit.perMs && x <= end);
    if (inside.length > best.count) best = { count: inside.length, later: inside.filter((x) => x > t).length };
  }
  return best;
}

/**
 * Whether one more at `r` keeps every sliding window of `limit` that would hold it (those
 * ending at `r`, and at each later time taken less than a window after it) within its max.
 * `taken` is sorted.
 */
function fits(taken: number[], r: number, limit: Limit): boolean {
  let lo = 0;
  let hi = 0;
  for (const end of [r, ...taken.filter((x) => x > r && x < r + limit.perMs)]) {
    while (hi < taken.length && taken[hi]! <= end) hi++;
    while (lo < taken.length && taken[lo]! <= end - limit.perMs) lo++;
    if (hi - lo + 1 > limit.max) return false;
  }
  return true;
}

/** Reserves release time `at` in every scope of the notification's limits (a place in their queues). */
async function reserve(rules: RuleSet, rule: Rule, req: NotificationRequest, at: number, counters: Counters): Promise<void> {
  const keys = [...new Set(rules.limitsFor(rule).map((l) => waitKey(scopeKey(l, req))))];
  const waits = await counters.waits(keys);
  keys.forEach((k, i) => {
    if (waits[i] === undefined) counters.queues.keys = (counters.queues.keys ?? 0) + 1;
    const kept = [...(waits[i] ?? []), at].sort((a, b) => a - b);
    counters.putUntil(k, kept, kept.at(-1)! + rules.longestWindowMs);
  });
}

/** Gives up a reservation made by `reserve` (the notification is back: released, held again or expired). */
async function unreserve(rules: RuleSet, rule: Rule, req: NotificationRequest, at: number, counters: Counters): Promise<void> {
  const keys = [...new Set(rules.limitsFor(rule).map((l) => waitKey(scopeKey(l, req))))];
  const waits = await counters.waits(keys);
  keys.forEach((k, i) => {
    const list = waits[i] ?? [];
    const at_ = list.indexOf(at);
    if (at_ < 0) return;
    const kept = list.filter((_, j) => j !== at_);
    if (kept.length) counters.putUntil(k, kept, kept.at(-1)! + rules.longestWindowMs);
    else {
      counters.delete(k);
      counters.queues.keys = Math.max(0, (counters.queues.keys ?? 1) - 1);
    }
  });
}

/** Records an admission at `t` in every scope the notification counts in (kept while inside the longest window). */
async function count(rules: RuleSet, rule: Rule, req: NotificationRequest, t: number, counters: Counters): Promise<void> {
  const keys = [...new Set(rules.limitsFor(rule).map((l) => scopeKey(l, req)))];
  if (keys.length === 0) return;
  const horizon = t - rules.longestWindowMs;
  const times = await counters.getMany<number[]>(keys);
  keys.forEach((k, i) => {
    const kept = [...(times[i] ?? []).filter((x) => x > horizon), t].sort((a, b) => a - b);
    counters.putUntil(k, kept, kept.at(-1)! + rules.longestWindowMs);
  });
}

/**
 * What throttle decided about a notification, so a record read again (a redelivery after a
 * crash, before its offset was committed) gets the same decision instead of counting twice.
 */
type Memo = { d: 'admitted' | 'held' | 'throttled'; at: number };
const memoKey = (notificationId: string) => `n|${notificationId}`;

export const throttle: StageFactory<'throttle'> = ({ rules, config, metrics }) => {
  /** Earliest held release this instance knows of, to skip idle timer runs. */
  let nextDue: number | undefined;
  const m = metrics as Metrics | undefined;
  const decided = (d: string) => m?.throttleDecisions.inc({ decision: d });
  // Held items of this partition (the gauge): counted once by the first timer run, then kept.
  let partition = -1;
  let heldCount: number | undefined;
  /** Scopes with queues in this partition's counters store (see Counters.queues): counted at the first batch or timer run after the partition opens. */
  const queues: { keys: number | undefined } = { keys: undefined };
  const countedQueues = async (ctx: StageContext<'throttle'>): Promise<Counters> => {
    const store = ctx.store('counters');
    if (queues.keys === undefined) {
      let n = 0;
      for await (const _ of store.prefix('w|')) n++;
      queues.keys = n;
    }
    return new Counters(store, queues);
  };
  const track = (delta: number) => {
    if (heldCount === undefined || delta === 0) return;
    heldCount += delta;
    m?.throttleHeld.set({ partition: String(partition) }, heldCount);
  };

  /** Holds a new item (`fresh`) or one already counted. */
  const hold = (held: StoreView, key: string, releaseAt: number, value: Held, fresh: boolean) => {
    // A notification that expires before its release comes back at its expiry, to be EXPIRED
    // then: not left DEFERRED, and not-yet-terminal, until the release time.
    const expiresAt = value.kind === 'deferred' ? value.item.request.expiresAt : null;
    const dueAt = expiresAt !== null ? Math.min(releaseAt, expiresAt) : releaseAt;
    held.hold(key, dueAt, value);
    if (fresh) track(1);
    if (nextDue !== undefined) nextDue = Math.min(nextDue, dueAt);
  };

  const pass = (ctx: StageContext<'throttle'>, cause: RecordRef, n: EnrichedNotification, t: number) =>
    ctx.emit(cause, 'admitted', userKey(n.request.tenant, n.request.recipient), n, { timestamp: t });

  /** Decides one notification at time `t`; `deferrals` > 0 when it is a held one coming back. */
  async function decide(ctx: StageContext<'throttle'>, counters: Counters, cause: RecordRef, n: EnrichedNotification, t: number, deferrals: number, reservedAt?: number): Promise<void> {
    const req = n.request;
    const held = ctx.store('held');
    const rule = rules.byId(req.ruleId);
    // Back from being held over a limit: its place in the queue is given up, whatever comes next.
    if (reservedAt !== undefined && rule) await unreserve(rules, rule, req, reservedAt, counters);
    const base = { ...about(req), timestamp: t };
    const memo = (d: Memo['d']) => counters.putUntil(memoKey(req.notificationId), { d, at: t } satisfies Memo, t + rules.longestWindowMs + config.dedupeGraceMs);
    if (!deferrals) {
      const [seen] = await counters.getMany<Memo>([memoKey(req.notificationId)]);
      if (seen) {
        // Decided before: the same answer again, nothing counted twice. (Held: still held.)
        if (seen.d === 'admitted') pass(ctx, cause, n, seen.at);
        if (seen.d !== 'held') ctx.outcome(cause, { ...base, timestamp: seen.at, status: seen.d === 'admitted' ? 'ADMITTED' : 'THROTTLED', reasonCode: 'replayed', reason: `decided at ${utc(seen.at)}; the same decision again` });
        return;
      }
    }
    const released = () => ctx.outcome(cause, { ...base, status: 'RELEASED', reasonCode: 'released', reason: `released at ${utc(t)}`, attempt: deferrals });
    // (A fresh notification past its expiry is left to route, which drops it.)
    if (deferrals && req.expiresAt !== null && t >= req.expiresAt) {
      decided('expired');
      ctx.outcome(cause, { ...base, status: 'EXPIRED', reasonCode: 'expired_while_held', reason: `expired at ${utc(req.expiresAt)} while held by throttle` });
      return;
    }
    if (req.priority === 'CRITICAL' || !rule) {
      if (deferrals) released();
      if (rule) await count(rules, rule, req, t, counters);
      memo('admitted');
      decided('critical_bypass');
      pass(ctx, cause, n, t);
      if (!deferrals) ctx.outcome(cause, { ...base, status: 'ADMITTED', reasonCode: rule ? 'critical_bypass' : 'no_limit', reason: rule ? 'CRITICAL: passes rate limits and quiet hours' : 'no rate limit or quiet hours apply' });
      return;
    }
    const deferKey = `d|${userKey(req.tenant, req.recipient)}|${String(req.occurredAt).padStart(15, '0')}|${req.notificationId}`;
    const defer = (until: number, reasonCode: 'quiet_hours' | 'limit_deferred', reason: string) => {
      hold(held, deferKey, until, { kind: 'deferred', item: n, cause: recordRef(cause), deferrals: deferrals + 1, ...(reasonCode === 'limit_deferred' ? { reservedAt: until } : {}) }, true);
      memo('held');
      decided(reasonCode === 'quiet_hours' ? 'quiet_hours' : 'deferred');
      ctx.outcome(cause, { ...base, status: 'DEFERRED', reasonCode, reason, attempt: deferrals + 1 });
    };
    // Quiet hours: in the user's zone, whatever the limits say.
    const quiet = n.preferences?.quietHours;
    if (quiet) {
      const zone = n.user.timezone || 'UTC';
      let until: number | null = null;
      try {
        until = quietUntil(t, quiet, zone);
      } catch {
        until = quietUntil(t, quiet, 'UTC');
      }
      if (until !== null) {
        if (deferrals) released();
        defer(until, 'quiet_hours', `deferred: quiet hours ${quiet.start}–${quiet.end} ${zone}; released at ${localTime(until, zone, t)}`);
        return;
      }
    }
    const v = await check(rules, rule, req, t, counters, reservedAt);
    if (!v.over) {
      await count(rules, rule, req, t, counters);
      memo('admitted');
      pass(ctx, cause, n, t);
      if (deferrals) {
        decided('released');
        released();
      } else {
        decided('admitted');
        const limits = rules.limitsFor(rule);
        ctx.outcome(cause, { ...base, status: 'ADMITTED', reasonCode: limits.length ? 'within_limits' : 'no_limit', reason: limits.length ? `within limits: ${v.counts.join('; ')}` : 'no rate limit or quiet hours apply' });
      }
      return;
    }
    const { limit, count: seen, later, waiting } = v.over;
    // More than the limit can be in a window: CRITICAL ones and other rules' admissions count in shared scopes.
    const span = later ? `within ${ago(limit.perMs)} of it (${later} stamped after it, admitted first)` : `in the last ${ago(limit.perMs)}`;
    const why = (seen > limit.max
      ? `${seen} ${scopeName(limit, req)} ${span}, over the limit of ${limit.max}`
      : `${seen} of ${limit.max} ${scopeName(limit, req)} ${span}`) + (waiting ? `, and ${waiting} held to go first` : '');
    if (deferrals) {
      // Came back too early (CRITICAL ones or other rules took the room): held again, quietly,
      // at the end of the queue.
      await reserve(rules, rule, req, v.roomAt, counters);
      hold(held, deferKey, v.roomAt, { kind: 'deferred', item: n, cause: recordRef(cause), deferrals, reservedAt: v.roomAt }, true);
      return;
    }
    switch (rule.throttle.onExceed) {
      case 'drop':
        memo('throttled');
        decided('dropped');
        ctx.outcome(cause, { ...base, status: 'THROTTLED', reasonCode: 'limit_dropped', reason: `throttled: ${why}; the rule drops what exceeds it` });
        return;
      case 'defer':
        await reserve(rules, rule, req, v.roomAt, counters);
        defer(v.roomAt, 'limit_deferred', `deferred: ${why}; released at ${localTime(v.roomAt, n.user.timezone || 'UTC', t)}`);
        return;
      case 'digest':
        memo('held');
        await collect(ctx, counters, cause, n, rule, t, why);
    }
  }

  async function collect(ctx: StageContext<'throttle'>, counters: Counters, cause: RecordRef, n: EnrichedNotification, rule: Rule, t: number, why: string): Promise<void> {
    const req = n.request;
    const spec = rule.throttle.digest!;
    const data = JSON.parse(req.data) as Record<string, unknown>;
    const key = `g|${hashKey([req.tenant, req.recipient, rule.id, ...spec.keyFields.map((f) => `${f}=${field(req, data, f)}`)])}`;
    const held = ctx.store('held');
    const [open] = await held.getMany<Digest>([key]);
    const digest: Digest = open ?? { kind: 'digest', digestId: `ntf_${hashKey(['digest', key, String(t)]).slice(0, 32)}`, ruleId: rule.id, openedAt: t, closesAt: t + spec.windowMs, items: [] };
    if (digest.items.some((x) => x.item.request.notificationId === req.notificationId)) return; // seen again (redelivery)
    digest.items.push({ item: n, cause: recordRef(cause) });
    decided('digest_collected');
    ctx.outcome(cause, { ...about(req), timestamp: t, status: 'DEFERRED', reasonCode: 'digest_collected', attempt: 1, reason: `collected into digest ${digest.digestId} (item ${digest.items.length}; ${why}); sent at ${localTime(digest.closesAt, n.user.timezone || 'UTC', t)} or at ${spec.maxItems} items` });
    if (digest.items.length >= spec.maxItems) {
      held.delete(key);
      if (open) track(-1);
      await send(ctx, counters, digest, rule, t);
    } else hold(held, key, digest.closesAt, digest, !open);
  }

  /** Sends an open digest as one notification; its items end DIGESTED (or EXPIRED). */
  async function send(ctx: StageContext<'throttle'>, counters: Counters, digest: Digest, rule: Rule, t: number): Promise<void> {
    const live = digest.items.filter(({ item }) => item.request.expiresAt === null || t < item.request.expiresAt);
    for (const { item, cause } of digest.items.filter((x) => !live.includes(x))) {
      decided('expired');
      ctx.outcome(cause, { ...about(item.request), timestamp: t, status: 'EXPIRED', reasonCode: 'expired_while_held', reason: `expired at ${utc(item.request.expiresAt!)} while collected in digest ${digest.digestId}` });
    }
    if (live.length === 0) return;
    const last = live.at(-1)!.item;
    const first = live[0]!.item.request;
    const items = live.map(({ item: { request: r } }) => ({ notificationId: r.notificationId, eventId: r.eventId, eventType: r.eventType, actor: r.actor, occurredAt: r.occurredAt, data: JSON.parse(r.data) as unknown }));
    const request: NotificationRequest = {
      ...first, notificationId: digest.digestId, eventId: `digest:${digest.digestId}`, data: JSON.stringify({ count: items.length, items }),
      idempotencyKey: null, occurredAt: t, expiresAt: null, digestOf: items.map((i) => i.notificationId),
    };
    const made: EnrichedNotification = { request, user: last.user, preferences: last.preferences };
    const cause = live.at(-1)!.cause;
    await count(rules, rule, request, t, counters); // the digest counts once
    (metrics as Metrics | undefined)?.digestSize.observe(items.length);
    decided('digest_emitted');
    pass(ctx, cause, made, t);
    ctx.outcome(cause, { ...about(request), timestamp: t, status: 'ADMITTED', reasonCode: 'digest_emitted', reason: `digest of ${items.length} ${first.category} notifications collected since ${utc(digest.openedAt)}` });
    for (const { item: { request: r }, cause: c } of live) {
      ctx.outcome(c, { ...about(r), timestamp: t, status: 'DIGESTED', reasonCode: 'digested', reason: `sent as item of digest ${digest.digestId} with ${items.length} items` });
    }
  }

  return {
    punctuation: { type: 'wall-clock', intervalMs: config.timerIntervalMs },

    async init(o) {
      partition = o.partition;
      queues.keys = undefined; // counted again from the stores: they may have been restored since
    },

    async close() {
      m?.throttleHeld.remove({ partition: String(partition) });
    },

    async process(batch, ctx) {
      const counters = await countedQueues(ctx);
      // One read for the batch: earlier decisions, the admission times of every scope, and their queues (if the partition has any).
      const queued = queues.keys !== 0;
      await counters.load(batch.flatMap(({ value: { request: req } }) => {
        const rule = rules.byId(req.ruleId);
        return [memoKey(req.notificationId), ...(rule ? rules.limitsFor(rule).flatMap((l) => (queued ? [scopeKey(l, req), waitKey(scopeKey(l, req))] : [scopeKey(l, req)])) : [])];
      }));
      for (const rec of batch) await decide(ctx, counters, rec, rec.value, rec.timestamp, 0);
      // Counters past the longest window and decisions past it (plus grace) are swept, in stream
      // time, never past the wall clock: one record stamped in the future would otherwise sweep
      // every counter of the partition, and users over their limits would be sent more.
      await counters.store.expire(Math.min(ctx.wallClock(), batch.reduce((max, r) => Math.max(max, r.timestamp), Number.NEGATIVE_INFINITY)));
    },

    async punctuate(ctx, { wallClock }) {
      const held = ctx.store('held');
      if (heldCount === undefined) {
        let c = 0;
        for (const prefix of ['d|', 'g|']) for await (const _ of held.prefix(prefix)) c++;
        heldCount = 0;
        track(c);
      }
      if (nextDue !== undefined && nextDue > wallClock) return;
      const due = await held.due<Held>(wallClock, RELEASE_LIMIT);
      if (due.length === 0) {
        const [next] = await held.due<Held>(Number.MAX_SAFE_INTEGER, 1);
        nextDue = next?.dueAt ?? Number.POSITIVE_INFINITY;
        return;
      }
      nextDue = undefined;
      const counters = await countedQueues(ctx);
      for (const d of due) {
        held.delete(d.key);
        track(-1);
        const h = d.value;
        // Released at its due time, so the decision does not depend on when the timer ran.
        if (h.kind === 'deferred') await decide(ctx, counters, h.cause, h.item, d.dueAt, h.deferrals, h.reservedAt);
        else {
          const rule = rules.byId(h.ruleId);
          if (rule?.throttle.digest) await send(ctx, counters, h, rule, d.dueAt);
        }
      }
    },
  };
};
