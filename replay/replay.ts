/**
 * `herald replay`: re-runs one stage, or a range of stages in order, over its input topic
 * in a sandbox. The stages' own processors run through the runtime's sandbox with fresh
 * in-memory stores; global tables are read as they are now; nothing is produced, no
 * channel is called, no offset is committed (the input is read by a throwaway reader that
 * never commits and is in none of Herald's groups).
 *
 * Stream time makes a replay decide what the live stage decided: every decision reads the
 * record's timestamp, never the wall clock, and the stages' timers run at the partition's
 * stream time. What is compared is each stage's first decision on each notification (the
 * one made on its record; releases by a timer follow it) against the first one recorded
 * on outcomes.v1. With other rules (`--rules`), the differences are the what-if.
 */
import type { KafkaMessage } from 'kafkajs';
import type { HeraldConfig } from '../config.ts';
import { HeraldError } from '../errors.ts';
import { processors } from '../processors/index.ts';
import type { RuleSet } from '../rules/rules.ts';
import type { Codec } from '../runtime/codec.ts';
import type { StageDeps, TableName } from '../runtime/contract.ts';
import { decodeBatch, type StageRecord } from '../runtime/failure-policy.ts';
import type { Logger } from '../runtime/logger.ts';
import { Metrics } from '../runtime/metrics.ts';
import { partitionFor } from '../runtime/partitioner.ts';
import { TopicReader } from '../runtime/reader.ts';
import { type DeadLetter, type Emitted, SandboxStage } from '../runtime/sandbox.ts';
import type { Serde } from '../schemas/index.ts';
import type { LifecycleEvent } from '../schemas/types.ts';
import { STAGE_NAMES, STAGES, type StageName, type TopicKey, topicName, userKey } from '../topology.ts';
import type { ClusterClients } from '../app/cluster.ts';
import { GlobalTables } from '../runtime/tables.ts';

/** The stages a replay can run: the ones whose decisions depend only on records, state, tables and rules. */
export const REPLAYABLE: readonly StageName[] = ['ingest', 'enrich', 'dedupe', 'throttle', 'route'];

/** Where a range starts or ends: an offset (in every partition) or a time. */
export type Position = { offset: bigint } | { time: number };

/**
 * An ISO 8601 date (midnight UTC), or a date and time with its zone (Date.parse alone takes
 * "-1" or "3.5" as dates, and a time without a zone in the CLI machine's own zone).
 */
const ISO_TIME = /^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2}))?$/;
const ZONELESS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?$/;

export function parsePosition(text: string, flag: string): Position {
  if (/^\d+$/.test(text)) return { offset: BigInt(text) };
  if (ZONELESS.test(text)) throw new HeraldError('HRL_CONFIG_INVALID', `${flag}: "${text}" has no zone, and the records' times are UTC: add one, e.g. ${text}Z or ${text}+01:00`);
  const t = ISO_TIME.test(text) ? Date.parse(text) : Number.NaN;
  if (Number.isNaN(t)) throw new HeraldError('HRL_CONFIG_INVALID', `${flag}: expected an offset (digits) or an ISO time such as 2026-12-01T09:00:00Z, got "${text.slice(0, 80)}"`);
  return { time: t };
}

/** A range whose start is after its end is refused (it would replay nothing and say so as if that were the answer). */
export function checkRange(from: Position | undefined, to: Position | undefined): void {
  if (!from || !to) return;
  const show = (p: Position) => ('offset' in p ? `offset ${p.offset}` : new Date(p.time).toISOString());
  const after = 'offset' in from && 'offset' in to ? from.offset >= to.offset : 'time' in from && 'time' in to ? from.time >= to.time : false;
  if (after) throw new HeraldError('HRL_CONFIG_INVALID', `--from ${show(from)} is not before --to ${show(to)}: expected a range that starts before it ends (--to is exclusive)`);
}

