/**
 * Runs one stage as a member of consumer group `herald.<stage>` (Kafka Streams'
 * StreamThread, kafkajs' runner): joins the group with the co-partitioned assigner, hands
 * assigned partitions to the task manager, feeds each fetched batch through the decode
 * phase to its partition's input queue (fetching ahead while the task handles what is
 * queued, runtime/input-buffer.ts), commits marked offsets on the commit interval, restarts a
 * member kafkajs gave up on, and stops cleanly (in-flight batches finish and commit).
 * The batch cycle (decode, process, produce acks=-1, write state, mark, commit on the
 * interval) is the partition task's; see partition-task.ts.
 */
import type { Admin, Consumer, EachBatchPayload, Kafka } from 'kafkajs';
import type { HeraldConfig } from '../config.ts';
import { HeraldError } from '../errors.ts';
import type { KeyValueStore } from '../state/store.ts';
import { type StageName, type TopicKey, groupId, stageSpec, topicName } from '../topology.ts';
import { coPartitionedAssigner } from './assigner.ts';
import { heartbeating } from './heartbeat.ts';
import type { Codec } from './codec.ts';
import type { StageDeps, StageFactory } from './contract.ts';
import { decodeBatch } from './failure-policy.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import { OffsetManager } from './offsets.ts';
import { RecordCollector } from './record-collector.ts';
import { StageHealth, type StageReport } from './stage-health.ts';
import { TaskManager } from './task-manager.ts';
import type { BatchSender } from './coalescing-producer.ts';
import type { Forward, PartitionTask } from './partition-task.ts';
import { InputBuffer } from './input-buffer.ts';
import { FusedInput } from './fused-input.ts';
import type { Produced } from './record-collector.ts';

/** On the embedded broker, how long a group's leader waits before it syncs a group of several members (see assigner.ts). */
const LEADER_SYNC_DELAY_MS = 1000;

/** How long a stop waits for its member to leave the group, and for one the broker holds in a rebalance. */
const LEAVE_WAIT_MS = 10_000;
const REJOINING_LEAVE_WAIT_MS = 500;

export interface StageRunnerOptions {
  stage: StageName;
  factory: StageFactory;
  deps: StageDeps;
  kafka: Kafka;
  admin: Admin;
  /** The process's producer, batching across stages (runtime/coalescing-producer.ts). */
  producer: BatchSender;
  codec: Codec;
  config: HeraldConfig;
  log: Logger;
  metrics: Metrics;
  /** Wall clock, injectable for tests. */
  clock?: () => number;
  /** Resolves when the stage may process: its global tables are caught up. */
  gate?: Promise<void>;
  /** Called before the member first joins its group; it joins when the promise resolves (--workers: every process's members join together). */
  joinAt?: () => Promise<void>;
  /** This member's weight when the group's partitions are shared out (assigner.ts): below 1, fewer than the others. */
  assignWeight?: number;
  /** Called with the partitions this member holds after each rebalance (the instance directory listens). */
  onAssignment?: (partitions: number[], memberId: string) => void;
  /**
   * Where to resume each input partition when the group has no offsets of its own yet
   * (the embedded broker's journal was replayed into a fresh broker): topic -> partition -> offset.
   */
  resumeAt?: ReadonlyMap<string, ReadonlyMap<number, bigint>>;
  /** Resolves when there is room downstream for this stage's output (back-pressure); ingest waits on it. */
  room?: () => Promise<void>;
  /** This instance's HTTP address, sent in its group membership metadata. */
  advertisedUrl?: () => string;
  /** Fused with its successor: where this stage's tasks hand what they produce for it. */
  forward?: Forward;
  /**
   * Fused with its predecessor: the member joins its group (partitions, commits, timers,
   * /readyz as ever) but fetches nothing; its records come through `feed`.
   */
  fed?: boolean;
  /** Records reaching an idle partition wait up to this long for more, to be handled as one batch (runtime/input-buffer.ts). */
  lingerMs?: number;
}

