/**
 * The email channel against a real SMTP server on loopback (smtp-server), the message read
 * back and parsed: both parts, escaping, Message-ID and Herald headers; SMTP replies
 * classified (4xx transient, 5xx permanent, no server transient).
 */
import type { AddressInfo } from 'node:net';
import { SMTPServer } from 'smtp-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmailChannel, checkFrom, htmlOf, isMailbox, MAX_SUBJECT, messageIdOf } from '../channels/email.ts';
import { SmtpSink } from '../channels/smtp-sink.ts';
import type { DeliveryTask } from '../schemas/types.ts';

const task = (over: Partial<DeliveryTask> = {}): DeliveryTask => ({
  deliveryId: 'ntf_abc:email', notificationId: 'ntf_abc', tenant: 'acme', eventId: 'e1', eventType: 'comment.created', ruleId: 'comment-created', recipient: 'ada',
  category: 'collaboration', channel: 'email', address: 'ada@example.com', locale: 'en', subject: 'New comment on Plan',
  body: 'Hi Ada,\n\nlinus wrote: <script>alert(1)</script> & more', data: '{}', fallback: [], attempt: 1, notBefore: null, expiresAt: null, occurredAt: 0, traceId: 't', ...over,
});

const sink = new SmtpSink();
let refusing: SMTPServer;
let refusingUrl = '';
let reply = { code: 450, message: 'mailbox busy' };

