/**
 * /readyz tells the truth: a stage stuck in a batch makes it 503 with the reason, and it is
 * ready again once the batch ends. (Deliver detaches slow calls after
 * HERALD_DELIVERY_BATCH_WAIT_MS; raised here so a webhook that never answers keeps the batch
 * running, which is the stall this test needs.)
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Herald } from '../app/herald.ts';
import { api, eventually, removeDir, startTestHerald } from './support/herald.ts';

let h: Herald & { stateDir: string };
let hang: Server;
let hangUrl = '';

beforeAll(async () => {
  hang = createServer(() => undefined); // accepts, never answers
  await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
  hangUrl = `http://127.0.0.1:${(hang.address() as AddressInfo).port}`;
  h = await startTestHerald({ env: { HERALD_STALL_MS: '1000', HERALD_DELIVERY_TIMEOUT_MS: '4000', HERALD_DELIVERY_BATCH_WAIT_MS: '60000' } });
});

afterAll(async () => {
  await h?.stop();
  hang.closeAllConnections();
  await new Promise((r) => hang.close(r));
  if (h) removeDir(h.stateDir);
});

type Ready = { ready: boolean; reasons: string[] };

describe('readiness', () => {
  it('is 503 with the reason while deliver is stuck in a batch, and 200 again after', async () => {
    expect((await api<Ready>(h, 'GET', '/readyz')).status).toBe(200);
    expect((await api(h, 'PUT', '/v1/users/stuck', { name: 'Stuck', webhookUrl: `${hangUrl}/hook` })).status).toBe(202);
    await eventually(async () => (await api(h, 'GET', '/v1/users/stuck')).status === 200);
    await api(h, 'POST', '/v1/events', { type: 'comment.created', tenant: 'acme', recipients: ['stuck'], data: { commentId: 'stuck-1' } });
    const stuck = await eventually(async () => {
      const r = await api<Ready>(h, 'GET', '/readyz');
      return r.status === 503 && r.body;
    }, 15_000);
    expect(stuck.ready).toBe(false);
    expect(stuck.reasons.some((x) => x.startsWith('deliver: a batch has been running for'))).toBe(true);
    // The call times out (4 s), the retry is scheduled, the batch ends: ready again.
    await eventually(async () => (await api<Ready>(h, 'GET', '/readyz')).status === 200, 15_000);
  }, 40_000);

  it('warns of a topic a client made on the embedded broker by writing to it, naming the Herald topic it probably meant (a warning: readiness does not depend on it)', async () => {
    await h.producer.send({ topic: 'events.v1', acks: -1, messages: [{ key: 'e1', value: '{"id":"e1"}' }] });
    const r = await eventually(async () => {
      const res = await api<Ready & { warnings?: string[] }>(h, 'GET', '/readyz');
      return res.body.warnings?.some((w) => w.startsWith('topic events.v1')) ? res : null;
    }, 20_000);
    expect(r.body.warnings).toContain('topic events.v1 is not Herald\'s: no stage reads it (did you mean herald.events.v1?)');
  });
});