/** How often each stage logs what it did, at info. */
const SUMMARY_MS = 60_000;

export class StageRunner {
  private consumer: Consumer | null = null;
  private stopped = false;
  private restarts = 0;
  private restarting: Promise<void> = Promise.resolve();
  private commitTimer: NodeJS.Timeout | null = null;
  /** A line a minute at info of what the stage did (Kafka Streams' processing summary), and the counts it last told. */
  private summaryTimer: NodeJS.Timeout | null = null;
  private summarized = new Map<string, number>();
  private summarizedAt = performance.now();
  /** Input partitions already sought to their resume offset. */
  private readonly resumed = new Set<string>();
  /** Partitions of the latest assignment. */
  private assigned = new Set<number>();
  /** Group membership, as /readyz reports it. */
  member: 'starting' | 'joined' | 'restarting' | 'stopped' = 'starting';
  /** Between a rebalance's start and this member's next join. */
  private rejoining = false;
  private readonly inputs = new Map<string, TopicKey>();
  private readonly offsets: OffsetManager;
  /** What /readyz reports about this stage. */
  readonly health: StageHealth;
  private readonly tasks: TaskManager;
  private readonly log: Logger;
  private joinedResolve!: () => void;
  /** Resolves when the consumer has joined its group the first time. */
  readonly joined = new Promise<void>((r) => (this.joinedResolve = r));
  private readonly o: StageRunnerOptions;
  /** Fused successor: the records handed over by the stage before (null for a stage that fetches). */
  private readonly fused: FusedInput | null;
  /** A fetching stage's queued batches, per input topic and partition. */
  private readonly inputBuffers = new Map<string, { task: PartitionTask; buffer: InputBuffer; lag: number }>();

  constructor(o: StageRunnerOptions) {
    this.o = o;
    this.log = o.log.child({ stage: o.stage });
    for (const t of stageSpec(o.stage).inputs) this.inputs.set(topicName(o.config.topicPrefix, t), t);
    this.offsets = new OffsetManager(o.config.commitIntervalMs, this.log);
    const collector = new RecordCollector(o.producer, o.codec, o.config.topicPrefix);
    this.health = new StageHealth(o.config.stallMs);
    this.tasks = new TaskManager({ ...o, log: this.log, clock: o.clock ?? Date.now, collector, offsets: this.offsets, inputs: this.inputs, health: this.health, drain: o.fed === true });
    this.fused = o.fed ? new FusedInput({
      stage: o.stage, inputs: this.inputs, codec: o.codec, admin: o.admin, metrics: o.metrics, log: this.log, health: this.health, tasks: this.tasks, offsets: this.offsets,
      consumer: () => this.consumer, assigned: () => this.assigned, stopped: () => this.stopped, checkIntervalMs: Math.max(1000, o.config.commitIntervalMs),
    }) : null;
  }

  /** Logs, at info, the records the stage took in and wrote since the last summary (nothing when idle). */
  private async summarize(): Promise<void> {
    const now = performance.now();
    const counts = new Map<string, number>();
    for (const v of (await this.o.metrics.records.get()).values) if (v.labels.stage === this.o.stage) counts.set(String(v.labels.result), v.value);
    const since = Object.fromEntries([...counts].map(([k, v]) => [k, v - (this.summarized.get(k) ?? 0)]).filter(([, d]) => d !== 0));
    const seconds = Math.round((now - this.summarizedAt) / 1000);
    this.summarized = counts;
    this.summarizedAt = now;
    if (Object.keys(since).length) this.log.info({ records: since, seconds }, `processed in the last ${seconds} s`);
  }

