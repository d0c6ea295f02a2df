/**
 * Keyed state over the abstract-level interface: RocksDB on disk by default
 * (@nxtedition/rocksdb's RocksLevel), LevelDB (classic-level, the `level` package's Node
 * backend) as the alternative, memory-level for tests. One store per
 * (stage, store name, partition); on disk, all of a state directory's stores share one
 * database, each under its own key prefix. Writes are buffered per consumed batch in a
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
import { ClassicLevel } from 'classic-level';
import { MemoryLevel } from 'memory-level';
import { HeraldError } from '../errors.ts';

export type Backend = 'rocksdb' | 'level' | 'memory';

/** The part of abstract-level Herald uses (RocksLevel and MemoryLevel both have it). */
export interface LevelLike {
  open(): Promise<void>;
  close(): Promise<void>;
  getMany(keys: string[]): Promise<(string | undefined)[]>;
  batch(ops: { type: 'put' | 'del'; key: string; value?: string }[]): Promise<void>;
  iterator(opts: { gte?: string; lt?: string; limit?: number; reverse?: boolean }): AsyncIterable<[string, string]>;
}

/**
 * RocksDB sizing for a state directory. All store partitions of a process that share a
 * state directory live in one database (each under its own prefix, an abstract-level
 * sublevel), so the memtables and the block cache are one budget, sized here, whatever
 * the number of stages, stores and partitions. One RocksDB per store partition (27 with 4
 * partitions) preallocated a 4 MB MANIFEST and a write-ahead log each, and gave each its
 * own memtables and cache.
 */
export interface StoreTuning {
  /** RocksDB's write_buffer_size (level compaction, up to 6 memtables); also what the write-ahead log preallocates. */
  writeBufferBytes: number;
  /** The block cache shared by every store of the state directory. */
  cacheBytes: number;
  /**
   * ZSTD with trained dictionaries for the deeper levels and a ZSTD-compressed write-ahead
   * log (the library's defaults), or neither (deeper levels then plain ZSTD). Off by default, as in Kafka Streams, whose
   * RocksDB stores are uncompressed: the stores here are rewritten with every batch and
   * compacted often, and the compression cost more CPU than the bytes it saved.
   */
  compression: boolean;
}
let tuning: StoreTuning = { writeBufferBytes: 4 * 1024 * 1024, cacheBytes: 16 * 1024 * 1024, compression: false };

/** Sets the sizing of databases opened from now on (HERALD_STORE_WRITE_BUFFER_BYTES, HERALD_STORE_CACHE_BYTES). */
export function tuneStores(t: StoreTuning): void {
  tuning = t;
}

type SharedLevel = LevelLike & { sublevel(name: string, opts: { keyEncoding: 'utf8'; valueEncoding: 'utf8' }): LevelLike };

export async function openLevel(backend: Backend, path: string): Promise<LevelLike> {
  let db: LevelLike;
  if (backend === 'memory') {
    db = new MemoryLevel({ keyEncoding: 'utf8', valueEncoding: 'utf8' }) as unknown as LevelLike;
  } else {
    mkdirSync(path, { recursive: true });
    db = (backend === 'level'
      ? new ClassicLevel(path, { keyEncoding: 'utf8', valueEncoding: 'utf8' })
      // write_buffer_size is a quarter of the memtable budget under level compaction.
      // Level compaction keeps L0 and the level it compacts into uncompressed (with dynamic
      // level sizes, the base level: while the data is small, the only one), ZSTD below;
      // `compression` adds trained dictionaries there, `walCompression` compresses every logged write.
      : new RocksLevel(path, { keyEncoding: 'utf8', valueEncoding: 'utf8', compaction: 'level', memtableMemoryBudget: 4 * tuning.writeBufferBytes, cacheSize: tuning.cacheBytes, compression: tuning.compression, walCompression: tuning.compression } as never)) as unknown as LevelLike;
  }
  await db.open();
  return db;
}

/** What RocksLevel has beyond abstract-level: a MultiGet on the calling thread. */
interface RocksRoot { status: string; _getManySync(keys: string[], opts: { valueEncoding: 'utf8' }): (string | undefined)[] }
type Sublevel = LevelLike & { prefix: string; status: string };

