/**
 * What the HTTP API needs from the rest of Herald, and nothing more (ports and adapters):
 * the assembly (app/) implements them over Kafka, the global tables and the lifecycle
 * projection; tests implement them in memory and drive the API with fastify's `inject()`.
 */
import type { AuthResult } from '../auth/keys.ts';
import type { OutboundPolicy } from '../channels/outbound.ts';
import type { RuleSet } from '../rules/rules.ts';
import type { DomainEvent, LifecycleEvent, UserPreferences, UserProfile } from '../schemas/types.ts';

/** Publishes validated domain events to events.v1, and lifecycle events the API records (READ, SEEN) to outcomes.v1 (acks=-1). */
export interface EventPublisher {
  publish(event: DomainEvent): Promise<void>;
  record(event: LifecycleEvent): Promise<void>;
}

/** Writes and reads the profile tables (users.v1, preferences.v1, audiences.v1); user ids are per tenant. */
export interface Profiles {
  /** `profile.tenant` is set (from the API key). */
  putUser(profile: UserProfile): Promise<void>;
  deleteUser(tenant: string, userId: string): Promise<void>;
  /** The profile from this instance's copy of users.v1, or undefined. */
  getUser(tenant: string, userId: string): Promise<UserProfile | undefined>;
  putPreferences(preferences: UserPreferences): Promise<void>;
  /** The preferences from this instance's copy of preferences.v1: undefined when none, null when it does not hold the table. */
  getPreferences(tenant: string, userId: string): Promise<UserPreferences | undefined | null>;
  updateAudience(tenant: string, audience: string, add: readonly string[], remove: readonly string[]): Promise<void>;
  /** Members of an audience, or null when this instance does not hold the audiences table. */
  /** Up to `limit` members in user-id key order, after the member `after` (a page); null without the audiences table. */
  audienceMembers(tenant: string, audience: string, limit: number, after?: string): Promise<string[] | null>;
}

/** The answer of a query that may be served by another instance. */
export type QueryAnswer<T> =
  | { status: 'ok'; value: T; servedBy: string }
  | { status: 'not_found'; detail: string }
  /** The owner of the partition is unknown or unreachable (mid-rebalance, restoring): ask again shortly. */
  | { status: 'unavailable'; detail: string };

export interface QueryOptions {
  /** The query was forwarded by another instance: answer from local state, never forward again. */
  forwarded: boolean;
  /** The caller's Authorization header, passed on when the query is forwarded. */
  authorization: string;
  /** The instance a forwarded query was sent to, as the sender's directory names it: another one answering means that instance's advertised URL leads elsewhere. */
  forwardedTo?: string;
}

export interface NotificationLifecycle {
  notificationId: string;
  tenant: string;
  recipient: string;
  status: string;
  events: LifecycleEvent[];
  [field: string]: unknown;
}

export interface UserNotifications {
  userId: string;
  notifications: Omit<NotificationLifecycle, 'events'>[];
  /** The next (older) page's cursor, for `?before=`; null on the last page. */
  next: string | null;
}

export interface InboxItemView {
  id: string;
  notificationId: string;
  subject: string | null;
  body: string;
  createdAt: number;
  seenAt: number | null;
  readAt: number | null;
  category: string;
  eventType: string;
}

export interface UserInbox {
  userId: string;
  items: InboxItemView[];
  /** The next (older) page's cursor, for `?before=`; null on the last page. */
  next: string | null;
}

/** A live inbox: here (backlog after the client's last event id, then changes), or at another instance. */
export type InboxStream =
  | { kind: 'local'; servedBy: string; open(listener: (item: InboxItemView) => void): Promise<{ backlog: AsyncIterable<InboxItemView>; close(): void }> }
  | { kind: 'forward'; url: string }
  | { kind: 'unavailable'; detail: string };

