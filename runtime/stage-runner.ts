/**
 * Runs one stage: a consumer in group `herald.<stage>`, one processor instance and one
 * set of stores per assigned partition, and the batch cycle every stage shares:
 *
 *   decode (failures -> dlq.v1, partition moves on) -> process -> produce outputs,
 *   outcomes and changelog records (acks=-1) -> write the state batch and checkpoint
 *   -> commit offsets.
 *
 * Offsets are committed only after every produce of the batch is acknowledged and its
 * state is written, so a crash anywhere replays the batch (at-least-once), and the
 * derived ids make the replay idempotent downstream. Completed batches are committed
 * together every HERALD_COMMIT_INTERVAL_MS (Kafka Streams' commit.interval.ms), and on stop.
 */
import type { Admin, Consumer, EachBatchPayload, IHeaders, Kafka, KafkaMessage, Message, Producer } from 'kafkajs';
import type { HeraldConfig } from '../config.ts';
import { asHeraldError, HeraldError } from '../errors.ts';
import type { Decision, InRecord, Processor, StageContext, StageDeps, StageFactory } from '../processors/contract.ts';
import { BatchView, KeyValueStore } from '../state/store.ts';
import { type StageName, STAGES, type TopicKey, changelogTopic, groupId, topicName } from '../topology.ts';
import type { Codec } from './codec.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import { CoPartitionedAssigner } from './assigner.ts';
import { TopicReader } from './reader.ts';
import { restoreFromChangelog } from './restore.ts';

interface PartitionTask {
  processor: Processor;
  stores: Map<string, KeyValueStore>;
  /**
   * Serialises every batch of this partition, across its input topics (deliver reads
   * deliveries.v1 and deliver.retry.v1), so two batches never race on one store.
   */
  lock: Promise<void>;
}

interface PendingOutput {
  topicKey: TopicKey;
  topic: string;
  message: Message;
  value: unknown;
}

interface Decoded {
  records: InRecord[];
  rejected: { rec: InRecord; err: HeraldError }[];
}

/** Upper bound of one produce request, well under the broker's default message.max.bytes. */
const MAX_REQUEST_BYTES = 512 * 1024;

export interface StageRunnerOptions {
  stage: StageName;
  factory: StageFactory;
  deps: StageDeps;
  kafka: Kafka;
  admin: Admin;
  producer: Producer;
  codec: Codec;
  config: HeraldConfig;
  log: Logger;
  metrics: Metrics;
  /** Wall clock, injectable for tests. */
  clock?: () => number;
  /** Resolves when the stage may process: its global tables are caught up. */
  gate?: Promise<void>;
}

function headersToRecord(h: IHeaders | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h ?? {})) if (v !== undefined) out[k] = Array.isArray(v) ? String(v[0]) : String(v);
  return out;
}

export class StageRunner {
  private consumer: Consumer | null = null;
  private readonly tasks = new Map<number, Promise<PartitionTask>>();
  private readonly opened = new Map<number, PartitionTask>();
  private stopping = false;
  private restarts = 0;
  private restarting: Promise<void> = Promise.resolve();
  /** Partitions being closed: a reopen waits for their RocksDB handles to be released. */
  private readonly closing = new Map<number, Promise<void>>();
  /** Resume timers of partitions paused until a retry is due. */
  private readonly resumeTimers = new Set<NodeJS.Timeout>();
  /** Group membership, as /readyz reports it. */
  member: 'starting' | 'joined' | 'restarting' | 'stopped' = 'starting';
  /** Offsets of completed batches not yet committed, per topic-partition. */
  private readonly pending = new Map<string, { topic: string; partition: number; offset: string }>();
  private lastCommit = Date.now();
  private readonly committed = new Map<string, bigint>();
  private readonly topicKeys = new Map<string, TopicKey>();
  private readonly log: Logger;
  private readonly clock: () => number;
  private joinedResolve!: () => void;
  /** Resolves when the consumer has joined its group the first time. */
  readonly joined = new Promise<void>((r) => (this.joinedResolve = r));

  private readonly o: StageRunnerOptions;

  constructor(o: StageRunnerOptions) {
    this.o = o;
    this.log = o.log.child({ stage: o.stage });
    this.clock = o.clock ?? Date.now;
    for (const t of STAGES[o.stage].inputs) this.topicKeys.set(topicName(o.config.topicPrefix, t), t);
  }

