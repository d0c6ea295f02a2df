/**
 * The embedded default's mail server: a real SMTP server (smtp-server) on loopback that
 * keeps the last messages it received, parsed (mailparser), so a newcomer sees email work
 * with no setup (`GET /v1/dev/mailbox`). Off when HERALD_SMTP_URL names a real server.
 */
import type { AddressInfo } from 'node:net';
import { simpleParser } from 'mailparser';
import { SMTPServer } from 'smtp-server';

export interface ReceivedMail {
  receivedAt: string;
  from: string;
  to: string[];
  subject: string;
  messageId: string | null;
  headers: Record<string, string>;
  text: string;
  html: string | null;
}

export class SmtpSink {
  private readonly server: SMTPServer;
  private readonly mails: ReceivedMail[] = [];
  private readonly keep: number;
  url = '';

  constructor(keep = 500) {
    this.keep = keep;
    this.server = new SMTPServer({
      authOptional: true,
      disabledCommands: ['STARTTLS'],
      size: 1024 * 1024,
      logger: false,
      onData: (stream, session, callback) => {
        simpleParser(stream)
          .then((m) => {
            // Each header as the mail had it (unfolded), as a stock mail client shows it.
            const headers: Record<string, string> = {};
            for (const { key, line } of m.headerLines) headers[key] = line.slice(line.indexOf(':') + 1).replace(/\r?\n[ \t]+/g, ' ').trim();
            this.mails.push({
              receivedAt: new Date().toISOString(),
              from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
              to: session.envelope.rcptTo.map((r) => r.address),
              subject: m.subject ?? '',
              messageId: m.messageId ?? null,
              headers,
              text: m.text ?? '',
              html: typeof m.html === 'string' ? m.html : null,
            });
            if (this.mails.length > this.keep) this.mails.splice(0, this.mails.length - this.keep);
            callback();
          })
          .catch((err: Error) => callback(err));
      },
    });
  }

  async start(): Promise<string> {
    // A client that goes away mid-session (a sender killed with SIGKILL) resets its
    // connection: that is the client's problem, never a reason for this process to die.
    this.server.on('error', () => undefined);
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.url = `smtp://127.0.0.1:${(this.server.server.address() as AddressInfo).port}`;
    return this.url;
  }

  /**
   * Newest first, of one tenant (the X-Herald-Tenant header Herald adds for this mailbox),
   * or of every tenant (`null`: a test's sink standing in for a real server, which gets no
   * such header); `to` filters by recipient address.
   */
  list(o: { tenant: string | null; to?: string; limit?: number }): ReceivedMail[] {
    return this.mails.filter((m) => (o.tenant === null || m.headers['x-herald-tenant'] === o.tenant) && (!o.to || m.to.includes(o.to))).slice(-(o.limit ?? 50)).reverse();
  }

  async stop(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
