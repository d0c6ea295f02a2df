/** Unit tests of channels/webhook.ts: signatures, and `WebhookChannel.send` against a local HTTP server. */
import { createHmac } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { secretsOf, signWebhook, verifyWebhookSignature, WebhookChannel, webhookBody } from '../channels/webhook.ts';
import type { DeliveryTask } from '../schemas/types.ts';
import { parseAllowList } from '../channels/outbound.ts';

/** Tests receive on loopback, which the policy allowlists as development does. */
const LOCAL = { requireHttps: false, allow: parseAllowList('127.0.0.1') };
const STRICT = { requireHttps: false, allow: [] };

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const SECRET = 'whsec_test_6f1c2a';
const NOW = 1_735_787_045_678;

function task(address: string, over: Partial<DeliveryTask> = {}): DeliveryTask {
  const base = JSON.parse(readFileSync(join(root, 'schemas', 'fixtures', 'DeliveryTask.json'), 'utf8')) as DeliveryTask;
  return { ...base, address, ...over };
}

describe('signWebhook / verifyWebhookSignature', () => {
  const body = JSON.stringify({ deliveryId: 'ntf_1:webhook', body: 'hello' });

  it('produces t=<unix seconds>,v1=<64 hex> (Stripe\'s layout) and verifies', () => {
    // given a signature made now
    const header = signWebhook(SECRET, NOW, body);
    // then it has the documented shape and verifies against the same body
    expect(header).toMatch(/^t=1735787045,v1=[0-9a-f]{64}$/);
    expect(verifyWebhookSignature(SECRET, header, body, NOW)).toBe(true);
  });

  it('verifies the way a receiver following Stripe\'s scheme does: HMAC-SHA256 of "<t>.<body>", t in seconds', () => {
    // given a header, checked with nothing but node:crypto, as a receiver written for Stripe-style signatures would
    const header = signWebhook(SECRET, NOW, body);
    const parts = Object.fromEntries(header.split(',').map((p) => p.split('=') as [string, string]));
    const expected = createHmac('sha256', SECRET).update(`${parts.t}.${body}`).digest('hex');
    // then its v1 matches, and t is within Stripe's default 300 s tolerance of now in seconds
    expect(parts.v1).toBe(expected);
    expect(Math.abs(Math.floor(NOW / 1000) - Number(parts.t))).toBeLessThanOrEqual(300);
  });

  it('verifies within the replay tolerance', () => {
    const header = signWebhook(SECRET, NOW, body);
    expect(verifyWebhookSignature(SECRET, header, body, NOW + 299_000)).toBe(true);
  });

  it('fails for a tampered body', () => {
    const header = signWebhook(SECRET, NOW, body);
    expect(verifyWebhookSignature(SECRET, header, body.replace('hello', 'hellO'), NOW)).toBe(false);
  });

  it('fails for the wrong secret', () => {
    const header = signWebhook(SECRET, NOW, body);
    expect(verifyWebhookSignature('another-secret', header, body, NOW)).toBe(false);
  });

  it('fails for a stale timestamp (older than the tolerance)', () => {
    // given a signature made ten minutes ago
    const header = signWebhook(SECRET, NOW - 600_000, body);
    // then it is rejected with the default 5-minute tolerance, and accepted with a wider one
    expect(verifyWebhookSignature(SECRET, header, body, NOW)).toBe(false);
    expect(verifyWebhookSignature(SECRET, header, body, NOW, 900_000)).toBe(true);
  });

  it('fails for a timestamp too far in the future', () => {
    expect(verifyWebhookSignature(SECRET, signWebhook(SECRET, NOW + 600_000, body), body, NOW)).toBe(false);
  });

  it('fails when the timestamp in the header is changed', () => {
    // given a valid signature whose t= is moved by one second
    const t = Math.floor(NOW / 1000);
    const header = signWebhook(SECRET, NOW, body).replace(`t=${t}`, `t=${t + 1}`);
    expect(header).toContain(`t=${t + 1},`);
    expect(verifyWebhookSignature(SECRET, header, body, NOW)).toBe(false);
  });

  it.each(['', 'garbage', `t=${NOW / 1000}`, `v1=${'a'.repeat(64)}`, `t=abc,v1=${'a'.repeat(64)}`, `t=${Math.floor(NOW / 1000)},v1=zz`, `t=1e9,v1=${'a'.repeat(64)}`])(
    'fails for a malformed header %j',
    (header) => {
      expect(verifyWebhookSignature(SECRET, header, body, NOW)).toBe(false);
    },
  );
});

