/**
 * `npm start` with HERALD_WORKERS=2, the README's way: a worker process runs one more
 * member of every stage group; partitions spread over both processes, queries to either
 * answer from the primary, /metrics sums both, a restart keeps each process's stores, and
 * the worker goes when the primary does (SIGTERM to npm, or SIGKILL to Herald).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { callUrl, eventually, removeDir, TEST_ENV } from './support/herald.ts';
import { alive, childrenOf, launcherPids, startWithNpm } from './support/processes.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';

const hooks = new WebhookReceiver();
const children: ChildProcess[] = [];
const dir = mkdtempSync(join(tmpdir(), 'herald-workers-'));
const env = { HERALD_STATE_DIR: join(dir, 'state'), HERALD_WORKERS: '2', HERALD_PARTITIONS: '4', HERALD_COMMIT_INTERVAL_MS: '200', HERALD_HEAP_MB: '200' };
const USERS = 24;
const JOIN_MS = 150_000;

beforeAll(async () => {
  await hooks.start();
});
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await hooks.stop();
  removeDir(dir);
});

const call = callUrl;
/** Herald's worker processes: its children other than the broker. */
const workersOf = (herald: number) => childrenOf(herald).filter((p) => !launcherPids().includes(p));
const metric = async (url: string, line: RegExp) => Number(line.exec(await (await fetch(`${url}/metrics`)).text())?.[1] ?? NaN);

