/**
 * Offsets of completed batches (kafkajs' offsetManager, Kafka Streams' commit interval):
 * a batch marks its next offset only after its outputs are acknowledged and its state is
 * written; marked offsets are committed together every `commitIntervalMs` and on stop.
 * Committing less often than every batch only widens what a crash replays, and replays
 * are idempotent. A commit never moves a partition backwards.
 */
import type { Consumer } from 'kafkajs';
import type { Logger } from './logger.ts';

interface Mark { topic: string; partition: number; offset: string }

const k = (topic: string, partition: number) => `${topic}\u0000${partition}`;

export class OffsetManager {
  private readonly pending = new Map<string, Mark>();
  /** Partitions this member holds; null until the first assignment. */
  private assigned: ReadonlySet<number> | null = null;
  private readonly committed = new Map<string, bigint>();
  private lastCommit = Date.now();
  private readonly intervalMs: number;
  private readonly log: Logger;

  constructor(intervalMs: number, log: Logger) {
    this.intervalMs = intervalMs;
    this.log = log;
  }

  /** Marks `offset` (the last record of a completed batch) as done: `offset + 1` will be committed. */
  mark(topic: string, partition: number, offset: string): void {
    // A batch that finished after its partition moved must not commit over the new owner.
    if (this.assigned && !this.assigned.has(partition)) return;
    // Never backwards: a fused stage's backlog (older records) may finish after newer ones its predecessor handed it.
    const key = k(topic, partition);
    const next = BigInt(offset) + 1n;
    const pending = this.pending.get(key);
    if ((pending && BigInt(pending.offset) >= next) || (this.committed.get(key) ?? -1n) >= next) return;
    this.pending.set(key, { topic, partition, offset: next.toString() });
  }

  /** Forgets marks of partitions no longer assigned (their new owner replays from the last commit). */
  retain(assigned: ReadonlySet<number>): void {
    this.assigned = new Set(assigned);
    for (const [key, m] of this.pending) if (!assigned.has(m.partition)) this.pending.delete(key);
  }

  /** Commits when the interval has passed since the last commit. */
  async maybeCommit(consumer: Consumer | null): Promise<void> {
    if (Date.now() - this.lastCommit >= this.intervalMs) await this.commit(consumer);
  }

  async commit(consumer: Consumer | null): Promise<void> {
    if (!consumer || this.pending.size === 0) return;
    const offsets = [...this.pending.values()];
    this.pending.clear();
    this.lastCommit = Date.now();
    try {
      await consumer.commitOffsets(offsets);
      for (const o of offsets) this.committed.set(k(o.topic, o.partition), BigInt(o.offset));
    } catch (err) {
      // A rebalance moved the partition: its new owner replays from the last commit.
      // Routine in a rebalance (a member joined or left): said at info, without a stack.
      const routine = /rebalanc|generation id is not valid|not.*member|unknown member/i.test((err as Error).message ?? '');
      if (routine) this.log.info({ reason: (err as Error).message, offsets: offsets.length }, 'offset commit refused by a rebalance; the new owner replays those batches');
      else this.log.warn({ err, offsets: offsets.length }, 'offset commit failed; the batches will be replayed');
      if ((err as { retriable?: boolean }).retriable !== true) return;
      for (const o of offsets) {
        const key = k(o.topic, o.partition);
        // Never move a partition's commit backwards past one that succeeded meanwhile.
        if (this.assigned && !this.assigned.has(o.partition)) continue;
        if (!this.pending.has(key) && BigInt(o.offset) > (this.committed.get(key) ?? -1n)) this.pending.set(key, o);
      }
    }
  }
}
