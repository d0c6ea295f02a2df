/**
 * outcome: the lifecycle projection. Per notification, the ordered lifecycle events with
 * their reasons; per user, an index of notifications by time. Rebuildable at any time by
 * replaying outcomes.v1, so its store needs no changelog. Applying the same event twice
 * (at-least-once redelivery) changes nothing.
 */
import { userKey } from '../topology.ts';
import type { StageFactory } from '../runtime/contract.ts';
import type { LifecycleEvent } from '../schemas/types.ts';
import type { StoreView } from '../state/store.ts';

export interface NotificationView {
  notificationId: string;
  tenant: string;
  recipient: string;
  eventId: string;
  eventType: string;
  ruleId: string | null;
  traceId: string;
  /** Status of the latest event. */
  status: string;
  /** Latest status per channel, once routed. */
  channels: Record<string, string>;
  /** Terminal statuses reached (one per channel, or one for the notification). */
  terminal: string[];
  createdAt: number;
  updatedAt: number;
  events: LifecycleEvent[];
}

export const notificationKey = (id: string) => `n:${id}`;
/** Per tenant and user; URI-encoded (userKey) so that user "a" never sees the index of user "a:b". */
export const userIndexPrefix = (tenant: string, recipient: string) => `u:${userKey(tenant, recipient)}:`;
const userIndexKey = (tenant: string, recipient: string, at: number, id: string) => `${userIndexPrefix(tenant, recipient)}${String(at).padStart(15, '0')}:${id}`;

/** Two events with the same identity are the same decision seen twice (redelivery or replay). */
function identity(e: LifecycleEvent): string {
  return [e.stage, e.status, e.deliveryId ?? '', e.attempt ?? ''].join('|');
}

/** Applies lifecycle events to the projection held in `view` (pure apart from the store). */
export async function applyLifecycle(view: StoreView, events: LifecycleEvent[]): Promise<LifecycleEvent[]> {
  const ids = [...new Set(events.map((e) => e.notificationId))];
  const current = await view.getMany<NotificationView>(ids.map(notificationKey));
  const byId = new Map<string, NotificationView | undefined>(ids.map((id, i) => [id, current[i]]));
  const applied: LifecycleEvent[] = [];
  for (const e of events) {
    let n = byId.get(e.notificationId);
    if (!n) {
      n = { notificationId: e.notificationId, tenant: e.tenant, recipient: e.recipient, eventId: e.eventId, eventType: e.eventType, ruleId: e.ruleId, traceId: e.traceId, status: e.status, channels: {}, terminal: [], createdAt: e.timestamp, updatedAt: e.timestamp, events: [] };
      view.put(userIndexKey(e.tenant, e.recipient, e.timestamp, e.notificationId), { createdAt: e.timestamp });
    }
    const id = identity(e);
    if (n.events.some((x) => identity(x) === id)) continue;
    n.events.push(e);
    n.status = e.status;
    n.ruleId ??= e.ruleId;
    n.updatedAt = Math.max(n.updatedAt, e.timestamp);
    if (e.channel) n.channels[e.channel] = e.status;
    if (e.terminal) n.terminal.push(e.channel ? `${e.channel}:${e.status}` : e.status);
    byId.set(e.notificationId, n);
    view.put(notificationKey(e.notificationId), n);
    applied.push(e);
  }
  return applied;
}

export const outcome: StageFactory<'outcome'> = () => ({
  async process(batch, ctx) {
    await applyLifecycle(ctx.store('lifecycle'), batch.map((r) => r.value));
  },
});

/** Read-only access to a projection partition, for queries (a store view or a rebuilt store). */
export interface ProjectionReader {
  getMany<T>(keys: string[]): Promise<(T | undefined)[]>;
  range<T>(gte: string, lt: string, limit?: number): AsyncIterable<[string, T]>;
}

/** A notification's lifecycle, from the projection partition that holds it. */
export async function readNotification(store: ProjectionReader, id: string): Promise<NotificationView | undefined> {
  const [n] = await store.getMany<NotificationView>([notificationKey(id)]);
  return n;
}

/** A user's notifications (newest first, without their events), from the partition that holds the user. */
export async function readUserNotifications(store: ProjectionReader, tenant: string, recipient: string, limit: number): Promise<Omit<NotificationView, 'events'>[]> {
  const prefix = userIndexPrefix(tenant, recipient);
  const ids: { id: string; at: number }[] = [];
  for await (const [k] of store.range(prefix, `${prefix}\uffff`)) {
    const [at, id] = k.slice(prefix.length).split(':');
    ids.push({ id: id!, at: Number(at) });
  }
  ids.sort((a, b) => b.at - a.at);
  const chosen = ids.slice(0, limit);
  const views = await store.getMany<NotificationView>(chosen.map((c) => notificationKey(c.id)));
  return views.flatMap((n) => {
    if (!n) return [];
    const { events: _events, ...summary } = n;
    return [summary];
  });
}
