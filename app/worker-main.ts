/**
 * A worker process of `herald start --workers N` (see workers.ts): waits for its job from
 * the primary, runs one member of every stage group against the primary's broker and
 * registry, and stops when asked, or when the primary is gone.
 */
import { join } from 'node:path';
import { loadConfig } from '../config.ts';
import type { StageName } from '../topology.ts';
import { createLogger } from '../runtime/logger.ts';
import { startHerald, type Herald } from './herald.ts';
import { type FromWorker, RelayedPressure, type ToWorker } from './workers.ts';

process.removeAllListeners('warning');
process.on('warning', (w) => {
  if (w.name !== 'TimeoutNegativeWarning') process.stderr.write(`(node:${process.pid}) ${w.name}: ${w.message}\n`);
});

const tell = (m: FromWorker) => {
  if (process.connected) process.send!(m);
};
const pressure = new RelayedPressure();
/** The primary's word that every process's members join now (see WorkerPool.joinTogether). */
let joinNow!: () => void;
const joinSignal = new Promise<void>((resolve) => (joinNow = resolve));
/** Longer than the primary waits for the workers: it answers before this runs out, unless it is stuck. */
const JOIN_SIGNAL_MS = 90_000;
const together = () => {
  tell({ type: 'joining' });
  return Promise.race([joinSignal, new Promise<void>((resolve) => setTimeout(resolve, JOIN_SIGNAL_MS).unref())]);
};
let herald: Herald | null = null;
/** How long a worker given SIGTERM waits for the primary's word before it stops by itself. */
const SIGTERM_ALONE_MS = 10_000;
let stopping: Promise<void> | null = null;

const stop = (why: string, withinMs: number) => {
  stopping ??= (async () => {
    const force = setTimeout(() => process.exit(1), withinMs);
    force.unref();
    herald?.log.info({ why }, 'worker stopping: finishing in-flight batches');
    await herald?.stop().catch(() => undefined);
    herald?.log.flush();
    process.exit(0);
  })();
  return stopping;
};

process.on('message', (m: ToWorker) => {
  if (m.type === 'pressure') pressure.update(m.hot);
  else if (m.type === 'join') joinNow();
  else if (m.type === 'quiesce') {
    const h = herald;
    void (h ? h.quiesce() : Promise.resolve()).catch((err: unknown) => h?.log.warn({ err }, 'quiescing failed; stopping anyway')).then(() => tell({ type: 'quiesced' }));
  } else if (m.type === 'stop') void stop('asked by the primary', 25_000);
  else if (m.type === 'report') {
    const h = herald;
    if (!h) return tell({ type: 'report', id: m.id, metrics: [], reasons: ['starting'] });
    void (async () => {
      const metrics = m.withMetrics ? await h.metrics.registry.getMetricsAsJSON() : [];
      const r = h.readiness();
      tell({ type: 'report', id: m.id, metrics: metrics as never, reasons: r.ready ? [] : r.reasons });
    })().catch((err: Error) => tell({ type: 'report', id: m.id, metrics: [], reasons: [`its report failed: ${err.message}`] }));
  } else if (m.type === 'start') {
    const { job } = m;
    void (async () => {
      const config = loadConfig(process.env, {
        ...job.overrides,
        stateDir: join(job.stateDir, 'workers', String(job.index)),
        instanceId: `${job.instanceId}-w${job.index}`,
        // Its own port on the primary's interface; other instances reach it at the primary's
        // advertised host (Kafka Streams' application.server) with that port.
        httpPort: 0, advertisedUrl: '',
      });
      const log = createLogger(config.logLevel).child({ worker: job.index });
      herald = await startHerald({ config, log, stages: job.stages as StageName[], api: job.api, attach: { ...job, pressure, together } });
      tell({ type: 'ready', url: herald.httpUrl });
    })().catch((err: Error & { code?: unknown }) => {
      tell({ type: 'failed', message: err.message, ...(typeof err.code === 'string' ? { code: err.code } : {}) });
      process.exit(1);
    });
  }
});
// The primary is gone (stopped, or killed with SIGKILL): stop too, quickly. On the embedded
// broker the broker went with it, so nothing can be committed or left: a stop would only
// log the refused connections for seconds. The worker exits at once, as after a crash (its
// stores are consistent on disk; the restart takes up what was under way). Against real
// Kafka it finishes and commits what it can.
process.on('disconnect', () => {
  if (herald && !herald.config.embedded) return void stop('the primary is gone', 5_000);
  herald?.log.warn('the primary is gone, and the embedded broker with it: exiting; the restart takes up what was under way');
  herald?.log.flush();
  process.exit(0);
});
// SIGTERM to the whole group (systemd's control-group stop) reaches the primary too, and the
// primary stops its workers in step (every process commits before any member leaves). A
// SIGTERM to this worker alone stops it if the primary has not begun within a while.
process.on('SIGTERM', () => {
  if (!process.connected) return void stop('SIGTERM', 25_000);
  setTimeout(() => void stop('SIGTERM (the primary did not stop this worker first)', 25_000), SIGTERM_ALONE_MS).unref();
});
process.on('SIGINT', () => undefined); // Ctrl-C reaches the whole process group: the primary decides.
process.on('SIGHUP', () => undefined); // So does a terminal's hangup.
