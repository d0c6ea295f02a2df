/**
 * ingest: validated domain events (decoding and schema validation happen in the
 * runtime's decode phase) -> one NotificationRequest per (rule, recipient).
 * Unknown event types and events without recipients are REJECTED and dead-lettered.
 */
import { HeraldError } from '../errors.ts';
import type { DomainEvent } from '../runtime/codec.ts';
import type { InRecord, StageFactory } from './contract.ts';
import { notificationId, traceIdFor } from './ids.ts';
import type { NotificationRequest } from './types.ts';

export const ingest: StageFactory = ({ rules }) => ({
  async process(batch, ctx) {
    for (const rec of batch as InRecord<DomainEvent>[]) {
      const ev = rec.value;
      const traceId = ev.traceId ?? traceIdFor(ev.tenant, ev.id);
      const recipients = [...new Set(ev.recipients)];
      const reject = (code: 'HRL_UNKNOWN_EVENT_TYPE' | 'HRL_NO_RECIPIENTS', reasonCode: string, reason: string, field: string) => {
        for (const recipient of recipients.length ? recipients : ['']) {
          ctx.outcome(rec, {
            notificationId: notificationId(ev.tenant, ev.id, recipient, ''), tenant: ev.tenant, recipient, eventId: ev.id, eventType: ev.type,
            status: 'REJECTED', terminal: true, reasonCode, reason, traceId,
          });
        }
        ctx.deadLetter(rec, new HeraldError(code, reason, { field }));
      };
      const matched = rules.forEventType(ev.type);
      if (matched.length === 0) {
        reject('HRL_UNKNOWN_EVENT_TYPE', 'unknown_event_type', `type: no rule matches event type "${ev.type}" (rules file ${rules.source})`, 'type');
        continue;
      }
      if (recipients.length === 0) {
        const why = ev.audience
          ? `audience: audience "${ev.audience}" cannot be resolved yet; list recipients explicitly`
          : 'recipients: expected at least one recipient id (or an audience)';
        reject('HRL_NO_RECIPIENTS', 'no_recipients', why, ev.audience ? 'audience' : 'recipients');
        continue;
      }
      const blank = recipients.findIndex((r) => r.trim() === '');
      if (blank >= 0) {
        reject('HRL_NO_RECIPIENTS', 'invalid_recipient', `recipients[${blank}]: expected a non-empty user id`, `recipients[${blank}]`);
        continue;
      }
      const occurredAt = ev.occurredAt ?? rec.timestamp;
      for (const rule of matched) {
        recipients.forEach((recipient, i) => {
          const request: NotificationRequest = {
            notificationId: notificationId(ev.tenant, ev.id, recipient, rule.id),
            tenant: ev.tenant, eventId: ev.id, eventType: ev.type, ruleId: rule.id, recipient,
            category: rule.category, priority: rule.priority, data: ev.data,
            idempotencyKey: ev.idempotencyKey, actor: ev.actor, occurredAt,
            expiresAt: ev.expiresAt ?? (rule.expiresInMs !== null ? occurredAt + rule.expiresInMs : null),
            traceId,
          };
          ctx.emit(rec, 'requests', recipient, request);
          ctx.outcome(rec, {
            notificationId: request.notificationId, tenant: ev.tenant, recipient, eventId: ev.id, eventType: ev.type, ruleId: rule.id,
            status: 'ACCEPTED', reasonCode: 'rule_matched', reason: `event ${ev.type} matched rule ${rule.id}; recipient ${i + 1} of ${recipients.length}`, traceId,
          });
        });
      }
    }
  },
});
