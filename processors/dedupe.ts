/**
 * dedupe: a notification whose dedupe key was first seen by another notification less
 * than the rule's window ago, in stream time, is SUPPRESSED_DUPLICATE. The key is the
 * event's idempotencyKey where given, else the rule's key fields, hashed with the
 * tenant and rule. A rule without `dedupe`, or an event missing a data field of the key,
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

/**
 * The dedupe key of a request under its rule, or why it has none: the rule sets no key
 * fields, or a data field of the key is missing from the event.
 */
export function dedupeKey(req: NotificationRequest, rule: Rule | undefined): string | { none: string } {
  if (req.idempotencyKey) return `idem:${hashKey([req.tenant, req.ruleId, req.recipient, req.idempotencyKey])}`;
  if (!rule?.dedupe) return { none: `rule ${req.ruleId} sets no dedupe key and the event has no idempotencyKey` };
  const data = JSON.parse(req.data) as Record<string, unknown>;
  const values = rule.dedupe.keyFields.map((f) => [f, field(req, data, f)] as const);
  const missing = values.filter(([, v]) => v === MISSING).map(([f]) => f);
  if (missing.length) return { none: `the event has no ${missing.join(', ')}, a field of rule ${req.ruleId}'s dedupe key, and no idempotencyKey` };
  return `fld:${hashKey([req.tenant, req.ruleId, ...values.map(([f, v]) => `${f}=${v}`)])}`;
}

/** The dedupe key in words: its fields and their values (each clipped), or the idempotency key. */
export function keyText(req: NotificationRequest, rule: Rule | undefined): string {
  const clip = (v: string) => (v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (req.idempotencyKey) return `idempotency key ${clip(req.idempotencyKey)}`;
  const data = JSON.parse(req.data) as Record<string, unknown>;
  return (rule?.dedupe?.keyFields ?? []).map((f) => {
    const v = field(req, data, f);
    if (v === MISSING) return `${f} missing`;
    return f === 'recipient' || f === 'eventType' ? f : `${f}=${clip(v.startsWith('"') ? (JSON.parse(v) as string) : v)}`;
  }).join(', ');
}

/** How long a key is remembered: the rule's window (an idempotencyKey under a rule without one: 24 h). */
function windowOf(rules: RuleSet, ruleId: string): number {
  return rules.byId(ruleId)?.dedupe?.windowMs ?? 86_400_000;
}

export const dedupe: StageFactory<'dedupe'> = ({ rules, config }) => ({
  async process(batch, ctx) {
    const seen = ctx.store('seen');
    const recs = batch;
    const keys = recs.map((r) => dedupeKey(r.value.request, rules.byId(r.value.request.ruleId)));
    const keyed = keys.filter((k): k is string => typeof k === 'string');
    const got = await seen.getMany<SeenEntry>(keyed);
    const stored = new Map(keyed.map((k, j) => [k, got[j]]));
    const local = new Map<string, SeenEntry>();
    recs.forEach((rec, i) => {
      const req = rec.value.request;
      const key = keys[i]!;
      if (typeof key !== 'string') {
        ctx.emit(rec, 'deduped', userKey(req.tenant, req.recipient), rec.value);
        ctx.outcome(rec, { ...about(req), status: 'UNIQUE', reasonCode: 'not_deduplicated', reason: `${key.none}: not deduplicated` });
        return;
      }
      const prior = local.get(key) ?? stored.get(key);
      const now = rec.timestamp; // stream time
      const replay = prior?.notificationId === req.notificationId;
      // Records reach dedupe from several events.v1 partitions, so stream time is not
      // monotonic here: a record older than the first one seen is a duplicate too.
      const inWindow = prior !== undefined && Math.abs(now - prior.firstSeenAt) < prior.expiresAt - prior.firstSeenAt;
      if (prior && !replay && inWindow) {
        ctx.outcome(rec, {
          ...about(req), status: 'SUPPRESSED_DUPLICATE', reasonCode: req.idempotencyKey ? 'duplicate_idempotency_key' : 'duplicate_key',
          reason: `same dedupe key (${keyText(req, rules.byId(req.ruleId))}) as ${prior.notificationId}, seen ${duration(now - prior.firstSeenAt)} ${now >= prior.firstSeenAt ? 'earlier' : 'later'} (${new Date(prior.firstSeenAt).toISOString()}); window ${duration(prior.expiresAt - prior.firstSeenAt)}`,
        });
        return;
      }
      if (!replay) {
        const entry: SeenEntry = { notificationId: req.notificationId, firstSeenAt: now, expiresAt: now + windowOf(rules, req.ruleId) };
        local.set(key, entry);
        seen.putUntil(key, entry, entry.expiresAt);
      }
      const [reasonCode, reason] = (replay
        ? ['replayed', 'same notification seen again (redelivery or replay); passed through']
        : prior
          ? ['window_expired', `key last seen ${new Date(prior.firstSeenAt).toISOString()}, outside the window`]
          : ['first_seen', 'dedupe key not seen inside the window']) satisfies [ReasonCode, string];
      ctx.emit(rec, 'deduped', userKey(req.tenant, req.recipient), rec.value);
      ctx.outcome(rec, { ...about(req), status: 'UNIQUE', reasonCode, reason });
    });
    // Keys whose window closed more than a grace period ago in stream time are swept by a
    // range scan of the time index. The grace keeps them for late, out-of-order records and
    // for a batch replayed after a crash, so both decide as the first run did.
    await seen.expire(recs.reduce((max, r) => Math.max(max, r.timestamp), Number.NEGATIVE_INFINITY) - config.dedupeGraceMs);
  },
});
