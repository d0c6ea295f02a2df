/**
 * `herald start --workers N` (HERALD_WORKERS), after Kafka Streams' `num.stream.threads`:
 * the process a user starts runs the embedded broker, the registry, the journal, the HTTP
 * API and one member of every stage group; it forks N-1 worker processes that each run one
 * more member of every group (and an HTTP API on loopback that answers the queries
 * forwarded to the partitions it holds). Partitions spread across the members as across
 * instances; each worker keeps its stores in `<state dir>/workers/<i>`, and its instance id
 * (`<instance id>-w<i>`) sorts after the primary's, so a restart gives every member the
 * partitions, and the local state, it had.
 *
 * Over IPC the primary tells each worker where the broker and registry are, where each
 * group resumes (the journal's snapshot), which readers are close to losing records
 * (back-pressure), and asks for its metrics and readiness; `/metrics` and `/readyz` of the
 * primary cover every worker. A worker whose primary goes away (even by SIGKILL) stops.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { join } from 'node:path';
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import type { GroupOffsets } from '../embedded/journal.ts';
import type { Pressure } from '../embedded/persistence.ts';
import type { Logger } from '../runtime/logger.ts';
import { HeraldError, isErrorCode } from '../errors.ts';

/** What a worker needs to join the primary's cluster. */
export interface AttachJob {
  index: number;
  /** The primary's instance id and state directory: the worker's are derived from them. */
  instanceId: string;
  stateDir: string;
  brokers: string;
  registryUrl: string;
  /** The state directory's owner (the embedded journal's id): the worker's stores are guarded by it too. */
  identity: string;
  resume: GroupOffsets;
  smtpUrl: string | null;
  /** The primary's HERALD_ADVERTISED_URL ('' if none): a worker advertises its host with its own port. */
  advertisedUrl: string;
  /** What the primary runs (`herald run --stages`, `--no-api`): each worker runs the same. */
  stages: string[];
  api: boolean;
  /** The primary's whole configuration (it may come from the command line or the caller, not only the environment). */
  overrides: Record<string, string | number | boolean>;
}

type Metric = MetricObjectWithValues<MetricValue<string>>;

/** The counters and histograms of a report (what only grows), without the per-process standard metrics. */
const countersOf = (list: Metric[]): Metric[] => list.filter((m) => (String(m.type) === 'counter' || String(m.type) === 'histogram') && !/^(process|nodejs)_/.test(m.name));

export type ToWorker =
  | { type: 'start'; job: AttachJob }
  | { type: 'pressure'; hot: Pressure[] }
  | { type: 'report'; id: number; withMetrics: boolean }
  | { type: 'join' }
  /** Finish, settle and commit, staying in the groups; answered with `quiesced`. */
  | { type: 'quiesce' }
  | { type: 'stop' };

export type FromWorker =
  | { type: 'ready'; url: string | null }
  /** Every member of the worker is about to join its group; it joins on the primary's `join`. */
  | { type: 'joining' }
  | { type: 'quiesced' }
  | { type: 'failed'; message: string; code?: string }
  | { type: 'report'; id: number; metrics: Metric[]; reasons: string[] };

/** The back-pressure a worker's stages wait on: the primary's journal, as last relayed. */
export class RelayedPressure {
  private hot: Pressure[] = [];

  update(hot: Pressure[]): void {
    this.hot = hot;
  }

  holding(writes: ReadonlySet<string>, self: string): Pressure | null {
    return this.hot.find((h) => writes.has(h.topic) && h.group !== self) ?? null;
  }
}

interface Worker { index: number; child: ChildProcess; ready: boolean; url: string | null; exited: boolean }

/** How long a worker has to stop after it is asked, before it is killed. */
const STOP_MS = 20_000;
/** How long the primary waits for a worker to quiesce (its calls under way get up to 10 s). */
const QUIESCE_MS = 12_000;
/** How long a report (metrics, readiness) may take before the worker is reported unanswering. */
const REPORT_MS = 2_000;
/** How long a worker may take to be ready (it joins every group; see the README on the embedded broker). */
const START_MS = 180_000;
/** How long the primary's members wait for the workers' to be about to join, before they join without them. */
const JOIN_WAIT_MS = 60_000;
/** A worker that dies is started again after 1 s, doubling up to 30 s while it keeps dying young. */
const RESPAWN_MS = [1_000, 30_000] as const;

