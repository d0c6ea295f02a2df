/**
 * dedupe: a notification whose dedupe key was first seen by another notification less
 * than the rule's window ago, in stream time, is SUPPRESSED_DUPLICATE. The keys are the
 * rule's key fields and, where the event has one, its idempotencyKey (either repeated is a
 * duplicate), each hashed with the tenant and rule. A rule without `dedupe`, or an event missing a data field of the key,
 * has no key: the notification passes unchecked (UNIQUE, not_deduplicated). A platform
 * dedupes only what it was told to, and all the events lacking a field must not count as one. A record of the same
 * notification seen again (a replay) passes, so reprocessing is idempotent. Each key is
 * stored until its window closes and then swept by a range scan over the store's time index.
 */
import { userKey } from '../topology.ts';
import type { Rule, RuleSet } from '../rules/rules.ts';
import type { StageFactory } from '../runtime/contract.ts';
import type { ReasonCode } from '../schemas/lifecycle.ts';
import type { NotificationRequest } from '../schemas/types.ts';
import { about, duration } from './about.ts';
import { hashKey } from './ids.ts';

export interface SeenEntry {
  notificationId: string;
  firstSeenAt: number;
  expiresAt: number;
}

export function field(req: NotificationRequest, data: Record<string, unknown>, path: string): string {
  if (path.startsWith('data.')) {
    let v: unknown = data;
    for (const part of path.slice(5).split('.')) v = v && typeof v === 'object' ? (v as Record<string, unknown>)[part] : undefined;
    return v === undefined ? '\u0001missing' : JSON.stringify(v);
  }
  return String(Object.entries(req).find(([k]) => k === path)?.[1] ?? '');
}

const MISSING = '\u0001missing';

/** One key a notification is deduplicated on, and how the reasons name it. */
interface DedupeKey { key: string; kind: 'idempotency' | 'fields'; text: string }

const clip = (v: string) => (v.length > 40 ? `${v.slice(0, 40)}…` : v);

/**
 * The keys a request is deduplicated on under its rule: the rule's key fields, and the
 * event's own idempotencyKey where it has one (a repeat of either inside the window is a
 * duplicate: an idempotency key never switches the rule's dedupe off). None, and why, when
 * the rule sets no key fields (or the event lacks one of them) and there is no idempotencyKey.
 */
export function dedupeKeys(req: NotificationRequest, rule: Rule | undefined): DedupeKey[] | { none: string } {
  const keys: DedupeKey[] = [];
  let missing: string[] = [];
  if (rule?.dedupe) {
    const data = JSON.parse(req.data) as Record<string, unknown>;
    const values = rule.dedupe.keyFields.map((f) => [f, field(req, data, f)] as const);
    missing = values.filter(([, v]) => v === MISSING).map(([f]) => f);
    if (!missing.length) {
      const text = values.map(([f, v]) => (f === 'recipient' || f === 'eventType' ? f : `${f}=${clip(v.startsWith('"') ? (JSON.parse(v) as string) : v)}`)).join(', ');
      keys.push({ key: `fld:${hashKey([req.tenant, req.ruleId, ...values.map(([f, v]) => `${f}=${v}`)])}`, kind: 'fields', text });
    }
  }
  // The idempotency key first: a repeat of it is named as such, the more specific reason.
  if (req.idempotencyKey) keys.unshift({ key: `idem:${hashKey([req.tenant, req.ruleId, req.recipient, req.idempotencyKey])}`, kind: 'idempotency', text: `idempotency key ${clip(req.idempotencyKey)}` });
  if (keys.length) return keys;
  return { none: rule?.dedupe ? `the event has no ${missing.join(', ')}, a field of rule ${req.ruleId}'s dedupe key, and no idempotencyKey` : `rule ${req.ruleId} sets no dedupe key and the event has no idempotencyKey` };
}

/** How long a key is remembered: the rule's window (an idempotencyKey under a rule without one: 24 h). */
function windowOf(rules: RuleSet, ruleId: string): number {
  return rules.byId(ruleId)?.dedupe?.windowMs ?? 86_400_000;
}

