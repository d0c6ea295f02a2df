/**
 * Herald as users start it, for the bench's HTTP modes: `npm start` in a process of its
 * own (with its workers and its embedded broker), so the memory and CPU it is measured by
 * are its own, not the bench's. The bench talks to it as a user's tools would: the ready
 * line, `/readyz`, `/metrics`, `/proc/<pid>/status`, and SIGTERM to stop it.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Kafka, logLevel } from 'kafkajs';

export interface Readiness {
  ready: boolean;
  reasons: string[];
  workers?: { worker: number; pid: number; ready: boolean; url: string }[];
}

export interface HeraldProcess {
  url: string;
  /** Herald's own process (npm execs it), and its workers'. */
  pid: number;
  workerPids(): number[];
  /** Reads the workers' pids again from /readyz (a worker that died is started again under another pid). */
  refreshWorkers(): Promise<number[]>;
  readiness(): Promise<Readiness>;
  metrics(): Promise<string>;
  /** The end offset of every topic on Herald's broker, summed over partitions: how many records were produced to it. */
  topicEnds(): Promise<Map<string, number>>;
  /** SIGTERM to npm, as a process manager stops it; resolves once it has exited. */
  stop(): Promise<number | null>;
  /** The last 64 KB Herald printed (stdout and stderr). */
  output(): string;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function startNpm(env: Record<string, string>, readyMs = 180_000): Promise<HeraldProcess> {
  const execPath = process.env.npm_execpath;
  const [cmd, args] = execPath && execPath.endsWith('.js') ? [process.execPath, [execPath, 'start']] : ['npm', ['start']];
  // The embedded default: whatever points this shell at a real cluster is left out.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KAFKA_') && k !== 'SCHEMA_REGISTRY_URL'));
  const npm: ChildProcess = spawn(cmd, args, { cwd: join(import.meta.dirname, '..'), env: { ...inherited, HERALD_HTTP_PORT: '0', HERALD_LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  const keep = (d: Buffer) => {
    out = (out + d.toString()).slice(-65536);
  };
  npm.stdout!.on('data', keep);
  npm.stderr!.on('data', keep);
  const exited = new Promise<number | null>((resolve) => npm.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + readyMs;
  let url = '';
  for (;;) {
    const m = /herald ready (\S+) /.exec(out);
    if (m) {
      url = m[1]!;
      break;
    }
    if (npm.exitCode !== null || npm.signalCode !== null || Date.now() > deadline) {
      npm.kill('SIGTERM');
      throw new Error(`bench: npm start did not get ready\n${out.split('\n').slice(-20).join('\n')}`);
    }
    await sleep(100);
  }
  // Herald's own pid, as it writes it beside its endpoints (npm execs it, so it is npm's child).
  const endpoints = JSON.parse(readFileSync(join(env.HERALD_STATE_DIR!, 'endpoints.json'), 'utf8')) as { pid: number; brokers: string };
  const pid = Number(endpoints.pid);
  const admin = new Kafka({ clientId: 'herald-bench-offsets', brokers: endpoints.brokers.split(','), logLevel: logLevel.NOTHING }).admin();
  const topicEnds = async () => {
    // A failed request is tried again (a broker busy under load), a few times.
    for (let attempt = 1; ; attempt++) {
      try {
        await admin.connect();
        const ends = new Map<string, number>();
        for (const topic of await admin.listTopics()) {
          const offsets = await admin.fetchTopicOffsets(topic);
          ends.set(topic, offsets.reduce((sum, p) => sum + Number(p.high), 0));
        }
        return ends;
      } catch (err) {
        if (attempt >= 5) throw err;
        await sleep(500);
      }
    }
  };
  const readiness = async () => (await (await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(10_000) })).json()) as Readiness;
  let workers: number[] = [];
  const refresh = async () => {
    const r = await readiness();
    workers = (r.workers ?? []).map((w) => w.pid);
    return r;
  };
  for (;;) {
    if ((await refresh()).ready) break;
    if (Date.now() > deadline) {
      npm.kill('SIGTERM');
      throw new Error('bench: Herald did not get ready');
    }
    await sleep(200);
  }
  return {
    url,
    pid,
    workerPids: () => workers,
    async refreshWorkers() {
      await refresh().catch(() => undefined);
      return workers;
    },
    readiness,
    metrics: async () => (await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(10_000) })).text(),
    output: () => out,
    topicEnds,
    async stop() {
      await admin.disconnect().catch(() => undefined);
      npm.kill('SIGTERM');
      const code = await Promise.race([exited, sleep(60_000).then(() => 'late' as const)]);
      if (code !== 'late') return code;
      npm.kill('SIGKILL');
      return exited;
    },
  };
}

/** A process's resident set (VmRSS) or its peak (VmHWM), in MB; 0 once it is gone. */
export function residentMb(pid: number, field: 'VmRSS' | 'VmHWM' | 'RssAnon' = 'VmRSS'): number {
  try {
    const kb = Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
    return Math.round(kb / 1024);
  } catch {
    return 0;
  }
}

/**
 * CPU time (user + system, ms) of `pid` and of every process under it, by role: the
 * process itself, the workers it forked and the embedded broker. Read from /proc.
 */
export function treeCpuMs(pid: number): { herald: number; workers: number; broker: number } {
  const tick = 1000 / 100; // USER_HZ, 100 on Linux
  const procs = new Map<number, { ppid: number; ms: number; cmd: string }>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const cmd = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      procs.set(Number(entry), { ppid: Number(fields[1]), ms: (Number(fields[11]) + Number(fields[12])) * tick, cmd });
    } catch {
      // gone meanwhile
    }
  }
  const out = { herald: procs.get(pid)?.ms ?? 0, workers: 0, broker: 0 };
  const under = (parent: number): void => {
    for (const [child, p] of procs) {
      if (p.ppid !== parent) continue;
      if (p.cmd.includes('mock-cluster')) out.broker += p.ms;
      else out.workers += p.ms;
      under(child);
    }
  };
  under(pid);
  return out;
}

/** herald_kafka_requests_total from a /metrics page (with workers, summed over the processes), keyed `client api`. */
export function kafkaRequestsOf(text: string): Map<string, number> {
  return new Map([...text.matchAll(/^herald_kafka_requests_total\{client="([^"]*)",api="([^"]+)"\} (\S+)$/gm)].map((m) => [`${m[1]} ${m[2]}`, Number(m[3])]));
}

/** The value of one series in Prometheus text (labels matched as given, in any order), or 0. */
export function promValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const brace = line.indexOf('{');
    const labelText = brace >= 0 && brace < line.indexOf(' ') ? line.slice(brace + 1, line.indexOf('}')) : '';
    const have = Object.fromEntries([...labelText.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m) => [m[1]!, m[2]!]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) total += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}
