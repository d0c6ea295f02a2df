/**
 * The embedded broker's journal: what the in-memory mock cluster holds, kept on disk under
 * the state directory so a crash or a restart of Herald loses nothing. Every record of
 * every Herald topic is appended, per topic-partition, with its offset, timestamp, key,
 * value and headers; the consumer groups' committed offsets are snapshotted only once the
 * records they cover are journaled. At start, the journal is replayed into a fresh broker
 * in offset order, so every record comes back at the same offset.
 *
 * File format, per partition (`<dir>/<topic>/<partition>.log`), one entry per record:
 *   u32 length of the body | u32 CRC-32 of the body | body: i64 offset | i64 timestamp | i32 key length (-1 null) | key
 *   | i32 value length (-1 null) | value | i32 headers length | headers (JSON)
 * A torn or corrupt entry (a crash mid-write, a short write on a full disk) ends the intact
 * prefix: it and anything after it are cut off when the file is read.
 */
import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync, realpathSync, renameSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { HeraldError } from '../errors.ts';

export interface JournalRecord {
  offset: bigint;
  timestamp: number;
  key: Buffer | null;
  value: Buffer | null;
  headers: Record<string, string>;
}

/** Committed offsets per group, topic and partition (the next offset to read). */
export type GroupOffsets = Record<string, Record<string, Record<string, string>>>;

const enc = (s: string) => encodeURIComponent(s);

export function encodeRecord(r: JournalRecord): Buffer {
  const headers = Object.keys(r.headers).length ? Buffer.from(JSON.stringify(r.headers)) : null;
  const bodyLength = 8 + 8 + 4 + (r.key?.length ?? 0) + 4 + (r.value?.length ?? 0) + 4 + (headers?.length ?? 0);
  // One buffer for the frame and its body; every byte of it is written below.
  const frame = Buffer.allocUnsafe(8 + bodyLength);
  let o = 8;
  o = frame.writeBigInt64BE(r.offset, o);
  o = frame.writeBigInt64BE(BigInt(r.timestamp), o);
  o = frame.writeInt32BE(r.key ? r.key.length : -1, o);
  if (r.key) o += r.key.copy(frame, o);
  o = frame.writeInt32BE(r.value ? r.value.length : -1, o);
  if (r.value) o += r.value.copy(frame, o);
  o = frame.writeInt32BE(headers?.length ?? 0, o);
  if (headers) headers.copy(frame, o);
  frame.writeUInt32BE(bodyLength, 0);
  frame.writeUInt32BE(crc32(frame.subarray(8)), 4);
  return frame;
}

/** Where the record framed at `pos` ends, or -1 where the file is torn or corrupt (length and CRC checked). */
function frameEnd(buf: Buffer, pos: number): number {
  if (pos + 8 > buf.length) return -1;
  const len = buf.readUInt32BE(pos);
  if (pos + 8 + len > buf.length || len < 28 || crc32(buf.subarray(pos + 8, pos + 8 + len)) !== buf.readUInt32BE(pos + 4)) return -1;
  return pos + 8 + len;
}

/** The record framed at `pos` and where it ends, or null where the file is torn or corrupt (unchecked: a frame `frameEnd` passed). */
function decodeAt(buf: Buffer, pos: number, checked = false): { record: JournalRecord; end: number } | null {
  const end = checked ? pos + 8 + buf.readUInt32BE(pos) : frameEnd(buf, pos);
  if (end < 0) return null;
  let o = pos + 8;
  const offset = buf.readBigInt64BE(o);
  o += 8;
  const timestamp = Number(buf.readBigInt64BE(o));
  o += 8;
  const kl = buf.readInt32BE(o);
  o += 4;
  const key = kl < 0 ? null : Buffer.from(buf.subarray(o, o + kl));
  o += Math.max(0, kl);
  const vl = buf.readInt32BE(o);
  o += 4;
  const value = vl < 0 ? null : Buffer.from(buf.subarray(o, o + vl));
  o += Math.max(0, vl);
  const hl = buf.readInt32BE(o);
  o += 4;
  const headers = hl > 0 ? (JSON.parse(buf.subarray(o, o + hl).toString()) as Record<string, string>) : {};
  return { record: { offset, timestamp, key, value, headers }, end };
}

