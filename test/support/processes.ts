/** Processes as a user starts them: `npm start` the README's way, and what runs under it. */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'vitest';
import { eventually, TEST_ENV } from './herald.ts';

export function launcherPids(): number[] {
  try {
    return execFileSync('pgrep', ['-f', 'build/herald-mock-cluster'], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}

export function childrenOf(pid: number): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

export const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};


export interface NpmHerald { npm: ChildProcess; herald: number; broker: number; url: string; stateDir: string; output: () => string }

/** `npm start`, exactly as the README says, with the npm this test runs under. */
export async function startWithNpm(env: Record<string, string>, track: ChildProcess[], readyMs = 60_000): Promise<NpmHerald> {
  const execPath = process.env.npm_execpath;
  const [cmd, npmArgs] = execPath && execPath.endsWith('.js') ? [process.execPath, [execPath, 'start']] : ['npm', ['start']];
  const stateDir = env.HERALD_STATE_DIR ?? mkdtempSync(join(tmpdir(), 'herald-npm-'));
  const npm = spawn(cmd, npmArgs, {
    env: { ...process.env, HERALD_HTTP_PORT: '0', HERALD_STATE_DIR: stateDir, HERALD_LOG_LEVEL: 'warn', KAFKA_BROKERS: '', SCHEMA_REGISTRY_URL: '', ...TEST_ENV, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  track.push(npm);
  let out = '';
  npm.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  npm.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const line = await eventually(() => /herald ready (\S+) brokers=(\S+) registry=(\S+)/.exec(out), readyMs).catch((err: Error) => {
    throw new Error(`npm start did not get ready: ${err.message}\n${out.split('\n').slice(-20).join('\n')}`);
  });
  const ready = await fetch(`${line[1]}/readyz`).then((r) => r.json() as Promise<{ endpoints: { brokers: string; registry: string } }>);
  expect(ready.endpoints).toEqual({ brokers: line[2], registry: line[3] });
  // npm's child is Herald itself (the script execs it), so npm's signals reach it.
  const [herald] = childrenOf(npm.pid!);
  const args = execFileSync('ps', ['-o', 'args=', '-p', String(herald)], { encoding: 'utf8' });
  expect(args).toContain('cli/herald.ts start');
  expect(args).not.toMatch(/^(\/(usr\/)?bin\/)?(ba|da)?sh /);
  const broker = childrenOf(herald!).find((p) => launcherPids().includes(p));
  expect(broker).toBeDefined();
  return { npm, herald: herald!, broker: broker!, url: line[1]!, stateDir, output: () => out };
}
