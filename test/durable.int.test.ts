/**
 * The embedded default loses nothing, run the README's way (`npm start`): Herald is killed
 * with SIGKILL during a 10,000-event publish over HTTP and started again on the same state
 * directory; clients retry with their Idempotency-Key until answered 202. Every event is
 * delivered, each under one Idempotency-Key, and its lifecycle is complete. A clean restart (SIGTERM to npm) keeps the users, the
 * lifecycles, the dedupe memory and the offsets: nothing is sent again.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Kafka, logLevel } from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STAGE_NAMES, STAGES, topicName } from '../topology.ts';
import { eventually, removeDir, AUTH } from './support/herald.ts';
import { alive, startWithNpm } from './support/processes.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';

const hooks = new WebhookReceiver();
const children: ChildProcess[] = [];
const stateDir = mkdtempSync(join(tmpdir(), 'herald-durable-'));
const env = { HERALD_STATE_DIR: stateDir, HERALD_PARTITIONS: '4', HERALD_SESSION_TIMEOUT_MS: '6000', HERALD_COMMIT_INTERVAL_MS: '200' };
const USERS = Array.from({ length: 20 }, (_, i) => `d${i}`);

beforeAll(async () => {
  await hooks.start();
});
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await hooks.stop();
  removeDir(stateDir);
});

const json = async <T>(url: string, method = 'GET', body?: unknown, headers: Record<string, string> = {}) => {
  const res = await fetch(url, { method, headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...AUTH, ...headers }, ...(body ? { body: JSON.stringify(body) } : {}) });
  return { status: res.status, body: (await res.json().catch(() => null)) as T };
};
type View = { terminal: string[]; events: { status: string }[] };

describe('the embedded default across kill -9 and restarts', () => {
  it('delivers every accepted event after a SIGKILL mid-publish, and a clean restart keeps everything', async () => {
    const first = await startWithNpm(env, children);
    for (const u of USERS) expect((await json(`${first.url}/v1/users/${u}`, 'PUT', { name: u, webhookUrl: `${hooks.url}/${u}` })).status).toBe(202);
    await eventually(async () => (await Promise.all(USERS.map((u) => json(`${first.url}/v1/users/${u}`)))).every((r) => r.status === 200));

    // 10,000 events from 16 clients, each retried with its Idempotency-Key until answered 202,
    // as a careful client does; Herald is killed with SIGKILL in the middle and started again.
    const TOTAL = 10_000;
    const accepted = new Set<string>();
    let next = 0;
    let url = first.url;
    let restarting = false;
    const client = async () => {
      for (let i = next++; i < TOTAL; i = next++) {
        const id = `dur-${i}`;
        for (;;) {
          const r = restarting ? null : await json<{ notifications: { notificationId: string }[] }>(`${url}/v1/events`, 'POST', { type: 'comment.created', tenant: 'acme', recipients: [USERS[i % USERS.length]], data: { commentId: id } }, { 'idempotency-key': id }).catch(() => null);
          if (r?.status === 202) {
            accepted.add(r.body.notifications[0]!.notificationId);
            break;
          }
          await new Promise((res) => setTimeout(res, r?.status === 503 ? 200 : 500));
        }
      }
    };
    const clients = Promise.all(Array.from({ length: 16 }, client));
    await eventually(() => accepted.size >= 3000, 120_000);
    restarting = true;
    process.kill(first.herald, 'SIGKILL');
    await eventually(() => !alive(first.herald) && !alive(first.broker), 10_000);
    const atKill = accepted.size;
    const inFlight = atKill - new Set(hooks.received.map((r) => String(r.headers['idempotency-key']))).size;
    const started = Date.now();
    const second = await startWithNpm(env, children);
    const restartMs = Date.now() - started;
    url = second.url;
    restarting = false;
    await clients;
    expect(accepted.size).toBe(TOTAL);
    // Every accepted event delivered, each under one key, with a complete lifecycle.
    await eventually(async () => {
      const keys = new Set(hooks.received.map((r) => String(r.headers['idempotency-key'])));
      return [...accepted].every((id) => keys.has(`${id}:webhook`));
    }, 180_000);
    const sample = [...accepted].filter((_, i) => i % 250 === 0);
    const projecting = Date.now();
    for (const id of sample) {
      // The lifecycle projection (outcome stage) follows the deliveries; on a loaded machine
      // it can trail them by tens of seconds after a restart with 10,000 events behind it.
      const v = await eventually(async () => {
        const r = await json<View>(`${second.url}/v1/notifications/${id}`);
        return r.status === 200 && r.body.terminal.length > 0 && r.body;
      }, 120_000);
      expect(v.terminal, id).toEqual(['webhook:DELIVERED']);
      expect(v.events.filter((e) => e.status === 'DELIVERED'), id).toHaveLength(1);
    }
    const byKey = new Map<string, number>();
    for (const r of hooks.received) byKey.set(String(r.headers['idempotency-key']), (byKey.get(String(r.headers['idempotency-key'])) ?? 0) + 1);
    const repeated = [...byKey.values()].filter((c) => c > 1).length;
    process.stdout.write(`[durable] ${accepted.size} accepted (${atKill} before the kill, ${inFlight} of them undelivered at it), restart to ready ${restartMs} ms, ${repeated} calls repeated under their own key, lifecycles complete ${Date.now() - projecting} ms after the last delivery\n`);

    // A clean restart: SIGTERM to npm, start again; nothing is lost and nothing is sent again.
    const calls = hooks.received.length;
    const exited = new Promise<number | null>((r) => second.npm.once('exit', (code) => r(code)));
    second.npm.kill('SIGTERM');
    const code2 = await exited;
    if (code2 !== 0) {
      const out = second.output();
      throw new Error(`npm exited ${code2} on SIGTERM:\n${out.slice(out.indexOf('stopping')).split('\n').filter((l) => !l.includes('partition closed') && !l.includes('snapshot skipped')).slice(0, 40).join('\n')}`);
    }
    const third = await startWithNpm(env, children);
    expect((await json(`${third.url}/v1/users/${USERS[3]}`)).status).toBe(200);
    // Right after ready, a partition may still be opening (503); the lifecycle itself is kept.
    const kept = await eventually(async () => {
      const r = await json<View>(`${third.url}/v1/notifications/${sample[0]}`);
      if (r.status === 404) throw new Error(`lifecycle lost after a clean restart: ${JSON.stringify(r.body)}`);
      return r.status === 200 && r.body;
    }, 30_000);
    expect(kept.terminal).toEqual(['webhook:DELIVERED']);
    // Dedupe remembers: the same idempotency key again is suppressed, not delivered.
    const again = await json<{ notifications: { notificationId: string }[] }>(`${third.url}/v1/events`, 'POST', { id: 'dur-again', type: 'comment.created', tenant: 'acme', recipients: [USERS[0]], idempotencyKey: 'once', data: { commentId: 'x' } });
    await eventually(async () => (await json<View>(`${third.url}/v1/notifications/${again.body.notifications[0]!.notificationId}`)).body?.terminal?.length > 0, 30_000);
    const repeat = await json<{ notifications: { notificationId: string }[] }>(`${third.url}/v1/events`, 'POST', { id: 'dur-again-2', type: 'comment.created', tenant: 'acme', recipients: [USERS[0]], idempotencyKey: 'once', data: { commentId: 'x' } });
    await new Promise((r) => setTimeout(r, 1000));
    const exit3 = new Promise<number | null>((r) => third.npm.once('exit', (code) => r(code)));
    third.npm.kill('SIGTERM');
    expect(await exit3).toBe(0);
    const fourth = await startWithNpm(env, children);
    const readyAt = Date.now();
    const suppressed = await eventually(async () => {
      const r = await json<View>(`${fourth.url}/v1/notifications/${repeat.body.notifications[0]!.notificationId}`);
      return r.status === 200 && r.body.terminal.length > 0 && r.body;
    }, 30_000);
    expect(suppressed.terminal).toEqual(['SUPPRESSED_DUPLICATE']);
    // The groups show the offsets they had before the restart (a fresh broker restored from
    // the journal knows no commits; Herald resumes at its snapshot and commits it again), so a
    // lag tool sees no lag on partitions nothing was written to since.
    const { brokers } = JSON.parse(readFileSync(join(stateDir, 'endpoints.json'), 'utf8')) as { brokers: string };
    const admin = new Kafka({ brokers: brokers.split(','), logLevel: logLevel.NOTHING }).admin();
    await admin.connect();
    try {
      const missing = await eventually(async () => {
        const none: string[] = [];
        for (const stage of STAGE_NAMES) {
          for (const input of STAGES[stage].inputs) {
            const topic = topicName('herald.', input);
            const ends = new Map((await admin.fetchTopicOffsets(topic)).map((o) => [o.partition, Number(o.high)]));
            const [committed] = await admin.fetchOffsets({ groupId: `herald.${stage}`, topics: [topic] });
            for (const p of committed!.partitions) if (ends.get(p.partition)! > 0 && Number(p.offset) < 0) none.push(`herald.${stage} ${topic}[${p.partition}]`);
          }
        }
        return none.length === 0 ? [] : (Date.now() - readyAt > 15_000 ? none : false);
      }, 30_000);
      expect(missing).toEqual([]);
    } finally {
      await admin.disconnect();
    }
    await new Promise((r) => setTimeout(r, 1500));
    expect(hooks.received.length).toBe(calls + 1); // only 'dur-again' was sent; nothing before the restarts again
    fourth.npm.kill('SIGTERM');
    await new Promise((r) => fourth.npm.once('exit', r));
  }, 420_000);
});