  async start(): Promise<void> {
    const { config, stage } = this.o;
    const consumer = this.o.kafka.consumer({
      groupId: groupId(config.topicPrefix, stage),
      sessionTimeout: config.sessionTimeoutMs,
      // kafkajs restarts a consumer that crashed on a retriable error; not one being stopped.
      retry: { retries: 5, restartOnFailure: async () => !this.stopped },
      rebalanceTimeout: Math.max(60000, config.sessionTimeoutMs),
      heartbeatInterval: Math.max(300, Math.floor(config.sessionTimeoutMs / 10)),
      maxWaitTimeInMs: config.fetchMaxWaitMs,
      // kafkajs heartbeats between fetches: an idle fetch stays well inside the session.
      idleMaxWaitTimeInMs: Math.min(config.fetchIdleWaitMs, Math.floor(config.sessionTimeoutMs / 3)),
      minBytes: config.fetchMinBytes,
      maxBytesPerPartition: config.fetchMaxPartitionBytes,
      allowAutoTopicCreation: false,
      // Weighted first; the unweighted protocol for groups with members of earlier versions.
      partitionAssigners: [true, false].map((weighted) => coPartitionedAssigner(() => this.o.advertisedUrl?.() ?? '', config.instanceId, { weighted, leaderSyncDelayMs: config.embedded ? LEADER_SYNC_DELAY_MS : 0, ...(this.o.assignWeight !== undefined ? { weight: this.o.assignWeight } : {}) })),
    });
    this.consumer = consumer;
    consumer.on(consumer.events.CRASH, (e) => {
      if (this.stopped || this.consumer !== consumer) return;
      // kafkajs restarts on retriable errors (the brokers gone, a connection lost): the member
      // is not ready until it has joined again, and /readyz says so instead of "joined".
      if (e.payload.restart) {
        this.member = 'restarting';
        return;
      }
      // A consumer that gave up (for example on a protocol error during a rebalance) would
      // leave this stage silently stopped.
      this.restartMember(consumer, e.payload.error);
    });
    // A rebalance begins: no timer may fire for a partition that could be moving.
    consumer.on(consumer.events.REBALANCING, () => {
      this.rejoining = true;
      // A fused stage takes no more records until it knows what it holds (feeds wait for the join).
      if (this.o.fed) this.assigned = new Set();
      void this.tasks.stopTimers();
      // Queued batches are not handled while partitions may move: whoever holds them next
      // fetches them again from the committed offset (the batch being handled finishes).
      for (const e of this.inputBuffers.values()) void e.buffer.drop();
    });
    consumer.on(consumer.events.GROUP_JOIN, (e) => {
      this.rejoining = false;
      const assigned = new Set<number>();
      for (const parts of Object.values(e.payload.memberAssignment)) for (const p of parts) assigned.add(p);
      // A join that completes while or after the stage stops (its leave was not waited for):
      // nothing starts again and no claim is published; partitions it lost are let go.
      if (this.stopped) {
        this.offsets.retain(assigned);
        for (const p of this.tasks.partitions()) if (!assigned.has(p)) void this.tasks.close(p);
        return;
      }
      const sorted = [...assigned].sort((a, b) => a - b);
      this.log.info({ partitions: sorted, memberId: e.payload.memberId }, 'joined group');
      this.o.metrics.groupJoins.inc({ stage: this.o.stage });
      this.member = 'joined';
      this.fused?.joined(consumer, assigned);
      for (const p of this.tasks.partitions()) if (!assigned.has(p)) void this.tasks.close(p);
      // Partitions that left: their lag is the new owner's to report (/metrics sums members' across --workers).
      for (const topic of this.inputs.keys()) {
        for (let p = 0; p < this.o.config.partitions; p++) {
          if (assigned.has(p)) continue;
          this.o.metrics.lag.remove({ stage: this.o.stage, topic, partition: String(p) });
          this.health.forget(topic, p);
        }
      }
      this.offsets.retain(assigned);
      for (const [key, e] of this.inputBuffers) {
        if (assigned.has(e.task.partition)) e.buffer.reopen();
        else this.inputBuffers.delete(key);
      }
      // Open (and restore) partitions as soon as they arrive, not at their first new record:
      // a projection taken over from a dead instance must answer queries, and timers must run.
      this.assigned = assigned;
      this.seekResumed(consumer, assigned);
      this.tasks.ensureOpen(() => this.assigned, () => this.stopped);
      this.tasks.startTimers();
      this.o.onAssignment?.(sorted, e.payload.memberId);
      this.joinedResolve();
    });
    // Commit on the interval even when no batch arrives (Kafka Streams' commit.interval.ms):
    // a quiet partition's last batch must not wait for traffic to be committed.
    this.commitTimer ??= setInterval(() => void this.offsets.maybeCommit(this.consumer), Math.max(100, config.commitIntervalMs));
    this.commitTimer.unref();
    this.summaryTimer ??= setInterval(() => void this.summarize().catch(() => undefined), SUMMARY_MS);
    this.summaryTimer.unref();
    await consumer.connect();
    for (const topic of this.inputs.keys()) await consumer.subscribe({ topic, fromBeginning: true });
    if (this.o.joinAt) {
      await this.o.joinAt();
      // Stopped while it waited (a failed start cleans up): it must not join after all.
      if (this.stopped || this.consumer !== consumer) {
        await consumer.disconnect().catch(() => undefined);
        return;
      }
    }
    await consumer.run({
      autoCommit: false,
      eachBatchAutoResolve: false,
      partitionsConsumedConcurrently: Math.max(1, Math.min(config.partitions * this.inputs.size, 8)),
      eachBatch: (payload) => this.onBatch(payload),
    });
    // Fused successor: a member for its partitions and commits only; it fetches nothing.
    this.fused?.started(consumer);
  }

