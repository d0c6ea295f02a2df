/**
 * `herald tail` against the running embedded instance (found through its state dir), as a
 * user runs it: it prints each decision as it is made (as text, or `--json` one object a
 * line), stops at Ctrl-C, and ends with
 * HRL_BROKER_UNREACHABLE when the instance stops under it, instead of retrying for ever.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import type { Herald } from '../app/herald.ts';
import { api, eventually, removeDir, startTestHerald, TEST_KEY } from './support/herald.ts';

const started: (Herald & { stateDir: string })[] = [];
const children: ChildProcess[] = [];
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const h of started) {
    await h.stop().catch(() => undefined);
    removeDir(h.stateDir);
  }
});

function startTail(h: Herald & { stateDir: string }, ...args: string[]) {
  const child = spawn(process.execPath, ['cli/herald.ts', 'tail', ...args], { env: { ...process.env, HERALD_STATE_DIR: h.stateDir, KAFKA_BROKERS: '', HERALD_DEV_KEY: TEST_KEY }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let stdout = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
    stdout += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, output: () => out, stdout: () => stdout, exited };
}

describe('herald tail', () => {
  it('prints decisions as they are made, and stops at SIGINT', async () => {
    const h = await startTestHerald();
    started.push(h);
    const t = startTail(h);
    // --json: one lifecycle event a line on stdout, for jq.
    const j = startTail(h, '--json');
    // tail starts at the end: what is published once it follows is printed (published
    // again every 2 s until then, as tail may still be joining)
    let n = 0;
    const ids: string[] = [];
    const jsonLines = () => j.stdout().split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l) as Record<string, unknown>);
    await eventually(async () => {
      const r = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'comment.created', recipients: ['ghost'], actor: 'linus', data: { commentId: `t${n++}`, documentTitle: 'Plan', excerpt: 'x' } });
      const id = r.body.notifications[0]!.notificationId;
      ids.push(id);
      await new Promise((res) => setTimeout(res, 1500));
      return new RegExp(`${id}  acme/ghost  .*DROPPED`).test(t.output()) && jsonLines().some((e) => e.notificationId === id && e.status === 'DROPPED');
    }, 40_000, 500);
    t.child.kill('SIGINT');
    j.child.kill('SIGINT');
    expect(await t.exited).toBe(0);
    expect(await j.exited).toBe(0);
    const dropped = jsonLines().find((e) => e.notificationId === ids.at(-1) && e.status === 'DROPPED')!;
    expect(dropped).toMatchObject({ topic: 'herald.outcomes.v1', tenant: 'acme', recipient: 'ghost', stage: 'enrich', terminal: true, offset: expect.stringMatching(/^\d+$/), partition: expect.any(Number) });
    expect(dropped.reason).toEqual(expect.any(String));
  }, 90_000);

  it('ends with HRL_BROKER_UNREACHABLE when the instance it follows stops', async () => {
    const h = await startTestHerald();
    started.push(h);
    const t = startTail(h);
    await new Promise((r) => setTimeout(r, 4000));
    await h.stop();
    const code = await Promise.race([t.exited, new Promise<'still running'>((r) => setTimeout(() => r('still running'), 60_000))]);
    expect(code).toBe(1);
    expect(t.output()).toMatch(/herald: HRL_BROKER_UNREACHABLE: lost the broker while following herald\.outcomes\.v1: .+ \(has the Herald instance stopped\?\)/);
    // Said once: not after a log line (kafkajs' JSON) per failed connection.
    expect(t.output().split('\n').filter((l) => l.startsWith('{'))).toEqual([]);
  }, 120_000);
});
