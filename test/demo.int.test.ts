/**
 * `npm run demo`, the README's first look at Herald: signed webhooks arrive, every
 * lifecycle ends, a burst over a rate limit is deferred and released, and edits over a
 * limit go out as one digest.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eventually, removeDir } from './support/herald.ts';

const dir = mkdtempSync(join(tmpdir(), 'herald-demo-'));
let npm: ChildProcess | null = null;
afterAll(() => {
  if (npm && npm.exitCode === null) npm.kill('SIGTERM');
  removeDir(dir);
});

describe('npm run demo', () => {
  it('delivers on all four channels, defers and releases a burst, and sends a digest', async () => {
    const execPath = process.env.npm_execpath;
    const [cmd, args] = execPath && execPath.endsWith('.js') ? [process.execPath, [execPath, 'run', 'demo']] : ['npm', ['run', 'demo']];
    npm = spawn(cmd, args, { env: { ...process.env, HERALD_HTTP_PORT: '0', HERALD_STATE_DIR: join(dir, 'state'), HERALD_LOG_LEVEL: 'warn', KAFKA_BROKERS: '', SCHEMA_REGISTRY_URL: '', HERALD_RULES: '', HERALD_DEV_KEY: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    npm.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    npm.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    await eventually(() => out.includes('demo done'), 100_000).catch((err: Error) => {
      throw new Error(`${err.message}\n${out.split('\n').slice(-30).join('\n')}`);
    });
    const hooks = out.split('\n').filter((l) => l.startsWith('demo webhook <-'));
    expect(hooks.length).toBeGreaterThanOrEqual(8);
    expect(hooks.every((l) => l.includes('signature valid'))).toBe(true);
    expect(hooks.filter((l) => l.includes('"3 more edits"'))).toHaveLength(1);
    const lifecycles = out.split('\n').filter((l) => l.startsWith('demo lifecycle'));
    expect(lifecycles.filter((l) => l.includes('throttle:DEFERRED -> throttle:RELEASED') && l.includes('deliver:DELIVERED'))).toHaveLength(2);
    expect(lifecycles.filter((l) => l.includes('throttle:DIGESTED'))).toHaveLength(3);
    expect(out).toMatch(/demo {3}why: deferred: 2 of 2 collaboration notifications in the last 20 s; released at/);
    // All four channels: chat, email (read back from the embedded SMTP sink), the live inbox.
    expect(out).toMatch(/^demo chat <- ada: Review requested: grace asked you to review #42 Add retries \[signature valid\]$/m);
    expect(out).toMatch(/^demo mailbox <- (ada|grace)@example\.com: "/m);
    expect(out).toMatch(/^demo inbox <- ada: linus commented on Q3 plan \(live, server-sent event\)$/m);
  }, 120_000);
});