interface Seen {
  method: string | undefined;
  headers: IncomingHttpHeaders;
  body: string;
}

interface Receiver {
  url: string;
  seen: Seen[];
  server: Server;
  close(): Promise<void>;
}

/** A webhook receiver on 127.0.0.1 that records each request and answers with `reply`. */
async function receiver(reply: { status: number; headers?: Record<string, string>; body?: string }): Promise<Receiver> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      seen.push({ method: req.method, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      res.writeHead(reply.status, { 'content-type': 'text/plain', ...reply.headers });
      res.end(reply.body ?? 'ok');
    });
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const { port } = server.address() as AddressInfo;
  let closed = false;
  return {
    url: `http://127.0.0.1:${port}/hooks/herald`,
    seen,
    server,
    close: () => {
      if (closed) return Promise.resolve();
      closed = true;
      server.closeAllConnections();
      return new Promise<void>((done, fail) => server.close((err) => (err ? fail(err) : done())));
    },
  };
}

describe('WebhookChannel.send against a real HTTP server', () => {
  const open: Receiver[] = [];
  const start = async (reply: { status: number; headers?: Record<string, string>; body?: string }) => {
    const r = await receiver(reply);
    open.push(r);
    return r;
  };
  afterEach(async () => {
    await Promise.all(open.splice(0).map((r) => r.close()));
  });

  it('POSTs the signed JSON body with the delivery id as Idempotency-Key, and 2xx is ok', async () => {
    // given a receiver that answers 200 with a request id
    const r = await start({ status: 200, headers: { 'x-request-id': 'req-77' } });
    const t = task(r.url);
    // when the task is sent
    const result = await new WebhookChannel(SECRET, LOCAL, () => NOW).send(t, AbortSignal.timeout(2000));
    // then it is delivered
    expect(result).toEqual({ ok: true, providerMessageId: 'req-77', detail: 'HTTP 200' });
    // and the request carried the idempotency key, delivery headers and a valid signature over the raw body
    expect(r.seen).toHaveLength(1);
    const req = r.seen[0]!;
    expect(req.method).toBe('POST');
    expect(req.headers['idempotency-key']).toBe(t.deliveryId);
    expect(req.headers['herald-delivery-id']).toBe(t.deliveryId);
    expect(req.headers['herald-attempt']).toBe(String(t.attempt));
    expect(req.headers['content-type']).toBe('application/json');
    const signature = req.headers['herald-signature'];
    expect(typeof signature).toBe('string');
    expect(verifyWebhookSignature(SECRET, signature as string, req.body, NOW)).toBe(true);
    expect(verifyWebhookSignature('wrong-secret', signature as string, req.body, NOW)).toBe(false);
    // and the body is the documented JSON, with data as an object and no address
    expect(req.body).toBe(webhookBody(t));
    const payload = JSON.parse(req.body) as Record<string, unknown>;
    expect(payload).toMatchObject({
      deliveryId: t.deliveryId, notificationId: t.notificationId, eventType: t.eventType,
      subject: t.subject, body: t.body, attempt: t.attempt, data: JSON.parse(t.data) as unknown,
      occurredAt: new Date(t.occurredAt).toISOString(),
    });
    expect(payload).not.toHaveProperty('address');
  });

  it('treats 204 as delivered without a provider message id', async () => {
    const r = await start({ status: 204 });
    const result = await new WebhookChannel(SECRET, LOCAL).send(task(r.url), AbortSignal.timeout(2000));
    expect(result).toEqual({ ok: true, providerMessageId: null, detail: 'HTTP 204' });
  });

  it('503 is a retriable failure', async () => {
    const r = await start({ status: 503 });
    const result = await new WebhookChannel(SECRET, LOCAL).send(task(r.url), AbortSignal.timeout(2000));
    expect(result).toMatchObject({ ok: false, retriable: true, code: 'http_503' });
    expect(result).not.toHaveProperty('retryAfterMs');
  });

  it('400 is a permanent failure', async () => {
    const r = await start({ status: 400 });
    const result = await new WebhookChannel(SECRET, LOCAL).send(task(r.url), AbortSignal.timeout(2000));
    expect(result).toMatchObject({ ok: false, retriable: false, code: 'http_400' });
  });

  it.each([408, 425])('%i is retriable', async (status) => {
    const r = await start({ status });
    const result = await new WebhookChannel(SECRET, LOCAL).send(task(r.url), AbortSignal.timeout(2000));
    expect(result).toMatchObject({ ok: false, retriable: true, code: `http_${status}` });
  });

  it('429 with Retry-After: 2 is retriable after 2000 ms', async () => {
    const r = await start({ status: 429, headers: { 'retry-after': '2' } });
    const result = await new WebhookChannel(SECRET, LOCAL).send(task(r.url), AbortSignal.timeout(2000));
    expect(result).toMatchObject({ ok: false, retriable: true, code: 'http_429', retryAfterMs: 2000 });
  });

  it('a receiver that answers after the timeout is a retriable failure that says so (not "network error (23)")', async () => {
    const { createServer } = await import('node:http');
    const slow = createServer((_req, res) => void setTimeout(() => res.end('late'), 2000).unref());
    await new Promise<void>((r) => slow.listen(0, '127.0.0.1', () => r()));
    try {
      const url = `http://127.0.0.1:${(slow.address() as { port: number }).port}/hook`;
      const result = await new WebhookChannel(SECRET, LOCAL).send(task(url), AbortSignal.timeout(200));
      expect(result).toMatchObject({ ok: false, retriable: true, code: 'TimeoutError', detail: 'request failed: no response within HERALD_DELIVERY_TIMEOUT_MS' });
    } finally {
      slow.closeAllConnections();
      slow.close();
    }
  });

  it('a refused connection is retriable', async () => {
    // given a receiver that has gone away
    const r = await start({ status: 200 });
    await r.close();
    // when a task is sent to it
    const result = await new WebhookChannel(SECRET, LOCAL).send(task(r.url), AbortSignal.timeout(2000));
    // then the failure is retriable and names the network error
    expect(result).toMatchObject({ ok: false, retriable: true, code: 'ECONNREFUSED', detail: 'request failed: connection refused' });
    expect(r.seen).toHaveLength(0);
  });

  it('refuses a loopback destination when the policy does not allow it, literal or by name (checked on the resolved address)', async () => {
    const r = await start({ status: 200 });
    const port = new URL(r.url).port;
    for (const address of [r.url, `http://[::ffff:127.0.0.1]:${port}/hook`, `http://localhost:${port}/hook`, `http://0:${port}/hook`]) {
      const result = await new WebhookChannel(SECRET, STRICT).send(task(address), AbortSignal.timeout(2000));
      expect([address, result]).toEqual([address, expect.objectContaining({ ok: false, retriable: false, code: 'destination_refused' })]);
    }
    expect(r.seen).toHaveLength(0);
  });

  it('describes a failure by its status only, never with the receiver\'s response', async () => {
    const r = await start({ status: 500, body: 'stack trace: db password=hunter2' });
    const result = await new WebhookChannel(SECRET, LOCAL).send(task(r.url), AbortSignal.timeout(2000));
    expect(result).toEqual({ ok: false, retriable: true, code: 'http_500', detail: 'HTTP 500' });
  });
});