/**
 * A store partition's sublevel whose point reads are RocksDB MultiGets on the calling
 * thread, as Kafka Streams reads its stores in the stream thread. abstract-level's async
 * getMany hands every call to the libuv pool and back: on this 2-core machine 95 µs of CPU
 * and 150 µs of wall time for one key in the memtable, against 6 µs read in place (the
 * stages read a few keys per record, so the hand-off was the largest single cost in their
 * profiles). A key neither in a memtable nor in the block cache is read from disk on the
 * event loop, as a Kafka Streams stream thread does; the stores are small and local.
 * Everything else (writes, range scans, open, close) goes to the sublevel.
 */
class InPlaceReads implements LevelLike {
  private readonly sub: Sublevel;
  private readonly root: RocksRoot;

  constructor(sub: Sublevel, root: RocksRoot) {
    this.sub = sub;
    this.root = root;
  }

  open(): Promise<void> {
    return this.sub.open();
  }

  close(): Promise<void> {
    return this.sub.close();
  }

  getMany(keys: string[]): Promise<(string | undefined)[]> {
    // A store partition or database closing or closed answers through abstract-level, with
    // its usual error (the database stays open while other partitions use it).
    if (this.sub.status !== 'open' || this.root.status !== 'open') return this.sub.getMany(keys);
    const prefix = this.sub.prefix;
    try {
      return Promise.resolve(this.root._getManySync(keys.map((k) => prefix + k), { valueEncoding: 'utf8' }));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  batch(ops: { type: 'put' | 'del'; key: string; value?: string }[]): Promise<void> {
    return this.sub.batch(ops);
  }

  iterator(opts: { gte?: string; lt?: string; limit?: number; reverse?: boolean }): AsyncIterable<[string, string]> {
    return this.sub.iterator(opts);
  }
}

/** One open database per directory, shared by the stores under it, closed with the last of them. */
interface Shared { db: SharedLevel; refs: number; opened: Promise<void>; closing?: Promise<void> }
const shared = new Map<string, Shared>();

async function acquire(backend: 'rocksdb' | 'level', path: string): Promise<Shared> {
  for (;;) {
    const current = shared.get(path);
    if (current?.closing) {
      await current.closing.catch(() => undefined);
      continue;
    }
    if (current) {
      current.refs++;
      await current.opened;
      return current;
    }
    const entry: Shared = { db: null as unknown as SharedLevel, refs: 1, opened: Promise.resolve() };
    entry.opened = openLevel(backend, path).then((db) => {
      entry.db = db as SharedLevel;
    });
    shared.set(path, entry);
    await entry.opened.catch((err: unknown) => {
      shared.delete(path);
      throw err;
    });
    return entry;
  }
}

async function release(path: string, entry: Shared): Promise<void> {
  if (--entry.refs > 0) return;
  entry.closing = entry.db.close().finally(() => shared.delete(path));
  await entry.closing;
}

/** The root key of a state directory's database that names the cluster its stores were built against. */
const BUILT_AGAINST = '\u0000herald:built-against';

/**
 * Checks that the state directory's database was built against `identity` (the cluster
 * whose changelogs its checkpoints count in: `kafka:<cluster id>`, or `embedded:<journal
 * id>`), and records it in a database that names none yet. The directory's `CLUSTER_ID`
 * file says the same of the directory; this says it of the database itself, which can be
 * copied on its own: a `rocksdb/` taken from another state directory brought stores whose
 * checkpoints count in another journal's offsets, and notifications were suppressed and
 * delivered twice. A database that names another cluster is refused, and left as it is.
 */
export async function checkStoresBuiltAgainst(backend: Backend, stateDir: string, identity: string): Promise<void> {
  if (backend === 'memory') return;
  const path = storesPath(stateDir, backend);
  const entry = await acquire(backend, path);
  try {
    const [built] = await entry.db.getMany([BUILT_AGAINST]);
    if (built === undefined) await entry.db.batch([{ type: 'put', key: BUILT_AGAINST, value: identity }]);
    else if (built !== identity) {
      throw new HeraldError('HRL_STATE_MISMATCH', `HERALD_STATE_DIR ${stateDir}: its store database ${path} was built against ${built}, not ${identity} (this directory's cluster): it was copied from another state directory, and its stores' checkpoints count in another log's offsets. The stores were left as they are: remove ${path} to rebuild them from this cluster's changelogs, or set HERALD_STATE_DIR to the directory they came from`);
    }
  } finally {
    await release(path, entry);
  }
}

/** RocksDB's memory, as Kafka Streams' RocksDB metrics name it, summed over this process's open databases. */
export interface StoreMemory { memtables: number; tableReaders: number; blockCache: number; blockCachePinned: number }
const MEMORY_PROPERTIES: Record<keyof StoreMemory, string> = {
  memtables: 'rocksdb.size-all-mem-tables',
  tableReaders: 'rocksdb.estimate-table-readers-mem',
  blockCache: 'rocksdb.block-cache-usage',
  blockCachePinned: 'rocksdb.block-cache-pinned-usage',
};
export function storeMemory(): StoreMemory {
  const out: StoreMemory = { memtables: 0, tableReaders: 0, blockCache: 0, blockCachePinned: 0 };
  for (const entry of shared.values()) {
    const db = entry.db as unknown as { status?: string; getProperty?: (p: string) => string } | null;
    if (!db?.getProperty || db.status !== 'open') continue;
    for (const [k, prop] of Object.entries(MEMORY_PROPERTIES) as [keyof StoreMemory, string][]) {
      const v = Number(db.getProperty(prop));
      if (Number.isFinite(v)) out[k] += v;
    }
  }
  return out;
}

/** The directory, under a state directory, of the database every store partition shares: one per engine. */
export const storesPath = (stateDir: string, backend: 'rocksdb' | 'level') => join(stateDir, backend === 'rocksdb' ? 'rocksdb' : 'leveldb');

const META = '\u0000meta:';
const CHECKPOINT = `${META}changelog-checkpoint`;
/** Present (`2`) once this store's time indexes are known to be built from its values, not taken from the changelog. */
const INDEX_FORMAT = `${META}index-format`;
const checkpointKey = (partition?: number) => (partition === undefined ? CHECKPOINT : `${CHECKPOINT}:${partition}`);
/** Time index of expiring entries: `\u0000exp:<expiresAt, 15 digits>:<key>`, ordered by time. */
const EXP = '\u0000exp:';
/** Just past every expiry index key (':' + 1). */
const EXP_END = '\u0000exp;';
const expKey = (expiresAt: number, key: string) => `${EXP}${String(Math.max(0, Math.floor(expiresAt))).padStart(15, '0')}:${key}`;
/** Due-time index of held values: `\u0000due:<dueAt, 15 digits>:<key>`, ordered by time. */
const DUE = '\u0000due:';
const dueKey = (dueAt: number, key: string) => `${DUE}${String(Math.max(0, Math.floor(dueAt))).padStart(15, '0')}:${key}`;
/** Expiring values are stored wrapped with their expiry, so a sweep can tell a stale index entry. */
interface Expiring { $exp: number; v: unknown }
const isExpiring = (x: unknown): x is Expiring => typeof x === 'object' && x !== null && '$exp' in x && 'v' in x;

const EXP_HEAD = '{"$exp":';
const DUE_HEAD = '{"$due":';
/** The time index entry a stored value needs (expiring and held values lead with their time), or null. */
function indexKeyOf(key: string, value: string): string | null {
  if (key.startsWith('\u0000')) return null;
  const head = value.startsWith(EXP_HEAD) ? EXP_HEAD : value.startsWith(DUE_HEAD) ? DUE_HEAD : null;
  if (!head) return null;
  const end = value.indexOf(',', head.length);
  const at = end < 0 ? Number.NaN : Number(value.slice(head.length, end));
  if (!Number.isFinite(at)) return null;
  return head === EXP_HEAD ? expKey(at, key) : dueKey(at, key);
}
/** Keys of the time indexes, which a store keeps locally and rebuilds on restore. */
const isIndexKey = (key: string) => key.startsWith(EXP) || key.startsWith(DUE);

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

  private readonly onClose: (() => Promise<void>) | null;

  /**
   * No expiry index entry in the database is due before this time (ms): `expire` below it
   * answers without a scan. Unknown (−∞) until a scan finds the earliest entry; `putUntil`
   * lowers it, a restore makes it unknown again. Only an optimisation: a floor too low costs
   * a scan, and nothing reads an expired value as live (readers check their own windows).
   */
  expiryFloor = Number.NEGATIVE_INFINITY;

  constructor(name: string, partition: number, db: LevelLike, changelog: string | null, onClose: (() => Promise<void>) | null = null) {
    this.name = name;
    this.partition = partition;
    this.db = db;
    this.changelog = changelog;
    this.onClose = onClose;
  }

  /**
   * Opens a store partition: on disk, a prefix (`<stage>.<name>.<partition>`) of the
   * state directory's one database; in memory, a database of its own.
   */
  static async open(opts: { backend: Backend; dir: string; stage: string; name: string; partition: number; changelog: string | null }): Promise<KeyValueStore> {
    if (opts.backend === 'memory') {
      const store = new KeyValueStore(opts.name, opts.partition, await openLevel('memory', ''), opts.changelog);
      await store.ensureIndexes();
      return store;
    }
    const path = storesPath(opts.dir, opts.backend);
    const entry = await acquire(opts.backend, path);
    try {
      const sub = entry.db.sublevel(`${opts.stage}.${opts.name}.${opts.partition}`, { keyEncoding: 'utf8', valueEncoding: 'utf8' }) as Sublevel;
      await sub.open();
      const root = entry.db as unknown as Partial<RocksRoot>;
      const db: LevelLike = typeof root._getManySync === 'function' ? new InPlaceReads(sub, root as RocksRoot) : sub;
      const store = new KeyValueStore(opts.name, opts.partition, db, opts.changelog, () => release(path, entry));
      await store.ensureIndexes();
      return store;
    } catch (err) {
      await release(path, entry);
      throw err;
    }
  }

  /**
   * Last source offset reflected in the local data, or null when never checkpointed.
   * Stores fed by several partitions (global tables) keep one checkpoint per partition.
   */
  async checkpoint(partition?: number): Promise<bigint | null> {
    const [v] = await this.db.getMany([checkpointKey(partition)]);
    return v === undefined ? null : BigInt(v);
  }

  /**
   * Applies changelog (or table) records read from `partition`, then moves its checkpoint.
   * The time indexes of expiring and held values are not in the changelog (see
   * `BatchView.changelog`): they are rebuilt here from each key's last value, which carries
   * its time. Index records a changelog of an earlier version holds are skipped: the values
   * they index carry the same time.
   */
  async restore(records: { key: string; value: string | null }[], lastOffset: bigint, partition?: number): Promise<void> {
    const ops: { type: 'put' | 'del'; key: string; value?: string }[] = [];
    const last = new Map<string, string | null>();
    for (const r of records) {
      if (isIndexKey(r.key)) continue;
      ops.push(r.value === null ? { type: 'del', key: r.key } : { type: 'put', key: r.key, value: r.value });
      last.set(r.key, r.value);
    }
    for (const [key, value] of last) {
      const index = value === null ? null : indexKeyOf(key, value);
      if (index) ops.push({ type: 'put', key: index, value: '""' });
    }
    ops.push({ type: 'put', key: checkpointKey(partition), value: lastOffset.toString() });
    this.expiryFloor = Number.NEGATIVE_INFINITY;
    await this.db.batch(ops);
  }

  /**
   * Stores written by a version whose changelog carried the index records may lack index
   * entries for values restored from a changelog without them (a partition that moved to
   * such an instance during a rolling upgrade): the first open by this version rebuilds the
   * index from every value, once, and marks the store.
   */
  private async ensureIndexes(): Promise<void> {
    const [format] = await this.db.getMany([INDEX_FORMAT]);
    if (format === '2') return;
    let ops: { type: 'put'; key: string; value: string }[] = [];
    for await (const [key, value] of this.db.iterator({ gte: '\u0001' })) {
      const index = indexKeyOf(key, value);
      if (index) ops.push({ type: 'put', key: index, value: '""' });
      if (ops.length >= 1000) {
        await this.db.batch(ops);
        ops = [];
      }
    }
    ops.push({ type: 'put', key: INDEX_FORMAT, value: '2' });
    await this.db.batch(ops);
  }

  /** A view buffering this batch's reads and writes. */
  view(): BatchView {
    return new BatchView(this);
  }

  /** Range scan over committed data (keys in [gte, lt)). */
  async *range(gte: string, lt: string, limit?: number): AsyncGenerator<[string, unknown]> {
    for await (const [k, v] of this.db.iterator({ gte, lt, ...(limit ? { limit } : {}) })) yield [k, unwrap(v)];
  }

  private closed = false;

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.db.close();
    await this.onClose?.();
  }
}

