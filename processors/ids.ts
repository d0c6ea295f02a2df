/**
 * Derived ids (DESIGN section 3): replaying the same input gives the same ids, which is
 * what makes every stage idempotent downstream.
 */
import { hash } from 'node:crypto';

/** SHA-256 of the parts, each followed by a NUL, in hex (one-shot: no Hash object per id). */
function digest(parts: readonly string[], length = 32): string {
  return hash('sha256', `${parts.join('\u0000')}\u0000`, 'hex').slice(0, length);
}

/** Stable hash of (tenant, event id, recipient, rule id). */
export function notificationId(tenant: string, eventId: string, recipient: string, ruleId: string): string {
  return `ntf_${digest([tenant, eventId, recipient, ruleId])}`;
}

export function deliveryId(notificationIdValue: string, channel: string): string {
  return `${notificationIdValue}:${channel}`;
}

/** Trace id for an event that arrived without one: stable per (tenant, event id). */
export function traceIdFor(tenant: string, eventId: string): string {
  return digest(['trace', tenant, eventId]);
}

/** Event id derived from an HTTP Idempotency-Key: the same key yields the same event. */
export function eventIdFromIdempotencyKey(tenant: string, key: string): string {
  return `evt_${digest(['idempotency', tenant, key], 24)}`;
}

export { userKey } from '../topology.ts';

export function hashKey(parts: readonly string[]): string {
  return digest(parts, 40);
}
