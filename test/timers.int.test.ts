/**
 * A timer-held item survives kill -9: a delivery that failed with 503 and Retry-After is
 * held in deliver's `retries` store until due. Herald is killed with SIGKILL while the
 * retry is held, and started again on an empty state directory: the store is restored
 * from its changelog, the timer fires, and the retry reaches the receiver exactly once,
 * under the same Idempotency-Key, with its provenance (the retry record) in the lifecycle.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../config.ts';
import type { NotificationView } from '../processors/outcome.ts';
import { createKafka } from '../runtime/kafka.ts';
import { createLogger } from '../runtime/logger.ts';
import { TopicReader } from '../runtime/reader.ts';
import { changelogTopic } from '../topology.ts';
import { eventually, removeDir, startCluster, AUTH, TEST_ENV } from './support/herald.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';

let cluster: Awaited<ReturnType<typeof startCluster>>;
const hooks = new WebhookReceiver();
const dirs: string[] = [];
const children: ChildProcess[] = [];

beforeAll(async () => {
  await hooks.start();
  cluster = await startCluster(2);
});

afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await cluster?.stop();
  await hooks.stop();
  for (const d of dirs) removeDir(d);
});

async function herald(): Promise<{ child: ChildProcess; url: string }> {
  const stateDir = mkdtempSync(join(tmpdir(), 'herald-timers-'));
  dirs.push(stateDir);
  const child = spawn(process.execPath, ['cli/herald.ts', 'run'], {
    env: {
      ...process.env, ...TEST_ENV, ...cluster.env, HERALD_PARTITIONS: '2', HERALD_STATE_DIR: stateDir, HERALD_HTTP_PORT: '0', HERALD_LOG_LEVEL: 'warn',
      HERALD_SESSION_TIMEOUT_MS: '6000', HERALD_COMMIT_INTERVAL_MS: '200',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', () => undefined);
  const url = await eventually(() => /herald ready (\S+)/.exec(out)?.[1], 60_000);
  return { child, url };
}

const call = (url: string, method: string, path: string, body?: unknown) =>
  fetch(`${url}${path}`, { method, headers: body ? { 'content-type': 'application/json', ...AUTH } : { ...AUTH }, ...(body ? { body: JSON.stringify(body) } : {}) });

describe('timers across kill -9', () => {
  it('fires a held retry once after a restart on an empty state directory', async () => {
    hooks.script.set('/held', [[503, { 'retry-after': '4' }]]);
    const first = await herald();
    expect((await call(first.url, 'PUT', '/v1/users/held', { name: 'Held', webhookUrl: `${hooks.url}/held` })).status).toBe(202);
    await eventually(async () => (await call(first.url, 'GET', '/v1/users/held')).status === 200);

    // Watch deliver's retries changelog: a put there means the retry is held by the timer store.
    const kafka = createKafka(loadConfig({ ...TEST_ENV, KAFKA_BROKERS: cluster.env.KAFKA_BROKERS }), cluster.env.KAFKA_BROKERS, createLogger('silent'), 'timers-test');
    const admin = kafka.admin();
    await admin.connect();
    const held: { key: string; value: string | null }[] = [];
    const reader = new TopicReader(kafka, admin, {
      topic: changelogTopic('herald.', 'deliver', 'retries'), groupPrefix: 'test.',
      onBatch: async ({ messages }) => void held.push(...messages.map((m) => ({ key: m.key!.toString(), value: m.value?.toString() ?? null }))),
    });
    await reader.start();

    const posted = (await (await call(first.url, 'POST', '/v1/events', { id: 'timer-1', type: 'comment.created', tenant: 'acme', recipients: ['held'], data: { commentId: 'c-t' } })).json()) as { notifications: { notificationId: string }[] };
    const id = posted.notifications[0]!.notificationId;
    await eventually(() => hooks.for('/held').length === 1, 30_000);
    await eventually(() => held.some((h) => h.key === `${id}:webhook#2` && h.value !== null), 20_000);
    await new Promise((r) => setTimeout(r, 500)); // let the offset of the held retry commit
    expect(hooks.for('/held')).toHaveLength(1); // not due yet: still held
    first.child.kill('SIGKILL');
    await new Promise((r) => first.child.once('exit', r));

    const second = await herald();
    await eventually(() => hooks.for('/held').length >= 2, 40_000);
    const view = await eventually(async () => {
      const res = await call(second.url, 'GET', `/v1/notifications/${id}`);
      const n = res.status === 200 ? ((await res.json()) as NotificationView) : null;
      return n && n.terminal.length > 0 ? n : null;
    }, 30_000);
    // Released once by the timer after the restore, and the release emptied the held entry.
    await eventually(() => held.some((h) => h.key === `${id}:webhook#2` && h.value === null), 20_000);
    await new Promise((r) => setTimeout(r, 1500)); // several timer runs later: nothing fires again
    const calls = hooks.for('/held');
    expect(calls).toHaveLength(2);
    expect(calls.map((c) => c.headers['idempotency-key'])).toEqual([`${id}:webhook`, `${id}:webhook`]);
    expect(view.terminal).toEqual(['webhook:DELIVERED']);
    const delivered = view.events.filter((e) => e.status === 'DELIVERED');
    expect(delivered).toHaveLength(1);
    expect(delivered[0]).toMatchObject({ attempt: 2, sourceTopic: 'herald.deliver.retry.v1' });
    await reader.stop();
    await admin.disconnect();
    second.child.kill('SIGTERM');
    await new Promise((r) => second.child.once('exit', r));
  }, 150_000);
});