/** `throttle` or `ingest..route`, in pipeline order. */
export function parseStages(text: string): StageName[] {
  const [a, b] = text.split('..');
  const known = (s: string | undefined) => {
    if (!s || !(STAGE_NAMES as readonly string[]).includes(s)) throw new HeraldError('HRL_CONFIG_INVALID', `--stage: expected a stage (${REPLAYABLE.join(', ')}) or a range such as ingest..route, got "${text.slice(0, 80)}"`);
    return s as StageName;
  };
  const from = known(a);
  const to = b === undefined ? from : known(b);
  const i = STAGE_NAMES.indexOf(from);
  const j = STAGE_NAMES.indexOf(to);
  if (j < i) throw new HeraldError('HRL_CONFIG_INVALID', `--stage: ${from} comes after ${to}; a range runs in pipeline order (${STAGE_NAMES.join(' → ')})`);
  const stages = STAGE_NAMES.slice(i, j + 1);
  const odd = stages.filter((s) => !REPLAYABLE.includes(s));
  if (odd.length) {
    throw new HeraldError('HRL_CONFIG_INVALID', `--stage: ${odd.join(' and ')} cannot be replayed: deliver's decisions are the receivers' answers, and outcome is the projection (rebuild it with \`herald lifecycle rebuild\`); replay runs ${REPLAYABLE.join(', ')}`);
  }
  return [...stages];
}

export interface Decision { stage: StageName; notificationId: string; tenant: string; recipient: string; eventId: string; status: string; reasonCode: string; reason: string; timestamp: number }

export interface Change {
  stage: StageName;
  notificationId: string;
  tenant: string;
  recipient: string;
  /** What outcomes.v1 recorded (null: nothing recorded, e.g. the notification is new under the rules). */
  recorded: Decision | null;
  /** What the replay decided (null: the replay made no such notification). */
  replayed: Decision | null;
  /** Why the two differ, when the replay can tell (a table row that changed since). */
  because: string | null;
}

export interface ReplayOptions {
  stages: StageName[];
  rules: RuleSet;
  /** Rules other than the live ones: a what-if. */
  whatIf: boolean;
  from?: Position;
  to?: Position;
  /** Only this recipient (`tenant/user`, or a user id of any tenant). */
  key?: string;
  /** Only notifications of this event. */
  event?: string;
  /** Records read so far and in all. */
  onProgress?: (done: number, total: number) => void;
}

export interface ReplayReport {
  stages: StageName[];
  topic: string;
  /** Input records read (state rebuilt from the start included) and those inside the range. */
  records: { read: number; inRange: number };
  /** Every decision the replay made inside the range (after --key and --event). */
  decisions: Decision[];
  /** Counts per status and reason code. */
  counts: Record<string, number>;
  /** First decisions per stage and notification compared with outcomes.v1. */
  compared: number;
  reproduced: number;
  changes: Change[];
  /** Records dead-lettered inside the range (after --key and --event). */
  dlq: { partition: number; offset: string; code: string; reason: string }[];
  /** Records dead-lettered inside the range that --key or --event cannot be matched to (for example ingest's, keyed by event id, for --key). */
  dlqHidden: number;
  seconds: number;
}

const decisionOf = (e: LifecycleEvent): Decision => ({ stage: e.stage as StageName, notificationId: e.notificationId, tenant: e.tenant, recipient: e.recipient, eventId: e.eventId, status: e.status, reasonCode: e.reasonCode, reason: e.reason, timestamp: e.timestamp });

function matchesKey(key: string, tenant: string, recipient: string): boolean {
  return key === userKey(tenant, recipient) || key === `${tenant}/${recipient}` || key === recipient;
}

/** The first offset per partition at `pos` (or the start of retention), and the exclusive end at `to` (or the end now). */
async function bounds(c: ClusterClients, topic: string, from: Position | undefined, to: Position | undefined): Promise<{ low: Map<number, bigint>; start: Map<number, bigint>; end: Map<number, bigint> }> {
  const offsets = await c.admin.fetchTopicOffsets(topic);
  const low = new Map(offsets.map((o) => [o.partition, BigInt(o.low)]));
  const high = new Map(offsets.map((o) => [o.partition, BigInt(o.high)]));
  const at = async (pos: Position | undefined, fallback: Map<number, bigint>): Promise<Map<number, bigint>> => {
    if (!pos) return fallback;
    if ('offset' in pos) return new Map([...fallback.keys()].map((p) => [p, pos.offset < low.get(p)! ? low.get(p)! : pos.offset > high.get(p)! ? high.get(p)! : pos.offset]));
    // A time is resolved on the records' own timestamps (below): the embedded broker cannot look offsets up by time.
    return fallback;
  };
  return { low, start: await at(from, low), end: await at(to, high) };
}