/**
 * What a processor sees of one of its stores during a batch or a punctuation: reads that
 * see the batch's own writes, buffered writes, an expiry index and a due-time index. It
 * never reaches the database or the changelog itself: the runtime flushes the batch's
 * writes after the batch's outputs are acknowledged.
 *
 * @example
 *   const [seen] = await view.getMany<Seen>(['k1']);
 *   view.put('k1', { firstSeen: 1 });
 *   view.hold('retry:d1', dueAt, task);          // comes back from due(now) once dueAt passes
 */
export interface StoreView {
  get<T>(key: string): Promise<T | undefined>;
  /** Batched point reads: one call per batch, not one per record. */
  getMany<T>(keys: string[]): Promise<(T | undefined)[]>;
  put(key: string, value: unknown): void;
  delete(key: string): void;
  /** Keys in [gte, lt), in key order (`reverse`: from the last), including this batch's writes. */
  range<T>(gte: string, lt: string, limit?: number, reverse?: boolean): AsyncIterable<[string, T]>;
  /** Keys starting with `prefix`, in key order, including this batch's writes. */
  prefix<T>(prefix: string, limit?: number): AsyncIterable<[string, T]>;
  /** Puts a value that `expire` deletes once `expiresAt` (stream time for windows) has passed. */
  putUntil(key: string, value: unknown, expiresAt: number): void;
  /** Deletes entries expired at `upTo`, at most `limit` per call; returns how many. */
  expire(upTo: number, limit?: number): Promise<number>;
  /** Holds `value` under `key` until `dueAt` (a timer's time base): found by a range scan of a due-time index. */
  hold(key: string, dueAt: number, value: unknown): void;
  /** Held items due at or before `upTo`, oldest first, at most `limit`. They stay held until deleted. */
  due<T>(upTo: number, limit?: number): Promise<{ key: string; dueAt: number; value: T }[]>;
}

