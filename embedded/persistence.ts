/**
 * Makes the embedded broker durable across crashes and restarts of Herald. At start the
 * journal (embedded/journal.ts) is replayed into the fresh mock cluster, record by record
 * at the same offsets; then the broker's own journal writer (a librdkafka consumer inside
 * the broker's process, embedded/mock-cluster.c) appends every new record of every Herald
 * topic to the journal and reports each write, and the stage groups' committed offsets are snapshotted each
 * commit interval, but only once every record written before the snapshot is journaled.
 * The snapshot is where each stage resumes after a restart (its inputs below it are done;
 * anything above it is processed again, which the derived ids make harmless).
 *
 * What it does not cover: a client outside Herald that produces straight to the embedded
 * broker has its records journaled a few milliseconds after their acknowledgement (a
 * SIGKILL inside that window loses them); the HTTP API waits for the journal before it
 * answers 202. Offsets of groups that are not Herald's are not restored.
 */
import { topicOffsets } from '../runtime/reader.ts';
import type { Admin, Message, Producer } from 'kafkajs';
import { HeraldError } from '../errors.ts';
import type { Logger } from '../runtime/logger.ts';
import type { EmbeddedBroker } from './broker.ts';
import { type GroupOffsets, type Journal } from './journal.ts';

/** Header of a placeholder record that keeps offsets aligned where the journal has a gap. */
export const GAP_HEADER = 'herald.journal.gap';
const MAX_REQUEST_BYTES = 512 * 1024;

/**
 * A reader (a stage group, or `journal`) behind on one partition: its unread records, their
 * size as the broker counts it (estimated), and what the broker holds of that partition once
 * it has started dropping.
 */
export interface Pressure { group: string; topic: string; partition: number; bytes: number; records: number; held?: number }
/** What the embedded broker adds per record in small message sets (batch header and bookkeeping), in bytes. */
const SET_OVERHEAD = 256;
/**
 * How often the unread records are measured: every 250 ms while some reader is past half
 * the limit, every second otherwise. One measure asks the broker for every group's commits
 * and every topic's ends (about 75 requests with 7 groups and 20 topics); every 250 ms
 * that was a large share of an idle Herald's CPU, and of the broker's. A reader below half
 * the limit is at least 1.5 MB (with the 3 MiB default) from losing records, which the
 * fastest-filling topic (outcomes.v1, ~0.5 MB/s a partition at the ~500 events/s the
 * machine drains) takes three seconds to cross.
 */
const PRESSURE_TICK_MS = 250;
const PRESSURE_QUIET_MS = 1000;

/** `superseded`: records of compacted topics replayed as placeholders, a later record of their key kept instead. */
export interface ReplayResult { records: number; partitions: number; gaps: number; superseded: number; seconds: number }

export class BrokerJournal {
  private following = false;
  private topics: string[] = [];
  private pressureTimer: NodeJS.Timeout | null = null;
  private measuring = false;
  private pressing: Pressure | null = null;
  private hot: Pressure[] = [];
  private stopped = false;
  private snapshotBusy = false;
  private timer: NodeJS.Timeout | null = null;
  private snapshotting: Promise<void> = Promise.resolve();
  private readonly journal: Journal;
  private readonly broker: EmbeddedBroker | null;
  private readonly admin: Admin;
  private readonly producer: Producer;
  private readonly log: Logger;

  /** Whether a topic is compacted (changelogs, tables): its replay keeps each key's last record only. */
  private readonly compacted: (topic: string) => boolean;

  /** `broker` writes the journal as it follows; null for a replay only. */
  constructor(journal: Journal, broker: EmbeddedBroker | null, admin: Admin, producer: Producer, log: Logger, compacted: (topic: string) => boolean = () => false) {
    this.compacted = compacted;
    this.journal = journal;
    this.broker = broker;
    this.admin = admin;
    this.producer = producer;
    this.log = log;
  }