beforeAll(async () => {
  await sink.start();
  refusing = new SMTPServer({ authOptional: true, disabledCommands: ['STARTTLS'], logger: false, onRcptTo: (_a, _s, cb) => cb(Object.assign(new Error(reply.message), { responseCode: reply.code })) });
  await new Promise<void>((r) => refusing.listen(0, '127.0.0.1', r));
  refusingUrl = `smtp://127.0.0.1:${(refusing.server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await sink.stop();
  await new Promise<void>((r) => refusing.close(() => r()));
});

describe('email channel', () => {
  it('sends a text and an HTML part with user data escaped, a Message-ID from the delivery id, and Herald headers', async () => {
    const email = new EmailChannel({ url: sink.url, from: 'Herald <n@herald.test>', tenantHeader: true });
    const r = await email.send(task(), AbortSignal.timeout(5000));
    await email.close();
    // the server's whole reply (a relay's "queued as …" finds the message in its logs)
    expect(r).toMatchObject({ ok: true });
    expect((r as { detail: string }).detail).toMatch(/^SMTP 250 \S/);
    const [mail] = sink.list({ tenant: 'acme' });
    // Message-IDs in the sender's domain
    expect(mail).toMatchObject({ to: ['ada@example.com'], subject: 'New comment on Plan', messageId: messageIdOf('ntf_abc:email', 'herald.test') });
    expect(mail!.messageId).toBe('<ntf_abc.email@herald.test>');
    expect(mail!.headers['auto-submitted']).toBe('auto-generated');
    // the mailbox shows each header as the mail had it (a string, as a mail client shows it)
    expect(mail!.headers['from']).toBe('Herald <n@herald.test>');
    expect(mail!.headers['to']).toBe('ada@example.com');
    expect(mail!.headers['x-herald-notification']).toBe('ntf_abc');
    expect(mail!.headers['x-herald-delivery']).toBe('ntf_abc:email');
    expect(mail!.text.trim()).toBe('Hi Ada,\n\nlinus wrote: <script>alert(1)</script> & more');
    expect(mail!.html).toContain('&lt;script&gt;alert(1)&lt;/script&gt; &amp; more');
    expect(mail!.html).not.toContain('<script>');
    expect(sink.list({ tenant: 'globex' })).toEqual([]); // the mailbox is per tenant
  });

  it('treats an SMTP 4xx as transient and a 5xx as permanent', async () => {
    const email = new EmailChannel({ url: refusingUrl, from: 'n@herald.test' });
    reply = { code: 450, message: '4.2.1 mailbox busy' };
    const first = await email.send(task(), AbortSignal.timeout(5000)) as { retryAfterMs: number };
    expect(first).toMatchObject({ ok: false, retriable: true, code: 'smtp_450', detail: 'SMTP 450 4.2.1 mailbox busy at RCPT TO' });
    expect(first.retryAfterMs).toBeGreaterThanOrEqual(60_000);
    expect(first.retryAfterMs).toBeLessThanOrEqual(75_000); // spread by up to a quarter
    // as a mail server's queue backs off: the third attempt waits about four minutes
    const third = await email.send(task({ attempt: 3 }), AbortSignal.timeout(5000)) as { retryAfterMs: number };
    expect(third.retryAfterMs).toBeGreaterThanOrEqual(240_000);
    expect(third.retryAfterMs).toBeLessThanOrEqual(300_000);
    // the reply's code, enhanced code and text, and the command it answered; never the address
    reply = { code: 550, message: '5.1.1 <ada@example.com>: Recipient address rejected: mailbox unavailable' };
    expect(await email.send(task(), AbortSignal.timeout(5000))).toMatchObject({ ok: false, retriable: false, code: 'smtp_550', detail: 'SMTP 550 5.1.1 <address>: Recipient address rejected: mailbox unavailable at RCPT TO' });
    await email.close();
  });

  it('holds mail when the server refuses Herald\'s credentials or sender (a deployment fault), instead of dead-lettering it', async () => {
    const auth = new SMTPServer({ disabledCommands: ['STARTTLS'], allowInsecureAuth: true, logger: false, onAuth: (_a, _s, cb) => cb(Object.assign(new Error('5.7.8 Authentication credentials invalid'), { responseCode: 535 })) });
    const sender = new SMTPServer({ authOptional: true, disabledCommands: ['STARTTLS'], logger: false, onMailFrom: (_a, _s, cb) => cb(Object.assign(new Error('5.7.1 Sender address rejected: not owned by user'), { responseCode: 553 })) });
    try {
      for (const server of [auth, sender]) await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const port = (server: SMTPServer) => (server.server.address() as AddressInfo).port;
      const badLogin = new EmailChannel({ url: `smtp://herald:wrong@127.0.0.1:${port(auth)}`, from: 'n@herald.test' });
      const refused = await badLogin.send(task(), AbortSignal.timeout(5000));
      await badLogin.close();
      expect(refused).toMatchObject({ ok: false, retriable: true, code: 'eauth' });
      expect((refused as { detail: string }).detail).toMatch(/^SMTP 535 5\.7\.8 Authentication credentials invalid at AUTH: the server refused Herald's credentials \(HERALD_SMTP_URL\)/);
      const badSender = new EmailChannel({ url: `smtp://127.0.0.1:${port(sender)}`, from: 'n@herald.test' });
      const r = await badSender.send(task(), AbortSignal.timeout(5000));
      await badSender.close();
      expect(r).toMatchObject({ ok: false, retriable: true, code: 'esender' });
      expect((r as { detail: string }).detail).toContain('(HERALD_SMTP_FROM)');
    } finally {
      for (const server of [auth, sender]) await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('clips a long subject (no header line past 998 characters), and sends X-Herald-Tenant only to the local mailbox', async () => {
    const email = new EmailChannel({ url: sink.url, from: 'n@herald.test', tenantHeader: true });
    expect(await email.send(task({ tenant: 'long', deliveryId: 'ntf_long:email', subject: 'T'.repeat(2500) }), AbortSignal.timeout(5000))).toMatchObject({ ok: true });
    await email.close();
    const [mail] = sink.list({ tenant: 'long' });
    expect([...mail!.subject]).toHaveLength(MAX_SUBJECT);
    expect(mail!.subject.endsWith('…')).toBe(true);
    const real = new EmailChannel({ url: sink.url, from: 'n@herald.test' });
    expect(await real.send(task({ tenant: 'hidden', deliveryId: 'ntf_hidden:email' }), AbortSignal.timeout(5000))).toMatchObject({ ok: true });
    await real.close();
    expect(sink.list({ tenant: 'hidden' })).toEqual([]);
  });

  it('sends only to one plain address: one with a header or a second recipient smuggled in (a profile written straight to users.v1) fails for good, and nothing reaches the server', async () => {
    const email = new EmailChannel({ url: sink.url, from: 'n@herald.test', tenantHeader: true });
    const before = sink.list({ tenant: 'smuggled' }).length;
    for (const address of ['x@y.test\r\nBcc: evil@evil.test', 'x@y.test, evil@evil.test', '"x" <evil@evil.test>', 'not-an-email']) {
      const r = await email.send(task({ tenant: 'smuggled', address }), AbortSignal.timeout(5000));
      expect(r, address).toMatchObject({ ok: false, retriable: false, code: 'invalid_address' });
      expect((r as { detail: string }).detail).not.toContain('evil');
    }
    await email.close();
    expect(sink.list({ tenant: 'smuggled' }).length).toBe(before);
    expect(['ada@example.com', 'o\'brien+tag@mail.example.co.uk', 'josé@exämple.test'].every(isMailbox)).toBe(true);
    expect(['a@b@c', '@b.test', 'a@', 'a@.b', 'a b@c.test', 'a@b..c', 'a..b@example.com', '.a@example.com', 'a.@example.com', 'a@-example.com', 'a@example-.com', `${'x'.repeat(65)}@example.com`].filter(isMailbox)).toEqual([]);
    // HERALD_SMTP_FROM: one address, a name optional, no line breaks
    expect(['Herald Ops <ops@acme.example>', 'ops@acme.example', 'Acme Notifications <n@acme.example>'].map(checkFrom)).toEqual([null, null, null]);
    expect(checkFrom('Herald Ops\r\nBcc: leak@evil.example')).toMatch(/^expected one address/);
    expect(checkFrom('a@b.test, c@d.test')).not.toBeNull();
  });

  it('treats an unreachable server as transient', async () => {
    const email = new EmailChannel({ url: 'smtp://127.0.0.1:9', from: 'n@herald.test', timeoutMs: 2000 });
    expect(await email.send(task(), AbortSignal.timeout(5000))).toMatchObject({ ok: false, retriable: true });
    await email.close();
  });

  it('keeps the sink up when a sender resets its connection mid-session (a sender killed with SIGKILL)', async () => {
    const { connect } = await import('node:net');
    const port = Number(new URL(sink.url).port);
    await new Promise<void>((resolve) => {
      // Reset in the middle of a message body, as a killed sender leaves it.
      const socket = connect(port, '127.0.0.1');
      let said = '';
      socket.on('data', (d: Buffer) => {
        said += d.toString();
        if (said.includes('354')) {
          socket.write('Subject: half\r\n\r\nhalf a body');
          setTimeout(() => {
            socket.resetAndDestroy();
            resolve();
          }, 20);
        } else if (said.startsWith('220') && !said.includes('250')) socket.write('EHLO killed.example\r\n');
        else if (said.includes('250') && !said.includes('MAILSENT')) {
          said += 'MAILSENT';
          socket.write('MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n');
        }
      });
    });
    await new Promise((r) => setTimeout(r, 100));
    const email = new EmailChannel({ url: sink.url, from: 'n@herald.test' });
    expect(await email.send(task({ deliveryId: 'ntf_after:email' }), AbortSignal.timeout(5000))).toMatchObject({ ok: true });
    await email.close();
  });

  it('escapes HTML and keeps paragraphs', () => {
    expect(htmlOf('a <b>\n"c"\n\nd')).toBe('<!doctype html><html><body><p>a &lt;b&gt;<br>&quot;c&quot;</p><p>d</p></body></html>');
  });
});
