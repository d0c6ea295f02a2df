/**
 * The input side of a fused successor (topology.ts SUB_TOPOLOGY): the stage's consumer
 * joins its group but fetches nothing, and its records come from the stage before it, in
 * process (`feed`), queued per partition. What it is not handed (its backlog, records of
 * another producer, a hand-over that failed) it reads back from the broker, so every record
 * of its input is handled, in offset order. Used by StageRunner for a stage with `fed`.
 */
import type { Admin, Consumer, KafkaMessage } from 'kafkajs';
import { HeraldError } from '../errors.ts';
import type { StageName, TopicKey } from '../topology.ts';
import type { Codec } from './codec.ts';
import { decodeBatch } from './failure-policy.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import type { OffsetManager } from './offsets.ts';
import type { PartitionTask } from './partition-task.ts';
import { topicOffsets } from './reader.ts';
import type { Produced } from './record-collector.ts';
import type { StageHealth } from './stage-health.ts';
import type { TaskManager } from './task-manager.ts';

/**
 * How long a fused stage waits to hold a partition its predecessor hands records for (its
 * group is joining or rebalancing). Then it lets them go: they are on the broker, and the
 * partition's owner reads them (its backlog at open, or its check for records it was not handed).
 */
const FEED_WAIT_MS = 10_000;
/** Batches a fused stage queues per partition before its predecessor waits. */
const FEED_DEPTH = 4;

/** A produced record as the decode phase takes a fetched one. */
const asMessage = (p: Produced) => ({ key: Buffer.from(p.key), value: p.value, timestamp: String(p.timestamp), offset: p.offset, headers: p.headers, attributes: 0 }) as unknown as KafkaMessage;

/** What the fused input uses of its stage runner. */
export interface FusedInputHost {
  stage: StageName;
  inputs: ReadonlyMap<string, TopicKey>;
  codec: Codec;
  admin: Admin;
  metrics: Metrics;
  log: Logger;
  health: StageHealth;
  tasks: TaskManager;
  offsets: OffsetManager;
  consumer(): Consumer | null;
  /** Partitions the stage's member holds now (none while its group rebalances). */
  assigned(): ReadonlySet<number>;
  stopped(): boolean;
  /** How often to check for records it was not handed (ms). */
  checkIntervalMs: number;
}

export class FusedInput {
  private readonly feeding = new Map<number, Promise<unknown>>();
  private readonly queued = new Map<number, Promise<void>[]>();
  /** Per partition, the offset after the last record handed over (queued, perhaps not handled yet). */
  private readonly fedUpTo = new Map<number, bigint>();
  private readonly suspects = new Map<number, bigint>();
  private timer: NodeJS.Timeout | null = null;
  private readonly h: FusedInputHost;

  constructor(h: FusedInputHost) {
    this.h = h;
  }

  /** The consumer runs: it fetches nothing, and the check for records it is not handed starts. */
  started(consumer: Consumer): void {
    this.pause(consumer);
    let checking = false;
    this.timer ??= setInterval(() => {
      if (checking) return;
      checking = true;
      void this.checkForeign().catch((err: unknown) => this.h.log.warn({ err }, 'checking the input for records from other producers failed; trying again')).finally(() => (checking = false));
    }, this.h.checkIntervalMs);
    this.timer.unref();
  }

  /** The member joined with `assigned`: no fetching, and what was handed over for partitions that moved away is forgotten. */
  joined(consumer: Consumer, assigned: ReadonlySet<number>): void {
    this.pause(consumer);
    for (const p of [...this.fedUpTo.keys()]) if (!assigned.has(p)) this.fedUpTo.delete(p);
    for (const p of [...this.suspects.keys()]) if (!assigned.has(p)) this.suspects.delete(p);
  }