  /** Produces every journaled record back into the (fresh) broker at its original offset. */
  async replay(): Promise<ReplayResult> {
    const started = performance.now();
    let records = 0;
    let partitions = 0;
    let gaps = 0;
    let superseded = 0;
    for (const { topic, partition, records: recs, again } of this.journal.read({ compacted: this.compacted })) {
      partitions++;
      let expected = 0n;
      // A compacted topic is replayed compacted, as Kafka's log cleaner would keep it: each
      // key's last record, and a placeholder (which keeps every offset where it was) for the
      // records it superseded. The mock broker keeps only its last ~5 MB of a partition: a
      // changelog replayed whole lost its oldest keys, and a store restored from it lost
      // them too (held notifications never released).
      let last: Map<string, bigint> | null = null;
      if (this.compacted(topic)) {
        last = new Map();
        for (const r of again()) if (r.key) last.set(r.key.toString('latin1'), r.offset);
      }
      const batch: { message: Message; bytes: number }[] = [];
      const flush = async () => {
        for (let i = 0; i < batch.length;) {
          const messages: Message[] = [];
          let bytes = 0;
          for (; i < batch.length && (bytes === 0 || bytes + batch[i]!.bytes <= MAX_REQUEST_BYTES); i++) {
            bytes += batch[i]!.bytes;
            messages.push(batch[i]!.message);
          }
          const [meta] = await this.producer.send({ topic, acks: -1, messages });
          // A retried send could duplicate records and shift every later offset: refuse to go on.
          const want = expected - BigInt(batch.length - i + messages.length);
          if (meta && BigInt(meta.baseOffset ?? '-1') !== want) {
            throw new HeraldError('HRL_EMBEDDED_BROKER', `journal replay of ${topic}[${partition}] landed at offset ${meta.baseOffset}, expected ${want}; the broker and the journal disagree. Nothing was lost from the journal: restart to replay again`);
          }
        }
        batch.length = 0;
      };
      for (const r of recs) {
        // A record the journal never saw (the broker dropped it first), or, in a compacted
        // topic, one its compaction left out (superseded): a placeholder keeps every later offset where it was.
        for (; expected < r.offset; expected++) {
          batch.push({ message: { partition, key: null, value: null, headers: { [GAP_HEADER]: '1' } }, bytes: 64 });
          if (last) superseded++;
          else gaps++;
        }
        if (last && r.key && last.get(r.key.toString('latin1')) !== r.offset) {
          batch.push({ message: { partition, key: null, value: null, headers: { [GAP_HEADER]: '1' } }, bytes: 64 });
          superseded++;
        } else batch.push({ message: { partition, key: r.key, value: r.value, timestamp: String(r.timestamp), headers: r.headers }, bytes: (r.key?.length ?? 0) + (r.value?.length ?? 0) + 64 });
        expected = r.offset + 1n;
        records++;
        if (batch.length >= 5000) await flush();
      }
      await flush();
      const [high] = (await this.admin.fetchTopicOffsets(topic)).filter((o) => o.partition === partition).map((o) => BigInt(o.high));
      if (high !== expected) this.log.warn({ topic, partition, expected: expected.toString(), high: high?.toString() }, 'journal replay ended at another offset than journaled; records may be misaligned');
    }
    const seconds = (performance.now() - started) / 1000;
    for (const c of this.journal.compactions) this.log.info(c, 'journal of a compacted topic compacted on disk: each key\'s last record kept');
    if (gaps) this.log.warn({ gaps }, 'the journal had gaps (records the broker dropped before they were journaled); placeholders keep offsets aligned');
    return { records, partitions, gaps, superseded, seconds };
  }

  /** The committed offsets of the last snapshot: where each group resumes. */
  resumeOffsets(): GroupOffsets {
    return this.journal.loadOffsets();
  }

  /**
   * Follows every partition of `topics` from where the journal ends: the broker's journal
   * writer appends every new record and reports each write, which resolves the waits on it.
   * A kafkajs consumer here did the same on Herald's event loop. Under load the work moved
   * rather than shrank (`--http`: Herald's primary 3 s less CPU per 20,000 events, the broker
   * 2.5 s more, as it serves the writer's fetches either way); idle, all processes together
   * spend about 30 % less, since the follower no longer polls every partition from here.
   */
  async follow(topics: string[]): Promise<void> {
    if (!this.broker) throw new HeraldError('HRL_EMBEDDED_BROKER', 'the journal follows only the embedded broker that writes it');
    this.topics = topics;
    await this.broker.startJournal(this.journal.dir, (line) => this.reported(line));
    for (const { topic, partitions } of await this.admin.fetchTopicsOffsets(topics)) {
      for (const o of partitions) await this.broker.follow(topic, o.partition, this.journal.highWater(topic, o.partition));
    }
    this.following = true;
  }

