/**
 * Email channel: SMTP through nodemailer's pooled transport. Each message has a text part
 * and an HTML part (the rendered body HTML-escaped: user data such as a `<script>` in an
 * excerpt arrives as text), a `Message-ID` derived from the delivery id (a retried send is
 * recognisably the same message), and `X-Herald-Notification` / `X-Herald-Delivery`
 * headers. SMTP 4xx replies and connection errors are transient (a 4xx retried after
 * minutes, as mail servers queue); 5xx are permanent.
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

/**
 * Whether `s` is one plain mailbox (local@domain) and nothing else: no display name, no
 * list, no comment, no whitespace or control characters, so a mail client library cannot
 * read it as several recipients or as extra header lines. Profiles reach the email channel
 * from users.v1, which any producer may write, so it is checked here and not only by the API.
 */
export function isMailbox(s: string): boolean {
  if (s.length > 254) return false;
  // eslint-disable-next-line no-control-regex
  if (/[\s\u0000-\u001f\u007f,;:<>()[\]\\"]/.test(s)) return false;
  const at = s.lastIndexOf('@');
  if (at <= 0 || at === s.length - 1 || s.indexOf('@') !== at) return false;
  const domain = s.slice(at + 1);
  return !domain.startsWith('.') && !domain.endsWith('.') && !domain.includes('..');
}

/** The first wait after an SMTP 4xx reply, doubling per attempt. */
export const SMTP_RETRY_MS = 60_000;

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
    // Never the address itself in the result: reasons are logged and kept on outcomes.v1.
    if (!isMailbox(task.address)) return { ok: false, retriable: false, code: 'invalid_address', detail: 'the profile\'s email is not one plain address (local@domain, no name, list, spaces or line breaks)' };
    const sending = this.transport.sendMail({
      from: this.from,
      // An address object: nodemailer takes it as one mailbox, never parses it as a list.
      to: { name: '', address: task.address },
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
        // A 4xx is "try again later", as greylisting (postgrey waits 300 s) and relays'
        // throttling answer: as a mail server's queue does, retry after minutes, not seconds:
        // 1, 2, 4, 5 min (HERALD_MAX_RETRY_DELAY_MS), so the default 5 attempts span 12 min.
        if (e.responseCode < 500) return { ok: false, retriable: true, code: `smtp_${e.responseCode}`, detail: `SMTP ${e.responseCode}`, retryAfterMs: SMTP_RETRY_MS * 2 ** Math.max(0, task.attempt - 1) };
        return { ok: false, retriable: false, code: `smtp_${e.responseCode}`, detail: `SMTP ${e.responseCode}` };
      }
      const code = e.code ?? 'error';
      if (code === 'EENVELOPE') return { ok: false, retriable: false, code: 'eenvelope', detail: 'SMTP envelope refused by the mail library (EENVELOPE): no valid recipient' };
      return { ok: false, retriable: TRANSIENT_CODES.has(code) || !e.code, code: code.toLowerCase(), detail: `SMTP ${code === 'ETIMEDOUT' ? 'timed out' : 'connection failed'} (${code})` };
    }
  }

  async close(): Promise<void> {
    this.transport.close();
  }
}