/** The primary's side: forks the workers, relays what they need, restarts one that dies. */
export class WorkerPool {
  private readonly workers = new Map<number, Worker>();
  private readonly o: { count: number; job: Omit<AttachJob, 'index'>; hot: () => Pressure[]; log: Logger };
  private stopping = false;
  private relay: ReturnType<typeof setInterval> | null = null;
  private lastHot = '[]';
  private nextId = 0;
  /** Each worker's last metrics report, and the counters of workers that are gone (see `aggregate`). */
  private readonly lastMetrics = new Map<number, { at: number; metrics: Metric[] }>();
  private retired: Metric[][] = [];
  private polling: ReturnType<typeof setInterval> | null = null;
  private lastReasons: string[] = [];
  private readonly respawnDelay = new Map<number, number>();
  /** Workers whose members are about to join (or that exited before they were); released: every member may join. */
  private readonly atJoin = new Set<number>();
  private released = false;
  private arrived: (() => void) | null = null;

  constructor(o: { count: number; job: Omit<AttachJob, 'index'>; hot: () => Pressure[]; log: Logger }) {
    this.o = o;
  }

  /** Forks every worker; resolves when all of them are ready (or rejects with the first one's failure). */
  async start(): Promise<void> {
    const ready: Promise<void>[] = [];
    for (let i = 1; i <= this.o.count; i++) {
      const r = this.spawn(i);
      r.catch(() => undefined); // reported through Promise.all below
      ready.push(r);
    }
    this.relay = setInterval(() => {
      const hot = JSON.stringify(this.o.hot());
      if (hot === this.lastHot) return;
      this.lastHot = hot;
      for (const w of this.workers.values()) this.send(w, { type: 'pressure', hot: JSON.parse(hot) as Pressure[] });
    }, 50);
    this.relay.unref();
    await Promise.all(ready);
    if (this.stopping) return;
    // Readiness is answered at once (/readyz): from the workers' last reports, every second.
    let polled = true;
    this.polling = setInterval(() => {
      if (!polled) return; // one poll at a time
      polled = false;
      void this.reports(false).then((r) => (this.lastReasons = r.reasons)).finally(() => (polled = true));
    }, 1000);
    this.polling.unref();
  }

  /** Why some worker is not ready: one that is down at once, the others as of their last report. */
  reasons(): string[] {
    const down = [...this.workers.values()].filter((w) => !w.ready).map((w) => `worker ${w.index} is ${w.exited ? 'not running (starting again)' : 'starting'}`);
    const live = new Set([...this.workers.values()].filter((w) => w.ready).map((w) => `worker ${w.index}:`));
    return [...down, ...this.lastReasons.filter((r) => live.has(r.slice(0, r.indexOf(':') + 1)))];
  }

  private send(w: Worker, m: ToWorker): void {
    if (w.child.connected) w.child.send(m, (err) => err && this.o.log.debug({ err, worker: w.index }, 'a message to a worker was not delivered'));
  }

