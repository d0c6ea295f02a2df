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
import { asHeraldError, type HeraldError } from '../errors.ts';
import type { Decision, InRecord, Processor, StageContext, StageDeps, StageFactory } from '../processors/contract.ts';
import { BatchView, KeyValueStore } from '../state/store.ts';
import { type StageName, STAGES, type TopicKey, changelogTopic, groupId, topicName } from '../topology.ts';
import type { Codec } from './codec.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import { restoreFromChangelog } from './restore.ts';

interface PartitionTask {
  processor: Processor;
  stores: Map<string, KeyValueStore>;
  /** Serialises the batches of each input topic of this partition (deliver reads two). */
  locks: Map<string, Promise<void>>;
  /** Serialises produce -> state write -> commit across the partition's input topics. */
  commit: Promise<void>;
}

interface PendingOutput {
  topicKey: TopicKey | 'changelog';
  topic: string;
  message: Message;
  value: unknown;
}

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
  /** Offsets of completed batches not yet committed, per topic-partition. */
  private readonly pending = new Map<string, { topic: string; partition: number; offset: string }>();
  private lastCommit = Date.now();
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
      setTimeout(() => {
        if (this.stopping) return;
        void (async () => {
          for (const p of [...this.tasks.keys()]) await this.closePartition(p);
          await this.start();
        })().catch((err: Error) => this.log.error({ err: err.message }, 'restarting the consumer failed'));
      }, 1000).unref();
    });
    consumer.on(consumer.events.GROUP_JOIN, (e) => {
      const assigned = new Set<number>();
      for (const parts of Object.values(e.payload.memberAssignment)) for (const p of parts) assigned.add(p);
      this.log.info({ partitions: [...assigned].sort((a, b) => a - b), memberId: e.payload.memberId }, 'joined group');
      for (const p of [...this.tasks.keys()]) if (!assigned.has(p)) void this.closePartition(p);
      for (const [k, o] of this.pending) if (!assigned.has(o.partition)) this.pending.delete(k);
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
  private task(partition: number): Promise<PartitionTask> {
    let t = this.tasks.get(partition);
    if (!t) {
      t = this.openPartition(partition);
      this.tasks.set(partition, t);
      t.catch(() => this.tasks.delete(partition));
    }
    return t;
  }

  private async openPartition(partition: number): Promise<PartitionTask> {
    const { config, stage, metrics } = this.o;
    const stores = new Map<string, KeyValueStore>();
    await Promise.all(STAGES[stage].stores.map(async (spec) => {
      const changelog = spec.changelog ? changelogTopic(config.topicPrefix, stage, spec.name) : null;
      const store = await KeyValueStore.open({ backend: config.stateBackend, dir: config.stateDir, stage, name: spec.name, partition, changelog });
      stores.set(spec.name, store);
      if (changelog) {
        const r = await restoreFromChangelog({
          kafka: this.o.kafka, admin: this.o.admin, topic: changelog, groupPrefix: config.topicPrefix, targets: [{ store, partition }], log: this.log,
          onApplied: (n) => metrics.restored.inc({ stage, store: spec.name }, n),
        });
        metrics.restoreDuration.observe({ stage, store: spec.name }, r.seconds);
        this.log.info({ store: spec.name, partition, checkpoint: r.checkpoints.get(partition)?.toString() ?? null, applied: r.applied, seconds: Number(r.seconds.toFixed(3)) }, 'store restored');
      }
    }));
    const processor = this.o.factory(this.o.deps);
    await processor.init?.({ partition });
    const task: PartitionTask = { processor, stores, locks: new Map(), commit: Promise.resolve() };
    this.opened.set(partition, task);
    return task;
  }

  private async closePartition(partition: number): Promise<void> {
    const t = this.tasks.get(partition);
    this.tasks.delete(partition);
    this.opened.delete(partition);
    if (!t) return;
    const task = await t.catch(() => null);
    if (!task) return;
    await Promise.all([...task.locks.values()]);
    await task.processor.close?.();
    for (const s of task.stores.values()) await s.close();
    this.log.info({ partition }, 'partition closed');
  }

  private async onBatch({ batch, heartbeat, isRunning, isStale }: EachBatchPayload): Promise<void> {
    if (batch.messages.length === 0 || !isRunning() || isStale()) return;
    if (this.o.gate) await this.o.gate; // never join a record with a table still loading
    const task = await this.task(batch.partition);
    const run = (task.locks.get(batch.topic) ?? Promise.resolve()).then(() => this.processBatch(task, batch.topic, batch.partition, batch.messages, heartbeat));
    task.locks.set(batch.topic, run.catch(() => undefined));
    await run;
    this.o.metrics.lag.set({ stage: this.o.stage, topic: batch.topic, partition: String(batch.partition) }, Number(batch.offsetLag()));
    await heartbeat();
  }

  private async processBatch(task: PartitionTask, topic: string, partition: number, messages: KafkaMessage[], heartbeat: () => Promise<void>): Promise<void> {
    const { stage, metrics } = this.o;
    const endTimer = metrics.batchDuration.startTimer({ stage });
    const topicKey = this.topicKeys.get(topic)!;
    metrics.records.inc({ stage, result: 'in' }, messages.length);
    // Decode phase: a record that cannot be decoded is dead-lettered; its neighbours go on.
    const records: InRecord[] = [];
    const rejected: { rec: InRecord; err: HeraldError }[] = [];
    for (const m of messages) {
      const base = { topic, topicKey, partition, offset: m.offset, key: m.key?.toString() ?? null, timestamp: Number(m.timestamp), headers: headersToRecord(m.headers), raw: m.value };
      try {
        records.push({ ...base, value: await this.o.codec.decode(topicKey, m.value) });
      } catch (err) {
        rejected.push({ rec: { ...base, value: null }, err: asHeraldError(err, { stage, topic, partition, offset: m.offset }) });
      }
    }
    const ctx = this.context(task, partition, heartbeat);
    const reject = (c: BatchContext) => {
      for (const { rec, err } of rejected) {
        c.deadLetter(rec, err);
        task.processor.rejected?.(rec as InRecord<null>, err, c);
      }
    };
    reject(ctx);
    try {
      if (records.length) await task.processor.process(records, ctx);
      await this.complete(ctx, topic, partition, messages.at(-1)!.offset);
    } catch (err) {
      const e = asHeraldError(err, { stage, topic, partition });
      if (e.retriable) throw e; // not committed: the batch is fetched again
      this.log.warn({ code: e.code, err: e.message, records: records.length }, 'batch failed; re-running record by record to isolate the bad one');
      const rejectsOnly = this.context(task, partition, heartbeat);
      reject(rejectsOnly);
      await this.complete(rejectsOnly, topic, partition, null);
      for (const rec of records) {
        const one = this.context(task, partition, heartbeat);
        try {
          await task.processor.process([rec], one);
        } catch (inner) {
          const ie = asHeraldError(inner, { stage, topic, partition, offset: rec.offset });
          if (ie.retriable) throw ie;
          const dl = this.context(task, partition, heartbeat);
          dl.deadLetter(rec, ie);
          await this.complete(dl, topic, partition, rec.offset);
          continue;
        }
        await this.complete(one, topic, partition, rec.offset);
      }
      await this.complete(this.context(task, partition, heartbeat), topic, partition, messages.at(-1)!.offset);
    } finally {
      endTimer();
    }
  }

  private context(task: PartitionTask, partition: number, heartbeat: () => Promise<void>): BatchContext {
    return new BatchContext(this.o.stage, partition, task, this.o.config, this.log, this.clock, heartbeat);
  }

  /** Produce everything the batch emitted, write its state, then commit `offset` + 1. */
  private complete(ctx: BatchContext, topic: string, partition: number, offset: string | null): Promise<void> {
    const task = ctx.task;
    const run = task.commit.then(() => this.completeNow(ctx, topic, partition, offset));
    task.commit = run.catch(() => undefined);
    return run;
  }

  private async completeNow(ctx: BatchContext, topic: string, partition: number, offset: string | null): Promise<void> {
    const { producer, codec, metrics, stage } = this.o;
    const byTopic = new Map<string, Message[]>();
    for (const out of ctx.outputs) {
      if (out.topicKey !== 'changelog') out.message.value = await codec.encode(out.topicKey, out.topic, out.value);
      const list = byTopic.get(out.topic) ?? [];
      list.push(out.message);
      byTopic.set(out.topic, list);
    }
    for (const view of ctx.views.values()) {
      const t = view.store.changelog;
      if (!t) continue;
      const list = byTopic.get(t) ?? [];
      for (const c of view.changes()) list.push({ key: c.key, value: c.value === null ? null : Buffer.from(c.value), partition, timestamp: String(ctx.maxTimestamp ?? this.clock()) });
      if (list.length) byTopic.set(t, list);
    }
    let meta: { topicName: string; partition: number; baseOffset?: string }[] = [];
    if (byTopic.size) {
      meta = await producer.sendBatch({ acks: -1, topicMessages: [...byTopic].map(([t, messages]) => ({ topic: t, messages })) });
    }
    for (const [, view] of ctx.views) {
      const cl = view.store.changelog;
      const n = cl ? (byTopic.get(cl)?.length ?? 0) : 0;
      const m = cl && n ? meta.find((x) => x.topicName === cl && x.partition === partition) : undefined;
      await view.flush(m?.baseOffset !== undefined ? BigInt(m.baseOffset) + BigInt(n - 1) : null);
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
    } catch (err) {
      // A rebalance moved the partition: its new owner replays from the last commit.
      this.log.warn({ err: (err as Error).message, offsets: offsets.length }, 'offset commit failed; the batches will be replayed');
      if ((err as { retriable?: boolean }).retriable !== true) return;
      for (const o of offsets) if (!this.pending.has(`${o.topic}\u0000${o.partition}`)) this.pending.set(`${o.topic}\u0000${o.partition}`, o);
    }
  }

  /** Stops consuming: in-flight batches finish, their offsets are committed, then stores close. */
  async stop(): Promise<void> {
    this.stopping = true;
    const c = this.consumer;
    if (c) {
      c.pause([...this.topicKeys.keys()].map((topic) => ({ topic })));
      for (const t of this.tasks.values()) {
        const task = await t.catch(() => null);
        if (task) await Promise.all([...task.locks.values(), task.commit]);
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
  private readonly heartbeat: () => Promise<void>;

  constructor(stage: StageName, partition: number, task: PartitionTask, config: HeraldConfig, log: Logger, clock: () => number, heartbeat: () => Promise<void>) {
    this.stage = stage;
    this.partition = partition;
    this.task = task;
    this.config = config;
    this.log = log;
    this.clock = clock;
    this.heartbeat = heartbeat;
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
    const ev = {
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
    this.push('outcomes', d.recipient, ev, ev.timestamp);
    this.counts.outcome++;
    this.log.debug({ notificationId: ev.notificationId, traceId: ev.traceId, deliveryId: ev.deliveryId, status: ev.status, reasonCode: ev.reasonCode }, 'decision');
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

  async waitUntil(wallTime: number): Promise<void> {
    for (let left = wallTime - this.clock(); left > 0; left = wallTime - this.clock()) {
      await new Promise((r) => setTimeout(r, Math.min(left, 1000)));
      await this.heartbeat();
    }
  }
}