  /** Stops the check and waits for the queued hand-overs. */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    for (const f of this.feeding.values()) await f;
  }

  /** Fused successor: no fetching (again after each join: a restarted consumer forgets pauses). */
  pause(consumer: Consumer): void {
    try {
      consumer.pause([...this.h.inputs.keys()].map((topic) => ({ topic })));
    } catch (err) {
      // Not running yet (a crash restarts it): batches it fetches are ignored, and the next join pauses it.
      this.h.log.debug({ err }, 'pausing the fused stage\'s consumer failed; trying again at the next join');
    }
  }

  /**
   * Fused successor: takes records its predecessor produced to this stage's input (already
   * acknowledged, with their offsets) and handles them as a batch of `partition`, after what
   * the partition has queued: decoded from the bytes written, processed, produced, written
   * and marked exactly as a fetched batch would be.
   *
   * Returns once they are queued, so the predecessor goes on with its next batch while this
   * stage handles this one (a pipeline, as with separate consumers); it waits only while
   * FEED_DEPTH batches of the partition are queued. The predecessor may commit before these
   * records are handled: if the process dies first, they are this stage's backlog at the
   * next start. If handling fails, the records are read from the broker at the next feed or
   * check (the input is always handled in offset order, see `catchUp`).
   */
  async feed(partition: number, produced: readonly Produced[]): Promise<void> {
    if (produced.length === 0) return;
    const topic = produced[0]!.topic;
    if (!this.h.inputs.has(topic)) throw new Error(`stage ${this.h.stage} does not read ${topic}`);
    const upTo = BigInt(produced.at(-1)!.offset) + 1n;
    if (upTo > (this.fedUpTo.get(partition) ?? -1n)) this.fedUpTo.set(partition, upTo);
    const work = this.serially(partition, () => this.feedNow(partition, topic, produced)).catch((err: unknown) => {
      // Not handed over after all: the check reads them from the broker (here, or at their owner).
      this.fedUpTo.delete(partition);
      if ((err as HeraldError).code === 'HRL_SHUTTING_DOWN') return;
      this.h.log.warn({ err, partition, from: produced[0]!.offset }, 'fused stage: handling records from its predecessor failed; they are read from its input instead');
    });
    const queue = this.queued.get(partition) ?? this.queued.set(partition, []).get(partition)!;
    queue.push(work);
    this.h.metrics.fusedQueued.inc({ stage: this.h.stage });
    void work.finally(() => {
      queue.splice(queue.indexOf(work), 1);
      this.h.metrics.fusedQueued.dec({ stage: this.h.stage });
    });
    while (queue.length > FEED_DEPTH) await queue[0];
  }

  private async feedNow(partition: number, topic: string, produced: readonly Produced[]): Promise<void> {
    const { stage } = this.h;
    for (const deadline = Date.now() + FEED_WAIT_MS; !this.h.assigned().has(partition);) {
      if (this.h.stopped()) throw new HeraldError('HRL_SHUTTING_DOWN', `${stage} is stopping`, { retriable: true });
      if (Date.now() > deadline) throw new HeraldError('HRL_PARTITION_NOT_HELD', `${stage} does not hold partition ${partition} of ${topic} (its group is rebalancing)`, { retriable: true });
      await new Promise((r) => setTimeout(r, 50));
    }
    const task = await this.h.tasks.task(partition, async () => undefined);
    // Records someone else wrote to this partition since the last ones handled (another
    // producer, or records whose handing-over failed), before or between these, are read
    // from the broker first: every record of the input is handled, in offset order.
    let run: Produced[] = [];
    for (const p of produced) {
      const at = BigInt(p.offset);
      if (task.nextInput !== null && at < task.nextInput) continue; // handled already (a backlog or catch-up read it)
      const expected = run.length ? BigInt(run.at(-1)!.offset) + 1n : task.nextInput;
      if (expected !== null && at > expected) {
        if (run.length) await this.handleFed(task, topic, run.map(asMessage));
        run = [];
        if (task.nextInput !== null && at > task.nextInput) await this.catchUp(task, topic, at, 'gap');
      }
      run.push(p);
    }
    if (run.length) await this.handleFed(task, topic, run.map(asMessage));
  }

  /** Handles fed or caught-up records of one partition as a batch, and moves its `nextInput` past them. */
  private async handleFed(task: PartitionTask, topic: string, messages: KafkaMessage[]): Promise<void> {
    const { stage, metrics, codec } = this.h;
    metrics.records.inc({ stage, result: 'in' }, messages.length);
    const decoded = await decodeBatch(codec, stage, this.h.inputs.get(topic)!, topic, task.partition, messages);
    this.h.health.batchStarted();
    const last = messages.at(-1)!.offset;
    try {
      await task.handle(topic, decoded, last);
    } catch (err) {
      this.h.health.batchFailed(err as Error & { code?: string });
      throw err;
    }
    task.nextInput = BigInt(last) + 1n;
    await this.h.offsets.maybeCommit(this.h.consumer());
    this.h.health.batchDone(topic, task.partition, 0);
  }

  /** Reads and handles the records of `task`'s input partition from its `nextInput` up to `to`. */
  private async catchUp(task: PartitionTask, topic: string, to: bigint, reason: 'gap' | 'check'): Promise<void> {
    const from = task.nextInput!;
    this.h.log.info({ partition: task.partition, from: from.toString(), to: to.toString(), reason }, reason === 'gap' ? 'fused stage: reading back records it was not handed (another producer wrote them, or a hand-over failed)' : 'fused stage: reading back records another producer wrote to its input');
    this.h.health.batchStarted();
    let n: number;
    try {
      n = await this.h.tasks.handleRanges(new Map([[task.partition, task]]), new Map([[task.partition, { from, to }]]));
    } catch (err) {
      this.h.health.batchFailed(err as Error & { code?: string });
      throw err;
    }
    this.h.metrics.records.inc({ stage: this.h.stage, result: 'in' }, n);
    this.h.metrics.fusedReadBack.inc({ stage: this.h.stage, reason }, n);
    task.nextInput = to;
    this.h.health.batchDone(topic, task.partition, 0);
  }

  /** Runs feeds and catch-ups of one partition one after another. */
  private serially(partition: number, fn: () => Promise<void>): Promise<void> {
    const next = (this.feeding.get(partition) ?? Promise.resolve()).then(fn);
    this.feeding.set(partition, next.catch(() => undefined));
    return next;
  }

  /**
   * Fused successor, every second: a partition whose input has records past both
   * `nextInput` and what was handed over, for a whole interval (written by another
   * producer, with nothing from the predecessor since), gets them read from the broker.
   */
  private async checkForeign(): Promise<void> {
    const [topic] = [...this.h.inputs.keys()];
    if (!topic || this.h.stopped()) return;
    const ends = new Map((await topicOffsets(this.h.admin, topic)).map((o) => [o.partition, BigInt(o.high)]));
    for (const p of this.h.assigned()) {
      const task = this.h.tasks.openTask(p);
      const end = ends.get(p);
      if (!task || task.nextInput === null || end === undefined) continue;
      const seen = this.suspects.get(p);
      this.h.metrics.lag.set({ stage: this.h.stage, topic, partition: String(p) }, Number(end - task.nextInput));
      // Records handed over but still queued are not foreign.
      const fed = this.fedUpTo.get(p) ?? -1n;
      if (end <= task.nextInput || end <= fed) {
        this.suspects.delete(p);
        continue;
      }
      // Still behind what the last check saw: nothing fed it since; read it.
      if (seen !== undefined && task.nextInput < seen) {
        this.suspects.delete(p);
        await this.serially(p, async () => {
          if (!this.h.stopped() && this.h.assigned().has(p) && task.nextInput !== null && task.nextInput < seen) await this.catchUp(task, topic, seen, 'check');
        });
      } else this.suspects.set(p, end);
    }
  }
}