  private spawn(index: number): Promise<void> {
    const child = fork(join(import.meta.dirname, 'worker-main.ts'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], env: process.env });
    child.setMaxListeners(64); // one listener per report in flight
    const w: Worker = { index, child, ready: false, url: null, exited: false };
    this.workers.set(index, w);
    const born = Date.now();
    const ready = new Promise<void>((resolve, reject) => {
      const late = setTimeout(() => {
        reject(new Error(`worker ${index} was not ready within ${START_MS / 1000} s`));
        child.kill('SIGKILL');
      }, START_MS);
      late.unref();
      child.on('message', (m: FromWorker) => {
        if (m.type === 'ready') {
          clearTimeout(late);
          w.ready = true;
          w.url = m.url;
          this.o.log.info({ worker: index, pid: child.pid, url: m.url }, 'worker ready');
          resolve();
        } else if (m.type === 'joining') {
          if (this.released) this.send(w, { type: 'join' });
          else this.arrive(index);
        } else if (m.type === 'failed') {
          // The worker's own code (HRL_STATE_MISMATCH, HRL_CONFIG_INVALID, …) is the primary's answer too.
          reject(m.code && isErrorCode(m.code) ? new HeraldError(m.code, `worker ${index}: ${m.message}`) : new Error(`worker ${index}: ${m.message}`));
        }
      });
      // A fork that fails (EAGAIN, ENOMEM) or a kill that fails: handled as the worker's end.
      child.on('error', (err) => {
        this.o.log.error({ err, worker: index }, 'worker process error');
        reject(err);
        if (child.exitCode === null && child.signalCode === null && child.pid === undefined) onEnd(null, null);
      });
      const onEnd = (code: number | null, signal: NodeJS.Signals | null) => {
        if (w.exited) return;
        w.exited = true;
        w.ready = false;
        this.retire(index);
        clearTimeout(late);
        this.arrive(index); // nobody waits to join with a worker that is gone
        reject(new Error(`worker ${index} exited (${signal ?? `code ${code}`}) before it was ready`));
        if (this.stopping || this.workers.get(index) !== w) return;
        // Died on its own: a new one takes its partitions back. One that keeps dying young is
        // started again less and less often.
        const delay = Date.now() - born > 60_000 ? RESPAWN_MS[0] : Math.min(RESPAWN_MS[1], (this.respawnDelay.get(index) ?? RESPAWN_MS[0] / 2) * 2);
        this.respawnDelay.set(index, delay);
        this.o.log.error({ worker: index, code, signal, restartInMs: delay }, 'a worker exited; starting it again');
        setTimeout(() => {
          if (!this.stopping) this.spawn(index).catch((err: unknown) => this.o.log.error({ err, worker: index }, 'a worker did not start again'));
        }, delay).unref();
      };
      child.once('exit', onEnd);
    });
    this.send(w, { type: 'start', job: { ...this.o.job, index } });
    this.send(w, { type: 'pressure', hot: JSON.parse(this.lastHot) as Pressure[] });
    return ready;
  }

  private arrive(index: number): void {
    this.atJoin.add(index);
    if (this.atJoin.size >= this.o.count) this.arrived?.();
  }

  /**
   * Resolves when every worker's members are about to join their groups (at most
   * JOIN_WAIT_MS), and lets them join: the primary's members join with them, so a fresh
   * group gets all its members within the broker's initial rebalance delay (3 s) however
   * long each process took to start. A member that joins a group already up makes the
   * group wait for its members to rejoin; the embedded broker waits up to the session
   * timeout for that. A worker started again later joins at once.
   */
  async joinTogether(): Promise<void> {
    if (!this.released && this.atJoin.size < this.o.count) {
      const t0 = Date.now();
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.arrived = resolve;
        timer = setTimeout(() => {
          this.o.log.warn({ waitedMs: JOIN_WAIT_MS, workers: this.o.count, atJoin: this.atJoin.size }, 'joining the groups without the workers that are still starting');
          resolve();
        }, JOIN_WAIT_MS);
        timer.unref();
      });
      clearTimeout(timer);
      this.o.log.debug({ waitedMs: Date.now() - t0 }, 'every worker is about to join');
    }
    this.released = true;
    this.arrived = null;
    for (const w of this.workers.values()) if (this.atJoin.has(w.index) && !w.exited) this.send(w, { type: 'join' });
  }

  /** Each worker as /readyz shows it: its pid, whether it is ready, and where it answers forwarded queries. */
  describe(): { worker: number; pid: number | null; ready: boolean; url: string | null }[] {
    return [...this.workers.values()].map((w) => ({ worker: w.index, pid: w.exited ? null : (w.child.pid ?? null), ready: w.ready, url: w.url }));
  }

  /** pids of the running workers (for the bench's memory figures). */
  pids(): number[] {
    return [...this.workers.values()].flatMap((w) => (w.child.pid && !w.exited ? [w.child.pid] : []));
  }

  /** Every worker's reasons not to be ready (and its metrics, when asked); a worker that is down or does not answer is a reason. */
  async reports(withMetrics = true): Promise<{ metrics: Metric[][]; reasons: string[] }> {
    const answers = await Promise.all([...this.workers.values()].map((w) => new Promise<{ metrics: Metric[]; reasons: string[] }>((resolve) => {
      if (!w.ready || !w.child.connected) return resolve({ metrics: [], reasons: [`worker ${w.index}: ${w.exited ? 'not running' : 'starting'}`] });
      const id = ++this.nextId;
      const done = (r: { metrics: Metric[]; reasons: string[] }) => {
        clearTimeout(timer);
        w.child.off('message', on);
        w.child.off('exit', gone);
        resolve(r);
      };
      const timer = setTimeout(() => done({ metrics: [], reasons: [`worker ${w.index}: did not answer within ${REPORT_MS} ms`] }), REPORT_MS);
      const gone = () => done({ metrics: [], reasons: [`worker ${w.index}: not running`] });
      const on = (m: FromWorker) => {
        if (m.type !== 'report' || m.id !== id) return;
        if (m.metrics.length) this.lastMetrics.set(w.index, { at: Date.now(), metrics: m.metrics });
        done({ metrics: m.metrics, reasons: m.reasons.map((r) => `worker ${w.index}: ${r}`) });
      };
      w.child.on('message', on);
      w.child.once('exit', gone);
      this.send(w, { type: 'report', id, withMetrics });
    })));
    return { metrics: answers.map((a) => a.metrics), reasons: answers.flatMap((a) => a.reasons) };
  }

  /**
   * The primary's metrics and every worker's, aggregated as prom-client aggregates a cluster's
   * (summed unless a metric says otherwise). Counters never go down, as Prometheus reads any
   * drop as a reset: a worker that does not answer counts with its last report's counters, and
   * one that exited keeps its last counters in the sums after its successor starts from zero.
   */
  async aggregate(own: Metric[]): Promise<{ contentType: string; body: string }> {
    const asked = Date.now();
    await this.reports();
    const live = [...this.workers.values()].filter((w) => !w.exited).flatMap((w) => {
      const last = this.lastMetrics.get(w.index);
      return last ? [last.at >= asked ? last.metrics : countersOf(last.metrics)] : [];
    });
    // The standard process metrics are per process (their `process` label tells them apart):
    // kept side by side, as prom-client would otherwise sum, average or omit them.
    const perProcess = (list: Metric[]) => list.map((m) => (/^(process|nodejs)_/.test(m.name) ? { ...m, aggregator: 'sum' as const } : m));
    const registry = AggregatorRegistry.aggregate([perProcess(own), ...live.map(perProcess), ...this.retired]);
    return { contentType: registry.contentType, body: await registry.metrics() };
  }

  /** A gone worker's counters (its last report's) stay in the sums. */
  private retire(index: number): void {
    const last = this.lastMetrics.get(index);
    this.lastMetrics.delete(index);
    if (!last) return;
    this.retired.push(countersOf(last.metrics));
    // Many restarts: folded into one list now and then.
    if (this.retired.length > 16) {
      const n = this.retired.length;
      void AggregatorRegistry.aggregate(this.retired.slice(0, n)).getMetricsAsJSON().then((list) => {
        this.retired = [list as unknown as Metric[], ...this.retired.slice(n)];
      });
    }
  }

  /**
   * Asks every worker to quiesce (finish its batches, settle calls under way and commit,
   * staying in its groups) and waits for each to say so, or to exit, at most QUIESCE_MS.
   */
  async quiesce(): Promise<void> {
    this.stopping = true;
    await Promise.all([...this.workers.values()].map((w) => new Promise<void>((resolve) => {
      if (w.exited || !w.child.connected) return resolve();
      const finish = () => {
        clearTimeout(timer);
        w.child.off('message', on);
        w.child.off('exit', finish);
        resolve();
      };
      const timer = setTimeout(() => {
        this.o.log.warn({ worker: w.index, waitedMs: QUIESCE_MS }, 'a worker did not quiesce in time; stopping it anyway');
        finish();
      }, QUIESCE_MS);
      const on = (m: FromWorker) => {
        if (m.type === 'quiesced') finish();
      };
      w.child.on('message', on);
      w.child.once('exit', finish);
      this.send(w, { type: 'quiesce' });
    })));
  }

  /** Asks every worker to stop (they finish their batches and commit), killing any that take longer than STOP_MS. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.relay) clearInterval(this.relay);
    if (this.polling) clearInterval(this.polling);
    await Promise.all([...this.workers.values()].map((w) => new Promise<void>((resolve) => {
      if (w.exited || w.child.exitCode !== null || w.child.signalCode !== null) return resolve();
      const kill = setTimeout(() => w.child.kill('SIGKILL'), STOP_MS);
      w.child.once('exit', () => {
        clearTimeout(kill);
        resolve();
      });
      if (w.child.connected) this.send(w, { type: 'stop' });
      else w.child.kill('SIGTERM');
    })));
  }
}