  /** Fused successor: records the stage before produced to this stage's input, handed over (see FusedInput.feed). */
  feed(partition: number, produced: readonly Produced[]): Promise<void> {
    if (!this.fused) throw new Error(`stage ${this.o.stage} fetches its input; nothing may be handed to it`);
    return this.fused.feed(partition, produced);
  }

  /**
   * Seeks each assigned partition to its resume offset (the embedded journal's snapshot),
   * once, and only while its group has no commit for it: a broker restored from the journal
   * knows no commits, but a partition that reaches this member later (from another worker
   * or instance) has been committed since, and must not be sent back to the snapshot. The
   * partitions are paused while the commits are looked up, so nothing is fetched first.
   * The snapshot offset is committed again at the next commit interval.
   */
  private seekResumed(consumer: Consumer, assigned: ReadonlySet<number>): void {
    const todo: { topic: string; partition: number; offset: bigint }[] = [];
    for (const [topic, parts] of this.o.resumeAt ?? []) {
      for (const [partition, offset] of parts) {
        const key = `${topic}\u0000${partition}`;
        if (!assigned.has(partition) || this.resumed.has(key)) continue;
        this.resumed.add(key);
        todo.push({ topic, partition, offset });
      }
    }
    if (todo.length === 0) return;
    const byTopic = [...new Set(todo.map((t) => t.topic))].map((topic) => ({ topic, partitions: todo.filter((t) => t.topic === topic).map((t) => t.partition) }));
    // A fused successor fetches nothing (its consumer stays paused): it only needs the seeks.
    const pausing = !this.o.fed;
    if (pausing) consumer.pause(byTopic);
    void (async () => {
      const committed = new Map<string, bigint>();
      let known = false;
      try {
        for (const t of await this.o.admin.fetchOffsets({ groupId: groupId(this.o.config.topicPrefix, this.o.stage), topics: byTopic.map((b) => b.topic) })) {
          for (const p of t.partitions) committed.set(`${t.topic}\u0000${p.partition}`, BigInt(p.offset));
        }
        known = true;
      } catch (err) {
        this.log.warn({ err }, 'could not read the group\'s commits; resuming every partition from the journal\'s snapshot');
      }
      for (const t of todo) {
        if ((committed.get(`${t.topic}\u0000${t.partition}`) ?? -1n) >= 0n) continue;
        consumer.seek({ topic: t.topic, partition: t.partition, offset: t.offset.toString() });
        // And commit it at the next interval: the group shows the offsets it had before the
        // restart (lag tools, a member that takes the partition over), not none at all,
        // until new records move them. Not when the group's commits could not be read: one
        // may be ahead of the snapshot (a partition another member handled), and a commit
        // never goes back.
        if (known) this.offsets.mark(t.topic, t.partition, (t.offset - 1n).toString());
      }
    })().finally(() => {
      if (pausing && !this.stopped && this.consumer === consumer) consumer.resume(byTopic);
    });
  }