describe('herald start with two workers', () => {
  it('spreads the partitions over both processes, answers for both, and keeps each one\'s state across a restart', async () => {
    // Several members per group: on a loaded machine the embedded broker's coordinator may
    // fail a slow member's SyncGroup (INVALID_REQUEST), and the rejoin waits out a rebalance.
    const first = await startWithNpm(env, children, JOIN_MS);
    const [worker] = workersOf(first.herald);
    expect(worker).toBeDefined();
    for (let u = 0; u < USERS; u++) expect((await call(first.url, 'PUT', `/v1/users/u${u}`, { name: `U${u}`, webhookUrl: `${hooks.url}/u${u}` })).status).toBe(202);
    await eventually(async () => (await call(first.url, 'GET', `/v1/users/u${USERS - 1}`)).status === 200);
    const event = (u: number) => ({ id: `ev-${u}`, type: 'comment.created', recipients: [`u${u}`], actor: 'a', data: { commentId: `c-${u}`, documentTitle: 'Doc', excerpt: 'hi' } });
    const ids: string[] = [];
    for (let u = 0; u < USERS; u++) {
      const r = await call(first.url, 'POST', '/v1/events', event(u));
      expect(r.status).toBe(202);
      ids.push((r.body.notifications as { notificationId: string }[])[0]!.notificationId);
    }
    await eventually(() => hooks.received.length >= USERS, 60_000);
    // Every notification once; the queries answer through the primary, from both processes.
    const servedBy = new Set<string>();
    for (const id of ids) {
      const r = await eventually(async () => {
        const a = await call(first.url, 'GET', `/v1/notifications/${id}`);
        return a.status === 200 && a.body.status === 'DELIVERED' ? a : null;
      });
      servedBy.add(r.servedBy!);
    }
    expect(servedBy.size, [...servedBy].join(', ')).toBe(2);
    expect([...servedBy].some((s) => s.endsWith('-w1'))).toBe(true);
    // /metrics sums the two processes' counters.
    await eventually(async () => (await metric(first.url, /^herald_deliver_attempts_total\{channel="webhook",result="delivered"\} (\d+)/m)) === USERS);
    // Both processes' members joined each fresh group together: one rebalance, one join each.
    // (A member that came late would have made the group rebalance again, joining 3 times or more.)
    for (const stage of ['ingest', 'enrich', 'dedupe', 'throttle', 'route', 'deliver', 'outcome']) {
      expect(await metric(first.url, new RegExp(`^herald_stage_group_joins_total\\{stage="${stage}"\\} (\\d+)`, 'm')), stage).toBe(2);
    }
    const ready = await (await fetch(`${first.url}/readyz`)).json() as { ready: boolean; workers: { worker: number; pid: number; ready: boolean; url: string }[]; partitions: Record<string, number[]> };
    expect(ready.ready).toBe(true);
    expect(ready.workers).toEqual([{ worker: 1, pid: worker, ready: true, url: expect.stringMatching(/^http:\/\/127\.0\.0\.1:\d+$/) }]);
    // An equal share (HERALD_PRIMARY_SHARE=100): 2 of the 4 partitions of every stage each,
    // the same two in every group (the primary's instance id sorts first).
    const stages = ['ingest', 'enrich', 'dedupe', 'throttle', 'route', 'deliver', 'outcome'];
    expect(ready.partitions).toEqual(Object.fromEntries(stages.map((s) => [s, [0, 2]])));
    const workerReady = await (await fetch(`${ready.workers[0]!.url}/readyz`)).json() as { partitions: Record<string, number[]> };
    // The worker's heap is sized like the primary's: it inherits the flags npm start gave the primary.
    const heapLimitMb = async (url: string) => (await metric(url, /^herald_process_heap_limit_bytes (\S+)$/m)) / 1048576;
    for (const url of [first.url, ready.workers[0]!.url]) {
      expect(await heapLimitMb(url), url).toBeGreaterThanOrEqual(200);
      expect(await heapLimitMb(url), url).toBeLessThanOrEqual(200 + 3 * 16);
    }
    expect(workerReady.partitions).toEqual(Object.fromEntries(stages.map((s) => [s, [1, 3]])));
    // The standard process metrics, under their usual names, one series per process (never a sum of two processes' limits)
    const page = await (await fetch(`${first.url}/metrics`)).text();
    for (const p of ['primary', 'worker-1']) {
      expect(page).toMatch(new RegExp(`^process_start_time_seconds\\{process="${p}"\\} \\d+`, 'm'));
      expect(page).toMatch(new RegExp(`^process_cpu_seconds_total\\{process="${p}"\\} `, 'm'));
    }
    const maxFds = [...page.matchAll(/^process_max_fds\{process="[^"]+"\} (\d+)$/gm)].map((m) => Number(m[1]));
    expect(maxFds).toHaveLength(2);
    expect(maxFds[0]).toBe(maxFds[1]);
    expect(page).not.toContain('herald_process_process_');
    // Each process counts its Kafka clients' requests by API; the primary's page sums both.
    const requests = (url: string, client: string, api: string) => metric(url, new RegExp(`^herald_kafka_requests_total\\{client="${client}",api="${api}"\\} (\\d+)$`, 'm'));
    // The group joined once (above) and is settled: its JoinGroup requests no longer move, so
    // the primary's page holds the worker's and at least one of its own.
    const workerJoins = await requests(ready.workers[0]!.url, 'herald\\.deliver', 'JoinGroup');
    expect(workerJoins).toBeGreaterThan(0);
    expect(await requests(first.url, 'herald\\.deliver', 'JoinGroup')).toBeGreaterThan(workerJoins);
    expect(await requests(ready.workers[0]!.url, 'herald\\.deliver', 'Fetch')).toBeGreaterThan(0);
    expect(await requests(ready.workers[0]!.url, 'producer', 'Produce')).toBeGreaterThan(0);
    // The embedded broker's back-pressure measure runs in the primary only.
    expect(await requests(first.url, 'admin', 'ListOffsets')).toBeGreaterThan(0);
    // The broker's journal writer has journaled what the worker produced (its partitions 1 and 3 of outcomes.v1).
    const journalDir = join(first.stateDir, 'journal');
    const outcomesDir = join(journalDir, readdirSync(journalDir).find((t) => t.endsWith('outcomes.v1'))!);
    await eventually(() => [1, 3].every((p) => existsSync(join(outcomesDir, `${p}.log`)) && statSync(join(outcomesDir, `${p}.log`)).size > 0));
    // The worker's own port answers the queries forwarded to it, and refuses writes: they
    // belong to the primary, where they are journaled before they are acknowledged.
    expect((await call(ready.workers[0]!.url, 'GET', `/v1/notifications/${ids[0]}`)).status).not.toBe(421);
    const write = await call(ready.workers[0]!.url, 'POST', '/v1/events', event(0));
    expect(write.status).toBe(421);
    expect(write.body).toMatchObject({ error: 'HRL_WORKER_READ_ONLY' });

    // SIGTERM to npm, as a process manager sends it, while both processes have records to
    // commit (events for nobody: dropped at enrich): both stop, cleanly.
    const burst = await Promise.all(Array.from({ length: 40 }, (_, i) => call(first.url, 'POST', '/v1/events', { ...event(i % USERS), id: `ev-burst-${i}`, recipients: [`nobody-${i}`] })));
    expect(burst.every((r) => r.status === 202)).toBe(true);
    first.npm.kill('SIGTERM');
    await eventually(() => first.npm.exitCode !== null, 20_000).catch((err: Error) => {
      throw new Error(`${err.message}: npm start still running 20 s after SIGTERM; the end of its output:\n${first.output().slice(-4000)}`);
    });
    expect(first.npm.exitCode).toBe(0);
    // Every process committed before any member left: no commit met the rebalance a leave starts, and nothing logged an error.
    const errors = first.output().split('\n').filter((l) => l.includes('"level":50'));
    expect(errors).toEqual([]);
    await eventually(() => !alive(worker!), 5_000);

    // The same comments again (new events) after a restart: every process still has its dedupe windows.
    const second = await startWithNpm(env, children, JOIN_MS);
    const [worker2] = workersOf(second.herald);
    try {
      const again: string[] = [];
      for (let u = 0; u < USERS; u++) {
        const r = await call(second.url, 'POST', '/v1/events', { ...event(u), id: `ev-again-${u}` });
        expect(r.status).toBe(202);
        again.push((r.body.notifications as { notificationId: string }[])[0]!.notificationId);
      }
      for (const id of again) await eventually(async () => (await call(second.url, 'GET', `/v1/notifications/${id}`)).body?.status === 'SUPPRESSED_DUPLICATE', 30_000);
      expect(hooks.received.length).toBe(USERS);
      // A worker killed outright is started again, and the summed counters never go down
      // meanwhile (Prometheus would read a drop as a reset): the dead one's stay in the sums.
      const ingested = () => metric(second.url, /^herald_stage_records_total\{stage="ingest",result="in"\} (\d+)$/m);
      const before = await ingested();
      expect(before).toBeGreaterThanOrEqual(USERS);
      process.kill(worker2!, 'SIGKILL');
      const samples: number[] = [];
      await eventually(async () => {
        samples.push(await ingested());
        const r = await (await fetch(`${second.url}/readyz`)).json() as { workers: { pid: number | null; ready: boolean }[] };
        return r.workers[0]!.ready && r.workers[0]!.pid !== worker2;
      }, 120_000);
      samples.push(await ingested());
      expect(samples.filter((n) => !(n >= before))).toEqual([]);
      const [worker3] = workersOf(second.herald);
      // Herald killed outright: its worker does not run on alone, nor spend seconds logging the
      // gone broker's refusals (a stop that can commit nothing): it exits at once.
      process.kill(second.herald, 'SIGKILL');
      await eventually(() => !alive(worker3!), 3_000);
      // (npm goes with Herald; the next test's start needs the state directory free of both.)
      await eventually(() => second.npm.exitCode !== null || second.npm.signalCode !== null, 15_000);
    } finally {
      if (second.npm.exitCode === null) second.npm.kill('SIGKILL');
    }
  }, 420_000);

  it('a worker whose state directory holds another cluster\'s stores stops the start with HRL_STATE_MISMATCH, as the primary would', async () => {
    // given worker 1's directory claimed by another cluster
    writeFileSync(join(dir, 'state', 'workers', '1', 'CLUSTER_ID'), 'kafka:another-cluster');
    // when npm start runs on it
    const npmJs = process.env.npm_execpath;
    const [cmd, args] = npmJs && npmJs.endsWith('.js') ? [process.execPath, [npmJs, 'start']] : ['npm', ['start']];
    const npm = spawn(cmd, args, { env: { ...process.env, ...TEST_ENV, ...env, HERALD_HTTP_PORT: '0', HERALD_LOG_LEVEL: 'warn', KAFKA_BROKERS: '', SCHEMA_REGISTRY_URL: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(npm);
    let out = '';
    npm.stdout.on('data', (d: Buffer) => (out += d.toString()));
    npm.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((resolve) => npm.on('exit', resolve));
    // then it exits 1 naming the code, the worker and the way out, and leaves the directory as it was
    expect(code).toBe(1);
    expect(out).toMatch(/herald: HRL_STATE_MISMATCH: worker 1: HERALD_STATE_DIR \S+workers\/1: its stores were built against kafka:another-cluster/);
    expect(out).toContain(`HERALD_STATE_DIR=${join(dir, 'state')} npm run herald -- reset`);
    expect(readFileSync(join(dir, 'state', 'workers', '1', 'CLUSTER_ID'), 'utf8')).toBe('kafka:another-cluster');
  }, 120_000);
});
