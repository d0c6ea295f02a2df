/**
 * What /readyz says about one stage, and why: its group membership, assigned partitions
 * not open yet, restores and replays running (with progress), a batch running or failing
 * for longer than `HERALD_STALL_MS`, a partition with lag and no progress for as long, and
 * records the broker dropped before the group read them (an offset found out of range).
 */

export interface StageReport {
  ready: boolean;
  member: string;
  /** Why the stage is not ready; empty when it is. */
  reasons: string[];
  restoring: { store: string; applied: number; expected: number }[];
  lastError: { code: string; message: string; at: string } | null;
}

export class StageHealth {
  private readonly restores = new Map<string, { applied: number; expected: number }>();
  private readonly lag = new Map<string, { lag: number; at: number }>();
  private batchSince: number | null = null;
  private firstBatch: number | null = null;
  private failingSince: number | null = null;
  private lastError: StageReport['lastError'] = null;
  private readonly dataLoss: string[] = [];
  private readonly stallMs: number;
  private readonly clock: () => number;

  constructor(stallMs: number, clock: () => number = Date.now) {
    this.stallMs = stallMs;
    this.clock = clock;
  }

  batchStarted(): void {
    this.batchSince ??= this.clock();
    this.firstBatch ??= this.batchSince;
  }

  /** When this stage started its first batch (epoch ms), or null: where a run's throughput starts. */
  firstBatchAt(): number | null {
    return this.firstBatch;
  }

  /** A batch completed: `lag` is what the fetch reported behind it. */
  batchDone(topic: string, partition: number, lag: number): void {
    this.batchSince = null;
    this.failingSince = null;
    this.lag.set(`${topic}[${partition}]`, { lag, at: this.clock() });
  }

  batchFailed(err: { code?: string; message: string }): void {
    this.batchSince = null;
    this.failingSince ??= this.clock();
    this.lastError = { code: err.code ?? 'HRL_PROCESSING_FAILED', message: err.message.slice(0, 300), at: new Date(this.clock()).toISOString() };
  }

  restoreProgress(store: string, applied: number, expected: number): void {
    this.restores.set(store, { applied, expected });
  }

  restoreDone(store: string): void {
    this.restores.delete(store);
  }

  /** The broker no longer had records this stage had not read (retention dropped them). */
  recordsLost(detail: string): void {
    if (this.dataLoss.length < 20) this.dataLoss.push(detail);
  }

  forget(topic: string, partition: number): void {
    this.lag.delete(`${topic}[${partition}]`);
  }

  report(member: string, assigned: readonly number[], open: readonly number[]): StageReport {
    const now = this.clock();
    const reasons: string[] = [];
    if (member !== 'joined') reasons.push(`consumer group member is ${member}`);
    const closed = assigned.filter((p) => !open.includes(p));
    if (closed.length) reasons.push(`partitions ${closed.join(', ')} are assigned but their stores are not open yet`);
    for (const [store, r] of this.restores) reasons.push(`restoring ${store}: ${r.applied} of ${r.expected} records`);
    if (this.batchSince !== null && now - this.batchSince > this.stallMs) reasons.push(`a batch has been running for ${Math.round((now - this.batchSince) / 1000)} s`);
    if (this.failingSince !== null && now - this.failingSince > this.stallMs) reasons.push(`batches have been failing for ${Math.round((now - this.failingSince) / 1000)} s (last: ${this.lastError?.code})`);
    for (const [tp, l] of this.lag) if (l.lag > 0 && now - l.at > this.stallMs) reasons.push(`${tp} is ${l.lag} records behind with no progress for ${Math.round((now - l.at) / 1000)} s`);
    for (const d of this.dataLoss) reasons.push(`records lost before they were read: ${d}`);
    return { ready: reasons.length === 0, member, reasons, restoring: [...this.restores].map(([store, r]) => ({ store, ...r })), lastError: this.lastError };
  }
}
