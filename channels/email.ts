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
import { fromAddress, isMailbox } from './mailbox.ts';

export { checkFrom, fromAddress, isMailbox } from './mailbox.ts';

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

/** A server's reply as reasons may show it: addresses taken out (reasons are logged and kept on outcomes.v1), one line, clipped. */
export function replyText(response: string): string {
  const text = response.replace(/<[^<>\s]*@[^<>\s]*>|[^\s<>"]+@[^\s<>"]+/g, '<address>').replace(/\s+/g, ' ').trim();
  return text.length > 200 ? `${text.slice(0, 199)}…` : text;
}

/** Subjects are clipped: a long one (a document title, say) would make a header line past RFC 5322's 998 characters, which servers refuse. */
export const MAX_SUBJECT = 250;

/** The first wait after an SMTP 4xx reply, doubling per attempt. */
export const SMTP_RETRY_MS = 60_000;

const TRANSIENT_CODES = new Set(['ECONNECTION', 'ETIMEDOUT', 'ESOCKET', 'EDNS', 'ECONNREFUSED', 'ECONNRESET', 'EPROTOCOL', 'EAUTH', 'ETLS']);
/** Replies about Herald's own credentials (RFC 4954 §6): a fault of the deployment, not of the message. */
const AUTH_REPLIES = new Set([454, 530, 534, 535, 538]);

export interface EmailOptions {
  /** `smtp://user:pass@host:587` or `smtps://…:465` (nodemailer's URL form; query options such as `?tls.rejectUnauthorized=false`). */
  url: string;
  from: string;
  /** Domain of generated Message-IDs. */
  domain?: string;
  /** Per-message timeout (ms). */
  timeoutMs?: number;
  /** Add `X-Herald-Tenant` (the embedded default's local mailbox files mail by it; real recipients never see it). */
  tenantHeader?: boolean;
}

export class EmailChannel implements ChannelProvider {
  readonly name = 'email';
  private readonly transport: Transporter;
  private readonly from: string;
  private readonly domain: string;
  private readonly tenantHeader: boolean;

  constructor(o: EmailOptions) {
    const ms = o.timeoutMs ?? 10_000;
    this.transport = nodemailer.createTransport(`${o.url}${o.url.includes('?') ? '&' : '?'}pool=true&maxConnections=5&connectionTimeout=${ms}&greetingTimeout=${ms}&socketTimeout=${ms}`);
    this.from = o.from;
    // Message-IDs in the sender's own domain (RFC 5322 §3.6.4 asks for one the sender controls).
    this.domain = o.domain ?? fromAddress(o.from)?.split('@')[1] ?? 'herald.invalid';
    this.tenantHeader = o.tenantHeader ?? false;
  }

  async send(task: DeliveryTask, signal: AbortSignal): Promise<SendResult> {
    // Never the address itself in the result: reasons are logged and kept on outcomes.v1.
    if (!isMailbox(task.address)) return { ok: false, retriable: false, code: 'invalid_address', detail: 'the profile\'s email is not one plain address (local@domain, no name, list, spaces or line breaks)' };
    const sending = this.transport.sendMail({
      from: this.from,
      // An address object: nodemailer takes it as one mailbox, never parses it as a list.
      to: { name: '', address: task.address },
      subject: [...(task.subject ?? '')].length > MAX_SUBJECT ? `${[...task.subject!].slice(0, MAX_SUBJECT - 1).join('')}…` : (task.subject ?? ''),
      text: task.body,
      html: htmlOf(task.body),
      messageId: messageIdOf(task.deliveryId, this.domain),
      headers: {
        // Sent by a program (RFC 3834): out-of-office and other auto-replies stay away.
        'Auto-Submitted': 'auto-generated',
        'X-Herald-Notification': task.notificationId, 'X-Herald-Delivery': task.deliveryId, 'X-Herald-Attempt': String(task.attempt),
        ...(this.tenantHeader ? { 'X-Herald-Tenant': task.tenant } : {}),
      },
    });
    const aborted = new Promise<never>((_, reject) => signal.addEventListener('abort', () => reject(Object.assign(new Error('timed out'), { code: 'ETIMEDOUT' })), { once: true }));
    try {
      const info = (await Promise.race([sending, aborted])) as { messageId?: string; response?: string };
      // The server's whole reply: a relay's "queued as …" finds the message in its logs.
      return { ok: true, providerMessageId: info.messageId ?? null, detail: `SMTP ${replyText(String(info.response ?? '250'))}` };
    } catch (err) {
      sending.catch(() => undefined);
      return classify(err as SmtpError, task);
    }
  }