  async start(): Promise<void> {
    const { config, stage } = this.o;
    const consumer = this.o.kafka.consumer({
      groupId: groupId(config.topicPrefix, stage),
      sessionTimeout: config.sessionTimeoutMs,
      rebalanceTimeout: Math.max(60000, config.sessionTimeoutMs),
      heartbeatInterval: Math.max(300, Math.floor(config.sessionTimeoutMs / 10)),
      maxWaitTimeInMs: 20,
      minBytes: 1,
      maxBytesPerPartition: 1024 * 1024,
      allowAutoTopicCreation: false,
      partitionAssigners: [CoPartitionedAssigner],
    });
    this.consumer = consumer;
    consumer.on(consumer.events.CRASH, (e) => {
      // kafkajs restarts on retriable errors only. A consumer that gave up (for example on
      // a protocol error during a rebalance) would leave this stage silently stopped:
      // close its partitions and start a fresh member instead.
      if (e.payload.restart || this.stopping || this.consumer !== consumer) return;
      this.log.error({ err: e.payload.error.message, restarts: ++this.restarts }, 'consumer crashed without restarting; starting a new member');
      this.o.metrics.records.inc({ stage, result: 'consumer_restart' });
      this.consumer = null;
      this.member = 'restarting';
      void consumer.disconnect().catch(() => undefined);
      this.restarting = (async () => {
        for (let attempt = 1; !this.stopping; attempt++) {
          await new Promise((r) => setTimeout(r, Math.min(30_000, 1000 * attempt)));
          if (this.stopping) return;
          try {
            for (const p of [...this.tasks.keys()]) await this.closePartition(p);
            await this.start();
            return;
          } catch (err) {
            this.log.error({ err: (err as Error).message, attempt }, 'restarting the consumer failed; trying again');
            const failed = this.consumer;
            this.consumer = null;
            await failed?.disconnect().catch(() => undefined);
          }
        }
      })();
    });
    consumer.on(consumer.events.GROUP_JOIN, (e) => {
      const assigned = new Set<number>();
      for (const parts of Object.values(e.payload.memberAssignment)) for (const p of parts) assigned.add(p);
      this.log.info({ partitions: [...assigned].sort((a, b) => a - b), memberId: e.payload.memberId }, 'joined group');
      this.member = 'joined';
      for (const p of [...this.tasks.keys()]) if (!assigned.has(p)) void this.closePartition(p);
      for (const [k, o] of this.pending) if (!assigned.has(o.partition)) this.pending.delete(k);
      // Restore stores as soon as partitions arrive, not at their first new record: a
      // projection taken over from a dead instance must answer queries right away.
      const fresh = [...assigned].filter((p) => !this.tasks.has(p));
      if (STAGES[stage].stores.length && fresh.length) {
        for (const [p, t] of this.openPartitions(fresh, async () => undefined)) {
          t.catch((err: Error) => this.log.warn({ partition: p, err: err.message }, 'opening the partition failed; retried at its next batch'));
        }
      }
      this.joinedResolve();
    });
    await consumer.connect();
    for (const topic of this.topicKeys.keys()) await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      autoCommit: false,
      partitionsConsumedConcurrently: Math.max(1, Math.min(config.partitions * this.topicKeys.size, 8)),
      eachBatch: (payload) => this.onBatch(payload),
    });
  }

  /** Opens (and restores) a partition's stores and processor on first use. */
  private task(partition: number, heartbeat: () => Promise<void>): Promise<PartitionTask> {
    const t = this.tasks.get(partition);
    if (t) return t;
    return this.openPartitions([partition], heartbeat).get(partition)!;
  }

  /**
   * Opens the stores and processors of newly assigned partitions together: each changelog
   * is restored for all of them by one reader (one group join, not one per partition).
   * Returns a promise per partition, registered in `tasks`.
   */
  private openPartitions(partitions: number[], heartbeat: () => Promise<void>): Map<number, Promise<PartitionTask>> {
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

  private async openAll(partitions: number[], heartbeat: () => Promise<void>): Promise<Map<number, PartitionTask>> {
    const { config, stage, metrics } = this.o;
    const stores = new Map<number, Map<string, KeyValueStore>>(partitions.map((p) => [p, new Map()]));
    const closeAll = async () => {
      // Never leave a RocksDB handle (and its lock) behind: the next attempt must be able to open it.
      for (const m of stores.values()) for (const st of m.values()) await st.close().catch(() => undefined);
    };
    let beat = Date.now();
    // A partition revoked and given back quickly: wait until its old handles are closed.
    await Promise.all(partitions.map((p) => this.closing.get(p)));
    try {
      for (const spec of STAGES[stage].stores) {
        const changelog = spec.changelog === true ? changelogTopic(config.topicPrefix, stage, spec.name) : null;
        // allSettled, so every store that did open is known (and closed) if one fails.
        const settled = await Promise.allSettled(partitions.map(async (partition) => {
          const store = await KeyValueStore.open({ backend: config.stateBackend, dir: config.stateDir, stage, name: spec.name, partition, changelog });
          stores.get(partition)!.set(spec.name, store);
          return { store, partition };
        }));
        const failed = settled.find((r) => r.status === 'rejected');
        if (failed) throw (failed as PromiseRejectedResult).reason;
        const targets = settled.map((r) => (r as PromiseFulfilledResult<{ store: KeyValueStore; partition: number }>).value);
        if (!changelog) continue;
        const r = await restoreFromChangelog({
          kafka: this.o.kafka, admin: this.o.admin, topic: changelog, groupPrefix: config.topicPrefix, targets, log: this.log,
          onApplied: (n) => {
            metrics.restored.inc({ stage, store: spec.name }, n);
            // A long restore keeps the group membership alive.
            if (Date.now() - beat > 1000) {
              beat = Date.now();
              void heartbeat().catch(() => undefined);
            }
          },
        });
        metrics.restoreDuration.observe({ stage, store: spec.name }, r.seconds);
        this.log.info({ store: spec.name, partitions, applied: r.applied, checkpoints: Object.fromEntries([...r.checkpoints].map(([p, c]) => [p, c?.toString() ?? null])), seconds: Number(r.seconds.toFixed(3)) }, 'store restored');
      }
      const tasks = new Map<number, PartitionTask>();
      for (const partition of partitions) {
        const processor = this.o.factory(this.o.deps);
        await processor.init?.({ partition });
        const task: PartitionTask = { processor, stores: stores.get(partition)!, lock: Promise.resolve() };
        await this.replaySource(task, partition, heartbeat);
        tasks.set(partition, task);
      }
      for (const [p, t] of tasks) if (this.tasks.has(p)) this.opened.set(p, t);
      return tasks;
    } catch (err) {
      await closeAll();
      throw err;
    }
  }

  /**
   * Brings `'source'` stores up to the group's committed offset by replaying the input
   * partition from the offset they reflect, through the processor, discarding its outputs
   * (they were produced the first time).
   */
  private async replaySource(task: PartitionTask, partition: number, heartbeat: () => Promise<void>): Promise<void> {
    const { config, stage, admin } = this.o;
    const specs = STAGES[stage].stores.filter((s) => s.changelog === 'source');
    if (specs.length === 0) return;
    const [topic] = [...this.topicKeys.keys()];
    if (!topic || this.topicKeys.size !== 1) throw new Error(`stage ${stage}: a 'source' store needs exactly one input topic`);
    const [group] = await admin.fetchOffsets({ groupId: groupId(config.topicPrefix, stage), topics: [topic] });
    const committed = BigInt(group?.partitions.find((p) => p.partition === partition)?.offset ?? '-1');
    if (committed <= 0n) return;
    const offsets = await admin.fetchTopicOffsets(topic);
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
        const { records } = await this.decode(topic, partition, within);
        const ctx = this.context(task, partition);
        if (records.length) await task.processor.process(records, ctx);
        for (const view of ctx.views.values()) await view.flush(view.store.changelog === null ? BigInt(within.at(-1)!.offset) : null);
        applied += within.length;
        await heartbeat().catch(() => undefined);
      },
    });
    await reader.readToEnd();
    this.log.info({ partition, from: from.toString(), to: committed.toString(), applied, seconds: Number(((performance.now() - started) / 1000).toFixed(3)) }, 'projection replayed from its input');
  }

  private closePartition(partition: number): Promise<void> {
    const t = this.tasks.get(partition);
    this.tasks.delete(partition);
    this.opened.delete(partition);
    if (!t) return this.closing.get(partition) ?? Promise.resolve();
    const done = (async () => {
      const task = await t.catch(() => null);
      if (!task) return;
      await task.lock;
      await task.processor.close?.();
      for (const s of task.stores.values()) await s.close().catch(() => undefined);
      // An open that finished after the revocation must not leave closed stores visible.
      if (this.opened.get(partition) === task) this.opened.delete(partition);
      this.log.info({ partition }, 'partition closed');
    })();
    this.closing.set(partition, done);
    void done.finally(() => {
      if (this.closing.get(partition) === done) this.closing.delete(partition);
    });
    return done;
  }

  /** Waits for `p` while keeping the group membership alive (kafkajs only heartbeats between batches). */
  private async heartbeating<T>(p: Promise<T>, heartbeat: () => Promise<void>): Promise<T> {
    let settled = false;
    const done = p.finally(() => (settled = true));
    while (!settled) {
      await Promise.race([done.catch(() => undefined), new Promise((r) => setTimeout(r, 1000))]);
      if (settled) break;
      if (this.stopping) throw new HeraldError('HRL_PROCESSING_FAILED', 'stopping while a batch waits', { retriable: true });
      await heartbeat().catch(() => undefined);
    }
    return done;
  }

  private async onBatch({ batch, heartbeat, isRunning, isStale, pause }: EachBatchPayload): Promise<void> {
    if (batch.messages.length === 0 || !isRunning() || isStale()) return;
    // Never join a record with a table still loading.
    if (this.o.gate) await this.heartbeating(this.o.gate, heartbeat);
    const task = await this.heartbeating(this.task(batch.partition, heartbeat), heartbeat);
    if (!isRunning() || isStale()) return; // the partition moved while it was being opened
    this.o.metrics.records.inc({ stage: this.o.stage, result: 'in' }, batch.messages.length);
    const decoded = await this.decode(batch.topic, batch.partition, batch.messages);
    // Timers run on wall-clock time. A batch not due yet is not waited for here (kafkajs
    // fetches no partition of the broker while a batch is running): its partition is
    // paused, rewound to the batch's first offset and resumed when the batch is due.
    const due = task.processor.dueAt?.(decoded.records);
    if (due !== undefined && due - this.clock() > 50) {
      const consumer = this.consumer;
      if (!consumer) return;
      consumer.seek({ topic: batch.topic, partition: batch.partition, offset: batch.firstOffset()! });
      pause();
      const timer = setTimeout(() => {
        this.resumeTimers.delete(timer);
        if (this.consumer === consumer && !this.stopping) consumer.resume([{ topic: batch.topic, partitions: [batch.partition] }]);
      }, due - this.clock());
      this.resumeTimers.add(timer);
      return;
    }
    if (due !== undefined) await this.waitUntil(due, heartbeat);
    const run = task.lock.then(() => this.processBatch(task, batch.topic, batch.partition, batch.messages.at(-1)!.offset, decoded));
    task.lock = run.catch(() => undefined);
    await run;
    this.o.metrics.lag.set({ stage: this.o.stage, topic: batch.topic, partition: String(batch.partition) }, Number(batch.offsetLag()));
    await heartbeat();
  }

  private async waitUntil(wallTime: number, heartbeat: () => Promise<void>): Promise<void> {
    for (let left = wallTime - this.clock(); left > 0; left = wallTime - this.clock()) {
      if (this.stopping) throw new HeraldError('HRL_PROCESSING_FAILED', 'stopping while a batch waits for its due time', { retriable: true });
      await new Promise((r) => setTimeout(r, Math.min(left, 500)));
      await heartbeat();
    }
  }

  /** Decode phase: a record that cannot be decoded is set aside for the DLQ; its neighbours go on. */
  private async decode(topic: string, partition: number, messages: KafkaMessage[]): Promise<Decoded> {
    const { stage, metrics } = this.o;
    const topicKey = this.topicKeys.get(topic)!;
    const records: InRecord[] = [];
    const rejected: { rec: InRecord; err: HeraldError }[] = [];
    for (const m of messages) {
      const base = { topic, topicKey, partition, offset: m.offset, key: m.key?.toString() ?? null, timestamp: Number(m.timestamp), headers: headersToRecord(m.headers), raw: m.value };
      try {
        records.push({ ...base, value: await this.o.codec.decode(topicKey, m.value) });
      } catch (err) {
        const e = asHeraldError(err, { stage, topic, partition, offset: m.offset });
        if (e.retriable) throw e; // the registry or broker is unwell, not the record
        rejected.push({ rec: { ...base, value: null }, err: e });
      }
    }
    return { records, rejected };
  }

  private async processBatch(task: PartitionTask, topic: string, partition: number, lastOffset: string, { records, rejected }: Decoded): Promise<void> {
    const { stage, metrics } = this.o;
    const endTimer = metrics.batchDuration.startTimer({ stage });
    const where = { stage, topic, partition };
    const reject = (c: BatchContext) => {
      for (const { rec, err } of rejected) {
        c.deadLetter(rec, err);
        task.processor.rejected?.(rec as InRecord<null>, err, c);
      }
    };
    try {
      const ctx = this.context(task, partition);
      reject(ctx);
      try {
        if (records.length) await task.processor.process(records, ctx);
        await this.complete(ctx, topic, partition, lastOffset);
        return;
      } catch (err) {
        const e = asHeraldError(err, where);
        if (e.retriable) throw e; // not committed: the batch is fetched again
        this.log.warn({ code: e.code, err: e.message, records: records.length }, 'batch failed; re-running record by record to isolate the bad one');
      }
      const rejectsOnly = this.context(task, partition);
      reject(rejectsOnly);
      await this.complete(rejectsOnly, topic, partition, null);
      for (const rec of records) {
        try {
          const one = this.context(task, partition);
          await task.processor.process([rec], one);
          await this.complete(one, topic, partition, rec.offset);
        } catch (inner) {
          // The record itself is bad (its processing or its outputs): dead-letter it alone.
          const ie = asHeraldError(inner, { ...where, offset: rec.offset });
          if (ie.retriable) throw ie;
          const dl = this.context(task, partition);
          dl.deadLetter(rec, ie);
          await this.complete(dl, topic, partition, rec.offset);
        }
      }
      await this.complete(this.context(task, partition), topic, partition, lastOffset);
    } finally {
      endTimer();
    }
  }

  private context(task: PartitionTask, partition: number): BatchContext {
    return new BatchContext(this.o.stage, partition, task, this.o.config, this.log, this.clock, this.o.producer, this.o.codec);
  }

  /** Produce everything the batch emitted, write its state, then mark `offset` + 1 committable. */
  private async complete(ctx: BatchContext, topic: string, partition: number, offset: string | null): Promise<void> {
    const { producer, codec, metrics, stage } = this.o;
    const messages: { topic: string; message: Message; bytes: number }[] = [];
    for (const out of ctx.outputs) {
      out.message.value = await codec.encode(out.topicKey, out.topic, out.value);
      messages.push({ topic: out.topic, message: out.message, bytes: (out.message.value?.length ?? 0) + out.message.key!.length + 64 });
    }
    const changelogCount = new Map<string, number>();
    for (const view of ctx.views.values()) {
      const t = view.store.changelog;
      if (!t) continue;
      for (const c of view.changes()) {
        const message: Message = { key: c.key, value: c.value === null ? null : Buffer.from(c.value), partition, timestamp: String(ctx.maxTimestamp ?? this.clock()) };
        messages.push({ topic: t, message, bytes: c.key.length + (c.value?.length ?? 0) + 64 });
        changelogCount.set(t, (changelogCount.get(t) ?? 0) + 1);
      }
    }
    // Bounded produce requests (a 10k-member fan-out must not exceed message.max.bytes).
    const lastChangelogOffset = new Map<string, bigint>();
    for (let i = 0; i < messages.length;) {
      const byTopic = new Map<string, Message[]>();
      let bytes = 0;
      for (; i < messages.length && (bytes === 0 || bytes + messages[i]!.bytes <= MAX_REQUEST_BYTES); i++) {
        const m = messages[i]!;
        bytes += m.bytes;
        const list = byTopic.get(m.topic);
        if (list) list.push(m.message);
        else byTopic.set(m.topic, [m.message]);
      }
      const meta = await producer.sendBatch({ acks: -1, topicMessages: [...byTopic].map(([t, ms]) => ({ topic: t, messages: ms })) });
      for (const m of meta) {
        const n = m.topicName && changelogCount.has(m.topicName) && m.partition === partition ? byTopic.get(m.topicName)?.length ?? 0 : 0;
        if (n && m.baseOffset !== undefined) lastChangelogOffset.set(m.topicName, BigInt(m.baseOffset) + BigInt(n - 1));
      }
    }
    for (const view of ctx.views.values()) {
      const cl = view.store.changelog;
      // A changelogged store checkpoints its changelog offset; a source store, its input offset.
      await view.flush(cl ? (lastChangelogOffset.get(cl) ?? null) : offset !== null ? BigInt(offset) : null);
    }
    if (offset !== null) {
      this.pending.set(`${topic}\u0000${partition}`, { topic, partition, offset: (BigInt(offset) + 1n).toString() });
      if (Date.now() - this.lastCommit >= this.o.config.commitIntervalMs) await this.commitPending();
    }
    metrics.records.inc({ stage, result: 'out' }, ctx.counts.out);
    metrics.records.inc({ stage, result: 'outcome' }, ctx.counts.outcome);
    metrics.records.inc({ stage, result: 'dlq' }, ctx.counts.dlq);
    if (ctx.counts.out + ctx.counts.outcome + ctx.counts.dlq > 0) {
      this.log.info({ topic, partition, offset, ...ctx.counts }, 'batch committed');
    }
  }

  /** The open stores named `name`, one per partition this instance holds (for queries). */
  stores(name: string): KeyValueStore[] {
    return [...this.opened.values()].flatMap((t) => (t.stores.has(name) ? [t.stores.get(name)!] : []));
  }

  /**
   * Commits the offsets of every batch completed so far. Only completed batches (outputs
   * acknowledged, state written) are ever marked, so committing less often than every
   * batch only widens what a crash replays, and replays are idempotent.
   */
  private async commitPending(): Promise<void> {
    const consumer = this.consumer;
    if (!consumer || this.pending.size === 0) return;
    const offsets = [...this.pending.values()];
    this.pending.clear();
    this.lastCommit = Date.now();
    try {
      await consumer.commitOffsets(offsets);
      for (const o of offsets) this.committed.set(`${o.topic}\u0000${o.partition}`, BigInt(o.offset));
    } catch (err) {
      // A rebalance moved the partition: its new owner replays from the last commit.
      this.log.warn({ err: (err as Error).message, offsets: offsets.length }, 'offset commit failed; the batches will be replayed');
      if ((err as { retriable?: boolean }).retriable !== true) return;
      for (const o of offsets) {
        const k = `${o.topic}\u0000${o.partition}`;
        // Never move a partition's commit backwards past one that succeeded meanwhile.
        if (!this.pending.has(k) && BigInt(o.offset) > (this.committed.get(k) ?? -1n)) this.pending.set(k, o);
      }
    }
  }

  /** Stops consuming: in-flight batches finish, their offsets are committed, then stores close. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.member = 'stopped';
    for (const t of this.resumeTimers) clearTimeout(t);
    this.resumeTimers.clear();
    await this.restarting;
    const c = this.consumer;
    if (c) {
      c.pause([...this.topicKeys.keys()].map((topic) => ({ topic })));
      for (const t of this.tasks.values()) {
        const task = await t.catch(() => null);
        if (task) await task.lock;
      }
      await this.commitPending();
      this.consumer = null;
      await c.disconnect();
    }
    for (const p of [...this.tasks.keys()]) await this.closePartition(p);
  }
}

class BatchContext implements StageContext {
  readonly outputs: PendingOutput[] = [];
  readonly views = new Map<string, BatchView>();
  readonly counts = { out: 0, outcome: 0, dlq: 0 };
  maxTimestamp: number | null = null;

  readonly stage: StageName;
  readonly partition: number;
  readonly task: PartitionTask;
  readonly log: Logger;
  private readonly config: HeraldConfig;
  private readonly clock: () => number;
  private readonly producer: Producer;
  private readonly codec: Codec;

  constructor(stage: StageName, partition: number, task: PartitionTask, config: HeraldConfig, log: Logger, clock: () => number, producer: Producer, codec: Codec) {
    this.stage = stage;
    this.partition = partition;
    this.task = task;
    this.config = config;
    this.log = log;
    this.clock = clock;
    this.producer = producer;
    this.codec = codec;
  }

  store(name: string): BatchView {
    let v = this.views.get(name);
    if (!v) {
      const s = this.task.stores.get(name);
      if (!s) throw new Error(`stage ${this.stage} did not declare a store named "${name}" in topology.ts`);
      v = s.view();
      this.views.set(name, v);
    }
    return v;
  }

  private push(topicKey: TopicKey, key: string, value: unknown, timestamp: number, headers?: Record<string, string>) {
    if (!STAGES[this.stage].outputs.includes(topicKey)) throw new Error(`stage ${this.stage} may not write to ${topicKey}; declare it in topology.ts`);
    const topic = topicName(this.config.topicPrefix, topicKey);
    this.maxTimestamp = Math.max(this.maxTimestamp ?? 0, timestamp);
    this.outputs.push({ topicKey, topic, value, message: { key, value: null, timestamp: String(timestamp), ...(headers ? { headers } : {}) } });
  }

  emit(cause: InRecord, topic: TopicKey, key: string, value: unknown, headers?: Record<string, string>): void {
    this.push(topic, key, value, cause.timestamp, headers);
    this.counts.out++;
  }

  outcome(cause: InRecord, d: Decision): void {
    const ev = this.lifecycle(cause, d);
    this.push('outcomes', d.recipient, ev, ev.timestamp);
    this.counts.outcome++;
    this.log.debug({ notificationId: ev.notificationId, traceId: ev.traceId, deliveryId: ev.deliveryId, status: ev.status, reasonCode: ev.reasonCode }, 'decision');
  }

  async recordNow(decisions: [InRecord, Decision][]): Promise<void> {
    if (decisions.length === 0) return;
    const topic = topicName(this.config.topicPrefix, 'outcomes');
    const messages: Message[] = [];
    for (const [cause, d] of decisions) {
      const ev = this.lifecycle(cause, d);
      messages.push({ key: d.recipient, value: await this.codec.encode('outcomes', topic, ev), timestamp: String(ev.timestamp) });
      this.log.debug({ notificationId: ev.notificationId, traceId: ev.traceId, deliveryId: ev.deliveryId, status: ev.status, reasonCode: ev.reasonCode }, 'decision');
    }
    await this.producer.send({ topic, acks: -1, messages });
    this.counts.outcome += messages.length;
  }

  private lifecycle(cause: InRecord, d: Decision) {
    return {
      notificationId: d.notificationId,
      deliveryId: d.deliveryId ?? null,
      tenant: d.tenant,
      recipient: d.recipient,
      eventId: d.eventId,
      eventType: d.eventType,
      ruleId: d.ruleId ?? null,
      stage: this.stage,
      status: d.status,
      terminal: d.terminal ?? false,
      reasonCode: d.reasonCode,
      reason: d.reason,
      channel: d.channel ?? null,
      attempt: d.attempt ?? null,
      providerMessageId: d.providerMessageId ?? null,
      sourceTopic: cause.topic,
      sourcePartition: cause.partition,
      sourceOffset: cause.offset,
      timestamp: d.timestamp ?? cause.timestamp,
      traceId: d.traceId,
    };
  }

  deadLetter(cause: InRecord, error: Error & { code?: string; field?: string }): void {
    const headers: Record<string, string> = {
      'herald.error.code': error.code ?? 'HRL_PROCESSING_FAILED',
      'herald.error.reason': error.message.slice(0, 1000),
      'herald.error.stage': this.stage,
      'herald.source.topic': cause.topic,
      'herald.source.partition': String(cause.partition),
      'herald.source.offset': cause.offset,
      'herald.source.timestamp': String(cause.timestamp),
    };
    if (error.field) headers['herald.error.field'] = error.field;
    this.log.warn({ code: headers['herald.error.code'], reason: headers['herald.error.reason'], topic: cause.topic, partition: cause.partition, offset: cause.offset }, 'dead-lettered');
    this.push('dlq', cause.key ?? '', cause.raw ?? Buffer.alloc(0), cause.timestamp, headers);
    this.counts.dlq++;
  }

  wallClock(): number {
    return this.clock();
  }

}

