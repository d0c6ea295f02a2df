/**
 * Delivery behaviour on the embedded broker with real servers in-process: an endpoint
 * that fails for 30 s and recovers (its circuit opens, nothing is dead-lettered,
 * everything is delivered once it closes, and the endpoint is called only a handful of
 * times while open), and strategy first falling back from email (an SMTP server that
 * answers 550) to the webhook.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SMTPServer } from 'smtp-server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Herald } from '../app/herald.ts';
import type { NotificationView } from '../processors/outcome.ts';
import { api, eventually, removeDir, startTestHerald } from './support/herald.ts';

let h: Herald & { stateDir: string };
let hooks: Server;
let hooksUrl = '';
let smtp: SMTPServer;
let down = false;
const calls: { at: number; path: string; failed: boolean }[] = [];

beforeAll(async () => {
  hooks = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      calls.push({ at: Date.now(), path: req.url ?? '', failed: down });
      res.writeHead(down ? 503 : 204).end();
    });
  });
  await new Promise<void>((r) => hooks.listen(0, '127.0.0.1', r));
  hooksUrl = `http://127.0.0.1:${(hooks.address() as AddressInfo).port}`;
  smtp = new SMTPServer({ authOptional: true, disabledCommands: ['STARTTLS'], logger: false, onRcptTo: (_a, _s, cb) => cb(Object.assign(new Error('no such mailbox'), { responseCode: 550 })) });
  await new Promise<void>((r) => smtp.listen(0, '127.0.0.1', r));
  const doc = JSON.parse(readFileSync('rules/default.json', 'utf8')) as { rules: Record<string, unknown>[] };
  doc.rules.push({ id: 'alert', eventType: 'ops.alert', category: 'ops', priority: 'HIGH', channels: ['email', 'webhook'], strategy: 'first', templates: { email: { en: { subject: 'Alert', body: '{{data.text}}' } }, webhook: { en: { subject: 'Alert', body: '{{data.text}}' } } } });
  const rules = join(mkdtempSync(join(tmpdir(), 'herald-rules-')), 'rules.json');
  writeFileSync(rules, JSON.stringify(doc));
  h = await startTestHerald({
    env: {
      HERALD_RULES: rules, HERALD_SMTP_URL: `smtp://127.0.0.1:${(smtp.server.address() as AddressInfo).port}`,
      HERALD_BREAKER_FAILURES: '3', HERALD_BREAKER_OPEN_MS: '5000', HERALD_RETRY_BASE_MS: '200', HERALD_MAX_DELIVERY_ATTEMPTS: '4',
    },
  });
}, 60_000);

afterAll(async () => {
  await h?.stop();
  await new Promise<void>((r) => hooks.close(() => r()));
  await new Promise<void>((r) => smtp.close(() => r()));
  if (h) removeDir(h.stateDir);
});

/** Once the webhook channel of the notification has ended (the rules also send it to the inbox). */
const terminal = (id: string) => eventually(async () => {
  const r = await api<NotificationView>(h, 'GET', `/v1/notifications/${id}`);
  return r.status === 200 && r.body.terminal.some((t) => t.startsWith('webhook:')) ? r.body : false;
}, 60_000);

describe('delivery through outages', () => {
  it('opens the circuit of a failing endpoint, dead-letters nothing, and delivers everything once it recovers', async () => {
    const users = Array.from({ length: 12 }, (_, i) => `o${i}`);
    for (const u of users) expect((await api(h, 'PUT', `/v1/users/${u}`, { webhookUrl: `${hooksUrl}/${u}` })).status).toBe(202);
    await eventually(async () => (await Promise.all(users.map((u) => api(h, 'GET', `/v1/users/${u}`)))).every((r) => r.status === 200));
    down = true;
    const outageStart = Date.now();
    const ids: string[] = [];
    for (const u of users) {
      const r = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'agent.task_completed', recipients: [u], data: { taskId: `t-${u}`, summary: 's' } });
      ids.push(r.body.notifications[0]!.notificationId);
    }
    // The circuit opens: tasks wait with circuit_open instead of calling.
    await eventually(async () => {
      const views = await Promise.all(ids.map((id) => api<NotificationView>(h, 'GET', `/v1/notifications/${id}`)));
      return views.some((v) => v.body?.events?.some((e) => e.reasonCode === 'circuit_open'));
    }, 20_000);
    // The provider stays down for 30 s, then recovers.
    await new Promise((r) => setTimeout(r, outageStart + 30_000 - Date.now()));
    const duringOutage = calls.filter((c) => c.at >= outageStart).length;
    down = false;
    const views = await Promise.all(ids.map(terminal));
    expect(views.map((v) => v.terminal.filter((t) => t.startsWith('webhook:')))).toEqual(ids.map(() => ['webhook:DELIVERED']));
    expect(views.flatMap((v) => v.events).filter((e) => e.status === 'DEAD_LETTERED')).toEqual([]);
    // 12 tasks over 30 s of outage: without a circuit each would be called 4 times (retried
    // from 200 ms until its attempts ran out: 48 calls). With it, the endpoint saw the calls
    // made before the circuit opened (the tasks of one batch are called together, before
    // any of them fails, so up to one per task, and a task retried before the third failure
    // was recorded could be called again: at most 2 more), then one probe every 5 s.
    console.log(`calls to the failing endpoint during the 30 s outage: ${duringOutage}`);
    expect(duringOutage).toBeLessThanOrEqual(users.length + (3 - 1) + 30_000 / 5_000);
    const circuit = views.flatMap((v) => v.events).find((e) => e.reasonCode === 'circuit_open')!;
    expect(circuit.reason).toMatch(/^circuit open for 127\.0\.0\.1:\d+ since \d\d:\d\d:\d\d UTC; attempt \d waits until /);
    const metrics = await (await fetch(`${h.httpUrl}/metrics`)).text();
    expect(metrics).toMatch(/herald_circuit_state\{endpoint="webhook:127\.0\.0\.1:\d+"\} 0/);
  }, 120_000);

  it('falls back from email to the webhook when the SMTP server refuses for good (strategy first)', async () => {
    expect((await api(h, 'PUT', '/v1/users/fb', { email: 'fb@example.com', webhookUrl: `${hooksUrl}/fb` })).status).toBe(202);
    await eventually(async () => (await api(h, 'GET', '/v1/users/fb')).status === 200);
    const r = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'ops.alert', recipients: ['fb'], data: { text: 'disk full' } });
    const id = r.body.notifications[0]!.notificationId;
    const view = await eventually(async () => {
      const v = await api<NotificationView>(h, 'GET', `/v1/notifications/${id}`);
      return v.status === 200 && v.body.terminal.length === 2 ? v.body : false;
    }, 30_000);
    expect(view.terminal.sort()).toEqual(['email:DEAD_LETTERED', 'webhook:DELIVERED']);
    const fallback = view.events.find((e) => e.status === 'FALLBACK')!;
    expect(fallback).toMatchObject({ channel: 'email', reasonCode: 'fallback' });
    expect(fallback.reason).toBe('email failed for good (SMTP 550 no such mailbox at RCPT TO); falling back to webhook');
    expect(view.events.find((e) => e.status === 'ROUTED')!.reason).toContain('email first, then webhook on failure (strategy first)');
    expect(calls.filter((c) => c.path === '/fb')).toHaveLength(1);
  }, 60_000);
});
