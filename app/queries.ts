/**
 * Lifecycle queries any instance answers (Kafka Streams' interactive queries): a lookup
 * whose partition this instance holds is answered from its own projection store; one
 * whose partition another instance holds is forwarded there, once (the forwarded request
 * carries a header, and is answered from local state only). A user's notifications live in
 * the partition of the user id (outcomes.v1 is keyed by recipient, partitioned by Kafka's
 * default murmur2 partitioner). A notification id does not name
 * its partition, so when it is not held here every instance holding outcome partitions is
 * asked at once. While the owner is unknown or unreachable (a rebalance, a restore), the
 * answer is `unavailable` (HTTP 503 with Retry-After), never a wrong 404.
 */
import { partitionFor } from '../runtime/partitioner.ts';
import { userKey } from '../topology.ts';
import { FORWARDED_HEADER, FORWARDED_TO_HEADER } from '../api/server.ts';
import type { InboxStream, LifecycleDigest, LifecycleQueries, NotificationLifecycle, QueryAnswer, QueryOptions, UserInbox, UserNotifications } from '../api/ports.ts';
import { addDigests, digestHex, digestProjection, type InboxItem, type ProjectionDigest, type ProjectionReader, readInbox, readNotification, readUserNotifications } from '../processors/outcome.ts';
import type { Logger } from '../runtime/logger.ts';
import type { InstanceClaim } from '../schemas/types.ts';
import type { InstanceDirectory } from './instances.ts';


/** Inbox items a resumed stream reads at a time. */
const BACKLOG_PAGE = 500;
export interface LifecycleRouterOptions {
  /** The projection partitions this instance holds now, by partition. */
  local: () => ReadonlyMap<number, { view(): ProjectionReader }>;
  directory: InstanceDirectory;
  partitions: number;
  timeoutMs: number;
  log: Logger;
  /** Inbox changes announced by this process's outcome stage (live streams). */
  inbox?: InboxHub;
}

/** In-process fan-out of inbox changes from the outcome stage to live streams. */
export class InboxHub {
  private readonly listeners = new Map<string, Set<(item: InboxItem) => void>>();

  publish(tenant: string, recipient: string, item: unknown): void {
    for (const l of this.listeners.get(userKey(tenant, recipient)) ?? []) l(item as InboxItem);
  }

  subscribe(tenant: string, recipient: string, listener: (item: InboxItem) => void): () => void {
    const key = userKey(tenant, recipient);
    const set = this.listeners.get(key) ?? new Set();
    set.add(listener);
    this.listeners.set(key, set);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.listeners.delete(key);
    };
  }
}

/** The partition of a recipient-keyed topic that holds `key`. */
export const partitionOf = (key: string, partitions: number): number => partitionFor(key, partitions);

export class LifecycleRouter implements LifecycleQueries {
  private readonly o: LifecycleRouterOptions;
  /** When a failed forward to each owner was last logged at warn. */
  private readonly forwardWarned = new Map<string, number>();

  constructor(o: LifecycleRouterOptions) {
    this.o = o;
  }

  private get self(): string {
    return this.o.directory.instanceId;
  }

  /**
   * A forwarded query that reached another instance than it was sent to (the owner's
   * HERALD_ADVERTISED_URL leads elsewhere, such as to 127.0.0.1 on another host): answering
   * from here would say "not found" for partitions this instance does not hold.
   */
  private misrouted(opts: QueryOptions): { status: 'unavailable'; detail: string } | null {
    if (!opts.forwarded || opts.forwardedTo === undefined || opts.forwardedTo === this.self) return null;
    return { status: 'unavailable', detail: `this query was forwarded to instance ${opts.forwardedTo}, and instance ${this.self} got it: ${opts.forwardedTo}'s advertised URL leads here (check its HERALD_ADVERTISED_URL)` };
  }