/** Decodes a partition file; `valid` is the length of its intact prefix. */
export function decodeRecords(buf: Buffer): { records: JournalRecord[]; valid: number; ends: number[] } {
  const records: JournalRecord[] = [];
  const ends: number[] = [];
  let pos = 0;
  for (let r = decodeAt(buf, pos); r; r = decodeAt(buf, pos)) {
    records.push(r.record);
    pos = r.end;
    ends.push(pos);
  }
  return { records, valid: pos, ends };
}

/** The records of a scanned journal file, decoded one at a time as they are read. */
function* recordsOf(buf: Buffer, valid: number): Generator<JournalRecord> {
  for (let pos = 0; pos < valid;) {
    const r = decodeAt(buf, pos, true)!;
    yield r.record;
    pos = r.end;
  }
}

/** A compacted topic's journal file is rewritten only past this size (and with most of it superseded). */
const COMPACT_MIN_BYTES = 1024 * 1024;

export class Journal {
  readonly dir: string;
  /** Identity of the journaled cluster: the state directory's stores belong to it. */
  readonly id: string;
  private readonly next = new Map<string, bigint>();
  /** Per partition, sampled (offset after, cumulative bytes) points: how many bytes lie between two offsets. */
  private readonly sizes = new Map<string, { offsets: bigint[]; bytes: number[] }>();
  private readonly fds = new Map<string, number>();
  private readonly waiters = new Map<string, { offset: bigint; resolve: () => void; reject: (err: Error) => void }[]>();

  private constructor(dir: string, id: string) {
    this.dir = dir;
    this.id = id;
  }

