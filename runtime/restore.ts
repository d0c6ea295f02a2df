/**
 * Restores store partitions from their compacted changelog: from each store's local
 * checkpoint (or the start of the log) to the end offsets captured when the restore
 * begins. All partitions of one changelog topic are read by one reader, so restoring many
 * partitions costs one group join, not one per partition. Progress is logged every few
 * seconds and counted in `herald_state_restore_records_total`.
 */
import type { Admin, Kafka } from 'kafkajs';
import type { KeyValueStore } from '../state/store.ts';
import type { Logger } from './logger.ts';
import { topicOffsets, TopicReader } from './reader.ts';

export interface RestoreTarget {
  store: KeyValueStore;
  partition: number;
}

export interface RestoreResult {
  applied: number;
  seconds: number;
  /** Checkpoint each partition started from (null = from the start of the log). */
  checkpoints: Map<number, bigint | null>;
}

export async function restoreFromChangelog(opts: {
  kafka: Kafka;
  admin: Admin;
  topic: string;
  groupPrefix: string;
  targets: RestoreTarget[];
  log: Logger;
  onApplied?: (records: number, progress: { applied: number; expected: number }) => void;
  progressEveryMs?: number;
}): Promise<RestoreResult> {
  const started = performance.now();
  const offsets = await topicOffsets(opts.admin, opts.topic);
  const low = new Map(offsets.map((o) => [o.partition, BigInt(o.low)]));
  const high = new Map(offsets.map((o) => [o.partition, BigInt(o.high)]));
  const byPartition = new Map(opts.targets.map((t) => [t.partition, t.store]));
  const from = new Map<number, bigint>();
  const until = new Map<number, bigint>();
  const checkpoints = new Map<number, bigint | null>();
  let expected = 0n;
  for (const { store, partition } of opts.targets) {
    let cp = await store.checkpoint();
    const end0 = high.get(partition) ?? 0n;
    if (cp !== null && cp >= end0) {
      // The local store reflects more than the changelog holds (the log was replayed shorter
      // after a crash): keep the newer local data; the input above the resume point is
      // processed again and writes it back. New changelog records start at the log's end.
      opts.log.warn({ topic: opts.topic, partition, checkpoint: cp.toString(), high: end0.toString() }, 'store checkpoint is past the end of its changelog; keeping the local data');
      cp = end0 - 1n;
    }
    checkpoints.set(partition, cp);
    const lowest = low.get(partition) ?? 0n;
    // Records the store needs are gone from the changelog (a topic with a delete policy, or
    // a broker that dropped them): the restored store lacks their keys. Said loudly; Kafka's
    // compaction never does this, and the embedded broker's journal replays changelogs compacted.
    if (lowest > (cp === null ? 0n : cp + 1n)) {
      opts.log.error({ topic: opts.topic, partition, checkpoint: cp?.toString() ?? null, logStart: lowest.toString(), missing: (lowest - (cp === null ? 0n : cp + 1n)).toString() }, 'store restore starts past records it needs: the changelog no longer holds them, so keys they wrote are missing from the store');
    }
    const start = cp === null ? lowest : cp + 1n > lowest ? cp + 1n : lowest;
    const end = high.get(partition) ?? 0n;
    from.set(partition, start);
    until.set(partition, end);
    if (end > start) expected += end - start;
  }
  let applied = 0;
  let lastLog = performance.now();
  const every = opts.progressEveryMs ?? 5000;
  const reader = new TopicReader(opts.kafka, opts.admin, {
    topic: opts.topic,
    groupPrefix: opts.groupPrefix,
    from,
    until,
    onBatch: async ({ partition, messages }) => {
      const store = byPartition.get(partition);
      if (!store) return;
      const end = until.get(partition) ?? 0n;
      const within = messages.filter((m) => BigInt(m.offset) < end);
      if (within.length === 0) return;
      const records = within.filter((m) => m.key !== null).map((m) => ({ key: m.key!.toString(), value: m.value ? m.value.toString() : null }));
      await store.restore(records, BigInt(within.at(-1)!.offset));
      applied += within.length;
      opts.onApplied?.(within.length, { applied, expected: Number(expected) });
      if (performance.now() - lastLog > every) {
        lastLog = performance.now();
        const secs = (lastLog - started) / 1000;
        opts.log.info({ topic: opts.topic, applied, expected: Number(expected), keysPerSecond: Math.round(applied / secs) }, 'restoring');
      }
    },
  });
  await reader.readToEnd();
  return { applied, seconds: (performance.now() - started) / 1000, checkpoints };
}