  async notification(id: string, opts: QueryOptions): Promise<QueryAnswer<NotificationLifecycle>> {
    const wrong = this.misrouted(opts);
    if (wrong) return wrong;
    const local = this.o.local();
    for (const store of local.values()) {
      const n = await readNotification(store.view(), id);
      if (n) return { status: 'ok', value: n as unknown as NotificationLifecycle, servedBy: this.self };
    }
    // Partitions nobody can answer for right now: no owner yet, or restoring here.
    const owners = new Map<string, InstanceClaim>();
    const unanswerable: number[] = [];
    for (let p = 0; p < this.o.partitions; p++) {
      if (local.has(p)) continue;
      const owner = this.o.directory.owner('outcome', p);
      if (!owner || owner.instanceId === this.self) unanswerable.push(p);
      else owners.set(owner.url, owner);
    }
    const notFound = { status: 'not_found' as const, detail: `no lifecycle for notification "${id}" yet` };
    const unavailable = { status: 'unavailable' as const, detail: `partitions ${unanswerable.join(', ')} of the outcome stage have no instance serving them yet (rebalance or restore under way)` };
    if (opts.forwarded) return unanswerable.some((p) => this.o.directory.owner('outcome', p)?.instanceId === this.self) ? unavailable : notFound;
    // Only the current owners are asked, so a dead instance's stale claim costs nothing.
    const answers = await Promise.all([...owners.values()].map((owner) => this.forward<NotificationLifecycle>(owner, `/v1/notifications/${encodeURIComponent(id)}`, opts.authorization)));
    const found = answers.find((a) => a.status === 'ok');
    if (found) return found;
    if (unanswerable.length) return unavailable;
    return answers.find((a) => a.status === 'unavailable') ?? notFound;
  }

  async userNotifications(tenant: string, userId: string, limit: number, opts: QueryOptions & { before?: string }): Promise<QueryAnswer<UserNotifications>> {
    const partition = partitionOf(userKey(tenant, userId), this.o.partitions);
    const store = this.o.local().get(partition);
    if (store) return { status: 'ok', value: { userId, ...(await readUserNotifications(store.view(), tenant, userId, limit, opts.before)) }, servedBy: this.self };
    if (opts.forwarded) return { status: 'unavailable', detail: `partition ${partition} of the outcome stage is not held by instance ${this.self} (it moved in a rebalance)` };
    const owner = this.o.directory.owner('outcome', partition);
    if (!owner) return { status: 'unavailable', detail: `no instance holds partition ${partition} of the outcome stage yet` };
    if (owner.instanceId === this.self) return { status: 'unavailable', detail: `partition ${partition} of the outcome stage is still being restored on instance ${this.self}` };
    return this.forward<UserNotifications>(owner, `/v1/users/${encodeURIComponent(userId)}/notifications?limit=${limit}${opts.before ? `&before=${encodeURIComponent(opts.before)}` : ''}`, opts.authorization);
  }

  /** Where a user's projection partition is: here, at another instance, or nowhere yet. */
  private locate(tenant: string, userId: string, opts: QueryOptions): { kind: 'local'; view: () => ProjectionReader } | { kind: 'remote'; owner: InstanceClaim } | { kind: 'unavailable'; detail: string } {
    const partition = partitionOf(userKey(tenant, userId), this.o.partitions);
    const store = this.o.local().get(partition);
    if (store) return { kind: 'local', view: () => store.view() };
    if (opts.forwarded) return { kind: 'unavailable', detail: `partition ${partition} of the outcome stage is not held by instance ${this.self} (it moved in a rebalance)` };
    const owner = this.o.directory.owner('outcome', partition);
    if (!owner) return { kind: 'unavailable', detail: `no instance holds partition ${partition} of the outcome stage yet` };
    if (owner.instanceId === this.self) return { kind: 'unavailable', detail: `partition ${partition} of the outcome stage is still being restored on instance ${this.self}` };
    return { kind: 'remote', owner };
  }

  async inbox(tenant: string, userId: string, o: { unread: boolean; limit: number; before?: string }, opts: QueryOptions): Promise<QueryAnswer<UserInbox>> {
    const where = this.locate(tenant, userId, opts);
    if (where.kind === 'local') {
      // One more than asked: whether there is a next page (`next`, passed back as `before`).
      const items = await readInbox(where.view(), tenant, userId, { ...o, limit: o.limit + 1 });
      const page = items.slice(0, o.limit);
      return { status: 'ok', value: { userId, items: page, next: items.length > o.limit ? page.at(-1)!.id : null }, servedBy: this.self };
    }
    if (where.kind === 'unavailable') return { status: 'unavailable', detail: where.detail };
    return this.forward<UserInbox>(where.owner, `/v1/users/${encodeURIComponent(userId)}/inbox?limit=${o.limit}${o.unread ? '&unread=true' : ''}${o.before ? `&before=${encodeURIComponent(o.before)}` : ''}`, opts.authorization);
  }

  async inboxStream(tenant: string, userId: string, after: string | null, opts: QueryOptions): Promise<InboxStream> {
    const where = this.locate(tenant, userId, opts);
    if (where.kind === 'unavailable') return where;
    if (where.kind === 'remote') return { kind: 'forward', url: `${where.owner.url}/v1/users/${encodeURIComponent(userId)}/inbox/stream` };
    const hub = this.o.inbox;
    const view = where.view;
    return {
      kind: 'local',
      servedBy: this.self,
      // Subscribe first, then read the backlog, so nothing falls between the two.
      open: async (listener: (item: InboxItem) => void) => {
        const unsubscribe = hub ? hub.subscribe(tenant, userId, listener) : () => undefined;
        // Everything after the client's last event id, however much, a page at a time.
        async function* backlog(): AsyncGenerator<InboxItem> {
          for (let cursor = after; cursor !== null;) {
            const page = await readInbox(view(), tenant, userId, { after: cursor, limit: BACKLOG_PAGE });
            yield* page;
            cursor = page.length === BACKLOG_PAGE ? page.at(-1)!.id : null;
          }
        }
        return { backlog: backlog(), close: unsubscribe };
      },
    };
  }

