/**
 * The embedded Kafka-protocol broker: librdkafka's mock cluster, run by the small C
 * launcher in embedded/mock-cluster.c. The launcher exits at `stop`, or when its stdin
 * closes without it (its owner died, even by SIGKILL), after journaling what it had
 * acknowledged: the brokers never outlive their owner by more than that.
 *
 * Limits of the mock cluster, handled in the open (see README):
 * - it reports controller id 0, so kafkajs admin.createTopics and idempotent or
 *   transactional producers fail: topics are created here, through the launcher;
 * - it keeps ~5 MB / 100k message sets per partition and drops older data;
 * - ListOffsets by timestamp is not implemented;
 * - topics and offsets live in memory: every start begins with an empty cluster.
 *
 * @example
 *   const broker = await EmbeddedBroker.start({ brokers: 1 });
 *   await broker.createTopic('herald.events.v1', 4);
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { createInterface } from 'node:readline';
import { randomUUID } from 'node:crypto';
import { HeraldError } from '../errors.ts';
import { buildLauncher } from './build-launcher.mjs';

/** How the broker's process ended: its exit code or signal, and the last lines it wrote to stderr. */
export interface BrokerDeath { code: number | null; signal: NodeJS.Signals | null; stderr: string }

export class EmbeddedBroker {
  readonly bootstraps: string;
  /** A fresh id per start: local state built against another cluster is discarded. */
  readonly clusterId = randomUUID();
  private readonly proc: ChildProcess & { stdin: Writable; stdout: Readable; stderr: Readable };
  private journalListener: ((line: string) => void) | null = null;
  private readonly pending: ((line: string) => void)[] = [];
  private queue: Promise<unknown> = Promise.resolve();
  private exited = false;
  private stopping = false;
  private onDeath: ((death: BrokerDeath) => void) | null = null;

  private constructor(proc: EmbeddedBroker['proc'], bootstraps: string, lines: AsyncIterable<string>, stderr: () => string) {
    this.proc = proc;
    this.bootstraps = bootstraps;
    const reports = proc.stdio[3] as Readable | null | undefined;
    if (reports) createInterface({ input: reports }).on('line', (line) => this.journalListener?.(line));
    proc.on('exit', (code, signal) => {
      this.exited = true;
      for (const p of this.pending.splice(0)) p('err launcher exited');
      // The brokers are gone with it: every topic, offset and group of this run (the journal
      // on disk has what was written). Not a stop of ours: the owner must hear of it.
      if (!this.stopping) this.onDeath?.({ code, signal, stderr: stderr().trim().split('\n').slice(-5).join('\n') });
    });
    void (async () => {
      for await (const line of lines) this.pending.shift()?.(line);
    })();
  }

  static async start(opts: { brokers?: number } = {}): Promise<EmbeddedBroker> {
    const built = buildLauncher({ quiet: true }) as { ok: boolean; path?: string; reason?: string };
    if (!built.ok || !built.path) {
      throw new HeraldError('HRL_EMBEDDED_BROKER', `embedded broker unavailable: ${built.reason}`);
    }
    // fd 3 carries the journal's reports (see mock-cluster.c).
    const proc = spawn(built.path, [String(opts.brokers ?? 1)], { stdio: ['pipe', 'pipe', 'pipe', 'pipe'] }) as EmbeddedBroker['proc'];
    // What it printed last (for a start that fails), not all it ever printed.
    let stderr = '';
    proc.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8192)));
    const rl = createInterface({ input: proc.stdout });
    const it = rl[Symbol.asyncIterator]();
    const first = await Promise.race([
      it.next(),
      new Promise<never>((_, reject) => proc.once('exit', (code) => reject(new HeraldError('HRL_EMBEDDED_BROKER', `embedded broker exited with ${code}: ${stderr.trim()}`)))),
    ]);
    const line = first.done ? '' : first.value;
    if (!line.startsWith('bootstraps ')) {
      proc.kill('SIGKILL');
      throw new HeraldError('HRL_EMBEDDED_BROKER', `embedded broker printed "${line}" instead of its bootstrap list`);
    }
    proc.unref();
    return new EmbeddedBroker(proc, line.slice('bootstraps '.length).trim(), { [Symbol.asyncIterator]: () => it }, () => stderr);
  }

  private command(cmd: string): Promise<void> {
    const run = async () => {
      if (this.exited) throw new HeraldError('HRL_EMBEDDED_BROKER', `embedded broker is not running (command "${cmd}")`);
      const answer = await new Promise<string>((resolve) => {
        this.pending.push(resolve);
        this.proc.stdin.write(`${cmd}\n`);
      });
      if (answer !== 'ok') throw new HeraldError('HRL_EMBEDDED_BROKER', `embedded broker refused "${cmd}": ${answer.replace(/^err /, '')}`);
    };
    const next = this.queue.then(run, run);
    this.queue = next.catch(() => undefined);
    return next;
  }

  /** Creates a topic (the mock cluster cannot do it through the admin API). */
  createTopic(name: string, partitions: number, replication = 1): Promise<void> {
    return this.command(`topic ${name} ${partitions} ${replication}`);
  }
  /** Takes a broker (id 1..n) away, as a fault test would. */
  brokerDown(id: number): Promise<void> {
    return this.command(`down ${id}`);
  }
  brokerUp(id: number): Promise<void> {
    return this.command(`up ${id}`);
  }
  /** Sets a broker's round-trip time in milliseconds. */
  setRtt(id: number, ms: number): Promise<void> {
    return this.command(`rtt ${id} ${ms}`);
  }

  /**
   * Starts the broker's journal writer on `dir` (embedded/journal.ts's format): a librdkafka
   * consumer inside the broker's process appends what it reads of each followed partition,
   * and `listener` hears one line per write ("j <topic> <partition> <first> <next> <bytes>")
   * or failure ("e <reason>").
   */
  async startJournal(dir: string, listener: (line: string) => void): Promise<void> {
    if (!this.proc.stdio[3]) throw new HeraldError('HRL_EMBEDDED_BROKER', 'the embedded broker has no report channel for its journal');
    this.journalListener = listener;
    await this.command(`journal ${dir}`);
  }

  /** The journal writer reads `topic`[`partition`] from offset `from` on. */
  follow(topic: string, partition: number, from: bigint): Promise<void> {
    return this.command(`follow ${topic} ${partition} ${from}`);
  }

  /**
   * Called if the broker's process ends without `stop` (a crash of the mock cluster, such
   * as its assertion when a client of another kind joins one of Herald's groups, or a kill).
   */
  whenDied(listener: (death: BrokerDeath) => void): void {
    this.onDeath = listener;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    if (this.exited) return;
    const done = new Promise<void>((resolve) => this.proc.once('exit', () => resolve()));
    // `stop`: a clean stop (the journal caught up already). A stdin that ends without it
    // tells the launcher its owner died, and it journals what it acknowledged first.
    this.proc.stdin.end('stop\n');
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 3000);
    await done;
    clearTimeout(timer);
  }
}