  /** Whether the cluster is librdkafka's mock (the embedded broker), by its cluster id; false if it cannot tell within a second. */
  private async brokerIsMock(): Promise<boolean> {
    const id = await Promise.race([
      this.o.admin.describeCluster().then((d) => d.clusterId, () => ''),
      new Promise<string>((r) => setTimeout(() => r(''), 1000).unref()),
    ]);
    return id.startsWith('mockCluster');
  }

  private restartMember(consumer: Consumer, error: Error): void {
    this.log.error({ err: error, restarts: ++this.restarts }, 'consumer crashed without restarting; starting a new member');
    this.o.metrics.records.inc({ stage: this.o.stage, result: 'consumer_restart' });
    this.consumer = null;
    this.member = 'restarting';
    if (this.o.fed) this.assigned = new Set();
    void consumer.disconnect().catch(() => undefined);
    this.restarting = (async () => {
      for (let attempt = 1; !this.stopped; attempt++) {
        await new Promise((r) => setTimeout(r, Math.min(30_000, 1000 * attempt)));
        if (this.stopped) return;
        try {
          await this.dropInputs();
          this.inputBuffers.clear();
          for (const p of this.tasks.partitions()) await this.tasks.close(p);
          await this.start();
          return;
        } catch (err) {
          this.log.error({ err, attempt }, 'restarting the consumer failed; trying again');
          const failed = this.consumer;
          this.consumer = null;
          await failed?.disconnect().catch(() => undefined);
        }
      }
    })();
  }

  private async onBatch(payload: EachBatchPayload): Promise<void> {
    try {
      await this.consume(payload);
    } catch (err) {
      // A batch cut short by a stop is not a failure: it is not marked, and is fetched again.
      if ((err as HeraldError).code === 'HRL_SHUTTING_DOWN') return;
      this.health.batchFailed(err as Error & { code?: string });
      throw err;
    }
  }

  /**
   * A fetched batch: decoded and queued for its partition's task (runtime/input-buffer.ts),
   * so the next fetch goes out while it is handled. It waits only while the queue is full.
   */
  private async consume(payload: EachBatchPayload): Promise<void> {
    // kafkajs moves its position past a batch only when it is queued (or needs no work).
    if (await this.enqueue(payload)) payload.resolveOffset(payload.batch.lastOffset());
  }

  /** Queues a fetched batch; false when the queue stayed full, so the batch is fetched again later. */
  private async enqueue({ batch, heartbeat, isRunning, isStale }: EachBatchPayload): Promise<boolean> {
    // A fused successor's records come through `feed` (a fetch before the pause took hold is ignored).
    if (this.o.fed || batch.messages.length === 0 || !isRunning() || isStale()) return true;
    const { stage, metrics } = this.o;
    // Never join a record with a table still loading.
    if (this.o.gate) await heartbeating(this.o.gate, heartbeat, () => this.stopped);
    if (this.o.room) await heartbeating(this.o.room(), heartbeat, () => this.stopped);
    const task = await heartbeating(this.tasks.task(batch.partition, heartbeat), heartbeat, () => this.stopped);
    if (!isRunning() || isStale()) return true; // the partition moved while it was being opened
    const input = this.inputFor(batch.topic, task);
    // Records below the resume offset were processed before the restart (and a fetch may
    // begin before the seek lands); records queued already come again after a rejoin.
    const resumeAt = this.o.resumeAt?.get(batch.topic)?.get(batch.partition);
    const messages = input.buffer.fresh(resumeAt === undefined ? batch.messages : batch.messages.filter((m) => BigInt(m.offset) >= resumeAt));
    if (messages.length === 0) return true;
    // A full queue: wait a moment, then leave the batch to a later fetch (the member goes
    // on polling, so it hears of a rebalance even while a partition keeps failing).
    if (!(await heartbeating(input.buffer.space(1000), heartbeat, () => this.stopped))) return false;
    const decoded = await decodeBatch(this.o.codec, stage, this.inputs.get(batch.topic)!, batch.topic, batch.partition, messages);
    if (!isRunning() || isStale() || this.stopped) return true;
    metrics.records.inc({ stage, result: 'in' }, messages.length);
    input.lag = Number(batch.offsetLag());
    input.buffer.push(decoded, messages.at(-1)!.offset, messages.length);
    // Caught up: the next fetch waits for this batch (bounded, so the member keeps polling).
    if (input.lag === 0) await heartbeating(input.buffer.handled(1000), heartbeat, () => this.stopped);
    return true;
  }

