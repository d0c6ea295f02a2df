/**
 * The keyed store on each backend: buffered batch writes, changelog records, checkpoints,
 * restore, and expiry by range scan over the time index.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { type Backend, KeyValueStore, storesPath, tuneStores } from '../state/store.ts';

const dir = mkdtempSync(join(tmpdir(), 'herald-store-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.each<Backend>(['rocksdb', 'level', 'memory'])('KeyValueStore on %s', (backend) => {
  let n = 0;
  const open = (changelog: string | null = 'cl') => KeyValueStore.open({ backend, dir, stage: backend, name: `s${n++}`, partition: 0, changelog });

  it('range and prefix reads merge committed keys with the batch\'s own writes, in key order', async () => {
    const store = await open();
    const v1 = store.view();
    for (const k of ['p:a', 'p:c', 'p:e', 'q:z']) v1.put(k, k);
    await v1.flush(null);
    const view = store.view();
    view.put('p:b', 'new b');
    view.put('p:c', 'new c');
    view.delete('p:e');
    view.put('p:f', 'f');
    const all: [string, unknown][] = [];
    for await (const e of view.prefix('p:')) all.push(e);
    expect(all).toEqual([['p:a', 'p:a'], ['p:b', 'new b'], ['p:c', 'new c'], ['p:f', 'f']]);
    const two: string[] = [];
    for await (const [k] of view.range('p:b', 'p:z', 2)) two.push(k);
    expect(two).toEqual(['p:b', 'p:c']);
    // read backwards (newest-first pages): the same merge, from the last key, the limit counted from there
    const back: [string, unknown][] = [];
    for await (const e of view.range('p:', 'p:\uffff', undefined, true)) back.push(e);
    expect(back).toEqual([['p:f', 'f'], ['p:c', 'new c'], ['p:b', 'new b'], ['p:a', 'p:a']]);
    const lastTwo: string[] = [];
    for await (const [k] of view.range('p:', 'p:e', 2, true)) lastTwo.push(k);
    expect(lastTwo).toEqual(['p:c', 'p:b']);
    await store.close();
  });

  it('holds items until due, oldest first, and skips stale index entries without counting them', async () => {
    const store = await open();
    const v1 = store.view();
    for (let i = 0; i < 100; i++) v1.hold(`stale${i}`, 1000 + i, { i });
    v1.hold('late', 5000, 'late');
    v1.hold('early', 2000, 'early');
    v1.hold('moved', 1500, 'moved');
    await v1.flush(null);
    const v2 = store.view();
    for (let i = 0; i < 100; i++) v2.delete(`stale${i}`); // released: their index entries are now stale
    v2.hold('moved', 4000, 'moved'); // held again later: the 1500 entry is stale
    await v2.flush(null);
    const view = store.view();
    expect(await view.due(1999)).toEqual([]);
    expect((await view.due(4500)).map((d) => [d.key, d.dueAt])).toEqual([['early', 2000], ['moved', 4000]]);
    expect((await view.due(Number.MAX_SAFE_INTEGER, 1)).map((d) => d.key)).toEqual(['early']);
    expect((await view.due(Number.MAX_SAFE_INTEGER)).map((d) => d.value)).toEqual(['early', 'moved', 'late']);
    // The stale index entries were dropped by the scan (locally: the changelog carries no index entries).
    expect(view.changes().filter((c) => c.value === null)).toHaveLength(101);
    await store.close();
  });

  it('buffers writes until flush, reading its own writes, and reports them as changelog records', async () => {
    const store = await open();
    const view = store.view();
    view.put('a', { x: 1 });
    view.put('b', { x: 2 });
    view.delete('b');
    expect(await view.getMany(['a', 'b', 'c'])).toEqual([{ x: 1 }, undefined, undefined]);
    expect(await store.view().get('a')).toBeUndefined(); // not flushed yet
    expect(view.changes()).toEqual([{ key: 'a', value: '{"x":1}' }, { key: 'b', value: null }]);
    await view.flush(41n);
    expect(await store.view().get('a')).toEqual({ x: 1 });
    expect(await store.checkpoint()).toBe(41n);
    await store.close();
  });

  it('restores from changelog records, applying tombstones and moving the checkpoint', async () => {
    const store = await open();
    await store.restore([{ key: 'k1', value: '"v1"' }, { key: 'k2', value: '"v2"' }, { key: 'k1', value: null }], 9n);
    expect(await store.view().getMany(['k1', 'k2'])).toEqual([undefined, 'v2']);
    expect(await store.checkpoint()).toBe(9n);
    await store.close();
  });

  it('expires entries whose time has come by a range scan, keeping later ones and re-put keys', async () => {
    const store = await open();
    const v = store.view();
    v.putUntil('early', 'e', 100);
    v.putUntil('late', 'l', 300);
    v.putUntil('moved', 'm1', 100);
    await v.flush(null);
    const v2 = store.view();
    v2.putUntil('moved', 'm2', 500); // a later window for the same key
    await v2.flush(null);
    const sweep = store.view();
    expect(await sweep.expire(200)).toBe(1);
    await sweep.flush(null);
    expect(await store.view().getMany(['early', 'late', 'moved'])).toEqual([undefined, 'l', 'm2']);
    // The sweep's deletions are changelog records too: a restore elsewhere converges.
    const after = store.view();
    expect(await after.expire(600)).toBe(2);
    expect(after.changes().filter((c) => c.value === null).map((c) => c.key).filter((k) => !k.startsWith('\u0000'))).toEqual(['late', 'moved']);
    await after.flush(null);
    const left: string[] = [];
    for await (const [k] of store.range('', '\uffff')) left.push(k);
    expect(left.filter((k) => !k.startsWith('\u0000meta'))).toEqual([]);
    await store.close();
  });

  it('writes one changelog record per putUntil and hold, and a store restored from them rebuilds the time indexes', async () => {
    const source = await open();
    const v = source.view();
    v.putUntil('w1', { n: 1 }, 100);
    v.putUntil('w2', 'two', 300);
    v.hold('h1', 2000, { task: 1 });
    v.hold('h2', 1000, 'task 2');
    v.put('plain', { $exp: 'soon', note: 1 });
    // The database gets the values and their index entries; the changelog only the values.
    expect(v.changes().map((c) => c.key).filter((k) => k.startsWith('\u0000'))).toHaveLength(4);
    const changelog = v.changelog();
    expect(changelog.map((c) => c.key)).toEqual(['w1', 'w2', 'h1', 'h2', 'plain']);
    await v.flush(null);
    // A tombstone and a rewrite later in the changelog: the stale index entries they leave are skipped.
    const v2 = source.view();
    v2.delete('h2');
    v2.putUntil('w1', { n: 2 }, 500);
    const later = v2.changelog();
    expect(later.map((c) => c.key)).toEqual(['h2', 'w1']);

    const restored = await open();
    await restored.restore([...changelog, ...later], 7n);
    const view = restored.view();
    expect((await view.due(5000)).map((d) => [d.key, d.dueAt, d.value])).toEqual([['h1', 2000, { task: 1 }]]);
    expect(await view.expire(400)).toBe(1); // w2 (300); w1 now expires at 500
    expect(await view.getMany(['w1', 'w2', 'plain'])).toEqual([{ n: 2 }, undefined, { $exp: 'soon', note: 1 }]);
    await view.flush(null);
    const sweep = restored.view();
    expect(await sweep.expire(600)).toBe(1);
    await sweep.flush(null);
    expect(await restored.view().getMany(['w1'])).toEqual([undefined]);
    await source.close();
    await restored.close();
  });

  it('skips the index records of an earlier version\'s changelog, and indexes only each key\'s last value', async () => {
    const store = await open();
    const exp = (at: number, key: string) => `\u0000exp:${String(at).padStart(15, '0')}:${key}`;
    await store.restore([
      { key: 'k', value: '{"$exp":100,"v":1}' }, { key: exp(100, 'k'), value: '""' },
      { key: 'k', value: '{"$exp":900,"v":2}' }, { key: exp(100, 'k'), value: null }, { key: exp(900, 'k'), value: '""' },
      { key: exp(50, 'gone'), value: '""' },
    ], 3n);
    const keys: string[] = [];
    for await (const [k] of store.db.iterator({ gte: '\u0000exp:', lt: '\u0000exp:\uffff' })) keys.push(k);
    expect(keys).toEqual([exp(900, 'k')]);
    await store.close();
  });

  // (Not on memory: a memory store starts empty at every open.)
  it.skipIf(backend === 'memory')('rebuilds the time indexes once when it opens a store an earlier version wrote (values restored without index records)', async () => {
    const stateDir = mkdtempSync(join(dir, 'upgrade-'));
    const first = await KeyValueStore.open({ backend, dir: stateDir, stage: 'throttle', name: 'held', partition: 0, changelog: 'cl' });
    // As an earlier version restored it from a changelog without index records: values only, no marker.
    await first.db.batch([{ type: 'put', key: 'h1', value: '{"$due":1000,"v":"task"}' }, { type: 'put', key: 'w1', value: '{"$exp":500,"v":1}' }, { type: 'del', key: '\u0000meta:index-format' }]);
    await first.close();
    const second = await KeyValueStore.open({ backend, dir: stateDir, stage: 'throttle', name: 'held', partition: 0, changelog: 'cl' });
    const view = second.view();
    expect((await view.due(2000)).map((d) => d.key)).toEqual(['h1']);
    expect(await view.expire(600)).toBe(1);
    await second.close();
  });

  it('scans for expired entries only once the earliest is due, without missing one put or restored earlier than that', async () => {
    const store = await open();
    let scans = 0;
    const iterator = store.db.iterator.bind(store.db);
    store.db.iterator = (opts) => {
      scans++;
      return iterator(opts);
    };
    const sweep = async (upTo: number) => {
      const v = store.view();
      const n = await v.expire(upTo);
      await v.flush(null);
      return n;
    };
    const v = store.view();
    v.putUntil('a', 1, 1000);
    v.putUntil('b', 2, 2000);
    await v.flush(null);
    expect(await sweep(100)).toBe(0); // the first scan learns that nothing is due before 1000
    expect(scans).toBe(1);
    expect(await sweep(500)).toBe(0);
    expect(await sweep(999)).toBe(0);
    expect(scans).toBe(1);
    expect(await sweep(1000)).toBe(1); // a, and the next is b at 2000
    expect(scans).toBe(2);
    // A later batch puts one due earlier than the next known: it is not skipped.
    const early = store.view();
    early.putUntil('c', 3, 1500);
    expect(await early.expire(1200)).toBe(0); // its own write is not in the database yet
    await early.flush(null);
    expect(await sweep(1400)).toBe(0);
    expect(await sweep(1500)).toBe(1);
    expect(await store.view().getMany(['a', 'b', 'c'])).toEqual([undefined, 2, undefined]);
    // A restore brings entries the floor knows nothing of: the next sweep scans.
    await store.restore([{ key: 'd', value: '{"$exp":1600,"v":4}' }], 1n);
    expect(await sweep(1700)).toBe(1);
    expect(await sweep(5000)).toBe(1);
    const scansWhenEmpty = scans;
    expect(await sweep(9000)).toBe(0); // nothing left to expire: no scan
    expect(scans).toBe(scansWhenEmpty);
    await store.close();
  });

  it('sweeps at most `limit` entries per call', async () => {
    const store = await open();
    const v = store.view();
    for (let i = 0; i < 10; i++) v.putUntil(`k${i}`, i, 10 + i);
    await v.flush(null);
    const s1 = store.view();
    expect(await s1.expire(1000, 4)).toBe(4);
    await s1.flush(null);
    expect(await store.view().getMany(['k0', 'k3', 'k4'])).toEqual([undefined, undefined, 4]);
    await store.close();
  });
});

describe.each<'rocksdb' | 'level'>(['rocksdb', 'level'])('store partitions of one state directory on %s', (backend) => {
  it('share one database, each seeing only its own keys, which outlives any one of them and reopens', async () => {
    const stateDir = mkdtempSync(join(dir, 'shared-'));
    const open = (stage: string, partition: number) => KeyValueStore.open({ backend, dir: stateDir, stage, name: 'seen', partition, changelog: null });
    const [a0, a1, b0] = await Promise.all([open('dedupe', 0), open('dedupe', 1), open('throttle', 0)]);
    for (const [s, v] of [[a0, 'a0'], [a1, 'a1'], [b0, 'b0']] as const) {
      const view = s.view();
      view.put('k', v);
      view.putUntil(`w-${v}`, v, 100);
      await view.flush(BigInt(v === 'a0' ? 1 : v === 'a1' ? 2 : 3));
    }
    expect(readdirSync(stateDir)).toEqual([backend === 'rocksdb' ? 'rocksdb' : 'leveldb']);
    expect(await a0.view().get('k')).toBe('a0');
    expect(await a1.view().get('k')).toBe('a1');
    expect([await a0.checkpoint(), await a1.checkpoint(), await b0.checkpoint()]).toEqual([1n, 2n, 3n]);
    // Scans and sweeps stay inside their own prefix.
    const keys: string[] = [];
    for await (const [k] of a1.range('', '\uffff')) keys.push(k);
    expect(keys.filter((k) => !k.startsWith('\u0000'))).toEqual(['k', 'w-a1']);
    const sweep = a0.view();
    expect(await sweep.expire(1000)).toBe(1);
    await sweep.flush(null);
    expect(await a1.view().get('w-a1')).toBe('a1');
    // Closing some store partitions leaves the others working; the last one closes the database.
    await Promise.all([a0.close(), a1.close()]);
    expect(await b0.view().get('k')).toBe('b0');
    // A closed partition answers no more reads, though the database is open for the others.
    await expect(a0.view().get('k')).rejects.toThrow(/not open/i);
    await b0.close();
    // A read after the database closed is an error (RocksDB's in-place reads fall back to abstract-level's).
    await expect(b0.view().get('k')).rejects.toThrow(/not open/i);
    const again = await open('dedupe', 1);
    expect(await again.view().get('k')).toBe('a1');
    expect(await again.checkpoint()).toBe(2n);
    await again.close();
  });
});

describe('RocksDB compression (HERALD_STORE_COMPRESSION)', () => {
  afterAll(() => tuneStores({ writeBufferBytes: 4 * 1024 * 1024, cacheBytes: 16 * 1024 * 1024, compression: false }));

  /** The options RocksDB wrote for the database it opened (its newest OPTIONS file). */
  const optionsOf = (stateDir: string): string => {
    const db = storesPath(stateDir, 'rocksdb');
    const files = readdirSync(db).filter((f) => f.startsWith('OPTIONS-')).sort();
    return readFileSync(join(db, files.at(-1)!), 'utf8');
  };

  it.each([false, true])('with compression %s, the database is opened with it and reads back what it wrote', async (compression) => {
    tuneStores({ writeBufferBytes: 4 * 1024 * 1024, cacheBytes: 16 * 1024 * 1024, compression });
    const stateDir = mkdtempSync(join(tmpdir(), 'herald-compression-'));
    try {
      const store = await KeyValueStore.open({ backend: 'rocksdb', dir: stateDir, stage: 'outcome', name: 'lifecycle', partition: 0, changelog: null });
      const view = store.view();
      for (let i = 0; i < 100; i++) view.put(`k${i}`, { i, body: 'x'.repeat(200) });
      await view.flush(null);
      const opts = optionsOf(stateDir);
      expect(opts).toMatch(compression ? /^\s*wal_compression=kZSTD$/m : /^\s*wal_compression=kNoCompression$/m);
      expect(opts).toMatch(compression ? /^\s*compression_opts=\{[^}]*max_dict_bytes=16384;/m : /^\s*compression_opts=\{[^}]*max_dict_bytes=0;/m);
      // Levels 0 and 1 stay uncompressed and deeper ones ZSTD either way (level compaction's layout).
      expect(opts).toMatch(/^\s*compression_per_level=kNoCompression:kNoCompression:kZSTD/m);
      expect(await store.view().getMany(['k0', 'k99'])).toEqual([{ i: 0, body: 'x'.repeat(200) }, { i: 99, body: 'x'.repeat(200) }]);
      await store.close();
    } finally {
      rmSync(stateDir, { recursive: true, force: true });
    }
  });

  it.each([false, true])('a database written with compression %s reads back in full when opened with the other setting', async (compression) => {
    // Small memtables: the writes below reach table files, compacted past the uncompressed levels.
    const tuned = (c: boolean) => tuneStores({ writeBufferBytes: 64 * 1024, cacheBytes: 1024 * 1024, compression: c });
    tuned(compression);
    const stateDir = mkdtempSync(join(tmpdir(), 'herald-compression-'));
    const value = (i: number) => ({ i, body: `${i} `.repeat(100) });
    try {
      const store = await KeyValueStore.open({ backend: 'rocksdb', dir: stateDir, stage: 'outcome', name: 'lifecycle', partition: 0, changelog: null });
      for (let b = 0; b < 40; b++) {
        const view = store.view();
        for (let i = b * 250; i < (b + 1) * 250; i++) view.put(`k${String(i).padStart(6, '0')}`, value(i));
        await view.flush(null);
      }
      await store.close();
      expect(readdirSync(storesPath(stateDir, 'rocksdb')).filter((f) => f.endsWith('.sst')).length).toBeGreaterThan(0);
      tuned(!compression);
      const reopened = await KeyValueStore.open({ backend: 'rocksdb', dir: stateDir, stage: 'outcome', name: 'lifecycle', partition: 0, changelog: null });
      const keys = Array.from({ length: 10_000 }, (_, i) => `k${String(i).padStart(6, '0')}`);
      expect(await reopened.view().getMany(keys)).toEqual(keys.map((_, i) => value(i)));
      let n = 0;
      for await (const _ of reopened.range('k', 'l')) n++;
      expect(n).toBe(10_000);
      await reopened.close();
    } finally {
      rmSync(stateDir, { recursive: true, force: true });
    }
  });
});