/** Held values are stored wrapped with their due time, so a stale index entry is told apart. */
interface Held { $due: number; v: unknown }
const isHeld = (x: unknown): x is Held => typeof x === 'object' && x !== null && '$due' in x && 'v' in x;
const unwrap = (raw: string): unknown => {
  const parsed: unknown = JSON.parse(raw);
  return isExpiring(parsed) ? parsed.v : isHeld(parsed) ? parsed.v : parsed;
};

/**
 * Reads through to the store, buffers writes. Nothing reaches the database or the
 * changelog unless the runtime flushes the view after the batch's outputs are acknowledged.
 * Processors hold it as a `StoreView`; `changes` and `flush` are the runtime's.
 */
export class BatchView implements StoreView {
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
      if (raw === undefined || raw === null) return undefined;
      return unwrap(raw) as T;
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

  async *range<T>(gte: string, lt: string, limit = Number.POSITIVE_INFINITY, reverse = false): AsyncGenerator<[string, T]> {
    // Merge the committed keys with this batch's writes in the range (writes win), both in
    // the direction read: `before(a, b)` is whether a comes first.
    const before = reverse ? (a: string, b: string) => a > b : (a: string, b: string) => a < b;
    const overlay = [...this.writes].filter(([k]) => k >= gte && k < lt).sort(([a], [b]) => (before(a, b) ? -1 : before(b, a) ? 1 : 0));
    let i = 0;
    let n = 0;
    const emit = function* (k: string, raw: string | null): Generator<[string, T]> {
      if (raw !== null) {
        n++;
        yield [k, unwrap(raw) as T];
      }
    };
    for await (const [k, v] of this.store.db.iterator({ gte, lt, reverse })) {
      if (n >= limit) return;
      for (; i < overlay.length && before(overlay[i]![0], k) && n < limit; i++) yield* emit(overlay[i]![0], overlay[i]![1]);
      if (n >= limit) return;
      if (i < overlay.length && overlay[i]![0] === k) {
        yield* emit(k, overlay[i]![1]);
        i++;
      } else yield* emit(k, v);
    }
    for (; i < overlay.length && n < limit; i++) yield* emit(overlay[i]![0], overlay[i]![1]);
  }