  /** A report of the broker's journal writer: a write ("j ...") or a failure ("e ..."). */
  private reported(line: string): void {
    const m = /^j (\S+) (\d+) (\d+) (\d+) (\d+)$/.exec(line);
    if (m) this.journal.written(m[1]!, Number(m[2]), BigInt(m[3]!), BigInt(m[4]!), Number(m[5]));
    else if (line.startsWith('e ')) this.log.error({ reason: line.slice(2) }, 'the embedded broker could not write its journal; it retries, and readers behind it hold back the API');
    else this.log.warn({ line: line.slice(0, 200) }, 'the embedded broker\'s journal writer reported something unexpected');
  }

  /** Resolves when the records a producer got acknowledged for are journaled. */
  async journaled(acks: { topicName: string; partition: number; baseOffset?: string }[], counts: Map<string, number>): Promise<void> {
    await Promise.all(acks.map((a) => {
      const n = counts.get(`${a.topicName}\u0000${a.partition}`) ?? 1;
      return this.journal.waitFor(a.topicName, a.partition, BigInt(a.baseOffset ?? '0') + BigInt(n - 1), 10_000);
    }));
  }

  /**
   * Watches how far every reader of every Herald topic is behind: each stage group (from its
   * committed offset) and the journal follower itself (from what it has journaled). The
   * embedded broker keeps only ~5 MB per partition, counted with a per-message-set overhead
   * (a set of one small record costs it about as much as the record again), and drops older
   * records whether they were read or not. A reader is in danger when its unread records,
   * estimated as the broker counts them (journaled bytes plus `SET_OVERHEAD` per record), pass
   * `maxUnread`, or, once the broker has started dropping on that partition, when it is more
   * than half of what the broker holds behind. While a reader is in danger Herald pushes back:
   * the API answers 503, and every stage that writes to that topic waits before its next batch
   * (`holding`), except the reader itself, so the readers catch up.
   */
  watchPressure(groups: { groupId: string; topics: string[] }[], maxUnread: number, resume: GroupOffsets): void {
    const topics = [...new Set([...this.topics, ...groups.flatMap((g) => g.topics)])];
    let warm = false;
    let last = 0;
    this.pressureTimer = setInterval(() => {
      if (this.measuring || (!warm && Date.now() - last < PRESSURE_QUIET_MS)) return;
      this.measuring = true;
      last = Date.now();
      void (async () => {
        let warming = false;
        const readers: { reader: string; topic: string; partition: number; at: bigint }[] = [];
        for (const g of groups) {
          for (const t of await this.admin.fetchOffsets({ groupId: g.groupId, topics: g.topics })) {
            for (const p of t.partitions) {
              const committed = BigInt(p.offset) >= 0n ? BigInt(p.offset) : BigInt(resume[g.groupId]?.[t.topic]?.[String(p.partition)] ?? '-1');
              if (committed >= 0n) readers.push({ reader: g.groupId, topic: t.topic, partition: p.partition, at: committed });
            }
          }
        }
        const hot: Pressure[] = [];
        // Every topic's offsets in one pair of requests (not two per topic).
        for (const { topic, partitions } of await this.admin.fetchTopicsOffsets(this.topics.length ? this.topics : topics)) {
          for (const o of partitions) {
            const low = BigInt(o.low);
            const high = BigInt(o.high);
            const journaled = this.journal.highWater(topic, o.partition);
            const held = low > 0n ? Number(high - low) : null;
            const of = readers.filter((r) => r.topic === topic && r.partition === o.partition);
            if (this.following) of.push({ reader: 'journal', topic, partition: o.partition, at: journaled });
            for (const r of of) {
              const records = Number(high - r.at);
              if (records <= 0) continue;
              const bytes = this.estimate(topic, o.partition, r.at, journaled, high);
              if (bytes > maxUnread / 2 || (held !== null && records > held / 4)) warming = true;
              if (bytes > maxUnread || (held !== null && records > held / 2)) hot.push({ group: r.reader, topic, partition: o.partition, bytes, records, ...(held !== null ? { held } : {}) });
            }
          }
        }
        hot.sort((a, b) => b.bytes - a.bytes);
        const worst = hot[0] ?? null;
        if (Boolean(worst) !== Boolean(this.pressing)) {
          if (worst) this.log.warn({ ...worst, maxUnread }, 'back-pressure on: a reader is close to losing unread records at the embedded broker; the API answers 503 and the stages writing to that topic wait');
          else this.log.info({ maxUnread }, 'back-pressure off');
        }
        this.pressing = worst;
        this.hot = hot;
        warm = warming;
      })().catch((err: unknown) => this.log.warn({ err }, 'measuring unread records failed')).finally(() => (this.measuring = false));
    }, PRESSURE_TICK_MS);
    this.pressureTimer.unref();
  }