export async function replay(c: ClusterClients, config: HeraldConfig, codec: Codec, serde: Serde, o: ReplayOptions): Promise<ReplayReport> {
  const started = performance.now();
  const first = o.stages[0]!;
  const inputs = STAGES[first].inputs as readonly TopicKey[];
  const inputKey = inputs[0]!;
  const topic = topicName(config.topicPrefix, inputKey);
  // The sandboxed stages' own warnings (a record dead-lettered, a table value skipped) are in
  // the report; printed as log lines too, they would interleave JSON with the table.
  const log: Logger = c.log.child({}, { level: 'error' });
  const tables = new GlobalTables(c.kafka, c.admin, serde, { ...config, stateBackend: 'memory' }, log, new Metrics());
  const needed = [...new Set(o.stages.flatMap((s) => STAGES[s].tables))] as TableName[];
  const deps: StageDeps = {
    config, rules: o.rules, log, metrics: new Metrics(), tables,
    // The channels the deployment delivers: email where an SMTP server (or the embedded sink) is.
    availableChannels: new Set(['webhook', 'chat', 'inapp', ...(config.smtpUrl || config.embedded ? ['email'] : [])]),
  };
  const factories = processors(new Map());
  const { low, start, end } = await bounds(c, topic, o.from, o.to);
  const partitions = start.size;
  // Stateful stages rebuild their stores from the start of retention; the others start at the range.
  const stateful = o.stages.some((s) => STAGES[s].stores.length > 0);
  const readFrom = stateful ? low : start;
  const total = [...end].reduce((n, [p, e]) => n + Number(e > readFrom.get(p)! ? e - readFrom.get(p)! : 0n), 0);
  const sandboxes = new Map<string, SandboxStage>();
  const clocks = new Map<string, number>();
  const sandbox = (stage: StageName, partition: number): SandboxStage => {
    const id = `${stage}/${partition}`;
    let s = sandboxes.get(id);
    if (!s) {
      s = new SandboxStage(stage, factories[stage], deps, () => clocks.get(id) ?? 0);
      sandboxes.set(id, s);
    }
    return s;
  };
  const report: ReplayReport = { stages: o.stages, topic, records: { read: 0, inRange: 0 }, decisions: [], counts: {}, compared: 0, reproduced: 0, changes: [], dlq: [], dlqHidden: 0, seconds: 0 };
  /** First decision per stage and notification, inside the range. */
  const firsts = new Map<string, Decision>();
  const wanted = (d: { tenant: string; recipient: string; eventId: string }) => (!o.key || matchesKey(o.key, d.tenant, d.recipient)) && (!o.event || d.eventId === o.event);
  /** A dead letter is shown when it is the filtered recipient's (a recipient-keyed input) or the filtered event's (events.v1 is keyed by event id). */
  const deadLetters = (letters: readonly DeadLetter[], inRange: boolean) => {
    if (!inRange) return;
    for (const d of letters) {
      const key = d.key ?? '';
      const mine = (!o.key || (key.includes('/') && matchesKey(o.key, ...splitKey(key)))) && (!o.event || key === o.event);
      if (mine) report.dlq.push({ partition: Number(d.headers['herald.source.partition']), offset: d.offset, code: d.code, reason: d.reason });
      else report.dlqHidden++;
    }
  };
  /** Notifications with a decision before the range: their later ones (a release after it) are not the range's. */
  const before = new Set<string>();
  const take = (events: LifecycleEvent[], inRange: boolean) => {
    if (!inRange) {
      for (const e of events) before.add(e.notificationId);
      return;
    }
    for (const e of events) {
      if (before.has(e.notificationId)) continue;
      if (!wanted(e)) continue;
      const d = decisionOf(e);
      report.decisions.push(d);
      report.counts[`${d.status} ${d.reasonCode}`] = (report.counts[`${d.status} ${d.reasonCode}`] ?? 0) + 1;
      const k = `${d.stage}|${d.notificationId}`;
      if (!firsts.has(k)) firsts.set(k, d);
    }
  };
  let seq = 0;
  /** Runs `records` through stage `i` of the range (and what it emits through the next ones). */
  const run = async (i: number, partition: number, records: StageRecord[], inRange: boolean): Promise<void> => {
    const stage = o.stages[i]!;
    const box = sandbox(stage, partition);
    const id = `${stage}/${partition}`;
    const streamTime = Math.max(clocks.get(id) ?? 0, ...records.map((r) => r.timestamp));
    clocks.set(id, streamTime);
    const result = await box.process({ records, rejected: [] });
    // Timers run at stream time, after the batch, as the live timer runs shortly after.
    const timed = box.hasTimer ? await box.punctuate() : null;
    take(result.outcomes, inRange);
    if (timed) take(timed.outcomes, inRange);
    deadLetters(result.dlq, inRange);
    const next = o.stages[i + 1];
    if (!next) return;
    const nextInput = STAGES[next].inputs[0] as TopicKey;
    const emitted = [...result.emitted, ...(timed?.emitted ?? [])].filter((e) => e.topic === nextInput);
    const byPartition = new Map<number, StageRecord[]>();
    for (const e of emitted) {
      const p = partitionFor(e.key, partitions);
      byPartition.set(p, [...(byPartition.get(p) ?? []), asRecord(e, topicName(config.topicPrefix, nextInput), p, String(seq++))]);
    }
    for (const [p, recs] of byPartition) await run(i + 1, p, recs, inRange);
  };

  try {
    if (needed.length) await tables.start(needed);
    // A key filter skips other recipients' records (state is per recipient) where the input is keyed by recipient.
    const keep = (m: KafkaMessage) => !o.key || first === 'ingest' || matchesKey(o.key, ...splitKey(m.key?.toString() ?? ''));
    const feed = async (partition: number, mine: KafkaMessage[]) => {
      const startAt = start.get(partition)!;
      // Time bounds are checked on each record's timestamp.
      const fromTime = o.from && 'time' in o.from ? o.from.time : -Infinity;
      const toTime = o.to && 'time' in o.to ? o.to.time : Infinity;
      const within = (m: KafkaMessage) => BigInt(m.offset) >= startAt && Number(m.timestamp) >= fromTime;
      for (const inRange of [false, true]) {
        const part = mine.filter((m) => within(m) === inRange && keep(m) && Number(m.timestamp) < toTime);
        if (!part.length) continue;
        const decoded = await decodeBatch(codec, first, inputKey, topic, partition, part);
        if (inRange) report.records.inRange += part.length;
        if (decoded.rejected.length) {
          const box = sandbox(first, partition);
          const r = await box.process({ records: [], rejected: decoded.rejected });
          take(r.outcomes, inRange);
          deadLetters(r.dlq, inRange);
        }
        if (decoded.records.length) await run(0, partition, decoded.records, inRange);
      }
    };
    // events.v1 is keyed by event id, so one recipient's events sit in several partitions:
    // a chain from ingest merges them in time order (offset order within each partition),
    // as they reached the downstream stages live. Stages keyed by recipient need only
    // each partition's own order, and stream.
    const merge = first === 'ingest' && o.stages.length > 1;
    const buffered = new Map<number, KafkaMessage[]>();
    const reader = new TopicReader(c.kafka, c.admin, {
      topic, groupPrefix: `${config.topicPrefix}replay.`, from: readFrom, until: end,
      onBatch: async ({ partition, messages }) => {
        const until = end.get(partition)!;
        const mine = messages.filter((m) => BigInt(m.offset) < until);
        report.records.read += mine.length;
        o.onProgress?.(report.records.read, total);
        if (merge) buffered.set(partition, [...(buffered.get(partition) ?? []), ...mine]);
        else await feed(partition, mine);
      },
    });
    await reader.readToEnd();
    if (merge) for (const [partition, run] of mergeByTime(buffered)) await feed(partition, run);
    // Live, a wall-clock timer released what throttle held once it was due, also after the
    // range's last record; the replay's timers run at stream time and never got there. So
    // each timer runs once more at the time of the replay, stage by stage: releases due by
    // now, and digests whose window has closed, are made and compared as they were live
    // (and passed on down the range); what is still held live stays held here.
    const now = Date.now();
    for (let i = 0; i < o.stages.length; i++) {
      for (const [id, box] of [...sandboxes]) {
        if (!id.startsWith(`${o.stages[i]}/`) || !box.hasTimer) continue;
        clocks.set(id, Math.max(clocks.get(id) ?? 0, now));
        // A timer run releases a bounded number: run it until it has nothing more.
        for (let round = 0; round < 1000; round++) {
          const timed = await box.punctuate();
          if (!timed.outcomes.length && !timed.emitted.length) break;
          take(timed.outcomes, true);
          const next = o.stages[i + 1];
          if (!next) continue;
          const nextInput = STAGES[next].inputs[0] as TopicKey;
          const byPartition = new Map<number, StageRecord[]>();
          for (const e of timed.emitted.filter((x) => x.topic === nextInput)) {
            const p = partitionFor(e.key, partitions);
            byPartition.set(p, [...(byPartition.get(p) ?? []), asRecord(e, topicName(config.topicPrefix, nextInput), p, String(seq++))]);
          }
          for (const [p, recs] of byPartition) await run(i + 1, p, recs, true);
        }
      }
    }
    await compare(c, config, serde, o, firsts, report);
  } finally {
    await tables.stop();
    for (const s of sandboxes.values()) await s.close();
  }
  report.seconds = (performance.now() - started) / 1000;
  return report;
}

