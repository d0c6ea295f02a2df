/**
 * @nxtedition/rocksdb 12.2.12 made a chained batch for every `db.batch(ops)` and wrote it
 * through the private `_write`, so the batch never detached from the database: every
 * batch's handle and its native WriteBatch (all its keys and values) stayed alive until the
 * database closed. Herald's stores write a batch per stage batch, so a worker's native
 * memory grew by the bytes it wrote (about 200 MB in two minutes of the bench's soak).
 * patches/@nxtedition+rocksdb+12.2.12.patch, applied by `npm install`, writes through one
 * native batch per database, cleared after each write; this keeps it applied and correct.
 */
import { mkdtempSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { removeDir } from './support/herald.ts';

const require = createRequire(import.meta.url);
const binding = require('@nxtedition/rocksdb/binding.js') as { batch_init: () => unknown };
const { RocksLevel } = require('@nxtedition/rocksdb') as { RocksLevel: new (dir: string, o: object) => Level };
interface Level {
  open(): Promise<void>;
  close(): Promise<void>;
  batch(ops: { type: 'put' | 'del'; key: string; value?: string }[]): Promise<void>;
  get(key: string): Promise<string | undefined>;
  sublevel(name: string, o: object): Level;
}

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) removeDir(d);
});

async function open() {
  const dir = mkdtempSync(join(tmpdir(), 'herald-rocks-'));
  dirs.push(dir);
  const db = new RocksLevel(dir, { keyEncoding: 'utf8', valueEncoding: 'utf8' });
  await db.open();
  return db;
}

const read = (db: Level, key: string) => db.get(key).catch((err: { code?: string }) => {
  if (err.code === 'LEVEL_NOT_FOUND') return undefined;
  throw err;
});

/** The resources the database keeps open until it closes (abstract-level's private set): every batch that never detached. */
const resources = (db: Level) => {
  const key = Object.getOwnPropertySymbols(db).find((k) => k.description === 'resources');
  return (db as unknown as Record<symbol, Set<unknown>>)[key!]!.size;
};

/** Counts the native batches made while `fn` runs. */
async function nativeBatches(fn: () => Promise<void>): Promise<number> {
  const original = binding.batch_init;
  let made = 0;
  binding.batch_init = () => {
    made++;
    return original();
  };
  try {
    await fn();
  } finally {
    binding.batch_init = original;
  }
  return made;
}

describe('@nxtedition/rocksdb batch writes (patched)', () => {
  it('writes every batch of a database through one native batch, and each write holds only its own operations', async () => {
    const db = await open();
    const store = db.sublevel('s', { keyEncoding: 'utf8', valueEncoding: 'utf8' });
    const made = await nativeBatches(async () => {
      for (let i = 0; i < 200; i++) await store.batch([{ type: 'put', key: `k${i}`, value: `v${i}` }, { type: 'del', key: `k${i - 1}` }]);
    });
    expect(made).toBeLessThanOrEqual(1);
    expect(resources(db)).toBeLessThanOrEqual(1);
    // Cleared after each write: a deleted key stays deleted (no operation replayed later).
    expect(await read(store, 'k198')).toBeUndefined();
    expect(await read(store, 'k199')).toBe('v199');
    await db.close();
  });

  it('gives a batch of many operations, or of many bytes, a native batch of its own, writes it whole and lets it go', async () => {
    const db = await open();
    const ops = Array.from({ length: 5000 }, (_, i) => ({ type: 'put' as const, key: `big${i}`, value: String(i) }));
    expect(await nativeBatches(() => db.batch(ops))).toBe(1);
    expect(await db.get('big4999')).toBe('4999');
    const large = Array.from({ length: 10 }, (_, i) => ({ type: 'put' as const, key: `large${i}`, value: 'x'.repeat(1024 * 1024) }));
    await db.batch(large);
    expect((await db.get('large9'))?.length).toBe(1024 * 1024);
    expect(resources(db)).toBe(0);
    await db.batch([{ type: 'put', key: 'after', value: 'x' }]);
    expect(await db.get('after')).toBe('x');
    await db.close();
  });

  it('keeps writing after the database is closed and opened again', async () => {
    const db = await open();
    await db.batch([{ type: 'put', key: 'a', value: '1' }]);
    await db.close();
    await db.open();
    await db.batch([{ type: 'put', key: 'b', value: '2' }]);
    expect([await db.get('a'), await db.get('b')]).toEqual(['1', '2']);
    await db.close();
  });
});
