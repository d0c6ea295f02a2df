/**
 * Keyed state over the abstract-level interface: RocksDB on disk by default
 * (@nxtedition/rocksdb's RocksLevel), memory-level for tests. One store per
 * (stage, store name, partition). Writes are buffered per consumed batch in a
 * `BatchView`; the runtime produces their changelog records with the batch's outputs,
 * then writes them to the database in one batch together with the changelog checkpoint.
 *
 * @example
 *   const view = store.view();
 *   const [seen] = await view.getMany(['k1']);
 *   view.put('k1', { firstSeen: 1 });   // -> db batch + changelog record at flush
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { RocksLevel } from '@nxtedition/rocksdb';
import { MemoryLevel } from 'memory-level';

export type Backend = 'rocksdb' | 'memory';

/** The part of abstract-level Herald uses (RocksLevel and MemoryLevel both have it). */
export interface LevelLike {
  open(): Promise<void>;
  close(): Promise<void>;
  getMany(keys: string[]): Promise<(string | undefined)[]>;
  batch(ops: { type: 'put' | 'del'; key: string; value?: string }[]): Promise<void>;
  iterator(opts: { gte?: string; lt?: string; limit?: number; reverse?: boolean }): AsyncIterable<[string, string]>;
}

export async function openLevel(backend: Backend, path: string): Promise<LevelLike> {
  let db: LevelLike;
  if (backend === 'memory') {
    db = new MemoryLevel({ keyEncoding: 'utf8', valueEncoding: 'utf8' }) as unknown as LevelLike;
  } else {
    mkdirSync(path, { recursive: true });
    db = new RocksLevel(path, { keyEncoding: 'utf8', valueEncoding: 'utf8' }) as unknown as LevelLike;
  }
  await db.open();
  return db;
}

const META = '\u0000meta:';
const CHECKPOINT = `${META}changelog-checkpoint`;

export interface ChangelogRecord {
  key: string;
  /** JSON text, or null for a tombstone. */
  value: string | null;
}

/** One store partition. Owned by the runtime: opened on assignment, closed on revocation. */
export class KeyValueStore {
  readonly name: string;
  readonly partition: number;
  readonly db: LevelLike;
  /** Full changelog topic name, or null for stores rebuilt another way. */
  readonly changelog: string | null;

  constructor(name: string, partition: number, db: LevelLike, changelog: string | null) {
    this.name = name;
    this.partition = partition;
    this.db = db;
    this.changelog = changelog;
  }

  static async open(opts: { backend: Backend; dir: string; stage: string; name: string; partition: number; changelog: string | null }): Promise<KeyValueStore> {
    const path = join(opts.dir, opts.stage, opts.name, String(opts.partition));
    return new KeyValueStore(opts.name, opts.partition, await openLevel(opts.backend, path), opts.changelog);
  }

  /** Last changelog offset reflected in the local data, or null when never checkpointed. */
  async checkpoint(): Promise<bigint | null> {
    const [v] = await this.db.getMany([CHECKPOINT]);
    return v === undefined ? null : BigInt(v);
  }

  /** Applies changelog records read during restore, then moves the checkpoint. */
  async restore(records: { key: string; value: string | null }[], lastOffset: bigint): Promise<void> {
    const ops = records.map((r) => (r.value === null ? { type: 'del' as const, key: r.key } : { type: 'put' as const, key: r.key, value: r.value }));
    ops.push({ type: 'put', key: CHECKPOINT, value: lastOffset.toString() });
    await this.db.batch(ops);
  }

  /** A view buffering this batch's reads and writes. */
  view(): BatchView {
    return new BatchView(this);
  }

  /** Range scan over committed data (keys in [gte, lt)). */
  async *range(gte: string, lt: string, limit?: number): AsyncGenerator<[string, unknown]> {
    for await (const [k, v] of this.db.iterator({ gte, lt, ...(limit ? { limit } : {}) })) yield [k, JSON.parse(v)];
  }

  async close(): Promise<void> {
    await this.db.close();
  }
}

/**
 * Reads through to the store, buffers writes. Nothing reaches the database or the
 * changelog unless the runtime flushes the view after the batch's outputs are acknowledged.
 */
export class BatchView {
  private readonly writes = new Map<string, string | null>();

  readonly store: KeyValueStore;

  constructor(store: KeyValueStore) {
    this.store = store;
  }

  async getMany<T>(keys: string[]): Promise<(T | undefined)[]> {
    const missing = keys.filter((k) => !this.writes.has(k));
    const fetched = missing.length ? await this.store.db.getMany(missing) : [];
    const found = new Map(missing.map((k, i) => [k, fetched[i]]));
    return keys.map((k) => {
      const raw = this.writes.has(k) ? this.writes.get(k) : found.get(k);
      return raw === undefined || raw === null ? undefined : (JSON.parse(raw) as T);
    });
  }

  async get<T>(key: string): Promise<T | undefined> {
    return (await this.getMany<T>([key]))[0];
  }

  put(key: string, value: unknown): void {
    this.writes.set(key, JSON.stringify(value));
  }

  delete(key: string): void {
    this.writes.set(key, null);
  }

  get size(): number {
    return this.writes.size;
  }

  /** The buffered writes, in the order of first write per key. */
  changes(): ChangelogRecord[] {
    return [...this.writes].map(([key, value]) => ({ key, value }));
  }

  /** Writes the buffered changes (and the changelog checkpoint, when known) in one database batch. */
  async flush(checkpoint: bigint | null): Promise<void> {
    if (this.writes.size === 0 && checkpoint === null) return;
    const ops = this.changes().map((c) => (c.value === null ? { type: 'del' as const, key: c.key } : { type: 'put' as const, key: c.key, value: c.value }));
    if (checkpoint !== null) ops.push({ type: 'put', key: CHECKPOINT, value: checkpoint.toString() });
    await this.store.db.batch(ops);
    this.writes.clear();
  }
}
