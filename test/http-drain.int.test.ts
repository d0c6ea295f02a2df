/**
 * A stop answers the HTTP requests in flight instead of resetting their connections: a
 * client whose publish was being journaled when SIGTERM came gets its 202 (or a 503 to
 * retry), never a reset it cannot read (was it accepted?). Open inbox streams end, so they
 * do not hold the stop.
 */
import { describe, expect, it } from 'vitest';
import { AUTH, api, removeDir, startTestHerald } from './support/herald.ts';

describe('stopping the HTTP API', () => {
  it('answers every request in flight, and ends open event streams', async () => {
    const h = await startTestHerald();
    try {
      expect((await api(h, 'PUT', '/v1/users/ada', { email: 'ada@example.com' })).status).toBe(202);
      const stream = await fetch(`${h.httpUrl}/v1/users/ada/inbox/stream`, { headers: AUTH });
      expect(stream.status).toBe(200);
      const streamEnded = stream.text().then(() => 'ended', (err: Error) => `failed: ${err.message}`);
      const inFlight = Array.from({ length: 30 }, (_, i) => fetch(`${h.httpUrl}/v1/events`, {
        method: 'POST', headers: { ...AUTH, 'content-type': 'application/json', 'idempotency-key': `drain-${i}` },
        body: JSON.stringify({ type: 'comment.created', tenant: 'acme', recipients: ['ada'], data: { commentId: `c${i}` } }),
      }).then(async (r) => (r.status === 503 ? `503 ${r.headers.get('retry-after')} ${((await r.json()) as { error: string }).error}` : r.status), (err: Error) => `${err.message} ${(err.cause as Error | undefined)?.message ?? ''}`));
      // The requests are sent; stop while they are being answered.
      await new Promise((r) => setTimeout(r, 5));
      await h.stop();
      const statuses = await Promise.all(inFlight);
      // Accepted, or refused in a way a client acts on: retry after 1 s with the same key.
      expect(statuses.filter((s) => s !== 202 && s !== '503 1 HRL_SHUTTING_DOWN')).toEqual([]);
      expect(await streamEnded).toBe('ended');
    } finally {
      removeDir(h.stateDir);
    }
  }, 60_000);
});
