/**
 * Webhook channel: POSTs the notification as JSON over HTTP(S), signed with
 * HMAC-SHA256 (`Herald-Signature: t=<unix ms>,v1=<hex>` over `<t>.<body>`), with the
 * delivery id as `Idempotency-Key`. 2xx = delivered; 408, 425, 429, 5xx and network
 * errors are retriable; other 4xx are permanent.
 *
 * Receivers verify with `verifyWebhookSignature(secret, header, rawBody)`.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { DeliveryTask } from '../schemas/types.ts';
import type { ChannelProvider, SendResult } from './channel.ts';

export function signWebhook(secret: string, timestamp: number, body: string): string {
  const mac = createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex');
  return `t=${timestamp},v1=${mac}`;
}

/** Checks a `Herald-Signature` header; `toleranceMs` bounds replay of old requests. */
export function verifyWebhookSignature(secret: string, header: string, body: string, now = Date.now(), toleranceMs = 300_000): boolean {
  const parts = Object.fromEntries(header.split(',').map((p) => p.split('=', 2) as [string, string]));
  const t = Number(parts.t);
  if (!parts.v1 || !Number.isFinite(t) || Math.abs(now - t) > toleranceMs) return false;
  const expected = Buffer.from(signWebhook(secret, t, body).split('v1=')[1]!, 'hex');
  const given = Buffer.from(parts.v1, 'hex');
  return given.length === expected.length && timingSafeEqual(given, expected);
}

export function webhookBody(task: DeliveryTask): string {
  return JSON.stringify({
    deliveryId: task.deliveryId,
    notificationId: task.notificationId,
    tenant: task.tenant,
    eventId: task.eventId,
    eventType: task.eventType,
    category: task.category,
    recipient: task.recipient,
    locale: task.locale,
    subject: task.subject,
    body: task.body,
    data: JSON.parse(task.data) as unknown,
    attempt: task.attempt,
    occurredAt: new Date(task.occurredAt).toISOString(),
  });
}

const RETRIABLE = new Set([408, 425, 429]);

export class WebhookChannel implements ChannelProvider {
  readonly name: string;
  private readonly secret: string;
  private readonly clock: () => number;

  constructor(secret: string, clock: () => number = Date.now, name = 'webhook') {
    this.secret = secret;
    this.clock = clock;
    this.name = name;
  }

  async send(task: DeliveryTask, signal: AbortSignal): Promise<SendResult> {
    let body: string;
    try {
      body = webhookBody(task);
    } catch (err) {
      return { ok: false, retriable: false, code: 'bad_payload', detail: `task data is not JSON: ${(err as Error).message}` };
    }
    const t = this.clock();
    let res: Response;
    try {
      res = await fetch(task.address, {
        method: 'POST',
        body,
        signal,
        redirect: 'manual',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'Herald/0.1 (+webhook)',
          'idempotency-key': task.deliveryId,
          'herald-delivery-id': task.deliveryId,
          'herald-attempt': String(task.attempt),
          'herald-signature': signWebhook(this.secret, t, body),
        },
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause?.code;
      return { ok: false, retriable: true, code: cause ?? (err as Error).name, detail: `request failed: ${cause ?? (err as Error).message}` };
    }
    await res.body?.cancel().catch(() => undefined);
    if (res.status >= 200 && res.status < 300) {
      return { ok: true, providerMessageId: res.headers.get('x-request-id'), detail: `HTTP ${res.status}` };
    }
    const retriable = res.status >= 500 || RETRIABLE.has(res.status);
    const retryAfterMs = retryAfter(res.headers.get('retry-after'), Date.now());
    return { ok: false, retriable, code: `http_${res.status}`, detail: `HTTP ${res.status}`, ...(retryAfterMs !== null ? { retryAfterMs } : {}) };
  }
}

/**
 * `Retry-After` in either form RFC 9110 allows: delay-seconds (`120`) or an HTTP-date
 * (`Wed, 21 Oct 2026 07:28:00 GMT`), as milliseconds from `now`; null when absent or unreadable.
 */
export function retryAfter(header: string | null, now: number): number | null {
  if (header === null || header.trim() === '') return null;
  const text = header.trim();
  if (/^\d+$/.test(text)) return Number(text) > 0 ? Number(text) * 1000 : null;
  const at = Date.parse(text);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}