/** Lifecycle queries, answered by whichever instance holds the partition. */
export interface LifecycleQueries {
  inbox(tenant: string, userId: string, o: { unread: boolean; limit: number; before?: string }, opts: QueryOptions): Promise<QueryAnswer<UserInbox>>;
  inboxStream(tenant: string, userId: string, after: string | null, opts: QueryOptions): Promise<InboxStream>;
  notification(id: string, opts: QueryOptions): Promise<QueryAnswer<NotificationLifecycle>>;
  userNotifications(tenant: string, userId: string, limit: number, opts: QueryOptions & { before?: string }): Promise<QueryAnswer<UserNotifications>>;
  /** The digest of the tenant's lifecycle projection over every partition (forwarded: this instance's partitions only). */
  digest(tenant: string, opts: QueryOptions): Promise<QueryAnswer<LifecycleDigest>>;
}

/** A tenant's projection digest (see processors/outcome.ts): `digest` is 64 hex digits. */
export interface LifecycleDigest {
  tenant: string;
  notifications: number;
  digest: string;
  /** The projection partitions it covers. */
  partitions: number[];
}

export interface Health {
  /** Ready = stages joined, tables caught up, stores open; with the detail /readyz shows. */
  readiness(): { ready: boolean; [detail: string]: unknown };
  metrics(): Promise<{ contentType: string; body: string }>;
}

/** What may be shown of a tenant's signing secrets: ids and times, never the secrets. */
export interface SigningSecretsView {
  tenant: string;
  /** True while the tenant has no secret of its own: its webhooks are signed with HERALD_WEBHOOK_SECRET. */
  deploymentSecret: boolean;
  /** After the tenant's first rotation: until when HERALD_WEBHOOK_SECRET still signs too (its grace period); null when it no longer does. */
  deploymentSecretUntil: string | null;
  secrets: { id: string; createdAt: string; expiresAt: string | null; status: string }[];
}

export interface SigningSecretsPort {
  describe(tenant: string): SigningSecretsView;
  /** A new current secret (returned once); the previous ones keep signing for `graceMs`. */
  rotate(tenant: string, graceMs: number): Promise<{ id: string; secret: string; view: SigningSecretsView }>;
  /** Only the current secret signs from now on; null when the tenant has none of its own. */
  retire(tenant: string): Promise<SigningSecretsView | null>;
}

export interface ApiPorts {
  /** The HTTP server to serve on, already listening (the port taken at the start); without it the API makes its own and `listen` is called. */
  serverFactory?: (handler: (req: import('node:http').IncomingMessage, res: import('node:http').ServerResponse) => void) => import('node:http').Server;
  /** A `--workers` worker (its primary's instance id): answers reads (the queries its primary forwards) and refuses writes. */
  workerOf?: string;
  publisher: EventPublisher;
  profiles: Profiles;
  lifecycle: LifecycleQueries;
  health: Health;
  rules: RuleSet;
  /** The embedded default's SMTP sink (GET /v1/dev/mailbox), when it runs one. */
  mailbox?: { list(o: { tenant: string; to?: string; limit?: number }): unknown[] };
  /** The tenant's webhook signing secrets (admin scope); absent when this instance does not follow them. */
  signing?: SigningSecretsPort;
  /** Counts each answered request (by route pattern) and its duration; absent in tests that do not look. */
  httpMetrics?: { observe(method: string, route: string, status: number, seconds: number): void };
  /** Checks `Authorization: Bearer` keys. */
  keys: { authenticate(key: string): Promise<AuthResult>; isLive(keyId: string): boolean };
  /** Where webhook and chat URLs may point. */
  outbound: OutboundPolicy;
  /** Per-tenant publish rate (token bucket). */
  rate: { perSecond: number; burst: number };
  /** HERALD_METRICS_TOKEN: the bearer token GET /metrics needs; empty: open. */
  metricsToken?: string;
  /** Largest accepted event body, in bytes. */
  maxPayloadBytes: number;
  /** Memory for remembered Idempotency-Key answers. */
  idempotencyCacheBytes: number;
  log: { error(obj: object, msg: string): void; warn(obj: object, msg: string): void };
}
