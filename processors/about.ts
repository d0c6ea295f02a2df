/** The lifecycle fields every decision about a notification request carries. */
import type { NotificationRequest } from '../schemas/types.ts';

export function about(r: NotificationRequest): { notificationId: string; tenant: string; recipient: string; eventId: string; eventType: string; ruleId: string; traceId: string } {
  return { notificationId: r.notificationId, tenant: r.tenant, recipient: r.recipient, eventId: r.eventId, eventType: r.eventType, ruleId: r.ruleId, traceId: r.traceId };
}

/** Time between two steps, as a person reads it: 40 ms, 1.2 s, 3 min, 2 h 5 min, 24 h, 3 d 2 h. */
export function duration(ms: number): string {
  const a = Math.abs(ms);
  if (a < 1000) return `${Math.round(a)} ms`;
  if (a < 60_000) return `${(a / 1000).toFixed(1)} s`;
  if (a < 3_600_000) return `${Math.round(a / 60_000)} min`;
  if (a < 2 * 86_400_000) return `${Math.floor(a / 3_600_000)} h${Math.round((a % 3_600_000) / 60_000) ? ` ${Math.round((a % 3_600_000) / 60_000)} min` : ''}`;
  return `${Math.floor(a / 86_400_000)} d${Math.round((a % 86_400_000) / 3_600_000) ? ` ${Math.round((a % 86_400_000) / 3_600_000)} h` : ''}`;
}

