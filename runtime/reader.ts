/**
 * Reading a topic outside the stage consumer groups: global tables (follow every
 * partition from the beginning), changelog restore (chosen partitions from a checkpoint
 * to the end offsets captured at the start), replay, tail and lifecycle rebuild.
 *
 * kafkajs has no manual partition assignment, so a reader is a consumer in a group of
 * its own (unique id, never committed): alone in its group it is assigned every
 * partition; partitions it does not want are paused, and the wanted ones are seeked.
 */
import { randomUUID } from 'node:crypto';
import type { Admin, Consumer, Kafka, KafkaMessage } from 'kafkajs';

export interface ReadBatch {
  topic: string;
  partition: number;
  messages: KafkaMessage[];
}

/**
 * A topic's offsets per partition (admin.fetchTopicOffsets), retried for a few seconds while
 * the client's metadata for the topic is not complete yet: right after a start (and on a
 * multi-broker cluster) kafkajs can find no partition leaders and then fails with a
 * TypeError of its own ("Cannot destructure property 'partitions'") or a retriable error.
 */
export async function topicOffsets(admin: Admin, topic: string, attempts = 20): Promise<Awaited<ReturnType<Admin['fetchTopicOffsets']>>> {
  for (let i = 1; ; i++) {
    try {
      const offs = await admin.fetchTopicOffsets(topic);
      if (offs.length > 0 || i >= attempts) return offs;
    } catch (err) {
      const e = err as { retriable?: boolean };
      if (i >= attempts || !(err instanceof TypeError || e.retriable)) throw err;
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Earliest offsets per partition, as bigint. */
export async function startOffsets(admin: Admin, topic: string): Promise<Map<number, bigint>> {
  const offs = await topicOffsets(admin, topic);
  return new Map(offs.map((o) => [o.partition, BigInt(o.low)]));
}

/** fetch.max.wait.ms of a reader that follows its topic (no `until`). */
const FOLLOW_WAIT_MS = 250;

export interface ReaderOptions {
  topic: string;
  /** Partitions to read with their first offset; absent = every partition from the earliest offset. */
  from?: Map<number, bigint>;
  /** Stop once each partition reaches these offsets (exclusive). Absent = follow forever. */
  until?: Map<number, bigint>;
  groupPrefix: string;
  onBatch: (batch: ReadBatch) => Promise<void>;
  /** Told of every crash of the reader's consumer (kafkajs restarts it when `restarting`): a follower that must not retry forever can give up. */
  onCrash?: (err: Error, restarting: boolean) => void;
}

export class TopicReader {
  private consumer: Consumer | null = null;
  private readonly remaining = new Map<number, bigint>();
  private caughtUpResolve!: () => void;
  private caughtUpReject!: (err: Error) => void;
  /** Resolves when every partition has reached the end offsets given in `until` (or captured at start when following). */
  readonly caughtUp: Promise<void>;
  private stopped = false;

  private readonly kafka: Kafka;
  private readonly admin: Admin;
  private readonly opts: ReaderOptions;

  constructor(kafka: Kafka, admin: Admin, opts: ReaderOptions) {
    this.kafka = kafka;
    this.admin = admin;
    this.opts = opts;
    this.caughtUp = new Promise((resolve, reject) => {
      this.caughtUpResolve = resolve;
      this.caughtUpReject = reject;
    });
    this.caughtUp.catch(() => undefined);
  }

  /** Starts reading. With `until`, resolves `caughtUp` and stops by itself at the end. */
  async start(): Promise<void> {
    const { topic, from } = this.opts;
    // Retried while the client's metadata is incomplete (right after a start, several brokers).
    const offsets = await topicOffsets(this.admin, topic);
    const ends = this.opts.until ?? new Map(offsets.map((o) => [o.partition, BigInt(o.high)]));
    const starts = new Map(offsets.map((o) => [o.partition, BigInt(o.low)]));
    const wanted = from ? [...from.keys()] : [...ends.keys()];
    for (const p of wanted) {
      const begin = from?.get(p) ?? starts.get(p) ?? 0n;
      const end = ends.get(p) ?? 0n;
      if (end > begin) this.remaining.set(p, end);
    }
    const follow = !this.opts.until;
    if (this.remaining.size === 0) {
      this.caughtUpResolve();
      if (!follow) return;
    }
    const consumer = this.kafka.consumer({
      groupId: `${this.opts.groupPrefix}reader.${randomUUID()}`,
      sessionTimeout: 30000,
      heartbeatInterval: 3000,
      // A bounded read has records waiting and never waits long. A follower (global tables,
      // keys, signing secrets, instance claims) is idle nearly always, and every empty fetch
      // costs about 1 ms of CPU in kafkajs: at 50 ms, six of them took a tenth of a core per
      // process doing nothing. Real Kafka answers a waiting fetch as soon as a record arrives;
      // the embedded broker answers after the wait, so there a table update is seen up to
      // FOLLOW_WAIT_MS later.
      maxWaitTimeInMs: follow ? FOLLOW_WAIT_MS : 50,
      minBytes: 1,
      maxBytes: 16 * 1024 * 1024,
      allowAutoTopicCreation: false,
    });
    this.consumer = consumer;
    // A reader kafkajs gave up on must fail whoever waits for it, not leave them hanging.
    consumer.on(consumer.events.CRASH, (e) => {
      if (!this.stopped) this.opts.onCrash?.(e.payload.error, e.payload.restart);
      if (!e.payload.restart && !this.stopped) this.caughtUpReject(new Error(`reading ${topic} failed: ${e.payload.error.message}`));
    });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    const wantedSet = new Set(wanted);
    await consumer.run({
      autoCommit: false,
      partitionsConsumedConcurrently: 1,
      eachBatch: async ({ batch, heartbeat, pause }) => {
        if (this.stopped) return;
        if (!wantedSet.has(batch.partition)) {
          pause();
          return;
        }
        const min = from?.get(batch.partition);
        const messages = min === undefined ? batch.messages : batch.messages.filter((m) => BigInt(m.offset) >= min);
        if (messages.length) await this.opts.onBatch({ topic, partition: batch.partition, messages });
        const end = this.remaining.get(batch.partition);
        const last = batch.messages.at(-1);
        if (end !== undefined && last && BigInt(last.offset) + 1n >= end) {
          this.remaining.delete(batch.partition);
          if (this.remaining.size === 0) {
            this.caughtUpResolve();
            if (!follow) {
              this.stopped = true;
              setImmediate(() => void this.stop());
            }
          }
        }
        await heartbeat();
      },
    });
    for (const [partition, offset] of from ?? []) consumer.seek({ topic, partition, offset: offset.toString() });
  }

  /** Starts and waits until the end offsets are reached (bounded reads). */
  async readToEnd(): Promise<void> {
    try {
      await this.start();
      await this.caughtUp;
    } finally {
      await this.stop();
    }
  }

  /**
   * Gives up: whoever waits on `caughtUp` (or `readToEnd`) gets `err`. For an `onBatch` that
   * failed: kafkajs would otherwise retry the batch and restart the consumer from the start,
   * again and again, and a bounded read would never end.
   */
  abort(err: Error): void {
    if (this.stopped) return;
    this.stopped = true;
    this.caughtUpReject(err);
    setImmediate(() => void this.stop());
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const c = this.consumer;
    this.consumer = null;
    if (c) await c.disconnect();
  }
}