  async digest(tenant: string, opts: QueryOptions): Promise<QueryAnswer<LifecycleDigest>> {
    const wrong = this.misrouted(opts);
    if (wrong) return wrong;
    let total: ProjectionDigest = { notifications: 0, sum: 0n };
    const covered = new Set<number>();
    for (const [p, store] of this.o.local()) {
      total = addDigests(total, await digestProjection(store.view(), tenant));
      covered.add(p);
    }
    const answer = (): QueryAnswer<LifecycleDigest> => ({ status: 'ok', value: { tenant, notifications: total.notifications, digest: digestHex(total), partitions: [...covered].sort((a, b) => a - b) }, servedBy: this.self });
    if (opts.forwarded) return answer();
    const owners = new Map<string, InstanceClaim>();
    for (let p = 0; p < this.o.partitions; p++) {
      if (covered.has(p)) continue;
      const owner = this.o.directory.owner('outcome', p);
      if (!owner || owner.instanceId === this.self) return { status: 'unavailable', detail: `partition ${p} of the outcome stage has no instance serving it yet (rebalance or restore under way)` };
      owners.set(owner.url, owner);
    }
    for (const owner of owners.values()) {
      const a = await this.forward<LifecycleDigest>(owner, '/v1/lifecycle/digest', opts.authorization);
      if (a.status !== 'ok') return a.status === 'not_found' ? { status: 'unavailable', detail: a.detail } : a;
      const fresh = a.value.partitions.filter((p) => !covered.has(p));
      // Partitions counted twice (a claim mid-rebalance) would spoil the sum: ask again later.
      if (fresh.length !== a.value.partitions.length) return { status: 'unavailable', detail: 'two instances answered for the same partition (rebalance under way); ask again' };
      total = addDigests(total, { notifications: a.value.notifications, sum: BigInt(`0x${a.value.digest}`) });
      for (const p of fresh) covered.add(p);
    }
    if (covered.size < this.o.partitions) return { status: 'unavailable', detail: `only partitions ${[...covered].join(', ')} of ${this.o.partitions} answered` };
    return answer();
  }

  /** One hop to the owner; its answer, or `unavailable` when it cannot be reached in time. */
  private async forward<T>(owner: InstanceClaim, path: string, authorization: string): Promise<QueryAnswer<T>> {
    try {
      // The caller's key goes along: the owner authenticates and scopes the query itself.
      const res = await fetch(`${owner.url}${path}`, { headers: { [FORWARDED_HEADER]: this.self, [FORWARDED_TO_HEADER]: owner.instanceId, authorization }, signal: AbortSignal.timeout(this.o.timeoutMs) });
      const body = (await res.json()) as T & { message?: string };
      if (res.status === 200) return { status: 'ok', value: body, servedBy: res.headers.get('x-herald-served-by') ?? owner.instanceId };
      if (res.status === 404) return { status: 'not_found', detail: body.message ?? 'not found' };
      return { status: 'unavailable', detail: `instance ${owner.instanceId} answered ${res.status}: ${body.message ?? ''}`.trim() };
    } catch (err) {
      // Once per owner and minute at warn (an owner that is down fails every query meanwhile), else at debug.
      const now = Date.now();
      const quiet = (this.forwardWarned.get(owner.instanceId) ?? 0) > now - 60_000;
      if (!quiet) this.forwardWarned.set(owner.instanceId, now);
      this.o.log[quiet ? 'debug' : 'warn']({ owner: owner.instanceId, reason: (err as Error).message }, quiet ? 'forwarding a query failed' : 'forwarding a query failed (further failures for this owner within a minute are logged at debug)');
      // fetch's TypeError says only "fetch failed": its cause names what happened (ECONNREFUSED, a timeout).
      const e = err as Error & { cause?: { code?: string; message?: string } };
      const why = e.name === 'TimeoutError' ? `no answer within ${this.o.timeoutMs} ms` : e.cause?.code ?? e.cause?.message ?? e.name;
      return { status: 'unavailable', detail: `instance ${owner.instanceId}, which holds the partition, did not answer (${why})` };
    }
  }
}
