/**
 * An instance whose Kafka cluster is gone is not ready: its members crash and kafkajs keeps
 * restarting them, and /readyz says so (a load balancer takes it out) instead of "joined".
 */
import { afterAll, describe, expect, it } from 'vitest';
import type { Herald } from '../app/herald.ts';
import { eventually, removeDir, startCluster, startTestHerald } from './support/herald.ts';

let h: (Herald & { stateDir: string }) | null = null;
afterAll(async () => {
  await h?.stop().catch(() => undefined);
  if (h) removeDir(h.stateDir);
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
});
