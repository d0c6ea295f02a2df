/**
 * The CLI as a user runs it, without a running instance: `herald reset` deletes a state
 * directory Herald wrote and refuses anything else (a directory holding other files, a
 * file), deleting nothing; a configuration error is one line with its code, in every
 * command.
 */
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { removeDir } from './support/herald.ts';

const run = promisify(execFile);
const root = mkdtempSync(join(tmpdir(), 'herald-reset-'));
afterAll(() => removeDir(root));

async function reset(stateDir: string, ...args: string[]): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, ['cli/herald.ts', 'reset', ...args], { env: { ...process.env, HERALD_STATE_DIR: stateDir, HERALD_LOG_LEVEL: 'warn' } });
    return { code: 0, out: stdout + stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, out: e.stdout + e.stderr };
  }
}

describe('herald reset', () => {
  it('deletes what Herald wrote in a state directory, keeping the directory (it may be a mount point), and --dry-run only says what it would delete', async () => {
    const dir = join(root, 'state');
    mkdirSync(join(dir, 'journal'), { recursive: true });
    mkdirSync(join(dir, 'rocksdb'));
    writeFileSync(join(dir, 'CLUSTER_ID'), 'embedded:x');
    writeFileSync(join(dir, 'dev-key'), 'hk_x');
    const dry = await reset(dir, '--dry-run');
    expect(dry).toEqual({ code: 0, out: `would delete in ${dir}: CLUSTER_ID, journal, rocksdb; the dev key is kept (--new-dev-key deletes it too)\n` });
    expect(existsSync(dir)).toBe(true);
    const done = await reset(dir);
    expect(done.code).toBe(0);
    expect(done.out).toContain(`deleted CLUSTER_ID, journal, rocksdb in ${dir}`);
    // The dev key a user saved still works after a reset.
    expect(readdirSync(dir)).toEqual(['dev-key']);
    expect(await reset(dir, '--dry-run')).toEqual({ code: 0, out: `${dir} holds nothing to delete; the dev key is kept (--new-dev-key deletes it too)\n` });
    expect((await reset(dir, '--new-dev-key')).out).toContain(`deleted dev-key in ${dir}`);
    expect(readdirSync(dir)).toEqual([]);
    expect(await reset(dir, '--dry-run')).toEqual({ code: 0, out: `${dir} holds nothing to delete\n` });
  });

  it('lists what it would delete while Herald runs on the directory, and refuses to delete it', async () => {
    const dir = join(root, 'busy');
    mkdirSync(join(dir, 'rocksdb'), { recursive: true });
    // A live process whose command line names herald stands for the running instance.
    const herald = spawn('sh', ['-c', 'sleep 60', 'herald'], { stdio: 'ignore' });
    try {
      writeFileSync(join(dir, 'herald.pid'), String(herald.pid));
      await new Promise((r) => setTimeout(r, 100));
      expect(await reset(dir, '--dry-run')).toEqual({ code: 0, out: `would delete in ${dir}: herald.pid, rocksdb (Herald, pid ${herald.pid}, is running on it: stop it before a reset)\n` });
      const refused = await reset(dir);
      expect(refused.code).toBe(1);
      expect(refused.out).toContain(`Herald (pid ${herald.pid}) is running on it; stop it first`);
      expect(readdirSync(dir).sort()).toEqual(['herald.pid', 'rocksdb']);
    } finally {
      herald.kill('SIGKILL');
    }
  });

  it('refuses a directory that holds anything Herald did not write, and deletes nothing', async () => {
    const dir = join(root, 'mine');
    mkdirSync(join(dir, 'sub'), { recursive: true });
    writeFileSync(join(dir, 'sub', 'thesis.txt'), 'years of work');
    writeFileSync(join(dir, 'CLUSTER_ID'), 'embedded:x');
    const r = await reset(dir);
    expect(r.code).toBe(1);
    expect(r.out).toContain(`herald: HRL_STATE_DIR_UNUSABLE: HERALD_STATE_DIR ${dir} holds what Herald did not write (sub): nothing was deleted`);
    expect(existsSync(join(dir, 'sub', 'thesis.txt'))).toBe(true);
  });

  it('refuses a file, and says there is nothing to delete for a path that does not exist', async () => {
    const file = join(root, 'notes.txt');
    writeFileSync(file, 'keep me');
    const r = await reset(file);
    expect(r.code).toBe(1);
    expect(r.out).toContain('is not a directory: not deleted');
    expect(existsSync(file)).toBe(true);
    const none = await reset(join(root, 'nowhere'));
    expect(none).toEqual({ code: 0, out: `HERALD_STATE_DIR ${join(root, 'nowhere')} does not exist: nothing to delete\n` });
  });
});

