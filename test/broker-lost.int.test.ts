/**
 * An instance whose Kafka cluster is gone is not ready: its members crash and kafkajs keeps
 * restarting them, and /readyz says so (a load balancer takes it out) instead of "joined".
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { Herald } from '../app/herald.ts';
import { api, eventually, removeDir, startCluster, startTestHerald } from './support/herald.ts';

let h: (Herald & { stateDir: string }) | null = null;
let g: (Herald & { stateDir: string }) | null = null;
afterAll(async () => {
  for (const x of [h, g]) {
    await x?.stop().catch(() => undefined);
    if (x) removeDir(x.stateDir);
  }
});

describe('the brokers gone', () => {
  it('turns /readyz not ready, naming the stage whose member is restarting', async () => {
    const cluster = await startCluster(2);
    h = await startTestHerald({ env: cluster.env, stages: ['dedupe'], api: false });
    await eventually(() => h!.isReady(), 60_000);
    // when the cluster goes away
    await cluster.stop();
    // then readiness follows, with the reason
    const r = await eventually(() => {
      const x = h!.readiness();
      return !x.ready && x.reasons.some((why) => why === 'dedupe: consumer group member is restarting') ? x : false;
    }, 90_000);
    expect(r.ready).toBe(false);
  }, 180_000);

  it('answers API writes the brokers do not acknowledge with 503 HRL_BROKER_UNREACHABLE after the publish timeout, not after the producer\'s minute of retries', async () => {
    const cluster = await startCluster(2);
    try {
      g = await startTestHerald({ env: { ...cluster.env, HERALD_PUBLISH_TIMEOUT_MS: '1500' }, stages: ['ingest'] });
      await eventually(() => g!.isReady(), 60_000);
      const event = (n: number) => ({ type: 'comment.created', recipients: ['ada'], data: { commentId: `c${n}` } });
      expect((await api(g, 'POST', '/v1/events', event(0), { 'idempotency-key': 'k0' })).status).toBe(202);
      // when the brokers go
      await cluster.broker.brokerDown(1);
      const started = Date.now();
      const first = await api(g, 'POST', '/v1/events', event(1), { 'idempotency-key': 'k1' });
      // then the write is answered once its timeout passes, saying it may still land
      expect(first.status).toBe(503);
      expect(first.body).toMatchObject({ error: 'HRL_BROKER_UNREACHABLE', message: expect.stringContaining('same Idempotency-Key') });
      expect(Date.now() - started).toBeLessThan(15_000);
      // and a write arriving while that produce still waits is refused at once, unwritten
      const second = await api(g, 'POST', '/v1/events', event(2), { 'idempotency-key': 'k2' });
      expect(second).toMatchObject({ status: 503, body: { error: 'HRL_BROKER_UNREACHABLE', message: expect.stringContaining('not written') } });
      // profile writes too
      const put = await api(g, 'PUT', '/v1/users/ada', { name: 'Ada' });
      expect(put).toMatchObject({ status: 503, body: { error: 'HRL_BROKER_UNREACHABLE' } });
      // and once the brokers are back, the same request is taken
      await cluster.broker.brokerUp(1);
      const again = await eventually(async () => {
        const r = await api(g!, 'POST', '/v1/events', event(1), { 'idempotency-key': 'k1' });
        return r.status === 202 ? r : false;
      }, 90_000, 500);
      expect(again.body).toMatchObject({ eventId: expect.any(String) });
    } finally {
      await g?.stop().catch(() => undefined);
      await cluster.stop();
    }
  }, 180_000);
});
