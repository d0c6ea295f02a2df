/**
 * The state directory is never discarded silently: stores built against another cluster
 * (or another embedded journal) stop the start with HRL_STATE_MISMATCH and are left as
 * they were; a directory that cannot be used is named, with HRL_STATE_DIR_UNUSABLE.
 */
import { cpSync, existsSync, mkdtempSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eventually, removeDir, startTestHerald } from './support/herald.ts';

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) removeDir(d);
});

describe('state directory ownership', () => {
  it('refuses stores built against another embedded journal and leaves them untouched', async () => {
    const stateDir = mkdtempSync(join(tmpdir(), 'herald-owned-'));
    dirs.push(stateDir);
    const h = await startTestHerald({ stateDir, stages: ['dedupe'], api: false });
    await h.stop();
    const before = readdirSync(stateDir).sort();
    writeFileSync(join(stateDir, 'CLUSTER_ID'), 'embedded:another-journal');
    await expect(startTestHerald({ stateDir, stages: ['dedupe'], api: false })).rejects.toMatchObject({ code: 'HRL_STATE_MISMATCH', message: expect.stringContaining('reset') });
    expect(readdirSync(stateDir).sort()).toEqual(before);
    expect(existsSync(join(stateDir, 'rocksdb', 'CURRENT'))).toBe(true);
  }, 60_000);

  it('refuses a store database copied in from another state directory, leaves it as it is, and rebuilds once it is removed', async () => {
    const [a, b] = [mkdtempSync(join(tmpdir(), 'herald-copy-a-')), mkdtempSync(join(tmpdir(), 'herald-copy-b-'))];
    dirs.push(a, b);
    for (const stateDir of [a, b]) await (await startTestHerald({ stateDir, stages: ['dedupe'], api: false })).stop();
    rmSync(join(b, 'rocksdb'), { recursive: true });
    cpSync(join(a, 'rocksdb'), join(b, 'rocksdb'), { recursive: true });
    const refused = startTestHerald({ stateDir: b, stages: ['dedupe'], api: false });
    await expect(refused).rejects.toMatchObject({ code: 'HRL_STATE_MISMATCH' });
    const message = await refused.catch((err: Error) => err.message);
    expect(message).toContain(`its store database ${join(b, 'rocksdb')} was built against embedded:`);
    expect(message).toContain(`remove ${join(b, 'rocksdb')}`);
    // Left as it was: taken back to the directory it came from, it opens there.
    rmSync(join(a, 'rocksdb'), { recursive: true });
    renameSync(join(b, 'rocksdb'), join(a, 'rocksdb'));
    await (await startTestHerald({ stateDir: a, stages: ['dedupe'], api: false })).stop();
    // And without it, b rebuilds its stores.
    await (await startTestHerald({ stateDir: b, stages: ['dedupe'], api: false })).stop();
    expect(existsSync(join(b, 'rocksdb', 'CURRENT'))).toBe(true);
  }, 120_000);

  it('names a state directory it cannot create', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'herald-file-')), 'a-file');
    dirs.push(file);
    writeFileSync(file, 'not a directory');
    await expect(startTestHerald({ stateDir: join(file, 'state'), stages: ['dedupe'], api: false })).rejects.toMatchObject({ code: 'HRL_STATE_DIR_UNUSABLE', message: expect.stringContaining(join(file, 'state')) });
  });

  it('knows a live Herald on a state directory from a stale pid file', async () => {
    const { spawn } = await import('node:child_process');
    const { runningHerald } = await import('../app/herald.ts');
    const stateDir = mkdtempSync(join(tmpdir(), 'herald-pid-'));
    dirs.push(stateDir);
    const pidFile = join(stateDir, 'herald.pid');
    writeFileSync(pidFile, '999999999'); // no such process: a crash left the file
    expect(runningHerald(stateDir)).toBeNull();
    writeFileSync(pidFile, String(process.ppid)); // alive, but not a Herald (a reused pid)
    expect(runningHerald(stateDir)).toBeNull();
    const other = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 10000)', 'herald-pid-test'], { stdio: 'ignore' });
    try {
      writeFileSync(pidFile, String(other.pid));
      expect(runningHerald(stateDir)).toBe(other.pid);
      await expect(startTestHerald({ stateDir, stages: ['dedupe'], api: false })).rejects.toMatchObject({ code: 'HRL_STATE_DIR_UNUSABLE', message: expect.stringContaining(`pid ${other.pid}`) });
    } finally {
      other.kill('SIGKILL');
    }
  });
});


describe('the advertised URL', () => {
  it('names this machine\'s host, not 127.0.0.1, when the API listens on every interface', async () => {
    const { hostname } = await import('node:os');
    const stateDir = mkdtempSync(join(tmpdir(), 'herald-adv-'));
    dirs.push(stateDir);
    const h = await startTestHerald({ stateDir, stages: ['outcome'], env: { HERALD_HTTP_HOST: '0.0.0.0', HERALD_HTTP_PORT: '0' } });
    try {
      const port = new URL(h.httpUrl!).port;
      const claim = await eventually(() => h.directory.owner('outcome', 0), 20_000);
      expect(claim.url).toBe(`http://${hostname()}:${port}`);
    } finally {
      await h.stop();
    }
  }, 60_000);
});

describe('the HTTP port', () => {
  it('names HERALD_HTTP_PORT when the port is taken, and how to choose another', async () => {
    const { createServer } = await import('node:net');
    const holder = createServer();
    await new Promise<void>((r) => holder.listen(0, '127.0.0.1', () => r()));
    const port = (holder.address() as { port: number }).port;
    try {
      await expect(startTestHerald({ stages: ['ingest'], env: { HERALD_HTTP_PORT: String(port), HERALD_HTTP_HOST: '127.0.0.1' } })).rejects.toMatchObject({
        code: 'HRL_CONFIG_INVALID', message: expect.stringMatching(new RegExp(`^HERALD_HTTP_PORT: 127\\.0\\.0\\.1:${port} is already in use .*HERALD_HTTP_PORT to another port \\(0 picks a free one\\)`)),
      });
    } finally {
      holder.close();
    }
  }, 60_000);
});
