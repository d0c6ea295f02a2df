/**
 * Webhook channel: POSTs the notification as JSON over HTTP(S), signed with
 * HMAC-SHA256 (`Herald-Signature: t=<unix seconds>,v1=<hex>` over `<t>.<body>`, Stripe's layout; one v1 per live
 * secret of the task's tenant), with the
 * delivery id as `Idempotency-Key`. 2xx = delivered; 408, 425, 429, 5xx and network
 * errors are retriable; other 4xx are permanent. Destinations pass the outbound policy
 * (channels/outbound.ts) on the addresses actually connected to; a refused one is a
 * permanent failure. Failures are described without the receiver's response body.
 *
 * Receivers verify with `verifyWebhookSignature(secret, header, rawBody)`.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { Agent, request } from 'undici';
import type { DeliveryTask } from '../schemas/types.ts';
import type { ChannelProvider, SendResult } from './channel.ts';
import { guardedLookup, type OutboundPolicy, urlRefusal } from './outbound.ts';

const mac = (secret: string, timestamp: number, body: string) => createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex');

/**
 * `t=<unix seconds>,v1=<hex>[,v1=<hex>]`: one v1 per secret, the newest first (Stripe's
 * layout, so receivers' existing Stripe-style verifiers and tolerances apply). `nowMs` is
 * the signing time in milliseconds; the header carries whole seconds. While a secret
 * is being rotated (a tenant's, or HERALD_WEBHOOK_SECRET=new,old) both are valid and both
 * signatures are sent (as Stripe does), so receivers can switch at their own pace.
 */
export function signWebhook(secrets: string | readonly string[], nowMs: number, body: string): string {
  const list = typeof secrets === 'string' ? secretsOf(secrets) : secrets;
  const timestamp = Math.floor(nowMs / 1000);
  return [`t=${timestamp}`, ...list.map((s) => `v1=${mac(s, timestamp, body)}`)].join(',');
}

/** HERALD_WEBHOOK_SECRET: one secret, or `new,old` during a rotation. */
export const secretsOf = (text: string) => text.split(',').map((s) => s.trim()).filter(Boolean);

/**
 * Checks a `Herald-Signature` header against one secret: any v1 may match; `toleranceMs`
 * bounds how far `t` (unix seconds) may be from `now` (milliseconds), so an old request
 * cannot be replayed.
 */