describe('herald explain arguments', () => {
  it('refuses a notification id with --event, and --tenant without --event, saying which to pass', async () => {
    const explain = (...args: string[]) => run(process.execPath, ['cli/herald.ts', 'explain', ...args], { env: { ...process.env, HERALD_STATE_DIR: join(root, 'none') } }).then(() => null, (e: { code: number; stderr: string }) => e);
    const both = await explain('ntf_0123', '--event', 'evt-1');
    expect([both?.code, both?.stderr.trim()]).toEqual([1, 'herald: HRL_CONFIG_INVALID: explain: pass a notification id (ntf_0123) or --event <eventId>, not both']);
    const tenant = await explain('ntf_0123', '--tenant', 'acme');
    expect([tenant?.code, tenant?.stderr.trim()]).toEqual([1, 'herald: HRL_CONFIG_INVALID: explain --tenant: only with --event (event ids are per tenant; a notification id is not)']);
  });
});

describe('a configuration error', () => {
  it.each([['describe'], ['topics', 'create'], ['schemas', 'check'], ['tail'], ['replay', '--stage', 'dedupe']])('is one line with its code in `%s`, not a stack trace', async (...args) => {
    const r = await run(process.execPath, ['cli/herald.ts', ...args], { env: { ...process.env, HERALD_PARTITIONS: 'abc' } }).then(() => null, (e: { code: number; stdout: string; stderr: string }) => e);
    expect(r?.code).toBe(1);
    expect(r?.stdout).toBe('');
    expect(r?.stderr).toBe('herald: HRL_CONFIG_INVALID: HERALD_PARTITIONS: expected an integer in [1, 256], got "abc"\n');
  });
});

describe('a flag\'s error', () => {
  it('names the flag: start --workers abc', async () => {
    const r = await run(process.execPath, ['cli/herald.ts', 'start', '--workers', 'abc'], { env: { ...process.env, HERALD_STATE_DIR: join(root, 'flag') } }).then(() => null, (e: { code: number; stderr: string }) => e);
    expect(r?.code).toBe(1);
    expect(r?.stderr).toBe('herald: HRL_CONFIG_INVALID: --workers: expected an integer in [0, 64], got "abc"\n');
  });
});


describe('brokers that cannot be reached', () => {
  it('names KAFKA_BROKERS and the code, not only kafkajs\' connection error', async () => {
    const env = { ...process.env, KAFKA_BROKERS: '127.0.0.1:1', SCHEMA_REGISTRY_URL: 'http://127.0.0.1:2', HERALD_WEBHOOK_SECRET: 'a-secret-of-our-own', HERALD_LOG_LEVEL: 'silent', HERALD_STATE_DIR: join(root, 'unreachable') };
    const r = await run(process.execPath, ['cli/herald.ts', 'topics', 'create'], { env }).then(() => null, (e: { code: number; stderr: string }) => e);
    expect(r?.code).toBe(1);
    expect(r?.stderr).toMatch(/^herald: HRL_BROKER_UNREACHABLE: KAFKA_BROKERS 127\.0\.0\.1:1 could not be reached \(.*ECONNREFUSED.*\); check the address and that the brokers are up$/m);
  }, 60_000);
});
