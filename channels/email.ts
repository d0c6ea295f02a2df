/**
 * Email channel: SMTP through nodemailer's pooled transport. Each message has a text part
 * and an HTML part (the rendered body HTML-escaped: user data such as a `<script>` in an
 * excerpt arrives as text), a `Message-ID` derived from the delivery id (a retried send is
 * recognisably the same message), and `X-Herald-Notification` / `X-Herald-Delivery`
 * headers. SMTP 4xx replies and connection errors are transient; 5xx are permanent.
 */
import nodemailer, { type Transporter } from 'nodemailer';
import type { DeliveryTask } from '../schemas/types.ts';
import type { ChannelProvider, SendResult } from './channel.ts';

const escapeHtml = (s: string) => s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);

/** The HTML part: the rendered text, escaped, paragraphs and line breaks kept. */
export function htmlOf(text: string): string {
  const paragraphs = text.split(/\n{2,}/).map((p) => `<p>${escapeHtml(p).replace(/\n/g, '<br>')}</p>`);
  return `<!doctype html><html><body>${paragraphs.join('')}</body></html>`;
}

/** `<ntf_….email@herald.invalid>`: stable per delivery, valid as an RFC 5322 msg-id. */
export function messageIdOf(deliveryId: string, domain: string): string {
  return `<${deliveryId.replace(/[^A-Za-z0-9._-]/g, '.')}@${domain}>`;
}

const TRANSIENT_CODES = new Set(['ECONNECTION', 'ETIMEDOUT', 'ESOCKET', 'EDNS', 'ECONNREFUSED', 'ECONNRESET', 'EPROTOCOL', 'EAUTH']);

export interface EmailOptions {
  /** `smtp://user:pass@host:587` or `smtps://…:465` (nodemailer's URL form; query options such as `?tls.rejectUnauthorized=false`). */
  url: string;
  from: string;
  /** Domain of generated Message-IDs. */
  domain?: string;
  /** Per-message timeout (ms). */
  timeoutMs?: number;
}

export class EmailChannel implements ChannelProvider {
  readonly name = 'email';
  private readonly transport: Transporter;
  private readonly from: string;
  private readonly domain: string;

  constructor(o: EmailOptions) {
    const ms = o.timeoutMs ?? 10_000;
    this.transport = nodemailer.createTransport(`${o.url}${o.url.includes('?') ? '&' : '?'}pool=true&maxConnections=5&connectionTimeout=${ms}&greetingTimeout=${ms}&socketTimeout=${ms}`);
    this.from = o.from;
    this.domain = o.domain ?? 'herald.invalid';
  }

  async send(task: DeliveryTask, signal: AbortSignal): Promise<SendResult> {
    const sending = this.transport.sendMail({
      from: this.from,
      to: task.address,
      subject: task.subject ?? '',
      text: task.body,
      html: htmlOf(task.body),
      messageId: messageIdOf(task.deliveryId, this.domain),
      headers: { 'X-Herald-Notification': task.notificationId, 'X-Herald-Delivery': task.deliveryId, 'X-Herald-Tenant': task.tenant, 'X-Herald-Attempt': String(task.attempt) },
    });
    const aborted = new Promise<never>((_, reject) => signal.addEventListener('abort', () => reject(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })), { once: true }));
    try {
      const info = (await Promise.race([sending, aborted])) as { messageId?: string; response?: string };
      return { ok: true, providerMessageId: info.messageId ?? null, detail: `SMTP ${String(info.response ?? '250').slice(0, 3)}` };
    } catch (err) {
      sending.catch(() => undefined);
      const e = err as { responseCode?: number; code?: string };
      if (typeof e.responseCode === 'number') {
        return { ok: false, retriable: e.responseCode < 500, code: `smtp_${e.responseCode}`, detail: `SMTP ${e.responseCode}` };
      }
      const code = e.code ?? 'error';
      return { ok: false, retriable: TRANSIENT_CODES.has(code) || !e.code, code: code.toLowerCase(), detail: `SMTP ${code === 'ETIMEDOUT' ? 'timed out' : 'connection failed'} (${code})` };
    }
  }

  async close(): Promise<void> {
    this.transport.close();
  }
}
