/** The lifecycle fields every decision about a notification request carries. */
import type { NotificationRequest } from '../schemas/types.ts';

export function about(r: NotificationRequest): { notificationId: string; tenant: string; recipient: string; eventId: string; eventType: string; ruleId: string; traceId: string } {
  return { notificationId: r.notificationId, tenant: r.tenant, recipient: r.recipient, eventId: r.eventId, eventType: r.eventType, ruleId: r.ruleId, traceId: r.traceId };
}

/** Time between two steps, as a person reads it: 40 ms, 1.2 s, 1 min 41 s, 12 min, 2 h 5 min, 24 h, 3 d 2 h. */
export function duration(ms: number): string {
  const a = Math.abs(ms);
  if (a < 999.5) return `${Math.round(a)} ms`;
  if (a < 59_950) return `${(a / 1000).toFixed(1)} s`;
  // Under ten minutes the seconds matter: "2 min" for 101 s hid whether a repeat was inside a 2 min window.
  if (a < 600_000) {
    const s = Math.round(a / 1000);
    return `${Math.floor(s / 60)} min${s % 60 ? ` ${s % 60} s` : ''}`;
  }
  // Rounded to the unit shown first, then split (a ms short of 24 h is "24 h", not "23 h 60 min").
  const minutes = Math.round(a / 60_000);
  if (minutes < 60) return `${minutes} min`;
  if (minutes < 48 * 60) return `${Math.floor(minutes / 60)} h${minutes % 60 ? ` ${minutes % 60} min` : ''}`;
  const hours = Math.round(a / 3_600_000);
  return `${Math.floor(hours / 24)} d${hours % 24 ? ` ${hours % 24} h` : ''}`;
}

