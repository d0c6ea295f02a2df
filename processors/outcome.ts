/**
 * outcome: the lifecycle projection. Per notification, the ordered lifecycle events with
 * their reasons; per user, an index of notifications by time and the in-app inbox (items
 * from in-app DELIVERED decisions, marked by READ and SEEN). Rebuildable at any time by
 * replaying outcomes.v1, so its store needs no changelog. Applying the same event twice
 * (at-least-once redelivery) changes nothing.
 */
import { createHash } from 'node:crypto';
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

/** One item of a user's in-app inbox. `id` orders items (time, then notification id). */
export interface InboxItem {
  id: string;
  notificationId: string;
  subject: string | null;
  body: string;
  category: string;
  eventType: string;
  createdAt: number;
  seenAt: number | null;
  readAt: number | null;
}

export const inboxPrefix = (tenant: string, recipient: string) => `i:${userKey(tenant, recipient)}:`;
const inboxPointer = (notificationId: string) => `ib:${notificationId}`;
/** How many items a user's inbox has had: the number in each new item's id. */
const inboxCounter = (tenant: string, recipient: string) => `ic:${userKey(tenant, recipient)}`;

/** Called with each inbox item an applied event added or changed. */
export type InboxListener = (tenant: string, recipient: string, item: InboxItem) => void;

/**
 * Two events with the same identity are the same decision seen twice (redelivery or replay).
 * A task held behind an open circuit is held again at the same attempt: each hold is a
 * decision of its own (its decisionId carries the new due time), so none hides the next.
 */
function identity(e: LifecycleEvent): string {
  const base = [e.stage, e.status, e.deliveryId ?? '', e.attempt ?? ''].join('|');
  return e.reasonCode === 'circuit_open' && e.decisionId ? `${base}|${e.decisionId}` : base;
}

/**
 * How a notification is stored: a summary under `n:<id>` (with the identities of its
 * events, to ignore one seen twice) and each event under `e:<id>:<seq>`, so an event
 * costs one small write, not a rewrite of the whole lifecycle. Summaries written by
 * earlier versions hold their events inline (`events`); they are read as they are and
 * moved to this layout when their notification next changes.
 */
interface StoredSummary extends Omit<NotificationView, 'events'> {
  ids: string[];
  events?: LifecycleEvent[];
}

const eventPrefix = (id: string) => `e:${id}:`;
const eventKey = (id: string, seq: number) => `${eventPrefix(id)}${String(seq).padStart(6, '0')}`;

/** Applies lifecycle events to the projection held in `view` (pure apart from the store). */
export async function applyLifecycle(view: StoreView, events: LifecycleEvent[], onInbox?: InboxListener): Promise<LifecycleEvent[]> {
  const ids = [...new Set(events.map((e) => e.notificationId))];
  const current = await view.getMany<StoredSummary>(ids.map(notificationKey));
  const byId = new Map<string, StoredSummary | undefined>(ids.map((id, i) => [id, current[i]]));
  const changed = new Set<string>();
  const applied: LifecycleEvent[] = [];
  for (const e of events) {
    let n = byId.get(e.notificationId);
    if (!n) {
      n = { notificationId: e.notificationId, tenant: e.tenant, recipient: e.recipient, eventId: e.eventId, eventType: e.eventType, ruleId: e.ruleId, traceId: e.traceId, status: e.status, channels: {}, terminal: [], createdAt: e.timestamp, updatedAt: e.timestamp, ids: [] };
      view.put(userIndexKey(e.tenant, e.recipient, e.timestamp, e.notificationId), { createdAt: e.timestamp });
    }
    if (n.events) {
      // An earlier version's summary: its events move to their own keys.
      n.ids = n.events.map(identity);
      n.events.forEach((x, i) => view.put(eventKey(n!.notificationId, i), x));
      delete n.events;
    }
    const id = identity(e);
    if (n.ids.includes(id)) continue;
    view.put(eventKey(e.notificationId, n.ids.length), e);
    n.ids.push(id);
    n.status = e.status;
    n.ruleId ??= e.ruleId;
    n.updatedAt = Math.max(n.updatedAt, e.timestamp);
    if (e.channel) n.channels[e.channel] = e.status;
    if (e.terminal) n.terminal.push(e.channel ? `${e.channel}:${e.status}` : e.status);
    byId.set(e.notificationId, n);
    changed.add(e.notificationId);
    applied.push(e);
    if (e.channel === 'inapp') await applyInbox(view, e, onInbox);
  }
  for (const id of changed) view.put(notificationKey(id), byId.get(id));
  return applied;
}