  prefix<T>(prefix: string, limit?: number): AsyncIterable<[string, T]> {
    return this.range<T>(prefix, `${prefix}\uffff`, limit);
  }

  /**
   * Puts a value that expires at `expiresAt` (in the caller's time: stream time for
   * windows). A time-ordered index entry is written beside it, so `expire` finds due
   * entries by a range scan instead of a full scan. Both go to the changelog.
   */
  putUntil(key: string, value: unknown, expiresAt: number): void {
    this.writes.set(key, JSON.stringify({ $exp: expiresAt, v: value } satisfies Expiring));
    this.writes.set(expKey(expiresAt, key), '""');
    this.earliest = Math.min(this.earliest, Math.floor(expiresAt));
    this.store.expiryFloor = Math.min(this.store.expiryFloor, this.earliest);
  }

  /** The earliest expiry this view has put (not in the database until it is flushed). */
  private earliest = Number.POSITIVE_INFINITY;

  /**
   * Deletes entries whose expiry is at or before `upTo`, at most `limit` per call (the
   * rest go in later batches). An index entry left behind by a later `putUntil` of the
   * same key is dropped without touching the newer value. Returns how many values expired.
   */
  async expire(upTo: number, limit = 1000): Promise<number> {
    // Most batches find nothing due: the store knows when its earliest entry is, so no
    // iterator is made for them (one per batch was a measurable share of dedupe and throttle).
    if (Math.floor(upTo) < this.store.expiryFloor) return 0;
    const due: { indexKey: string; key: string }[] = [];
    // The scan goes one entry past the due ones, to learn when the next one is due.
    let next = Number.POSITIVE_INFINITY;
    let seen = 0;
    for await (const [indexKey] of this.store.db.iterator({ gte: EXP, lt: EXP_END, limit: limit + 1 })) {
      const at = Number(indexKey.slice(EXP.length, EXP.length + 15));
      if (at > upTo || seen >= limit) {
        next = at > upTo ? at : Number.NEGATIVE_INFINITY; // else: more due than `limit`, scan again next time
        break;
      }
      seen++;
      if (this.writes.has(indexKey)) continue;
      due.push({ indexKey, key: indexKey.slice(EXP.length + 16) });
    }
    // This batch's own entries are not in the database yet: the floor stays at or below them.
    this.store.expiryFloor = Math.min(next, this.earliest);
    if (due.length === 0) return 0;
    const current = await this.store.db.getMany(due.map((d) => d.key));
    let expired = 0;
    due.forEach((d, i) => {
      this.writes.set(d.indexKey, null);
      if (this.writes.has(d.key)) return; // rewritten in this batch
      const raw = current[i];
      if (raw === undefined) return;
      const parsed: unknown = JSON.parse(raw);
      if (isExpiring(parsed) && parsed.$exp <= upTo) {
        this.writes.set(d.key, null);
        expired++;
      }
    });
    return expired;
  }