  /**
   * Waits for the broker of an earlier run to finish writing this journal. When a Herald is
   * killed (SIGKILL, the OOM killer), its embedded broker outlives it for as long as it takes
   * to journal the records it had acknowledged (`writer.pid` names it until it exits); a
   * start that read the files before then would miss them, and write beside it. Past
   * `timeoutMs` it is killed: what it had not written by then is lost, and the log says so.
   */
  static async waitForEarlierWriter(dir: string, log: { info: (o: object, m: string) => void; warn: (o: object, m: string) => void }, timeoutMs = 15_000): Promise<void> {
    const file = join(dir, 'writer.pid');
    let pid: number;
    try {
      pid = Number(readFileSync(file, 'utf8').trim());
    } catch {
      return;
    }
    const alive = () => {
      if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return false;
      try {
        process.kill(pid, 0);
      } catch {
        return false;
      }
      // A pid reused by another program, or by the broker of another state directory (another
      // instance on this host), is not the writer: the writer holds this journal's files open.
      try {
        if (!readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('herald-mock-cluster')) return false;
      } catch {
        return false; // no /proc (not Linux): it cannot be told to be the writer, so it is neither waited for nor killed
      }
      try {
        const root = realpathSync(dir);
        return readdirSync(`/proc/${pid}/fd`).some((fd) => {
          try {
            return readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(`${root}/`);
          } catch {
            return false;
          }
        });
      } catch {
        return false; // its descriptors cannot be read (another user's process): not ours
      }
    };
    if (!alive()) return;
    log.info({ pid }, 'the embedded broker of the run before (its owner was killed) is still journaling what it acknowledged; waiting for it');
    const deadline = Date.now() + timeoutMs;
    while (alive()) {
      if (Date.now() > deadline) {
        log.warn({ pid, waitedMs: timeoutMs }, 'the earlier embedded broker did not finish journaling in time; stopping it (records it had not written are lost)');
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
        await new Promise((r) => setTimeout(r, 100));
        return;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Opens (or creates) the journal in `dir`. */
  static open(dir: string): Journal {
    mkdirSync(dir, { recursive: true });
    const idFile = join(dir, 'JOURNAL_ID');
    const fresh = !existsSync(idFile);
    if (fresh) writeFileSync(idFile, randomUUID());
    return new Journal(dir, readFileSync(idFile, 'utf8').trim());
  }

  static exists(dir: string): boolean {
    return existsSync(join(dir, 'JOURNAL_ID'));
  }

  private file(topic: string, partition: number): string {
    return join(this.dir, enc(topic), `${partition}.log`);
  }

  /**
   * Every journaled topic-partition with its records, cutting off a torn tail. The records
   * are decoded as they are iterated, not all at once: a partition's journal holds
   * everything ever produced to it, and decoded it took several times its size on the heap
   * (600,000 records of 200 bytes did not fit a 256 MB heap).
   */
  *read(opts: { compacted?: (topic: string) => boolean } = {}): Generator<{ topic: string; partition: number; records: Iterable<JournalRecord>; again: () => Iterable<JournalRecord> }> {
    for (const t of readdirSync(this.dir)) {
      const tdir = join(this.dir, t);
      if (!statSync(tdir).isDirectory()) continue;
      for (const f of readdirSync(tdir)) {
        const m = /^(\d+)\.log$/.exec(f);
        if (!m) continue;
        const path = join(tdir, f);
        let buf: Buffer = readFileSync(path);
        const topic = decodeURIComponent(t);
        const partition = Number(m[1]);
        // The intact prefix: a torn tail is cut off.
        let valid = 0;
        for (let end = frameEnd(buf, 0); end > 0; end = frameEnd(buf, valid)) valid = end;
        if (valid < buf.length) truncateSync(path, valid);
        if (opts.compacted?.(topic)) buf = this.compactFile(path, buf, valid, topic, partition);
        else buf = buf.subarray(0, valid);
        // A second pass sizes the partition (every 256th record).
        let pos = 0;
        let prev = 0;
        let i = 0;
        let last: bigint | null = null;
        for (let end = frameEnd(buf, 0); end > 0; end = frameEnd(buf, pos), i++) {
          last = buf.readBigInt64BE(pos + 8);
          pos = end;
          if (i % 256 !== 255) continue;
          this.grow(`${topic}\u0000${partition}`, last + 1n, pos - prev);
          prev = pos;
        }
        if (last !== null && pos > prev) this.grow(`${topic}\u0000${partition}`, last + 1n, pos - prev);
        if (last !== null) this.next.set(`${topic}\u0000${partition}`, last + 1n);
        yield { topic, partition, records: recordsOf(buf, pos), again: () => recordsOf(buf, pos) };
      }
    }
  }

  /** The files `read` compacted: what each held before and after, in bytes and records. */
  readonly compactions: { topic: string; partition: number; bytesBefore: number; bytesAfter: number; recordsBefore: number; recordsAfter: number }[] = [];

  /**
   * A compacted topic's file (a changelog, a table) rewritten as Kafka's log cleaner keeps
   * the topic: each key's last record, at its offset (a replay puts placeholders at the
   * others). Done when more than half its records are superseded and it holds over 1 MB;
   * before, the journal kept every record ever written to the stores' changelogs. The new
   * file is written beside the old one, synced, then renamed over it: a crash on the way
   * leaves the old one. Runs at start, before the broker's journal writer appends again.
   */
  private compactFile(path: string, buf: Buffer, valid: number, topic: string, partition: number): Buffer {
    const lastOf = new Map<string, number>();
    let records = 0;
    const keyOf = (pos: number): string | null => {
      const len = buf.readInt32BE(pos + 8 + 16);
      return len < 0 ? null : buf.toString('latin1', pos + 8 + 20, pos + 8 + 20 + len);
    };
    for (let pos = 0, end = frameEnd(buf, 0); end > 0 && end <= valid; pos = end, end = frameEnd(buf, pos)) {
      records++;
      const key = keyOf(pos);
      if (key !== null) lastOf.set(key, pos);
    }
    const kept: Buffer[] = [];
    for (let pos = 0, end = frameEnd(buf, 0); end > 0 && end <= valid; pos = end, end = frameEnd(buf, pos)) {
      const key = keyOf(pos);
      if (key === null || lastOf.get(key) === pos) kept.push(buf.subarray(pos, end));
    }
    if (valid < COMPACT_MIN_BYTES || kept.length * 2 > records) return buf.subarray(0, valid);
    const out = Buffer.concat(kept);
    const tmp = `${path}.compacting`;
    const fd = openSync(tmp, 'w');
    try {
      writeSync(fd, out);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
    this.compactions.push({ topic, partition, bytesBefore: valid, bytesAfter: out.length, recordsBefore: records, recordsAfter: kept.length });
    return out;
  }

  private grow(key: string, offsetAfter: bigint, bytes: number): void {
    let s = this.sizes.get(key);
    if (!s) this.sizes.set(key, (s = { offsets: [], bytes: [] }));
    s.offsets.push(offsetAfter);
    s.bytes.push((s.bytes.at(-1) ?? 0) + bytes);
  }

  /**
   * About how many bytes of the partition lie at or after `from` (what a group that has read
   * up to `from` still has to read), to the granularity of one appended batch.
   */
  bytesAfter(topic: string, partition: number, from: bigint): number {
    const s = this.sizes.get(`${topic}\u0000${partition}`);
    if (!s || s.offsets.length === 0) return 0;
    // The last point at or before `from`: binary search.
    let lo = 0;
    let hi = s.offsets.length - 1;
    let at = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (s.offsets[mid]! <= from) {
        at = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return s.bytes.at(-1)! - (at < 0 ? 0 : s.bytes[at]!);
  }

  /** The next offset the journal expects for a partition (0 when it holds nothing). */
  highWater(topic: string, partition: number): bigint {
    return this.next.get(`${topic}\u0000${partition}`) ?? 0n;
  }

  /** Appends records read from the broker, in offset order; ones already journaled are skipped. */
  append(topic: string, partition: number, records: JournalRecord[]): void {
    const key = `${topic}\u0000${partition}`;
    const from = this.next.get(key) ?? 0n;
    const fresh = records.filter((r) => r.offset >= from);
    if (fresh.length === 0) return;
    let fd = this.fds.get(key);
    if (fd === undefined) {
      mkdirSync(join(this.dir, enc(topic)), { recursive: true });
      fd = openSync(this.file(topic, partition), 'a');
      this.fds.set(key, fd);
    }
    // One write per batch: in the page cache when it returns, so it survives a SIGKILL.
    const buf = Buffer.concat(fresh.map(encodeRecord));
    for (let written = 0; written < buf.length;) written += writeSync(fd, buf, written);
    this.written(topic, partition, fresh[0]!.offset, fresh.at(-1)!.offset + 1n, buf.length);
  }

  /**
   * Records that the partition's records from `first` up to `next` (exclusive) were appended
   * to its file, `bytes` in all, by `append` or by the embedded broker's own writer: waits for
   * them resolve, and waits for offsets the broker dropped before they were read (between
   * what was journaled and `first`) reject.
   */
  written(topic: string, partition: number, first: bigint, next: bigint, bytes: number): void {
    const key = `${topic}\u0000${partition}`;
    const from = this.next.get(key) ?? 0n;
    if (next <= from) return;
    this.next.set(key, next);
    this.grow(key, next, bytes);
    const gapEnd = first;
    const waiting = this.waiters.get(key);
    if (waiting) {
      const still = waiting.filter((w) => {
        if (w.offset >= next) return true;
        if (w.offset >= from && w.offset < gapEnd) w.reject(new HeraldError('HRL_JOURNAL_BEHIND', `${topic}[${partition}] offset ${w.offset}: the embedded broker dropped the record before it was journaled`, { retriable: true }));
        else w.resolve();
        return false;
      });
      if (still.length) this.waiters.set(key, still);
      else this.waiters.delete(key);
    }
  }

  /**
   * Resolves once the record at `offset` of the partition is journaled; rejects with
   * HRL_JOURNAL_BEHIND when the broker dropped it first, or after `timeoutMs`.
   */
  waitFor(topic: string, partition: number, offset: bigint, timeoutMs = 0): Promise<void> {
    const key = `${topic}\u0000${partition}`;
    if ((this.next.get(key) ?? 0n) > offset) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const list = this.waiters.get(key) ?? [];
      const entry = { offset, resolve, reject };
      list.push(entry);
      this.waiters.set(key, list);
      if (timeoutMs > 0) {
        setTimeout(() => {
          const now = this.waiters.get(key);
          if (!now?.includes(entry)) return;
          now.splice(now.indexOf(entry), 1);
          reject(new HeraldError('HRL_JOURNAL_BEHIND', `${topic}[${partition}] offset ${offset}: the embedded broker's journal did not confirm it within ${timeoutMs} ms`, { retriable: true }));
        }, timeoutMs).unref();
      }
    });
  }

  /** Writes the groups' committed offsets (atomically: a crash leaves the previous snapshot). */
  saveOffsets(offsets: GroupOffsets): void {
    const tmp = join(this.dir, 'offsets.json.tmp');
    writeFileSync(tmp, JSON.stringify(offsets));
    renameSync(tmp, join(this.dir, 'offsets.json'));
  }

  loadOffsets(): GroupOffsets {
    const path = join(this.dir, 'offsets.json');
    return existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as GroupOffsets) : {};
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}
