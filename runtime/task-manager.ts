/**
 * The partition tasks of one stage on this instance (Kafka Streams' TaskManager and
 * StoreChangelogReader): opens the stores of newly assigned partitions together, restores
 * each changelog for all of them with one reader, brings `'source'` stores up to the
 * group's committed offset by replaying the input, creates a processor per partition and
 * starts its timers; closes revoked partitions, never leaving a RocksDB handle (and its
 * lock) behind.
 */
import type { Admin, Kafka } from 'kafkajs';
import type { HeraldConfig } from '../config.ts';
import { KeyValueStore } from '../state/store.ts';
import { type StageName, type TopicKey, changelogTopic, groupId, stageSpec } from '../topology.ts';
import type { Codec } from './codec.ts';
import type { StageDeps, StageFactory } from './contract.ts';
import { decodeBatch } from './failure-policy.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import type { OffsetManager } from './offsets.ts';
import { type Forward, PartitionTask } from './partition-task.ts';
import { topicOffsets, TopicReader } from './reader.ts';
import type { RecordCollector } from './record-collector.ts';
import type { StageHealth } from './stage-health.ts';
import { restoreFromChangelog } from './restore.ts';

export interface TaskManagerOptions {
  stage: StageName;
  factory: StageFactory;
  deps: StageDeps;
  kafka: Kafka;
  admin: Admin;
  codec: Codec;
  collector: RecordCollector;
  offsets: OffsetManager;
  config: HeraldConfig;
  log: Logger;
  metrics: Metrics;
  clock: () => number;
  health: StageHealth;
  /** Where the group resumes when it has no committed offsets yet (after a journal replay). */
  resumeAt?: ReadonlyMap<string, ReadonlyMap<number, bigint>>;
  /** Input topic name -> topic key. */
  inputs: ReadonlyMap<string, TopicKey>;
  /** Fused: where this stage's tasks hand the records they produce for the next stage. */
  forward?: Forward;
  /**
   * Fused successor (its records come from its predecessor, in process): on open, records of
   * its input the group has not done yet (written before, or by an unfused run) are handled first.
   */
  drain?: boolean;
}

type Heartbeat = () => Promise<void>;

export class TaskManager {
  private readonly tasks = new Map<number, Promise<PartitionTask>>();
  /** Tasks open and serving (queries read their stores). */
  private readonly opened = new Map<number, PartitionTask>();
  /** Partitions being closed: a reopen waits for their RocksDB handles to be released. */
  private readonly closing = new Map<number, Promise<void>>();
  private readonly o: TaskManagerOptions;

  constructor(o: TaskManagerOptions) {
    this.o = o;
  }

  partitions(): number[] {
    return [...this.tasks.keys()];
  }

  /** Partitions whose stores are open and serving. */
  openPartitions(): number[] {
    return [...this.opened.keys()];
  }

  /** The task of `partition`, opened (and restored) on first use. */
  task(partition: number, heartbeat: Heartbeat): Promise<PartitionTask> {
    return this.tasks.get(partition) ?? this.open([partition], heartbeat).get(partition)!;
  }

  /** The task of `partition` if it is open and serving. */
  openTask(partition: number): PartitionTask | undefined {
    return this.opened.get(partition);
  }

  /** Every open task, for stop. */
  async all(): Promise<PartitionTask[]> {
    const out: PartitionTask[] = [];
    for (const t of this.tasks.values()) {
      const task = await t.catch(() => null);
      if (task) out.push(task);
    }
    return out;
  }

  /** Stops every open task's wall-clock timers and waits for runs in progress (a rebalance or stop begins). */
  async stopTimers(): Promise<void> {
    await Promise.all([...this.opened.values()].map((t) => t.stopTimers()));
  }

  /** Starts the timers of the open tasks again (the rebalance ended; revoked ones are closed). */
  startTimers(): void {
    for (const t of this.opened.values()) t.startTimers();
  }