async function applyInbox(view: StoreView, e: LifecycleEvent, onInbox?: InboxListener): Promise<void> {
  if (e.status === 'DELIVERED' && e.content) {
    const c = JSON.parse(e.content) as { subject: string | null; body: string; category?: string; eventType?: string };
    // Ids sort as the items were applied, which is the order the live stream sends them: by
    // time, then (many items land in one millisecond) by the item's number in this inbox, so
    // a client's Last-Event-ID never sorts past an item it has not had. The number is the
    // inbox's own: the item's offset on outcomes.v1, used before, showed every tenant how many
    // decisions the others' users on that partition had between two of its items. (Items of
    // earlier versions carry that offset, or nothing: `<ms>:<notificationId>`.)
    const counter = inboxCounter(e.tenant, e.recipient);
    const [last] = await view.getMany<number>([counter]);
    const seq = (last ?? 0) + 1;
    view.put(counter, seq);
    const id = `${String(e.timestamp).padStart(15, '0')}:${String(seq).padStart(19, '0')}:${e.notificationId}`;
    const item: InboxItem = { id, notificationId: e.notificationId, subject: c.subject, body: c.body, category: c.category ?? '', eventType: c.eventType ?? e.eventType, createdAt: e.timestamp, seenAt: null, readAt: null };
    view.put(`${inboxPrefix(e.tenant, e.recipient)}${id}`, item);
    view.put(inboxPointer(e.notificationId), `${inboxPrefix(e.tenant, e.recipient)}${id}`);
    onInbox?.(e.tenant, e.recipient, item);
  } else if (e.status === 'READ' || e.status === 'SEEN') {
    const [key] = await view.getMany<string>([inboxPointer(e.notificationId)]);
    const [item] = key ? await view.getMany<InboxItem>([key]) : [];
    if (!key || !item) return;
    const next = { ...item, seenAt: item.seenAt ?? e.timestamp, ...(e.status === 'READ' ? { readAt: item.readAt ?? e.timestamp } : {}) };
    view.put(key, next);
    onInbox?.(e.tenant, e.recipient, next);
  }
}

export const outcome: StageFactory<'outcome'> = ({ inbox }) => ({
  async process(batch, ctx) {
    // Live inbox listeners hear of an item once its batch is processed (a retried batch may
    // tell them again: items carry ids, and clients keep the newest state per id).
    const changed: [string, string, InboxItem][] = [];
    await applyLifecycle(ctx.store('lifecycle'), batch.map((r) => r.value), inbox ? (t, u, item) => changed.push([t, u, item]) : undefined);
    for (const [t, u, item] of changed) inbox?.publish(t, u, item);
  },
});

/**
 * A user's inbox items: newest first (with `before`, the ones older than that item id: the
 * next page), or (with `after`) the ones after an item id, oldest first.
 */
export async function readInbox(store: ProjectionReader, tenant: string, recipient: string, o: { unread?: boolean; limit: number; after?: string; before?: string }): Promise<InboxItem[]> {
  const prefix = inboxPrefix(tenant, recipient);
  const items: InboxItem[] = [];
  // Oldest first after a cursor, else newest first (the range read backwards): only the page
  // is read, and with the unread filter only until the page is full.
  for await (const [, item] of store.range<InboxItem>(o.after ? `${prefix}${o.after}\u0000` : prefix, o.before ? `${prefix}${o.before}` : `${prefix}\uffff`, o.unread ? undefined : o.limit, !o.after)) {
    if (!o.unread || item.readAt === null) items.push(item);
    if (items.length >= o.limit) break;
  }
  return items;
}