/** Runs of consecutive records from one partition, in time order across partitions and offset order within each. */
export function* mergeByTime(parts: Map<number, KafkaMessage[]>): Generator<[number, KafkaMessage[]]> {
  const heads = new Map([...parts.keys()].map((p) => [p, 0]));
  let current: [number, KafkaMessage[]] | null = null;
  for (;;) {
    let best: number | null = null;
    for (const [p, i] of heads) {
      const m = parts.get(p)![i];
      if (!m) continue;
      if (best === null || Number(m.timestamp) < Number(parts.get(best)![heads.get(best)!]!.timestamp)) best = p;
    }
    if (best === null) break;
    const m = parts.get(best)![heads.get(best)!]!;
    heads.set(best, heads.get(best)! + 1);
    if (current && current[0] === best) current[1].push(m);
    else {
      if (current) yield current;
      current = [best, [m]];
    }
  }
  if (current) yield current;
}

function splitKey(key: string): [string, string] {
  const i = key.indexOf('/');
  return i < 0 ? ['', key] : [decodeURIComponent(key.slice(0, i)), decodeURIComponent(key.slice(i + 1))];
}

function asRecord(e: Emitted, topic: string, partition: number, offset: string): StageRecord {
  return { topic, topicKey: e.topic, partition, offset, key: e.key, value: e.value, timestamp: e.timestamp, headers: e.headers, raw: null } as StageRecord;
}