export const dedupe: StageFactory<'dedupe'> = ({ rules, config }) => ({
  async process(batch, ctx) {
    const seen = ctx.store('seen');
    const recs = batch;
    const keysOf = recs.map((r) => dedupeKeys(r.value.request, rules.byId(r.value.request.ruleId)));
    const keyed = [...new Set(keysOf.flatMap((k) => ('none' in k ? [] : k.map((x) => x.key))))];
    const got = await seen.getMany<SeenEntry>(keyed);
    const stored = new Map(keyed.map((k, j) => [k, got[j]]));
    const local = new Map<string, SeenEntry>();
    recs.forEach((rec, i) => {
      const req = rec.value.request;
      const keys = keysOf[i]!;
      if ('none' in keys) {
        ctx.emit(rec, 'deduped', userKey(req.tenant, req.recipient), rec.value);
        ctx.outcome(rec, { ...about(req), status: 'UNIQUE', reasonCode: 'not_deduplicated', reason: `${keys.none}: not deduplicated` });
        return;
      }
      const now = rec.timestamp; // stream time
      // Records reach dedupe from several events.v1 partitions, so stream time is not
      // monotonic here: a record older than the first one seen is a duplicate too.
      const inWindow = (p: SeenEntry) => Math.abs(now - p.firstSeenAt) < p.expiresAt - p.firstSeenAt;
      const priors = keys.map((k) => ({ k, prior: local.get(k.key) ?? stored.get(k.key) }));
      // The same notification seen again (a replay) is never its own duplicate.
      const dup = priors.find(({ prior }) => prior !== undefined && prior.notificationId !== req.notificationId && inWindow(prior));
      if (dup) {
        const prior = dup.prior!;
        ctx.outcome(rec, {
          ...about(req), status: 'SUPPRESSED_DUPLICATE', reasonCode: dup.k.kind === 'idempotency' ? 'duplicate_idempotency_key' : 'duplicate_key',
          reason: `same dedupe key (${dup.k.text}) as ${prior.notificationId}, first seen ${duration(now - prior.firstSeenAt)} ${now >= prior.firstSeenAt ? 'earlier' : 'later'} (${new Date(prior.firstSeenAt).toISOString()}); window ${duration(prior.expiresAt - prior.firstSeenAt)}, open until ${new Date(prior.expiresAt).toISOString()} (suppressed repeats do not extend it)`,
        });
        return;
      }
      for (const { k, prior } of priors) {
        if (prior?.notificationId === req.notificationId) continue;
        // A record older than the key's window (out of order by more than it) is new, but the
        // key keeps the later window: stream time goes on from there, and one taken back
        // would let a real repeat of the later one through.
        if (prior && prior.firstSeenAt > now) continue;
        const entry: SeenEntry = { notificationId: req.notificationId, firstSeenAt: now, expiresAt: now + windowOf(rules, req.ruleId) };
        local.set(k.key, entry);
        seen.putUntil(k.key, entry, entry.expiresAt);
      }
      const replay = priors.every(({ prior }) => prior?.notificationId === req.notificationId);
      const expired = priors.find(({ prior }) => prior !== undefined && prior.notificationId !== req.notificationId);
      // Named only when the event brought one: the rule's key alone reads as it always did.
      const also = keys.length > 1 ? ` (${keys.map((k) => k.text).join('; ')})` : keys[0]!.kind === 'idempotency' ? ` (${keys[0]!.text})` : '';
      const [reasonCode, reason] = (replay
        ? ['replayed', 'same notification seen again (redelivery or replay); passed through']
        : expired
          ? ['window_expired', `key first seen ${new Date(expired.prior!.firstSeenAt).toISOString()} by ${expired.prior!.notificationId}; its ${duration(expired.prior!.expiresAt - expired.prior!.firstSeenAt)} window closed at ${new Date(expired.prior!.expiresAt).toISOString()}, ${now >= expired.prior!.expiresAt ? `${duration(now - expired.prior!.expiresAt)} before this one's time` : `and this one is stamped ${duration(expired.prior!.firstSeenAt - now)} before that first one, outside its window`}${also}`]
          : ['first_seen', `dedupe key not seen inside the window${also}`]) satisfies [ReasonCode, string];
      ctx.emit(rec, 'deduped', userKey(req.tenant, req.recipient), rec.value);
      ctx.outcome(rec, { ...about(req), status: 'UNIQUE', reasonCode, reason });
    });
    // Keys whose window closed more than a grace period ago in stream time are swept by a
    // range scan of the time index. The grace keeps them for late, out-of-order records and
    // for a batch replayed after a crash, so both decide as the first run did. Never past the
    // wall clock: one record stamped in the future (a producer's clock, a hand-set timestamp)
    // would otherwise sweep every key of the partition, and their repeats would be sent.
    await seen.expire(Math.min(ctx.wallClock(), recs.reduce((max, r) => Math.max(max, r.timestamp), Number.NEGATIVE_INFINITY)) - config.dedupeGraceMs);
  },
});