  /**
   * The broker's bytes from `from` to `high`, estimated: journaled bytes where the journal has
   * them, its average record size beyond, plus the broker's per-message-set overhead per record.
   */
  private estimate(topic: string, partition: number, from: bigint, journaled: bigint, high: bigint): number {
    const known = from < journaled ? this.journal.bytesAfter(topic, partition, from) : 0;
    const total = this.journal.bytesAfter(topic, partition, 0n);
    const average = journaled > 0n ? total / Number(journaled) : 256;
    const beyond = high > journaled ? Number(high - (from > journaled ? from : journaled)) : 0;
    return Math.round(known + beyond * average + Number(high - from) * SET_OVERHEAD);
  }

  /** The reader furthest behind, while one is in danger; null otherwise. */
  pressure(): Pressure | null {
    return this.pressing;
  }

  /** The readers in danger now (relayed to `--workers` processes, whose stages wait on them too). */
  hotReaders(): Pressure[] {
    return this.hot;
  }

  /**
   * A reader in danger on one of `writes` that is not `self`: a stage writing to those topics
   * waits while there is one (it does not wait on itself, or it would never catch up).
   */
  holding(writes: ReadonlySet<string>, self: string): Pressure | null {
    return this.hot.find((h) => writes.has(h.topic) && h.group !== self) ?? null;
  }

  /** Snapshots the groups' offsets every `intervalMs`. */
  startSnapshots(groups: { groupId: string; topics: string[] }[], intervalMs: number): void {
    // One at a time: a snapshot still waiting for the journal is not queued behind.
    this.timer = setInterval(() => {
      if (!this.snapshotBusy) void this.snapshot(groups);
    }, Math.max(200, intervalMs));
    this.timer.unref();
  }

  /**
   * One snapshot: the groups' offsets first, then the ends of every journaled topic (inputs,
   * outputs, changelogs, DLQ), then wait until all of that is journaled. Every record
   * produced before those commits is then in the journal, and so is every state change.
   */
  snapshot(groups: { groupId: string; topics: string[] }[], waitMs = 4000): Promise<void> {
    this.snapshotting = this.snapshotting.then(async () => {
      this.snapshotBusy = true;
      try {
        const offsets: GroupOffsets = {};
        for (const g of groups) {
          for (const t of await this.admin.fetchOffsets({ groupId: g.groupId, topics: g.topics })) {
            for (const p of t.partitions) {
              if (BigInt(p.offset) < 0n) continue;
              ((offsets[g.groupId] ??= {})[t.topic] ??= {})[String(p.partition)] = p.offset;
            }
          }
        }
        const topics = this.topics.length ? this.topics : [...new Set(groups.flatMap((g) => g.topics))];
        const ends = (await this.admin.fetchTopicsOffsets(topics)).map(({ topic, partitions }) => ({ topic, offsets: partitions }));
        const waits = ends.flatMap(({ topic, offsets: o }) => o.filter((x) => BigInt(x.high) > 0n).map((x) => this.journal.waitFor(topic, x.partition, BigInt(x.high) - 1n)));
        const timeout = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), waitMs).unref());
        if ((await Promise.race([Promise.all(waits), timeout])) === 'timeout') {
          this.log.warn({ waitMs }, 'offset snapshot skipped: the journal did not catch up with the broker in time; the previous snapshot stands');
          return;
        }
        // Merge per partition and only ever forward: a quiet partition keeps its resume offset.
        const merged = this.journal.loadOffsets();
        for (const [g, byTopic] of Object.entries(offsets)) {
          for (const [t, byPartition] of Object.entries(byTopic)) {
            for (const [p, o] of Object.entries(byPartition)) {
              const slot = ((merged[g] ??= {})[t] ??= {});
              if (slot[p] === undefined || BigInt(o) > BigInt(slot[p])) slot[p] = o;
            }
          }
        }
        this.journal.saveOffsets(merged);
      } catch (err) {
        this.log.warn({ err }, 'offset snapshot failed; the previous one stands');
      } finally {
        this.snapshotBusy = false;
      }
    });
    return this.snapshotting;
  }

  /** A last snapshot (after the stages committed), then stops following. */
  async stop(groups: { groupId: string; topics: string[] }[]): Promise<void> {
    this.stopped = true;
    if (this.pressureTimer) clearInterval(this.pressureTimer);
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    // The stages have stopped producing: journal everything up to the end, then record where they stopped.
    await this.snapshot(groups, 4000);
    this.following = false;
    this.journal.close();
  }
}