/** Reads outcomes.v1 for the recorded first decisions of the replayed notifications, and compares. */
async function compare(c: ClusterClients, config: HeraldConfig, serde: Serde, o: ReplayOptions, firsts: Map<string, Decision>, report: ReplayReport): Promise<void> {
  const stages = new Set<string>(o.stages);
  const recorded = new Map<string, Decision>();
  const notifications = new Set([...firsts.values()].map((d) => d.notificationId));
  const outcomes = topicName(config.topicPrefix, 'outcomes');
  const reader = new TopicReader(c.kafka, c.admin, {
    topic: outcomes, groupPrefix: `${config.topicPrefix}replay.`,
    until: new Map((await c.admin.fetchTopicOffsets(outcomes)).map((x) => [x.partition, BigInt(x.high)])),
    onBatch: async ({ messages }) => {
      for (const m of messages) {
        if (!m.value) continue;
        let e: LifecycleEvent;
        try {
          e = await serde.decode<LifecycleEvent>(m.value);
        } catch {
          continue;
        }
        if (!stages.has(e.stage)) continue;
        const k = `${e.stage}|${e.notificationId}`;
        if (recorded.has(k)) continue;
        // Recorded decisions on notifications the replay made, and those the range's records made live (a replay may not make them all).
        if (notifications.has(e.notificationId) || inRangeOf(e, report, o)) recorded.set(k, decisionOf(e));
      }
    },
  });
  await reader.readToEnd();
  const keys = new Set([...firsts.keys(), ...recorded.keys()]);
  const tableChanged = await changedRows(c, config, serde, o, firsts, recorded);
  for (const k of keys) {
    const now = firsts.get(k) ?? null;
    const then = recorded.get(k) ?? null;
    if (now && then) report.compared++;
    // A what-if reports changed decisions (status, and for route the channels chosen, which its
    // reason names); reproducing asks for the same reason code too.
    if (now && then && now.status === then.status && (o.whatIf ? now.stage !== 'route' || now.reason === then.reason : now.reasonCode === then.reasonCode)) {
      report.reproduced++;
      continue;
    }
    const any = (now ?? then)!;
    report.changes.push({ stage: any.stage, notificationId: any.notificationId, tenant: any.tenant, recipient: any.recipient, recorded: then, replayed: now, because: tableChanged(any) });
  }
  if (!o.whatIf) explainOrder(report, o.stages);
  if (o.whatIf) pairRejections(report);
  report.changes.sort((a, b) => (a.recorded?.timestamp ?? a.replayed!.timestamp) - (b.recorded?.timestamp ?? b.replayed!.timestamp) || a.notificationId.localeCompare(b.notificationId));
}