export function verifyWebhookSignature(secret: string, header: string, body: string, now = Date.now(), toleranceMs = 300_000): boolean {
  const pairs = header.split(',').map((p) => p.split('=', 2) as [string, string | undefined]);
  const raw = pairs.find(([k]) => k === 't')?.[1] ?? '';
  if (!/^\d{1,12}$/.test(raw)) return false;
  const t = Number(raw);
  if (Math.abs(now - t * 1000) > toleranceMs) return false;
  const expected = Buffer.from(mac(secret, t, body), 'hex');
  return pairs.some(([k, v]) => {
    if (k !== 'v1' || !v) return false;
    const given = Buffer.from(v, 'hex');
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
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

/** A network failure in a few words, never the peer's own text. */
function networkFailure(err: unknown): { code: string; detail: string; retriable: boolean } {
  const e = err as { code?: string | number; name?: string; cause?: { code?: string } };
  // A DOMException (the timeout's abort) has a numeric legacy code (23); its name says what happened.
  const code = (typeof e.code === 'string' ? e.code : undefined) ?? e.cause?.code ?? e.name ?? 'error';
  if (code === 'EDESTINATIONREFUSED') return { code: 'destination_refused', detail: 'destination refused: the host resolves to an address Herald may not reach', retriable: false };
  const words: Record<string, string> = {
    ECONNREFUSED: 'connection refused', ECONNRESET: 'connection reset', ENOTFOUND: 'host name not found', EAI_AGAIN: 'host name lookup failed',
    UND_ERR_CONNECT_TIMEOUT: 'connection timed out', ETIMEDOUT: 'connection timed out', UND_ERR_HEADERS_TIMEOUT: 'no response in time', UND_ERR_BODY_TIMEOUT: 'no response in time',
    AbortError: 'no response in time', TimeoutError: 'no response within HERALD_DELIVERY_TIMEOUT_MS', UND_ERR_ABORTED: 'no response in time', UND_ERR_SOCKET: 'connection closed', EPIPE: 'connection closed',
  };
  return { code, detail: `request failed: ${words[code] ?? 'network error'}`, retriable: true };
}

export class WebhookChannel implements ChannelProvider {
  readonly name: string;
  private readonly secrets: (tenant: string) => readonly string[];
  private readonly clock: () => number;
  private readonly policy: OutboundPolicy;
  private readonly agent: Agent;
  private readonly bodyOf: (task: DeliveryTask) => string;

  /**
   * `secrets`: HERALD_WEBHOOK_SECRET's text, or the live secrets of a task's tenant
   * (app/signing-secrets.ts). `bodyOf` shapes the JSON body (the chat channel posts
   * Slack's `{text, blocks}` the same way).
   */
  constructor(secrets: string | ((tenant: string) => readonly string[]), policy: OutboundPolicy, clock: () => number = Date.now, name = 'webhook', bodyOf: (task: DeliveryTask) => string = webhookBody) {
    const fixed = typeof secrets === 'string' ? secretsOf(secrets) : null;
    this.secrets = fixed ? () => fixed : (secrets as (tenant: string) => readonly string[]);
    this.policy = policy;
    this.clock = clock;
    this.name = name;
    this.bodyOf = bodyOf;
    this.agent = new Agent({ connect: { lookup: guardedLookup(policy) as never }, keepAliveTimeout: 10_000 });
  }

  async close(): Promise<void> {
    // Calls still running are abandoned (their leases bring the attempts back after a restart).
    await this.agent.destroy();
  }

  async send(task: DeliveryTask, signal: AbortSignal): Promise<SendResult> {
    let body: string;
    try {
      body = this.bodyOf(task);
    } catch (err) {
      return { ok: false, retriable: false, code: 'bad_payload', detail: `task data is not JSON: ${(err as Error).message}` };
    }
    // Checked again at send time: the policy may have changed, and literal addresses skip DNS.
    const refused = urlRefusal(task.address, this.policy);
    if (refused) return { ok: false, retriable: false, code: 'destination_refused', detail: `destination refused: ${refused}` };
    const t = this.clock();
    let res: Awaited<ReturnType<typeof request>>;
    try {
      res = await request(task.address, {
        method: 'POST',
        body,
        signal,
        dispatcher: this.agent,
        headers: {
          'content-type': 'application/json',
          'user-agent': `Herald/0.1 (+${this.name})`,
          'idempotency-key': task.deliveryId,
          'herald-delivery-id': task.deliveryId,
          'herald-attempt': String(task.attempt),
          'herald-signature': signWebhook(this.secrets(task.tenant), t, body),
        },
      });
    } catch (err) {
      return { ok: false, ...networkFailure(err) };
    }
    const status = res.statusCode;
    await res.body.dump().catch(() => undefined);
    const header = (name: string) => {
      const v = res.headers[name];
      return Array.isArray(v) ? (v[0] ?? null) : (v ?? null);
    };
    if (status >= 200 && status < 300) {
      return { ok: true, providerMessageId: header('x-request-id'), detail: `HTTP ${status}` };
    }
    // Redirects are not followed (a redirect could lead anywhere): a permanent failure.
    const retriable = status >= 500 || RETRIABLE.has(status);
    const retryAfterMs = retryAfter(header('retry-after'), Date.now());
    return { ok: false, retriable, code: `http_${status}`, detail: `HTTP ${status}`, ...(retryAfterMs !== null ? { retryAfterMs } : {}) };
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