describe('Retry-After', () => {
  it('reads delay-seconds and an HTTP-date, and ignores what it cannot read', async () => {
    const { retryAfter } = await import('../channels/webhook.ts');
    const now = Date.parse('2026-10-21T07:28:00Z');
    expect(retryAfter('120', now)).toBe(120_000);
    expect(retryAfter('Wed, 21 Oct 2026 07:30:00 GMT', now)).toBe(120_000);
    expect(retryAfter('Wed, 21 Oct 2026 07:00:00 GMT', now)).toBe(0); // already past: retry now
    expect([retryAfter(null, now), retryAfter('', now), retryAfter('soon', now), retryAfter('0', now)]).toEqual([null, null, null, null]);
  });
});


describe('chat channel (Slack-compatible incoming webhook)', () => {
  it('posts {text, blocks} with the subject in bold and user text escaped for mrkdwn, signed like a webhook', async () => {
    const { chatChannel } = await import('../channels/chat.ts');
    const r = await receiver({ status: 200 });
    try {
      const t = { ...task(r.url), channel: 'chat', subject: 'New comment', body: 'linus wrote: <script> & <@U123>' };
      const result = await chatChannel(SECRET, LOCAL).send(t, AbortSignal.timeout(2000));
      expect(result).toMatchObject({ ok: true, detail: 'HTTP 200' });
      const body = JSON.parse(r.seen[0]!.body) as { text: string; blocks: { type: string; text: { type: string; text: string } }[] };
      expect(body).toEqual({
        text: 'New comment: linus wrote: &lt;script&gt; &amp; &lt;@U123&gt;',
        blocks: [{ type: 'section', text: { type: 'mrkdwn', text: '*New comment*\nlinus wrote: &lt;script&gt; &amp; &lt;@U123&gt;' } }],
      });
      expect(verifyWebhookSignature(SECRET, String(r.seen[0]!.headers['herald-signature']), r.seen[0]!.body)).toBe(true);
    } finally {
      await r.close();
    }
  });

  it('keeps within Slack\'s Block Kit limits: long bodies in several sections of at most 3,000 characters, entities never cut, empty text never sent', async () => {
    const { chatBody, SLACK_LIMITS } = await import('../channels/chat.ts');
    type Message = { text: string; blocks?: { type: string; text: { type: string; text: string } }[] };
    const body = (subject: string | null, text: string) => JSON.parse(chatBody({ ...task('http://x/'), channel: 'chat', subject, body: text })) as Message;
    // 800 '<' escape to 3,200 characters: two sections, each whole entities only.
    const angles = body('xy', '<'.repeat(800));
    expect(angles.blocks!.map((b) => b.text.text.length)).toEqual([2997, 208]); // 3,000 would cut an entity
    for (const b of angles.blocks!) expect(b.text.text.replace(/^\*xy\*\n/, '')).toMatch(/^(&lt;)+$/);
    expect(angles.blocks!.map((b) => b.text.text).join('').replace('*xy*\n', '')).toBe('&lt;'.repeat(800));
    // Paragraphs are split at a line break, not mid-word.
    const para = `${'word '.repeat(500).trim()}\n${'next '.repeat(200).trim()}`;
    const split = body(null, para);
    expect(split.blocks!.map((b) => b.text.text)).toEqual(['word '.repeat(500).trim(), 'next '.repeat(200).trim()]);
    // A digest far past 50 sections: 50 blocks, the last clipped with an ellipsis; the text clipped at 40,000.
    const huge = body('Digest', 'item text '.repeat(20_000));
    expect(huge.blocks).toHaveLength(SLACK_LIMITS.blocks);
    expect(huge.blocks!.every((b) => b.text.text.length >= 1 && b.text.text.length <= SLACK_LIMITS.sectionText)).toBe(true);
    expect(huge.blocks!.at(-1)!.text.text.endsWith('…')).toBe(true);
    expect(huge.text.length).toBeLessThanOrEqual(SLACK_LIMITS.text);
    // An emoji at a cut is never split into half a surrogate pair.
    const emoji = body(null, `${'a'.repeat(2999)}😀${'b'.repeat(10)}`);
    expect(emoji.blocks!.map((b) => b.text.text)).toEqual(['a'.repeat(2999), `😀${'b'.repeat(10)}`]);
    // Nothing to say: no empty section (Slack answers invalid_blocks), and a text that is not empty.
    expect(body(null, '')).toEqual({ text: '(no text)' });
    expect(body('Only a subject', '')).toEqual({ text: 'Only a subject: ', blocks: [{ type: 'section', text: { type: 'mrkdwn', text: '*Only a subject*' } }] });
  });

  it('honours 429 with Retry-After', async () => {
    const { chatChannel } = await import('../channels/chat.ts');
    const r = await receiver({ status: 429, headers: { 'retry-after': '30' } });
    try {
      expect(await chatChannel(SECRET, LOCAL).send({ ...task(r.url), channel: 'chat' }, AbortSignal.timeout(2000))).toMatchObject({ ok: false, retriable: true, code: 'http_429', retryAfterMs: 30_000 });
    } finally {
      await r.close();
    }
  });
});

describe('signing secret rotation', () => {
  it('sends one v1 per secret while rotating, and a receiver with either secret verifies it', () => {
    const header = signWebhook(secretsOf('new-secret, old-secret'), NOW, 'body');
    expect(header.split(',').filter((p) => p.startsWith('v1='))).toHaveLength(2);
    expect(verifyWebhookSignature('new-secret', header, 'body', NOW)).toBe(true);
    expect(verifyWebhookSignature('old-secret', header, 'body', NOW)).toBe(true);
    expect(verifyWebhookSignature('other-secret', header, 'body', NOW)).toBe(false);
    expect(verifyWebhookSignature('old-secret', header, 'b0dy', NOW)).toBe(false);
  });
});
