/** The lifecycle fields every decision about a notification request carries. */
import type { NotificationRequest } from '../schemas/types.ts';

export function about(r: NotificationRequest): { notificationId: string; tenant: string; recipient: string; eventId: string; eventType: string; ruleId: string; traceId: string } {
  return { notificationId: r.notificationId, tenant: r.tenant, recipient: r.recipient, eventId: r.eventId, eventType: r.eventType, ruleId: r.ruleId, traceId: r.traceId };
}