/**
 * Under rules without an event type's rule, ingest rejects the event, and a rejection's id is
 * derived without a rule, so it is not the id the accepted notification had: the what-if
 * showed each recipient twice ("nothing → REJECTED" and "ACCEPTED → nothing"). Paired by
 * event and recipient, they are one change of that notification: ACCEPTED → REJECTED.
 */
function pairRejections(report: ReplayReport): void {
  const key = (d: Decision) => `${d.eventId}\u0000${d.tenant}\u0000${d.recipient}`;
  const gone = new Map<string, Change>();
  for (const c of report.changes) if (c.stage === 'ingest' && c.recorded && !c.replayed) gone.set(key(c.recorded), c);
  const paired = new Set<Change>();
  for (const c of report.changes) {
    if (c.stage !== 'ingest' || c.recorded || c.replayed?.status !== 'REJECTED') continue;
    const was = gone.get(key(c.replayed));
    if (!was) continue;
    gone.delete(key(c.replayed));
    paired.add(was);
    c.recorded = was.recorded;
    c.notificationId = was.notificationId;
    report.compared++;
  }
  report.changes = report.changes.filter((c) => !paired.has(c));
}

/** Recorded decisions of the first stage on records inside the range (under other rules, or other table rows, a replay may not make them). */
function inRangeOf(e: LifecycleEvent, report: ReplayReport, o: ReplayOptions): boolean {
  if (e.sourceTopic !== report.topic) return false;
  if ((o.key && !matchesKey(o.key, e.tenant, e.recipient)) || (o.event && e.eventId !== o.event)) return false;
  // The range is known per partition only to the reader; a time range is the practical filter here.
  const from = o.from && 'time' in o.from ? o.from.time : -Infinity;
  const to = o.to && 'time' in o.to ? o.to.time : Infinity;
  const fromOffset = o.from && 'offset' in o.from ? o.from.offset : -1n;
  const toOffset = o.to && 'offset' in o.to ? o.to.offset : BigInt(Number.MAX_SAFE_INTEGER);
  const offset = BigInt(e.sourceOffset);
  return offset >= fromOffset && offset < toOffset && e.timestamp >= from && e.timestamp < to;
}

/**
 * Which decisions read a table row that changed after they were made (enrich reads users
 * and preferences, ingest audiences): their difference is explained by the row, not the
 * stage. Reads the tables' topics for the record timestamps of the rows concerned.
 */
