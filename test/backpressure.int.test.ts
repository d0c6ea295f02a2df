/**
 * No silent drop at the embedded broker's cap: publishing faster than the pipeline drains
 * (one partition, a low unread-bytes limit) makes the API answer 503 HRL_BACKPRESSURE with
 * Retry-After instead of letting the broker discard records a stage has not read. Every
 * accepted event is delivered, and outcomes.v1 holds every decision about it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Herald } from '../app/herald.ts';
import { Serde } from '../schemas/index.ts';
import type { LifecycleEvent } from '../schemas/types.ts';
import { topicName } from '../topology.ts';
import { api, collect, eventually, removeDir, startTestHerald } from './support/herald.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';

let h: Herald & { stateDir: string };
const hooks = new WebhookReceiver();
const USERS = Array.from({ length: 10 }, (_, i) => `bp${i}`);

beforeAll(async () => {
  await hooks.start();
  h = await startTestHerald({ env: { HERALD_PARTITIONS: '1', HERALD_EMBEDDED_MAX_UNREAD_BYTES: '131072' } });
  for (const u of USERS) await api(h, 'PUT', `/v1/users/${u}`, { name: u, webhookUrl: `${hooks.url}/${u}` });
  await eventually(async () => (await Promise.all(USERS.map((u) => api(h, 'GET', `/v1/users/${u}`)))).every((r) => r.status === 200));
});

afterAll(async () => {
  await h?.stop();
  await hooks.stop();
  if (h) removeDir(h.stateDir);
});

describe('back-pressure on the embedded broker', () => {
  it('answers 503 while the stages are behind, and loses nothing it accepted', async () => {
    const accepted = new Set<string>();
    let refused = 0;
    let n = 0;
    const deadline = Date.now() + 15_000;
    const client = async () => {
      while (accepted.size < 1000 && Date.now() < deadline) {
        const id = `bp-${n++}`;
        const r = await api<{ error?: string; notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { id, type: 'comment.created', tenant: 'acme', recipients: [USERS[n % USERS.length]], data: { commentId: id } });
        if (r.status === 202) accepted.add(r.body.notifications[0]!.notificationId);
        else if (r.status === 503 && r.body.error === 'HRL_BACKPRESSURE') refused++;
        else throw new Error(`unexpected ${r.status} ${JSON.stringify(r.body)}`);
      }
    };
    const res = await fetch(`${h.httpUrl}/readyz`);
    expect(res.status).toBe(200);
    await Promise.all(Array.from({ length: 16 }, client));
    // The stages were behind at some point and the API said so (Retry-After: see api.unit.test.ts).
    expect(refused).toBeGreaterThan(0);

    await eventually(() => new Set(hooks.received.map((r) => String(r.headers['idempotency-key']))).size >= accepted.size, 60_000);
    const ready = await api<{ reasons: string[] }>(h, 'GET', '/readyz');
    expect(ready.body.reasons.filter((r) => r.includes('lost'))).toEqual([]);
    // Every decision is still on outcomes.v1: nothing was dropped by the broker before it was read.
    const serde = new Serde(h.registryUrl);
    const out = await collect(h, topicName('herald.', 'outcomes'));
    const events = await eventually(async () => {
      const decoded = await Promise.all(out.messages.map((m) => serde.decode<LifecycleEvent>(m.value!)));
      const delivered = new Set(decoded.filter((e) => e.status === 'DELIVERED').map((e) => e.notificationId));
      return [...accepted].every((id) => delivered.has(id)) && decoded;
    }, 30_000);
    await out.stop();
    const acceptedOnTopic = new Set(events.filter((e) => e.status === 'ACCEPTED' && accepted.has(e.notificationId)).map((e) => e.notificationId));
    expect(acceptedOnTopic.size).toBe(accepted.size);
    process.stdout.write(`[backpressure] ${accepted.size} accepted, ${refused} answered 503 HRL_BACKPRESSURE, ${out.messages.length} records on outcomes.v1\n`);
  }, 120_000);
});