  /** The open stores named `name`, one per partition this instance holds (for queries). */
  stores(name: string): Map<number, KeyValueStore> {
    const out = new Map<number, KeyValueStore>();
    for (const [p, t] of this.opened) {
      const s = t.stores.get(name);
      if (s) out.set(p, s);
    }
    return out;
  }

  /**
   * Opens every partition of `assigned()` not open yet. A failed open is retried with
   * backoff (or at the partition's next batch), so the timers of a quiet partition start too.
   */
  ensureOpen(assigned: () => ReadonlySet<number>, stopped: () => boolean, attempt = 1): void {
    const fresh = [...assigned()].filter((p) => !this.tasks.has(p));
    if (fresh.length === 0 || stopped()) return;
    for (const [p, t] of this.open(fresh, async () => undefined)) {
      t.catch((err: unknown) => {
        const delay = Math.min(30_000, 1000 * 2 ** Math.min(attempt, 5));
        this.o.log.warn({ partition: p, err, retryInMs: delay }, 'opening the partition failed; retrying');
        setTimeout(() => this.ensureOpen(assigned, stopped, attempt + 1), delay).unref();
      });
    }
  }

  /** Opens newly assigned partitions together; returns a promise per partition. */
  open(partitions: number[], heartbeat: Heartbeat): Map<number, Promise<PartitionTask>> {
    const all = this.openAll(partitions, heartbeat);
    all.catch(() => undefined);
    const out = new Map<number, Promise<PartitionTask>>();
    for (const p of partitions) {
      const t = all.then((m) => m.get(p)!);
      this.tasks.set(p, t);
      t.catch(() => {
        if (this.tasks.get(p) === t) this.tasks.delete(p);
      });
      out.set(p, t);
    }
    return out;
  }

