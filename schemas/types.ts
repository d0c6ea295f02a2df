/**
 * TypeScript shapes of the Avro records Herald's topics carry (one `.avsc` each beside
 * this file), and `TopicValues`: the value type of every topic, which types the stage
 * contract (a processor's input records and what it may emit).
 */
export interface NotificationRequest {
  notificationId: string;
  tenant: string;
  eventId: string;
  eventType: string;
  ruleId: string;
  recipient: string;
  category: string;
  priority: 'LOW' | 'NORMAL' | 'HIGH' | 'CRITICAL';
  data: string;
  idempotencyKey: string | null;
  actor: string | null;
  occurredAt: number;
  expiresAt: number | null;
  traceId: string;
  /** For a digest made by throttle: the notification ids it carries (empty otherwise). */
  digestOf: string[];
}

export interface UserProfile {
  userId: string;
  tenant: string | null;
  name: string | null;
  email: string | null;
  phone: string | null;
  locale: string;
  timezone: string;
  webhookUrl: string | null;
  chatWebhookUrl: string | null;
  active: boolean;
  updatedAt: number | null;
}

export interface UserPreferences {
  userId: string;
  tenant: string | null;
  channels: Record<string, boolean>;
  categories: Record<string, boolean>;
  quietHours: { start: string; end: string } | null;
  updatedAt: number | null;
}

export interface EnrichedNotification {
  request: NotificationRequest;
  user: UserProfile;
  preferences: UserPreferences | null;
}

export interface DeliveryTask {
  deliveryId: string;
  notificationId: string;
  tenant: string;
  eventId: string;
  eventType: string;
  ruleId: string;
  recipient: string;
  category: string;
  channel: string;
  address: string;
  locale: string;
  subject: string | null;
  body: string;
  data: string;
  fallback: string[];
  attempt: number;
  notBefore: number | null;
  expiresAt: number | null;
  occurredAt: number;
  traceId: string;
}

export interface LifecycleEvent {
  notificationId: string;
  deliveryId: string | null;
  tenant: string;
  recipient: string;
  eventId: string;
  eventType: string;
  ruleId: string | null;
  stage: string;
  status: string;
  terminal: boolean;
  reasonCode: string;
  reason: string;
  channel: string | null;
  attempt: number | null;
  providerMessageId: string | null;
  sourceTopic: string;
  sourcePartition: number;
  sourceOffset: string;
  timestamp: number;
  traceId: string;
  /** Same decision, same id: repeats of at-least-once delivery are visible as repeats. */
  decisionId: string;
  /** In-app deliveries: the rendered `{subject, body}` as JSON (the inbox shows it); null otherwise. */
  content?: string | null;
}

export interface DomainEvent {
  id: string;
  type: string;
  tenant: string;
  recipients: string[];
  audience: string | null;
  data: string;
  idempotencyKey: string | null;
  occurredAt: number | null;
  expiresAt: number | null;
  actor: string | null;
  traceId: string | null;
}

export interface AudienceMember { tenant: string; audience: string; userId: string; addedAt: number | null }

/** The value type of each topic (keys as in topology.ts `TOPICS`). The DLQ carries original bytes. */
export interface TopicValues {
  events: DomainEvent;
  requests: NotificationRequest;
  enriched: EnrichedNotification;
  deduped: EnrichedNotification;
  admitted: EnrichedNotification;
  deliveries: DeliveryTask;
  deliverRetry: DeliveryTask;
  outcomes: LifecycleEvent;
  users: UserProfile;
  audiences: AudienceMember;
  preferences: UserPreferences;
  dlq: Buffer;
  instances: InstanceClaim;
  keys: ApiKeyRecord;
  signingSecrets: SigningSecretRecord;
}

/** An instance's claim on the partitions of one stage (JSON on instances.v1, keyed `<stage>/<instance id>`). */
export interface InstanceClaim {
  instanceId: string;
  stage: string;
  /** Where the instance's HTTP API answers (HERALD_ADVERTISED_URL). */
  url: string;
  partitions: number[];
  memberId: string;
  at: number;
}

/** What an API key may do: `admin` includes the others. */
export type Scope = 'publish' | 'read' | 'admin';

/** An API key on keys.v1 (JSON, keyed by keyId): never the secret, only its scrypt hash. */
export interface ApiKeyRecord {
  keyId: string;
  tenant: string;
  scopes: Scope[];
  /** `scrypt$N$r$p$<salt base64url>$<hash base64url>` */
  hash: string;
  label: string | null;
  createdAt: number;
  revokedAt: number | null;
}

/** One signing secret of a tenant: the HMAC key itself (it must be known to sign). */
export interface SigningSecret {
  /** `ss_` + 12 hex digits of the secret's SHA-256: listed and logged instead of the secret. */
  id: string;
  secret: string;
  createdAt: number;
  /** When a rotated-out secret stops signing; null while it is the current one (or kept until retired). */
  expiresAt: number | null;
}

/** A tenant's webhook signing secrets on signing-secrets.v1 (JSON, keyed by tenant), newest first. */
export interface SigningSecretRecord {
  tenant: string;
  secrets: SigningSecret[];
  updatedAt: number;
  /**
   * Until when HERALD_WEBHOOK_SECRET (the deployment's secret, which signed the tenant's
   * webhooks before its first rotation) keeps signing them too: the grace period of that
   * first rotation. Absent or null: no longer.
   */
  deploymentSecretUntil?: number | null;
}