  hold(key: string, dueAt: number, value: unknown): void {
    this.writes.set(key, JSON.stringify({ $due: dueAt, v: value } satisfies Held));
    this.writes.set(dueKey(dueAt, key), '""');
  }

  async due<T>(upTo: number, limit = 1000): Promise<{ key: string; dueAt: number; value: T }[]> {
    const out: { key: string; dueAt: number; value: T }[] = [];
    const chunk = Math.max(64, limit * 2);
    let candidates: string[] = [];
    // Stale index entries (items deleted or held again at another time) are dropped as
    // they are met, and never count against `limit`: the scan goes on past them.
    const resolve = async () => {
      const keys = candidates.map((ik) => ik.slice(DUE.length + 16));
      const missing = keys.filter((k) => !this.writes.has(k));
      const fetched = missing.length ? await this.store.db.getMany(missing) : [];
      const found = new Map(missing.map((k, i) => [k, fetched[i]]));
      candidates.forEach((indexKey, i) => {
        const key = keys[i]!;
        const raw = this.writes.has(key) ? this.writes.get(key) : found.get(key);
        const parsed: unknown = raw === undefined || raw === null ? undefined : JSON.parse(raw);
        const dueAt = Number(indexKey.slice(DUE.length, DUE.length + 15));
        if (!isHeld(parsed) || Math.floor(parsed.$due) !== dueAt) {
          this.writes.set(indexKey, null);
          return;
        }
        if (out.length < limit) out.push({ key, dueAt: parsed.$due, value: parsed.v as T });
      });
      candidates = [];
    };
    for await (const [indexKey] of this.range<string>(DUE, dueKey(Math.min(upTo, 999_999_999_999_999) + 1, ''))) {
      candidates.push(indexKey);
      if (candidates.length >= chunk) {
        await resolve();
        if (out.length >= limit) return out;
      }
    }
    if (candidates.length) await resolve();
    return out;
  }

  get size(): number {
    return this.writes.size;
  }

  /** The buffered writes, in the order of first write per key. */
  changes(): ChangelogRecord[] {
    return [...this.writes].map(([key, value]) => ({ key, value }));
  }

  /**
   * The buffered changes the changelog carries: all but the time indexes of expiring and
   * held values. Restoring rebuilds those from the values (each leads with its time), so a
   * `putUntil` or `hold` costs one changelog record, not two. A stale index entry (its value
   * since deleted or rewritten) is harmless: `expire` and `due` drop it when they meet it.
   */
  changelog(): ChangelogRecord[] {
    const out: ChangelogRecord[] = [];
    for (const [key, value] of this.writes) if (!isIndexKey(key)) out.push({ key, value });
    return out;
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