  /** The input queue of `topic` for `task` (a new one when the partition's task changed). */
  private inputFor(topic: string, task: PartitionTask): { task: PartitionTask; buffer: InputBuffer; lag: number } {
    const key = `${topic}\u0000${task.partition}`;
    const current = this.inputBuffers.get(key);
    if (current?.task === task) return current;
    void current?.buffer.drop();
    const { stage, metrics } = this.o;
    const entry = {
      task,
      lag: 0,
      buffer: new InputBuffer({
        handle: async (decoded, lastOffset, count) => {
          this.health.batchStarted();
          await task.handle(topic, decoded, lastOffset);
          await this.offsets.maybeCommit(this.consumer);
          const lag = entry.lag + Math.max(0, entry.buffer.size - count);
          metrics.lag.set({ stage, topic, partition: String(task.partition) }, lag);
          this.health.batchDone(topic, task.partition, lag);
        },
        room: this.o.room,
        ...(this.o.lingerMs ? { lingerMs: this.o.lingerMs } : {}),
        failed: (err, attempt, backoffMs) => {
          this.health.batchFailed(err as Error & { code?: string });
          this.log.warn({ err, partition: task.partition, attempt, backoffMs }, 'batch failed; its records are handled again after a pause');
        },
      }),
    };
    this.inputBuffers.set(key, entry);
    return entry;
  }

  /** Drops every queued batch (none is committed) and waits for the ones being handled. */
  private async dropInputs(): Promise<void> {
    await Promise.all([...this.inputBuffers.values()].map((e) => e.buffer.drop()));
  }

  /** Resolves once every assigned partition is open (stores restored, processors created). */
  async settled(): Promise<void> {
    while (!this.stopped && !this.report().reasons.every((r) => !r.includes('not open') && !r.startsWith('restoring'))) await new Promise((r) => setTimeout(r, 50));
  }

  /** Readiness of this stage, with the reasons it is not ready. */
  /** When this stage started its first batch (epoch ms), or null. */
  firstBatchAt(): number | null {
    return this.health.firstBatchAt();
  }

  report(): StageReport {
    return this.health.report(this.member, [...this.assigned], this.tasks.openPartitions());
  }

  /** The input partitions this member holds now, in order. */
  partitions(): number[] {
    return [...this.assigned].sort((a, b) => a - b);
  }

  /** The open stores named `name`, by partition this instance holds (for queries). */
  stores(name: string): Map<number, KeyValueStore> {
    return this.tasks.stores(name);
  }

  private quiescing: Promise<Consumer | null> | null = null;

  /**
   * The first half of a stop: consuming stops, in-flight batches and punctuations finish,
   * work under way is settled, and their offsets are committed; the member stays in its
   * group. Every process of an instance quiesces before any member leaves, so no commit
   * meets the rebalance another member's leave starts.
   */
  quiesce(): Promise<void> {
    this.quiescing ??= this.quiesceNow();
    return this.quiescing.then(() => undefined);
  }

