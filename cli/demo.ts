/**
 * `herald start --demo`: a local webhook receiver that checks signatures, a few demo
 * users pointing at it, and sample events, so a newcomer sees notifications delivered
 * and their lifecycles within seconds: then a burst over a rate limit (deferred, then
 * released) and edits collected into a digest (rules/demo.json, unless HERALD_RULES is set).
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { verifyWebhookSignature } from '../channels/webhook.ts';

export async function runDemo(httpUrl: string, secret: string, apiKey: string, print: (line: string) => void): Promise<() => Promise<void>> {
  const startedAt = Date.now();
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      const ok = verifyWebhookSignature(secret, String(req.headers['herald-signature'] ?? ''), body);
      if (req.url?.startsWith('/chat/')) {
        const c = JSON.parse(body) as { text: string };
        print(`demo chat <- ${req.url.slice(6)}: ${c.text} [signature ${ok ? 'valid' : 'INVALID'}]`);
      } else {
        const n = JSON.parse(body) as { recipient: string; subject: string | null; body: string };
        print(`demo webhook <- ${n.recipient}: "${n.subject ?? ''}" ${n.body} [signature ${ok ? 'valid' : 'INVALID'}, Idempotency-Key ${String(req.headers['idempotency-key'])}]`);
      }
      res.writeHead(ok ? 204 : 401).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const receiver = `${base}/hooks`;
  const call = async (method: string, path: string, body: unknown, headers: Record<string, string> = {}) => {
    const res = await fetch(`${httpUrl}${path}`, { method, headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}`, ...headers }, body: JSON.stringify(body) });
    return res.json() as Promise<Record<string, unknown>>;
  };
  const users = [
    { id: 'ada', name: 'Ada', locale: 'en', timezone: 'Europe/London' },
    { id: 'grace', name: 'Grace', locale: 'de-DE', timezone: 'Europe/Berlin' },
  ];
  for (const u of users) await call('PUT', `/v1/users/${u.id}`, { name: u.name, locale: u.locale, timezone: u.timezone, webhookUrl: receiver, chatWebhookUrl: `${base}/chat/${u.id}`, email: `${u.id}@example.com` });
  // Wait until the users table has the profiles, so the first events find them.
  for (let i = 0; i < 100; i++) {
    const seen = await Promise.all(users.map((u) => fetch(`${httpUrl}/v1/users/${u.id}`, { headers: { authorization: `Bearer ${apiKey}` } }).then((r) => r.ok)));
    if (seen.every(Boolean)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  // Ada's in-app inbox, live (server-sent events), as a front end would show it.
  const inbox = new AbortController();
  void fetch(`${httpUrl}/v1/users/ada/inbox/stream`, { headers: { authorization: `Bearer ${apiKey}` }, signal: inbox.signal }).then(async (res) => {
    let buffer = '';
    for await (const chunk of res.body!.pipeThrough(new TextDecoderStream())) {
      buffer += chunk;
      for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (data && /^event: item$/m.test(block)) print(`demo inbox <- ada: ${(JSON.parse(data) as { body: string }).body} (live, server-sent event)`);
      }
    }
  }).catch(() => undefined);
  const events = [
    { type: 'comment.created', tenant: 'acme', recipients: ['ada', 'grace'], actor: 'linus', data: { commentId: 'c-1', documentTitle: 'Q3 plan', excerpt: 'Looks good to me' } },
    { type: 'pull_request.review_requested', tenant: 'acme', recipients: ['ada'], actor: 'grace', data: { pullRequestId: 42, title: 'Add retries' } },
    // Over comment-created's 2-per-20s limit for ada: the last two are deferred, then released.
    ...['c-2', 'c-3', 'c-4'].map((commentId) => ({ type: 'comment.created', tenant: 'acme', recipients: ['ada'], actor: 'linus', data: { commentId, documentTitle: 'Q3 plan', excerpt: `comment ${commentId}` } })),
    // doc-edited allows one an hour: the next three go out as one digest 10 s later.
    ...['e-1', 'e-2', 'e-3', 'e-4'].map((editId, i) => ({ type: 'doc.edited', tenant: 'acme', recipients: ['grace'], actor: ['ada', 'linus', 'ada', 'mia'][i], data: { editId, documentTitle: 'Q3 plan' } })),
  ];
  const ids: string[] = [];
  for (const [i, e] of events.entries()) {
    const r = await call('POST', '/v1/events', e, { 'idempotency-key': `demo-${i}` });
    for (const n of (r.notifications as { notificationId: string }[] | undefined) ?? []) ids.push(n.notificationId);
    print(`demo published ${e.type} -> ${JSON.stringify(r)}`);
  }
  // The same request again: the Idempotency-Key makes it the same event, delivered once.
  await call('POST', '/v1/events', events[0], { 'idempotency-key': 'demo-0' });
  const pending = new Set(ids);
  const started = Date.now();
  while (pending.size && Date.now() - started < 60_000) {
    for (const id of [...pending]) {
      const res = await fetch(`${httpUrl}/v1/notifications/${id}`, { headers: { authorization: `Bearer ${apiKey}` } });
      if (!res.ok) continue;
      const n = (await res.json()) as { status: string; channels: Record<string, string>; terminal: string[]; events: { stage: string; status: string; reason: string; timestamp: number }[] };
      // Done once every channel it was routed to has its result (the in-app one is quick; a
      // webhook may still be on its way), or once it ended without a channel.
      if (n.terminal.length && Object.keys(n.channels ?? {}).every((ch) => n.terminal.some((t) => t.startsWith(`${ch}:`)))) {
        pending.delete(id);
        const published = n.events[0]!.timestamp;
        const ended = n.events.at(-1)!.timestamp;
        // The demo's events have fixed ids: on a state directory that has seen them, the
        // pipeline takes them as retries and sends nothing; what is shown is the first run's.
        const earlier = published < startedAt - 60_000 ? ` [published by an earlier run at ${new Date(published).toISOString()}: nothing was sent again; HERALD_STATE_DIR=$(mktemp -d) npm run demo shows it anew]` : '';
        print(`demo lifecycle ${id}: ${n.events.map((e) => `${e.stage}:${e.status}`).join(' -> ')} (${ended - published} ms from publish to ${n.status})${earlier}`);
        const held = n.events.some((e) => e.status === 'DEFERRED');
        if (held) print(`demo   why: ${n.events.filter((e) => e.stage === 'throttle').map((e) => e.reason).join(' | ')}`);
      }
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const box = (await (await fetch(`${httpUrl}/v1/dev/mailbox?limit=3`, { headers: { authorization: `Bearer ${apiKey}` } })).json()) as { mails?: { to: string[]; subject: string }[] };
  for (const m of box.mails ?? []) print(`demo mailbox <- ${m.to.join(', ')}: "${m.subject}" (the embedded SMTP sink, ${httpUrl}/v1/dev/mailbox)`);
  print(`demo done: curl -H 'Authorization: Bearer ${apiKey}' ${httpUrl}/v1/users/ada/notifications`);
  return () => {
    inbox.abort();
    return new Promise<void>((r) => server.close(() => r()));
  };
}
