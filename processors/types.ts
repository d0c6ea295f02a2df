/** TypeScript shapes of the Avro records the stages exchange (see schemas/). */
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
  channels: Record<string, boolean>;
  categories: Record<string, boolean>;
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
}

/** The lifecycle fields every decision about a request carries. */
export function about(r: NotificationRequest): { notificationId: string; tenant: string; recipient: string; eventId: string; eventType: string; ruleId: string; traceId: string } {
  return { notificationId: r.notificationId, tenant: r.tenant, recipient: r.recipient, eventId: r.eventId, eventType: r.eventType, ruleId: r.ruleId, traceId: r.traceId };
}
