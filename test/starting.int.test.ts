/**
 * While Herald starts, its HTTP port already answers: /healthz 200 (alive), /readyz 503
 * saying what the start does, every other path 503 HRL_STARTING with Retry-After; then the
 * API takes the port over. A port in use is refused before the start does anything long.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, describe, expect, it } from 'vitest';
import type { Herald } from '../app/herald.ts';
import { AUTH, removeDir, startTestHerald } from './support/herald.ts';

const started: (Herald & { stateDir: string })[] = [];
afterAll(async () => {
  for (const h of started) {
    await h.stop().catch(() => undefined);
    removeDir(h.stateDir);
  }
});

const freePort = () => new Promise<number>((resolve) => {
  const srv = createServer().listen(0, '127.0.0.1', () => {
    const { port } = srv.address() as AddressInfo;
    srv.close(() => resolve(port));
  });
});

describe('the HTTP port while Herald starts', () => {
  it('answers as a starting instance, then as the API on the same port', async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    const starting = startTestHerald({ env: { HERALD_HTTP_PORT: String(port) } });
    // given the start under way: poll until the port answers
    const seen: { health?: unknown; ready?: { status: number; body: { ready: boolean; reasons: string[] } }; api?: { status: number; retryAfter: string | null; body: unknown }; stream?: { status: number; type: string | null; body: string } } = {};
    let done = false;
    void starting.then(() => (done = true), () => (done = true));
    while (!done && !seen.api) {
      try {
        const health = await fetch(`${url}/healthz`);
        const body = await health.json() as { status?: string };
        if (body.status !== 'starting') break; // the API got there first
        seen.health = { status: health.status, body };
        const ready = await fetch(`${url}/readyz`);
        seen.ready = { status: ready.status, body: await ready.json() as { ready: boolean; reasons: string[] } };
        // An EventSource (Accept: text/event-stream) is told to come back, as a 503 would end it for good
        const stream = await fetch(`${url}/v1/users/ada/inbox/stream`, { headers: { ...AUTH, accept: 'text/event-stream' }, signal: AbortSignal.timeout(3000) });
        seen.stream = { status: stream.status, type: stream.headers.get('content-type'), body: await stream.text() };
        const api = await fetch(`${url}/v1/users/ada`, { headers: AUTH });
        seen.api = { status: api.status, retryAfter: api.headers.get('retry-after'), body: await api.json() };
      } catch {
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    // From the first answer on, a client polling through the hand-over is never refused or reset
    let errors = 0;
    let answered = 0;
    let polling = true;
    const poller = Promise.all(Array.from({ length: 8 }, async () => {
      while (polling) {
        try {
          const r = await fetch(`${url}/healthz`);
          await r.text();
          answered++;
        } catch {
          if (answered > 0) errors++;
        }
      }
    }));
    const h = await starting;
    started.push(h);
    await new Promise((r) => setTimeout(r, 500));
    polling = false;
    await poller;
    expect(answered).toBeGreaterThan(0);
    expect(errors).toBe(0);
    // then while it started: alive, not ready (with what it was doing), and the API not yet there
    expect(seen.health).toEqual({ status: 200, body: { status: 'starting' } });
    expect(seen.ready?.status).toBe(503);
    expect(seen.ready?.body.ready).toBe(false);
    expect(seen.ready?.body.reasons[0]).toMatch(/^starting: /);
    expect(seen.api).toMatchObject({ status: 503, retryAfter: '1', body: { error: 'HRL_STARTING' } });
    expect(seen.stream).toMatchObject({ status: 200, type: 'text/event-stream', body: expect.stringMatching(/^retry: 1000\nevent: unavailable\ndata: \{"error":"HRL_STARTING",/) });
    // and once started, the API answers on that port
    expect(h.httpUrl).toBe(url);
    expect((await fetch(`${url}/readyz`)).status).toBe(200);
    expect((await fetch(`${url}/v1/users/nobody`, { headers: AUTH })).status).toBe(404);
  }, 90_000);

  it('refuses a port in use before it starts anything, naming the port', async () => {
    const holder = createServer();
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r));
    const port = (holder.address() as AddressInfo).port;
    try {
      await expect(startTestHerald({ env: { HERALD_HTTP_PORT: String(port) } })).rejects.toMatchObject({ code: 'HRL_CONFIG_INVALID', message: expect.stringContaining(`HERALD_HTTP_PORT: 127.0.0.1:${port} is already in use`) });
    } finally {
      holder.close();
    }
  }, 60_000);
});