  /** Stops consuming: in-flight batches and punctuations finish, their offsets are committed, then stores close. */
  async stop(): Promise<void> {
    this.quiescing ??= this.quiesceNow();
    const c = await this.quiescing;
    await this.leave(c);
  }

  /** One step of a stop; one that takes long is reported, so a slow stop says where it waited. */
  private async step<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const t0 = Date.now();
    const waiting = setTimeout(() => this.log.warn({ step: name }, 'stopping the stage: still waiting after 1 s'), 1000).unref();
    try {
      return await fn();
    } finally {
      clearTimeout(waiting);
      const ms = Date.now() - t0;
      if (ms >= 1000) this.log.warn({ step: name, ms }, 'a step of stopping the stage took long');
    }
  }

  private async quiesceNow(): Promise<Consumer | null> {
    this.stopped = true;
    this.member = 'stopped';
    if (this.commitTimer) clearInterval(this.commitTimer);
    if (this.summaryTimer) clearInterval(this.summaryTimer);
    const step = this.step.bind(this);
    await step('fused hand-overs', async () => this.fused?.stop());
    await step('consumer restart', () => this.restarting);
    const c = this.consumer;
    await step('timers', () => this.tasks.stopTimers());
    if (c) {
      c.pause([...this.inputs.keys()].map((topic) => ({ topic })));
      await step('queued batches', () => this.dropInputs());
      await step('batches in flight', async () => {
        for (const task of await this.tasks.all()) await task.idle();
      });
      // What a stage started outside its batches (deliver's calls past their batch's wait)
      // is finished and recorded before the last commit, so a clean stop leaves no call for
      // the restart to make again.
      await step('work under way', async () => {
        await Promise.all((await this.tasks.all()).map((task) => task.settle().catch((err: unknown) => this.log.warn({ err, partition: task.partition }, 'settling work under way failed; the restart takes it up'))));
      });
      await step('offset commit', () => this.offsets.commit(c));
      this.consumer = null;
    }
    return c;
  }

  private async leave(c: Consumer | null): Promise<void> {
    const step = this.step.bind(this);
    if (c) {
      // A member told to rejoin (another member left: the other processes stop too) waits
      // in JoinGroup until the rebalance completes, and kafkajs leaves only after that; the
      // embedded broker holds a JoinGroup for the session timeout less a second, whoever has
      // rejoined. Such a member holds no partitions and can commit nothing, so against the
      // embedded broker the stop waits for it only briefly; the broker drops it when its
      // session times out. A member that is not rejoining leaves at once.
      // kafkajs rejoins when a heartbeat says so even while it is being stopped, so the wait
      // is cut short whenever the member is rejoining, before or during the leave.
      // Real Kafka answers a JoinGroup once the members still in the group have rejoined,
      // so there the leave is waited for (up to LEAVE_WAIT_MS): a member abandoned in a
      // rejoin would be given partitions it never takes, and the others would wait out its
      // session timeout. Only the embedded broker holds a rejoin whoever is back.
      const mock = await this.brokerIsMock();
      let done = false;
      const leaving = c.disconnect().catch((err: unknown) => this.log.warn({ err }, 'leaving the group failed')).finally(() => (done = true));
      const left = await step('leaving the group', async () => {
        let rejoiningSince: number | null = null;
        for (const deadline = Date.now() + LEAVE_WAIT_MS; !done && Date.now() < deadline;) {
          rejoiningSince = mock && this.rejoining ? (rejoiningSince ?? Date.now()) : null;
          if (rejoiningSince !== null && Date.now() - rejoiningSince >= REJOINING_LEAVE_WAIT_MS) break;
          await Promise.race([leaving, new Promise((r) => setTimeout(r, 50))]);
        }
        return done;
      });
      if (!left) this.log.info({ rejoining: this.rejoining }, 'stopped without waiting for the group to let this member go (the broker drops it when its session times out)');
    }
    await step('closing partitions', async () => {
      for (const p of this.tasks.partitions()) await this.tasks.close(p);
    });
    this.assigned = new Set();
  }
}