/** Read-only access to a projection partition, for queries (a store view or a rebuilt store). */
export interface ProjectionReader {
  getMany<T>(keys: string[]): Promise<(T | undefined)[]>;
  range<T>(gte: string, lt: string, limit?: number, reverse?: boolean): AsyncIterable<[string, T]>;
}

/** A stored summary and its events as one view. */
async function assemble(store: ProjectionReader, n: StoredSummary): Promise<NotificationView> {
  const { ids: _ids, events: inline, ...summary } = n;
  if (inline) return { ...summary, events: inline };
  const events: LifecycleEvent[] = [];
  for await (const [, e] of store.range<LifecycleEvent>(eventPrefix(n.notificationId), `${eventPrefix(n.notificationId)}\uffff`)) events.push(e);
  return { ...summary, events };
}

/** A notification's lifecycle, from the projection partition that holds it. */
export async function readNotification(store: ProjectionReader, id: string): Promise<NotificationView | undefined> {
  const [n] = await store.getMany<StoredSummary>([notificationKey(id)]);
  return n ? assemble(store, n) : undefined;
}

/** Every notification of a projection partition, in id order, with its events. */
export async function* eachNotification(store: ProjectionReader, tenant?: string): AsyncGenerator<NotificationView> {
  for await (const [, n] of store.range<StoredSummary>('n:', 'n:\uffff')) {
    if (tenant !== undefined && n.tenant !== tenant) continue;
    yield assemble(store, n);
  }
}

/**
 * A user's notifications (newest first, without their events), from the partition that holds
 * the user, with the cursor of the next page (pass it as `before`), or null on the last one.
 */
export async function readUserNotifications(store: ProjectionReader, tenant: string, recipient: string, limit: number, before?: string): Promise<{ notifications: Omit<NotificationView, 'events'>[]; next: string | null }> {
  const prefix = userIndexPrefix(tenant, recipient);
  const keys: string[] = [];
  // The index is in time order (`<time, 15 digits>:<id>`): newest first is the range read
  // backwards, one more than the page (to know whether there is a next one).
  for await (const [k] of store.range(prefix, before ? `${prefix}${before}` : `${prefix}\uffff`, limit + 1, true)) keys.push(k.slice(prefix.length));
  const chosen = keys.slice(0, limit);
  const views = await store.getMany<StoredSummary>(chosen.map((c) => notificationKey(c.slice(c.indexOf(':') + 1))));
  const notifications = views.flatMap((n) => {
    if (!n) return [];
    const { events: _events, ids: _ids, ...summary } = n;
    return [summary];
  });
  return { notifications, next: keys.length > limit ? chosen.at(-1)! : null };
}

/**
 * A digest of a projection: the sum, modulo 2^256, of one SHA-256 per notification over its
 * ordered lifecycle. Sums add up across partitions in any order, so a rebuilt projection
 * and a live one spread over instances can be compared; equal digests mean every
 * notification has the same events in the same order.
 */
export interface ProjectionDigest { notifications: number; sum: bigint }

const MOD = 1n << 256n;

export function notificationHash(n: NotificationView): bigint {
  const canonical = JSON.stringify([n.notificationId, n.tenant, n.recipient, n.events.map((e) => [e.decisionId, e.stage, e.status, e.reasonCode, e.channel, e.attempt, e.deliveryId, e.timestamp])]);
  return BigInt(`0x${createHash('sha256').update(canonical).digest('hex')}`);
}

/** The digest of one projection partition, of every tenant or of one. */
export async function digestProjection(store: ProjectionReader, tenant?: string): Promise<ProjectionDigest> {
  let notifications = 0;
  let sum = 0n;
  for await (const n of eachNotification(store, tenant)) {
    notifications++;
    sum = (sum + notificationHash(n)) % MOD;
  }
  return { notifications, sum };
}

export function addDigests(a: ProjectionDigest, b: ProjectionDigest): ProjectionDigest {
  return { notifications: a.notifications + b.notifications, sum: (a.sum + b.sum) % MOD };
}

export const digestHex = (d: ProjectionDigest): string => d.sum.toString(16).padStart(64, '0');
