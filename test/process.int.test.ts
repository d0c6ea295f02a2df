/**
 * The README's main command as a user runs it: `herald start` in its own process.
 * It reaches `herald ready`, stops cleanly on SIGTERM, and leaves no broker behind
 * even when killed with SIGKILL.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { eventually } from './support/herald.ts';

const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
});

function launcherPids(): number[] {
  try {
    return execFileSync('pgrep', ['-f', 'build/herald-mock-cluster'], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}

function childrenOf(pid: number): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function startHeraldProcess(): Promise<{ child: ChildProcess; url: string; output: () => string }> {
  const child = spawn(process.execPath, ['cli/herald.ts', 'start'], {
    env: { ...process.env, HERALD_HTTP_PORT: '0', HERALD_STATE_DIR: mkdtempSync(join(tmpdir(), 'herald-proc-')), HERALD_LOG_LEVEL: 'warn', KAFKA_BROKERS: '', SCHEMA_REGISTRY_URL: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const url = await eventually(() => /herald ready (\S+)/.exec(out)?.[1], 30_000);
  return { child, url, output: () => out };
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
    const { npm, herald, broker } = await startWithNpm();
    const exited = new Promise<number | null>((r) => npm.once('exit', (code) => r(code)));
    npm.kill('SIGTERM');
    expect(await exited).toBe(0);
    await eventually(() => !alive(herald) && !alive(broker), 10_000);
  });

  it('stops Herald and its broker when the npm process it runs under is killed with SIGKILL', async () => {
    const { npm, herald, broker } = await startWithNpm();
    npm.kill('SIGKILL');
    await eventually(() => !alive(herald) && !alive(broker), 10_000);
  });
});

/** `npm start`, exactly as the README says, with the npm this test runs under. */
async function startWithNpm(): Promise<{ npm: ChildProcess; herald: number; broker: number }> {
  const execPath = process.env.npm_execpath;
  const [cmd, npmArgs] = execPath && execPath.endsWith('.js') ? [process.execPath, [execPath, 'start']] : ['npm', ['start']];
  const npm = spawn(cmd, npmArgs, {
    env: { ...process.env, HERALD_HTTP_PORT: '0', HERALD_STATE_DIR: mkdtempSync(join(tmpdir(), 'herald-npm-')), HERALD_LOG_LEVEL: 'warn', KAFKA_BROKERS: '', SCHEMA_REGISTRY_URL: '' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(npm);
  let out = '';
  npm.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  npm.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const line = await eventually(() => /herald ready (\S+) brokers=(\S+) registry=(\S+)/.exec(out), 40_000);
  const ready = await fetch(`${line[1]}/readyz`).then((r) => r.json() as Promise<{ endpoints: { brokers: string; registry: string } }>);
  expect(ready.endpoints).toEqual({ brokers: line[2], registry: line[3] });
  // npm's child is Herald itself (the script execs it), so npm's signals reach it.
  const [herald] = childrenOf(npm.pid!);
  const args = execFileSync('ps', ['-o', 'args=', '-p', String(herald)], { encoding: 'utf8' });
  expect(args).toContain('cli/herald.ts start');
  expect(args).not.toMatch(/^(\/(usr\/)?bin\/)?(ba|da)?sh /);
  const broker = childrenOf(herald!).find((p) => launcherPids().includes(p));
  expect(broker).toBeDefined();
  return { npm, herald: herald!, broker: broker! };
}
