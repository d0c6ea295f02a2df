/**
 * A clean stop while webhook calls are under way past their batch's wait (a receiver that
 * takes its time): the stop waits for their answers (up to their timeout) and records them
 * before its last commit, so the restart does not call them again. Only a crash leaves an
 * attempt to be made again (README, "Tests": at-least-once).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { NotificationView } from '../processors/outcome.ts';
import { api, eventually, removeDir, startTestHerald } from './support/herald.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';

const hooks = new WebhookReceiver();
const env = { HERALD_DELIVERY_BATCH_WAIT_MS: '200', HERALD_DELIVERY_TIMEOUT_MS: '6000' };
let stateDir = '';

beforeAll(async () => {
  await hooks.start();
});
afterAll(async () => {
  await hooks.stop();
  if (stateDir) removeDir(stateDir);
});

describe('a clean stop with webhook calls under way', () => {
  it('waits for their answers and records them: the restart sends none of them again', async () => {
    // given a receiver that answers after 3 s, and three notifications whose calls are running when the stop begins
    hooks.script.set('/slow', [{ delayMs: 3000 }, { delayMs: 3000 }, { delayMs: 3000 }]);
    const h = await startTestHerald({ env });
    stateDir = h.stateDir;
    expect((await api(h, 'PUT', '/v1/users/sol', { webhookUrl: `${hooks.url}/slow` })).status).toBe(202);
    const published = await Promise.all(['s1', 's2', 's3'].map((c) => api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'comment.created', recipients: ['sol'], actor: 'linus', data: { commentId: c, documentTitle: 'Plan', excerpt: 'x' } })));
    expect(published.map((r) => r.status)).toEqual([202, 202, 202]);
    const ids = published.map((r) => r.body.notifications[0]!.notificationId);
    await eventually(() => hooks.for('/slow').length === 3, 30_000);
    const attemptedAt = Date.now();
    expect(hooks.answered).toBeLessThan(3);
    // when Herald stops cleanly
    await h.stop();
    // then every call under way had its answer before the stop ended
    expect(hooks.answered).toBe(3);
    // and after the restart, past the time an unrecorded attempt's lease would be made again
    // (the call's timeout and 5 s), each notification is DELIVERED by its one call
    const again = await startTestHerald({ env, stateDir });
    try {
      for (const id of ids) {
        const view = await eventually(async () => {
          const r = await api<NotificationView>(again, 'GET', `/v1/notifications/${id}`);
          return r.status === 200 && r.body.terminal.length > 0 ? r.body : false;
        }, 30_000);
        expect(view.terminal).toEqual(['webhook:DELIVERED']);
        expect(view.events.filter((e) => e.status === 'ATTEMPTED')).toHaveLength(1);
      }
      const leaseEnd = attemptedAt + 6000 + 5000;
      await new Promise((r) => setTimeout(r, Math.max(0, leaseEnd - Date.now()) + 2000));
      expect(hooks.for('/slow').map((r) => r.headers['idempotency-key']).sort()).toEqual([...new Set(hooks.for('/slow').map((r) => r.headers['idempotency-key']))].sort());
      expect(hooks.for('/slow')).toHaveLength(3);
    } finally {
      await again.stop();
    }
  }, 120_000);

  it('starts no call after the stop began: calls queued behind a slow URL are made once, after the restart', async () => {
    // given a URL in its slow lane (each call takes 2.5 s, past the batch wait), with calls queued behind the one running
    hooks.script.set('/lane', Array.from({ length: 12 }, () => ({ delayMs: 2500 })));
    const h = await startTestHerald({ env });
    stateDir = h.stateDir;
    expect((await api(h, 'PUT', '/v1/users/lane', { webhookUrl: `${hooks.url}/lane` })).status).toBe(202);
    const publish = (c: string) => api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'comment.created', recipients: ['lane'], actor: 'linus', data: { commentId: c, documentTitle: 'Plan', excerpt: 'x' } });
    const ids = [(await publish('l0')).body.notifications[0]!.notificationId];
    await eventually(() => hooks.for('/lane').length === 1, 30_000);
    for (const c of ['l1', 'l2', 'l3', 'l4']) ids.push((await publish(c)).body.notifications[0]!.notificationId);
    await eventually(() => hooks.for('/lane').length === 2, 30_000);
    // when Herald stops while the second call runs and three wait for their turn
    await h.stop();
    const calledBeforeRestart = hooks.for('/lane').length;
    // then no call was started during the stop (a started call may not get its answer before the process leaves)
    expect(calledBeforeRestart).toBe(2);
    const again = await startTestHerald({ env, stateDir });
    try {
      for (const id of ids) {
        const view = await eventually(async () => {
          const r = await api<NotificationView>(again, 'GET', `/v1/notifications/${id}`);
          return r.status === 200 && r.body.terminal.length > 0 ? r.body : false;
        }, 60_000);
        expect(view.terminal).toEqual(['webhook:DELIVERED']);
      }
      await new Promise((r) => setTimeout(r, 6000 + 5000 + 2000)); // past any lease a call made twice would come back on
      const keys = hooks.for('/lane').map((r) => r.headers['idempotency-key']);
      expect(keys).toHaveLength(5);
      expect(new Set(keys).size).toBe(5);
    } finally {
      await again.stop();
    }
  }, 180_000);
});