  private async openAll(partitions: number[], heartbeat: Heartbeat): Promise<Map<number, PartitionTask>> {
    const { config, stage, metrics, log } = this.o;
    const stores = new Map<number, Map<string, KeyValueStore>>(partitions.map((p) => [p, new Map()]));
    let beat = Date.now();
    // A partition revoked and given back quickly: wait until its old handles are closed.
    await Promise.all(partitions.map((p) => this.closing.get(p)));
    try {
      for (const spec of stageSpec(stage).stores) {
        const changelog = spec.changelog === true ? changelogTopic(config.topicPrefix, stage, spec.name) : null;
        // allSettled, so every store that did open is known (and closed) if one fails.
        const settled = await Promise.allSettled(partitions.map(async (partition) => {
          const store = await KeyValueStore.open({ backend: config.stateBackend, dir: config.stateDir, stage, name: spec.name, partition, changelog });
          stores.get(partition)!.set(spec.name, store);
          return { store, partition };
        }));
        const failed = settled.find((r) => r.status === 'rejected');
        if (failed) throw (failed as PromiseRejectedResult).reason;
        if (!changelog) continue;
        const targets = settled.map((r) => (r as PromiseFulfilledResult<{ store: KeyValueStore; partition: number }>).value);
        const r = await restoreFromChangelog({
          kafka: this.o.kafka, admin: this.o.admin, topic: changelog, groupPrefix: config.topicPrefix, targets, log,
          onApplied: (n, progress) => {
            metrics.restored.inc({ stage, store: spec.name }, n);
            this.o.health.restoreProgress(spec.name, progress.applied, progress.expected);
            // A long restore keeps the group membership alive.
            if (Date.now() - beat > 1000) {
              beat = Date.now();
              void heartbeat().catch(() => undefined);
            }
          },
        });
        this.o.health.restoreDone(spec.name);
        metrics.restoreDuration.observe({ stage, store: spec.name }, r.seconds);
        log.info({ store: spec.name, partitions, applied: r.applied, checkpoints: Object.fromEntries([...r.checkpoints].map(([p, c]) => [p, c?.toString() ?? null])), seconds: Number(r.seconds.toFixed(3)) }, 'store restored');
      }
      const tasks = new Map<number, PartitionTask>();
      for (const partition of partitions) {
        const processor = this.o.factory(this.o.deps);
        await processor.init?.({ partition });
        const task = new PartitionTask({ ...this.o, partition, processor, stores: stores.get(partition)! });
        await this.replaySource(task, heartbeat);
        tasks.set(partition, task);
      }
      if (this.o.drain) await this.drainBacklog(tasks, heartbeat);
      for (const [p, t] of tasks) {
        if (this.tasks.has(p)) {
          this.opened.set(p, t);
          t.startTimers();
        }
      }
      return tasks;
    } catch (err) {
      for (const spec of stageSpec(stage).stores) this.o.health.restoreDone(spec.name);
      for (const m of stores.values()) for (const st of m.values()) await st.close().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Brings `'source'` stores up to the group's committed offset by replaying the input
   * partition from the offset they reflect, through the processor, discarding its outputs
   * (they were produced the first time).
   */
  private async replaySource(task: PartitionTask, heartbeat: Heartbeat): Promise<void> {
    const { config, stage, admin, log } = this.o;
    const partition = task.partition;
    const specs = stageSpec(stage).stores.filter((s) => s.changelog === 'source');
    if (specs.length === 0) return;
    const [[topic, topicKey] = []] = [...this.o.inputs];
    if (!topic || !topicKey || this.o.inputs.size !== 1) throw new Error(`stage ${stage}: a 'source' store needs exactly one input topic`);
    const [group] = await admin.fetchOffsets({ groupId: groupId(config.topicPrefix, stage), topics: [topic] });
    const fetched = BigInt(group?.partitions.find((p) => p.partition === partition)?.offset ?? '-1');
    // A journal replay leaves the group without commits: the resume offset is what it had done.
    const committed = fetched >= 0n ? fetched : (this.o.resumeAt?.get(topic)?.get(partition) ?? -1n);
    if (committed <= 0n) return;
    const offsets = await topicOffsets(admin, topic);
    const low = BigInt(offsets.find((o) => o.partition === partition)?.low ?? '0');
    const checkpoints = await Promise.all(specs.map((s) => task.stores.get(s.name)!.checkpoint()));
    const from = checkpoints.reduce<bigint>((min, cp) => { const f = cp === null ? low : cp + 1n; return f < min ? f : min; }, committed);
    if (from >= committed) return;
    const started = performance.now();
    let applied = 0;
    const reader = new TopicReader(this.o.kafka, admin, {
      topic, groupPrefix: config.topicPrefix, from: new Map([[partition, from]]), until: new Map([[partition, committed]]),
      onBatch: async ({ messages }) => {
        const within = messages.filter((m) => BigInt(m.offset) < committed);
        if (!within.length) return;
        const { records } = await decodeBatch(this.o.codec, stage, topicKey, topic, partition, within);
        const ctx = task.context();
        if (records.length) await task.processor.process(records, ctx);
        for (const view of ctx.views.values()) await view.flush(view.store.changelog === null ? BigInt(within.at(-1)!.offset) : null);
        applied += within.length;
        await heartbeat().catch(() => undefined);
      },
    });
    await reader.readToEnd();
    log.info({ partition, from: from.toString(), to: committed.toString(), applied, seconds: Number(((performance.now() - started) / 1000).toFixed(3)) }, 'projection replayed from its input');
  }

  /**
   * A fused successor's backlog: the records of its input partitions from the group's
   * committed offset (or, after a journal replay, its resume offset) to the end as of now,
   * handled like consumed batches (produced, written, marked, forwarded), all partitions
   * with one reader. Everything written after this point reaches each task from its
   * predecessor, in process; `nextInput` is where that begins.
   */
  private async drainBacklog(tasks: ReadonlyMap<number, PartitionTask>, heartbeat: Heartbeat): Promise<void> {
    const { config, stage, admin, log } = this.o;
    const topic = this.soleInput();
    const [group] = await admin.fetchOffsets({ groupId: groupId(config.topicPrefix, stage), topics: [topic] });
    const offsets = await topicOffsets(admin, topic);
    const ranges = new Map<number, { from: bigint; to: bigint }>();
    for (const [partition, task] of tasks) {
      const fetched = BigInt(group?.partitions.find((p) => p.partition === partition)?.offset ?? '-1');
      const at = offsets.find((o) => o.partition === partition);
      const end = BigInt(at?.high ?? '0');
      const resume = this.o.resumeAt?.get(topic)?.get(partition);
      const from = fetched >= 0n ? fetched : (resume ?? BigInt(at?.low ?? '0'));
      task.nextInput = from > end ? from : end;
      if (from < end) ranges.set(partition, { from, to: end });
    }
    if (ranges.size === 0) return;
    const started = performance.now();
    const handled = await this.handleRanges(tasks, ranges, heartbeat);
    this.o.metrics.fusedReadBack.inc({ stage, reason: 'backlog' }, handled);
    this.o.metrics.records.inc({ stage, result: 'in' }, handled);
    log.info({ ranges: Object.fromEntries([...ranges].map(([p, r]) => [p, `${r.from}..${r.to}`])), handled, seconds: Number(((performance.now() - started) / 1000).toFixed(3)) }, 'fused stage: records written before it took its partitions handled');
  }

  private soleInput(): string {
    const [[topic] = []] = [...this.o.inputs];
    if (!topic || this.o.inputs.size !== 1) throw new Error(`stage ${this.o.stage}: a fused successor needs exactly one input topic`);
    return topic;
  }

  /**
   * Reads offsets [from, to) of a fused successor's input partitions from the broker and
   * handles them as consumed batches; returns how many records there were. For its backlog,
   * and for records someone else wrote to its input while it runs fused.
   */
  async handleRanges(tasks: ReadonlyMap<number, PartitionTask>, ranges: ReadonlyMap<number, { from: bigint; to: bigint }>, heartbeat: Heartbeat = async () => undefined): Promise<number> {
    const { config, stage, admin } = this.o;
    const topic = this.soleInput();
    const topicKey = this.o.inputs.get(topic)!;
    const lows = new Map((await topicOffsets(admin, topic)).map((o) => [o.partition, BigInt(o.low)]));
    const from = new Map<number, bigint>();
    const until = new Map<number, bigint>();
    for (const [p, r] of ranges) {
      const start = r.from < (lows.get(p) ?? 0n) ? (lows.get(p) ?? 0n) : r.from;
      if (start >= r.to) continue;
      from.set(p, start);
      until.set(p, r.to);
    }
    if (from.size === 0) return 0;
    let handled = 0;
    const reader = new TopicReader(this.o.kafka, admin, {
      topic, groupPrefix: config.topicPrefix, from, until,
      onBatch: async ({ partition, messages }) => {
        const within = messages.filter((m) => BigInt(m.offset) >= from.get(partition)! && BigInt(m.offset) < until.get(partition)!);
        const task = tasks.get(partition);
        if (!within.length || !task) return;
        try {
          const decoded = await decodeBatch(this.o.codec, stage, topicKey, topic, partition, within);
          await task.handle(topic, decoded, within.at(-1)!.offset);
        } catch (err) {
          // Not retried here (the partition may have moved, its task closed): the caller decides.
          reader.abort(err as Error);
          return;
        }
        handled += within.length;
        await heartbeat().catch(() => undefined);
      },
    });
    await reader.readToEnd();
    return handled;
  }

  /** Closes a revoked partition: its running batch finishes first. */
  close(partition: number): Promise<void> {
    const t = this.tasks.get(partition);
    this.tasks.delete(partition);
    this.opened.delete(partition);
    if (!t) return this.closing.get(partition) ?? Promise.resolve();
    const done = (async () => {
      const task = await t.catch(() => null);
      if (!task) return;
      await task.close();
      // An open that finished after the revocation must not leave closed stores visible.
      if (this.opened.get(partition) === task) this.opened.delete(partition);
      this.o.log.info({ partition }, 'partition closed');
    })();
    this.closing.set(partition, done);
    void done.finally(() => {
      if (this.closing.get(partition) === done) this.closing.delete(partition);
    });
    return done;
  }
}