async function changedRows(c: ClusterClients, config: HeraldConfig, _serde: Serde, o: ReplayOptions, firsts: Map<string, Decision>, recorded: Map<string, Decision>): Promise<(d: Decision) => string | null> {
  if (o.whatIf) return () => null;
  const differing = [...new Set([...firsts.keys(), ...recorded.keys()])].filter((k) => {
    const a = firsts.get(k);
    const b = recorded.get(k);
    return !(a && b && a.status === b.status && a.reasonCode === b.reasonCode);
  });
  // enrich copies the profile and preferences into what throttle (quiet hours) and route
  // (channels, opt-outs) decide on: in a replay that runs enrich, their decisions read the
  // tables as they are now too.
  const readsTables = (stage: string) => stage === 'enrich' || ((stage === 'throttle' || stage === 'route') && o.stages.includes('enrich'));
  const enrichKeys = new Set(differing.filter((k) => readsTables(k.slice(0, k.indexOf('|')))).map((k) => {
    const d = (firsts.get(k) ?? recorded.get(k))!;
    return userKey(d.tenant, d.recipient);
  }));
  const changedAt = new Map<string, { table: string; at: number }>();
  for (const table of ['users', 'preferences'] as const) {
    if (!enrichKeys.size) break;
    const topic = topicName(config.topicPrefix, table);
    const reader = new TopicReader(c.kafka, c.admin, {
      topic, groupPrefix: `${config.topicPrefix}replay.`,
      until: new Map((await c.admin.fetchTopicOffsets(topic)).map((x) => [x.partition, BigInt(x.high)])),
      onBatch: async ({ messages }) => {
        for (const m of messages) {
          const key = m.key?.toString();
          if (!key || !enrichKeys.has(key)) continue;
          const at = Number(m.timestamp);
          if ((changedAt.get(key)?.at ?? -1) < at) changedAt.set(key, { table: TOPICS_NAME[table], at });
        }
      },
    });
    await reader.readToEnd();
  }
  return (d) => {
    if (d.stage === 'ingest') return 'ingest reads audiences.v1 as it is now: its members may have changed since';
    if (!readsTables(d.stage)) return null;
    const row = changedAt.get(userKey(d.tenant, d.recipient));
    return row && row.at > d.timestamp ? `${row.table} row ${d.tenant}/${d.recipient} changed at ${new Date(row.at).toISOString()}, after the decision; replay reads tables as they are now${d.stage === 'enrich' ? '' : ' (through enrich)'}` : null;
  };
}

const TOPICS_NAME = { users: 'users.v1', preferences: 'preferences.v1' } as const;

/**
 * Dedupe and throttle decide by the order in which one user's records reach them: a replay
 * of a range that starts before them (ingest..route) merges events.v1's partitions by time,
 * while the live run took them as they arrived, so two of a user's decisions can come out
 * swapped (the one admitted live is deferred in the replay, and the other way round). Such
 * pairs are said to be that, not left as unexplained differences.
 */
export function explainOrder(report: Pick<ReplayReport, 'changes'>, stages: StageName[]): void {
  const groups = new Map<string, Change[]>();
  for (const c of report.changes) {
    if ((c.stage !== 'dedupe' && c.stage !== 'throttle') || stages[0] === c.stage || c.because || !c.recorded || !c.replayed) continue;
    const k = `${c.stage}|${c.tenant}|${c.recipient}`;
    groups.set(k, [...(groups.get(k) ?? []), c]);
  }
  const statuses = (xs: (Decision | null)[]) => xs.map((d) => d!.status).sort().join(',');
  for (const group of groups.values()) {
    if (group.length < 2 || statuses(group.map((c) => c.recorded)) !== statuses(group.map((c) => c.replayed))) continue;
    for (const c of group) c.because = `the same decisions as live, for other notifications of this user: ${c.stage} decides by the order in which a user's records reach it, and this replay read events.v1's partitions merged by time, not as they arrived (\`replay --stage ${c.stage}\` reads its input as recorded)`;
  }
}
