/**
 * ingest: validated domain events (decoding and schema validation happen in the
 * runtime's decode phase) -> one NotificationRequest per (rule, recipient). Recipients
 * are the event's explicit list and/or the members of its audience, read from the
 * audiences.v1 table (streamed by a prefix scan, so a 10k-member audience never sits in
 * one message). Unknown event types, events without recipients and undecodable events
 * are REJECTED where an id can be derived, and dead-lettered.
 */
import { audienceKey, userKey } from '../topology.ts';
import { HeraldError } from '../errors.ts';
import type { RecordRef, StageContext, StageFactory } from '../runtime/contract.ts';
import type { ReasonCode } from '../schemas/lifecycle.ts';
import type { AudienceMember, NotificationRequest } from '../schemas/types.ts';
import { notificationId, traceIdFor } from './ids.ts';
import { idRefusal } from '../runtime/codec.ts';

export type { AudienceMember };

export { audienceKey };

const REASONS: Record<string, ReasonCode> = {
  HRL_SCHEMA_VIOLATION: 'schema_violation',
  HRL_PAYLOAD_TOO_LARGE: 'payload_too_large',
  HRL_DECODE_FAILED: 'undecodable',
};

/** REJECTED decisions for an event that never reached the rules: one per recipient we can read. */
function rejectOutcomes(ctx: StageContext<'ingest'>, rec: RecordRef, ev: { id: string; tenant: string; type: string; recipients: string[]; traceId?: string | null }, reasonCode: ReasonCode, reason: string) {
  const traceId = ev.traceId ?? traceIdFor(ev.tenant, ev.id);
  for (const recipient of ev.recipients.length ? ev.recipients : ['']) {
    ctx.outcome(rec, {
      notificationId: notificationId(ev.tenant, ev.id, recipient, ''), tenant: ev.tenant, recipient, eventId: ev.id, eventType: ev.type,
      status: 'REJECTED', reasonCode, reason, traceId,
    });
  }
}

export const ingest: StageFactory<'ingest'> = ({ rules, tables, config }) => ({
  rejected(rec, error, ctx) {
    // Derive what we can from the raw JSON; Avro that failed to decode has no readable id.
    let raw: Record<string, unknown>;
    try {
      raw = JSON.parse(rec.raw?.toString('utf8') ?? '') as Record<string, unknown>;
    } catch {
      return;
    }
    // Only text that can name a notification: a lone surrogate (which JSON's \\ud800 escape
    // yields) cannot be part of a key, so such an id, tenant or recipient is not derived from.
    const usable = (v: unknown): v is string => typeof v === 'string' && v !== '' && v.isWellFormed();
    if (!usable(raw?.id) || !usable(raw.tenant)) return;
    const recipients = Array.isArray(raw.recipients) ? [...new Set(raw.recipients.filter(usable))] : [];
    rejectOutcomes(ctx, rec, { id: raw.id, tenant: raw.tenant, type: typeof raw.type === 'string' ? raw.type : '', recipients }, REASONS[error.code ?? ''] ?? 'invalid_event', error.message);
  },

  async process(batch, ctx) {
    for (const rec of batch) {
      const ev = rec.value;
      const traceId = ev.traceId ?? traceIdFor(ev.tenant, ev.id);
      const reject = (recipients: string[], code: 'HRL_UNKNOWN_EVENT_TYPE' | 'HRL_NO_RECIPIENTS' | 'HRL_LIMIT_EXCEEDED', reasonCode: ReasonCode, reason: string, field: string) => {
        rejectOutcomes(ctx, rec, { ...ev, recipients }, reasonCode, reason);
        ctx.deadLetter(rec, new HeraldError(code, reason, { field }));
      };
      const explicit = [...new Set(ev.recipients)];
      const matched = rules.forEventType(ev.type);
      if (matched.length === 0) {
        reject(explicit, 'HRL_UNKNOWN_EVENT_TYPE', 'unknown_event_type', `type: no rule matches event type "${ev.type}" (rules file ${rules.source})`, 'type');
        continue;
      }
      // A blank recipient, or one with control characters: the event is refused, and the
      // other recipients' notifications are recorded REJECTED, naming the bad one.
      const blank = explicit.findIndex((r) => idRefusal(r) !== null);
      if (blank >= 0) {
        const why = explicit[blank]!.trim() === '' ? 'expected a non-empty user id' : idRefusal(explicit[blank]!)!;
        reject(explicit.filter((r) => idRefusal(r) === null), 'HRL_NO_RECIPIENTS', 'invalid_recipient', `recipients[${blank}]: ${why}`, `recipients[${blank}]`);
        continue;
      }
      const recipients = new Set(explicit);
      // Each recipient becomes one request per rule: past the limit, stop reading members (bounded memory).
      const most = Math.floor(config.maxFanout / matched.length);
      if (ev.audience) {
        const before = recipients.size;
        // Members added just before the publish may still be on their way to this process.
        await tables.catchUp?.(['audiences'], rec.timestamp);
        for await (const [, m] of tables.scan<AudienceMember>('audiences', audienceKey(ev.tenant, ev.audience))) {
          if (m.tenant === ev.tenant && m.audience === ev.audience) recipients.add(m.userId);
          if (recipients.size > most) break;
        }
        if (recipients.size === before && explicit.length === 0) {
          reject([], 'HRL_NO_RECIPIENTS', 'empty_audience', `audience: audience "${ev.audience}" of tenant "${ev.tenant}" has no members`, 'audience');
          continue;
        }
      }
      if (recipients.size > most) {
        reject([], 'HRL_LIMIT_EXCEEDED', 'fanout_too_large', `${ev.audience ? 'audience' : 'recipients'}: the event would notify more than ${most} users (${matched.length} rule(s), HERALD_MAX_FANOUT ${config.maxFanout}); split it`, ev.audience ? 'audience' : 'recipients');
        continue;
      }
      if (recipients.size === 0) {
        reject([], 'HRL_NO_RECIPIENTS', 'no_recipients', 'recipients: expected at least one recipient id (or an audience)', 'recipients');
        continue;
      }
      const occurredAt = ev.occurredAt ?? rec.timestamp;
      const n = recipients.size;
      for (const rule of matched) {
        let i = 0;
        for (const recipient of recipients) {
          i++;
          const request: NotificationRequest = {
            notificationId: notificationId(ev.tenant, ev.id, recipient, rule.id),
            tenant: ev.tenant, eventId: ev.id, eventType: ev.type, ruleId: rule.id, recipient,
            category: rule.category, priority: rule.priority, data: ev.data,
            idempotencyKey: ev.idempotencyKey, actor: ev.actor, occurredAt,
            expiresAt: ev.expiresAt ?? (rule.expiresInMs !== null ? occurredAt + rule.expiresInMs : null),
            traceId, digestOf: [],
          };
          ctx.emit(rec, 'requests', userKey(ev.tenant, recipient), request);
          ctx.outcome(rec, {
            notificationId: request.notificationId, tenant: ev.tenant, recipient, eventId: ev.id, eventType: ev.type, ruleId: rule.id,
            status: 'ACCEPTED', reasonCode: 'rule_matched',
            reason: `event ${ev.type} matched rule ${rule.id}; recipient ${i} of ${n}${ev.audience ? ` (audience ${ev.audience})` : ''}`, traceId,
          });
        }
      }
    }
  },
});
