/**
 * The README's main command as a user runs it: `herald start` in its own process.
 * It reaches `herald ready`, stops cleanly on SIGTERM, and leaves no broker behind
 * even when killed with SIGKILL.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { eventually, TEST_ENV } from './support/herald.ts';
import { alive, childrenOf, launcherPids, startWithNpm } from './support/processes.ts';

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});

async function startHeraldProcess(o: { detached?: boolean } = {}): Promise<{ child: ChildProcess; url: string; stateDir: string; output: () => string }> {
  const stateDir = mkdtempSync(join(tmpdir(), 'herald-proc-'));
  const child = spawn(process.execPath, ['cli/herald.ts', 'start'], {
    detached: o.detached ?? false,
    env: { ...process.env, HERALD_HTTP_PORT: '0', HERALD_STATE_DIR: stateDir, HERALD_LOG_LEVEL: 'warn', KAFKA_BROKERS: '', SCHEMA_REGISTRY_URL: '', ...TEST_ENV },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const url = await eventually(() => /herald ready (\S+)/.exec(out)?.[1], 30_000);
  return { child, url, stateDir, output: () => out };
}

describe('herald start as a process', () => {
  it('prints "herald ready <url>", serves /readyz, and exits 0 on SIGTERM taking its broker with it', async () => {
    const { child, url } = await startHeraldProcess();
    const ready = await fetch(`${url}/readyz`).then((r) => r.json() as Promise<{ ready: boolean }>);
    expect(ready.ready).toBe(true);
    const brokers = childrenOf(child.pid!).filter((p) => launcherPids().includes(p));
    expect(brokers).toHaveLength(1);
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    await eventually(() => !alive(brokers[0]!), 5000);
  });

  // Ctrl-C in a terminal, a terminal's hangup (an ssh session that drops), and systemd's
  // default stop (KillMode=control-group) signal every process of the group: the broker must
  // outlive Herald's stop, which ends with a snapshot.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    it(`stops cleanly with exit 0 when ${signal} reaches its whole process group, broker included`, async () => {
      const { child, stateDir, output } = await startHeraldProcess({ detached: true });
      const brokers = childrenOf(child.pid!).filter((p) => launcherPids().includes(p));
      expect(brokers).toHaveLength(1);
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      const t0 = Date.now();
      // (file times are coarser than the clock: a second of slack)
      const signalledAt = t0 - 1000;
      process.kill(-child.pid!, signal);
      expect(await exited).toBe(0);
      expect(Date.now() - t0).toBeLessThan(15_000);
      expect(output()).not.toMatch(/not stopped within|ECONNREFUSED|snapshot failed|snapshot skipped/);
      // Its last offset snapshot was taken after the signal (the broker was still there for it).
      expect(statSync(join(stateDir, 'journal', 'offsets.json')).mtimeMs).toBeGreaterThanOrEqual(signalledAt);
      await eventually(() => !alive(brokers[0]!), 5000);
    });
  }

  it('says so and exits 143 when SIGTERM comes during the start, leaving no broker behind', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'herald-proc-'));
    const child = spawn(process.execPath, ['cli/herald.ts', 'start'], {
      env: { ...process.env, HERALD_HTTP_PORT: '0', HERALD_STATE_DIR: stateDir, HERALD_LOG_LEVEL: 'info', KAFKA_BROKERS: '', SCHEMA_REGISTRY_URL: '', ...TEST_ENV },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    // once the embedded broker is up, before the ready line
    const broker = await eventually(() => childrenOf(child.pid!).find((p) => launcherPids().includes(p)), 30_000);
    expect(out).not.toContain('herald ready');
    child.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.once('exit', (c) => resolve(c))));
    expect(code).toBe(143);
    expect(out).toMatch(/"signal":"SIGTERM".*"msg":"stopped during the start, before anything was processed"/);
    await eventually(() => !alive(broker), 10_000);
  }, 60_000);

  it('says the embedded broker died, with how, and exits 1 at once instead of running on without it', async () => {
    const { child, url, output } = await startHeraldProcess();
    const [broker] = childrenOf(child.pid!).filter((p) => launcherPids().includes(p));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const t0 = Date.now();
    process.kill(broker!, 'SIGKILL');
    expect(await exited).toBe(1);
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(output()).toMatch(/"level":60,.*"code":"HRL_EMBEDDED_BROKER".*"signal":"SIGKILL".*"msg":"embedded broker died"/);
    expect(output()).toContain('herald: HRL_EMBEDDED_BROKER: the embedded broker died (killed by SIGKILL). Its topics, offsets and groups lived in its memory');
    await expect(fetch(`${url}/healthz`)).rejects.toThrow();
  });

  it('leaves no broker process behind when killed with SIGKILL', async () => {
    const { child } = await startHeraldProcess();
    const brokers = childrenOf(child.pid!).filter((p) => launcherPids().includes(p));
    expect(brokers).toHaveLength(1);
    expect(alive(brokers[0]!)).toBe(true);
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGKILL');
    await exited;
    await eventually(() => !alive(brokers[0]!), 5000);
  });

  it('stops within 10 s with exit 0 when SIGTERM goes to `npm start`, as a process manager sends it', async () => {
    const { npm, herald, broker, url } = await startWithNpm({ HERALD_HEAP_MB: '200' }, children);
    // npm start sizes the V8 heap by HERALD_HEAP_MB: 200 MB of old space and 3 semi-spaces of
    // 16 MB (Node's default on this machine is over 4 GB).
    const limit = Number(/^herald_process_heap_limit_bytes (\S+)$/m.exec(await (await fetch(`${url}/metrics`)).text())?.[1]);
    expect(limit / 1048576).toBeGreaterThanOrEqual(200);
    expect(limit / 1048576).toBeLessThanOrEqual(200 + 3 * 16);
    const exited = new Promise<number | null>((r) => npm.once('exit', (code) => r(code)));
    npm.kill('SIGTERM');
    expect(await exited).toBe(0);
    await eventually(() => !alive(herald) && !alive(broker), 10_000);
  });

  it('stops Herald and its broker when the npm process it runs under is killed with SIGKILL', async () => {
    const { npm, herald, broker } = await startWithNpm({}, children);
    npm.kill('SIGKILL');
    await eventually(() => !alive(herald) && !alive(broker), 10_000);
  });
});