  async close(): Promise<void> {
    this.transport.close();
  }
}

interface SmtpError { responseCode?: number; response?: string; code?: string; command?: string; message?: string }

/**
 * What an SMTP failure means for the notification. The reason carries the server's reply
 * (code, enhanced code and text, addresses taken out: "550 5.1.1 … mailbox unavailable" and
 * "550 5.7.1 … blocked as spam" need different answers) and the command it answered.
 */
function classify(e: SmtpError, task: DeliveryTask): SendResult {
  const at = e.command ? ` at ${e.command.split(' ').slice(0, 2).join(' ').replace(/^AUTH \S+$/, 'AUTH')}` : '';
  const said = e.response ? replyText(e.response) : typeof e.responseCode === 'number' ? String(e.responseCode) : '';
  // Herald's own credentials or sender refused: every mail would fail alike. Not the
  // message's fault, so it is not dead-lettered: it waits (transient, counted toward the
  // server's circuit, which opens and holds all mail until the deployment is fixed).
  if (e.code === 'EAUTH' || (typeof e.responseCode === 'number' && AUTH_REPLIES.has(e.responseCode) && (e.responseCode !== 454 || /^AUTH/.test(e.command ?? '')))) {
    return { ok: false, retriable: true, code: 'eauth', detail: `SMTP ${said || 'authentication failed'}${at}: the server refused Herald's credentials (HERALD_SMTP_URL); retried as in an outage of the server, not dead-lettered at once` };
  }
  if (typeof e.responseCode === 'number' && e.responseCode >= 500 && e.command === 'MAIL FROM' && e.responseCode !== 552) {
    return { ok: false, retriable: true, code: 'esender', detail: `SMTP ${said}${at}: the server refused the sender (HERALD_SMTP_FROM); retried as in an outage of the server, not dead-lettered at once` };
  }
  if (typeof e.responseCode === 'number') {
    // A 4xx is "try again later", as greylisting (postgrey waits 300 s) and relays'
    // throttling answer: as a mail server's queue does, retry after minutes, not seconds:
    // about 1, 2, 4, 5 min (HERALD_MAX_RETRY_DELAY_MS), spread by up to a quarter.
    if (e.responseCode < 500) return { ok: false, retriable: true, code: `smtp_${e.responseCode}`, detail: `SMTP ${said}${at}`, retryAfterMs: Math.round(SMTP_RETRY_MS * 2 ** Math.max(0, task.attempt - 1) * (1 + Math.random() / 4)) };
    // eslint-disable-next-line no-control-regex
    const utf8 = /[^\u0000-\u007f]/.test(task.address.split('@')[0] ?? '') && /^(MAIL|RCPT)/.test(e.command ?? '') ? '; the address needs SMTPUTF8 (RFC 6531), which this server may not offer' : '';
    return { ok: false, retriable: false, code: `smtp_${e.responseCode}`, detail: `SMTP ${said}${at}${utf8}` };
  }
  const code = e.code ?? 'error';
  if (code === 'EENVELOPE') return { ok: false, retriable: false, code: 'eenvelope', detail: 'SMTP envelope refused by the mail library (EENVELOPE): no valid recipient' };
  const message = String(e.message ?? '');
  if (code === 'ETLS' || /certificate|self[- ]signed|CERT_|TLS/i.test(message)) {
    return { ok: false, retriable: true, code: 'etls', detail: `SMTP TLS failed (${code}): ${replyText(message)}; a server with a private CA's certificate is trusted through NODE_EXTRA_CA_CERTS` };
  }
  // Ended without the server's confirmation: if that came after the message was sent, the
  // mail may have arrived; the retry sends it again, under the same Message-ID.
  const unknown = code === 'ETIMEDOUT' || code === 'ECONNECTION' || code === 'ECONNRESET' ? '; if the message had been sent, it may have arrived (the retry has the same Message-ID)' : '';
  return { ok: false, retriable: TRANSIENT_CODES.has(code) || !e.code, code: code.toLowerCase(), detail: `SMTP ${code === 'ETIMEDOUT' ? 'timed out' : 'connection failed'} (${code})${unknown}` };
}
