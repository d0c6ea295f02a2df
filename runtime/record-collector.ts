/**
 * Produces what a batch or punctuation emitted (Kafka Streams' RecordCollector): its
 * outputs, outcomes and DLQ records, then its stores' changelog records, all acks=-1, in
 * produce requests bounded in bytes (a 10k-member fan-out must not exceed the broker's
 * message.max.bytes). Returns the offset of the last changelog record per changelog
 * topic, which becomes the store's checkpoint.
 */
import type { Message } from 'kafkajs';
import type { BatchSender } from './coalescing-producer.ts';
import type { LifecycleEvent } from '../schemas/types.ts';
import type { BatchView } from '../state/store.ts';
import { type TopicKey, topicName, userKey } from '../topology.ts';
import { headerStrings, type OutcomeSink, type PendingOutput } from './batch-context.ts';
import type { Codec } from './codec.ts';

/** Upper bound of one produce request, well under the broker's default message.max.bytes. */
const MAX_REQUEST_BYTES = 512 * 1024;

interface Sized { topic: string; message: Message; bytes: number; produced?: Produced }

/**
 * A record a batch produced to the topic its fused successor reads (stages/sub-topology in
 * topology.ts), with the offset it landed at: the successor's input record, in process.
 */
export interface Produced {
  topic: string;
  partition: number;
  offset: string;
  key: string;
  value: Buffer | null;
  timestamp: number;
  headers: Record<string, string>;
}

/** Outputs of one topic, sent to an explicit partition, whose offsets the caller wants back. */
export interface ForwardSpec {
  topicKey: TopicKey;
  partition: number;
}

export class RecordCollector implements OutcomeSink {
  private readonly producer: BatchSender;
  private readonly codec: Codec;
  private readonly prefix: string;

  constructor(producer: BatchSender, codec: Codec, topicPrefix: string) {
    this.producer = producer;
    this.codec = codec;
    this.prefix = topicPrefix;
  }

  private async encode(o: PendingOutput, forward?: ForwardSpec): Promise<Sized> {
    const topic = topicName(this.prefix, o.topicKey);
    const value = await this.codec.encode(o.topicKey, topic, o.value);
    const fwd = forward?.topicKey === o.topicKey;
    const message: Message = { key: o.key, value, timestamp: String(o.timestamp), ...(o.headers ? { headers: o.headers } : {}), ...(fwd ? { partition: forward.partition } : {}) };
    const sized: Sized = { topic, message, bytes: (value?.length ?? 0) + Buffer.byteLength(o.key ?? '') + headerBytes(o.headers) + 64 };
    if (fwd) sized.produced = { topic, partition: forward.partition, offset: '', key: String(o.key), value, timestamp: o.timestamp, headers: headerStrings(o.headers) };
    return sized;
  }

  /** Lifecycle events that must be on record before an effect: produced now, acks=-1. */
  async recordNow(events: LifecycleEvent[]): Promise<void> {
    const messages: Sized[] = [];
    for (const ev of events) messages.push(await this.encode({ topicKey: 'outcomes' satisfies TopicKey, key: userKey(ev.tenant, ev.recipient), value: ev, timestamp: ev.timestamp }));
    await this.sendBounded(messages, null);
  }

  /**
   * Produces the outputs, then the changelog records of `views` to partition `partition`
   * of each store's changelog, stamped `changelogTimestamp`. With `outputsFirst`, the
   * outputs are acknowledged before any changelog record is sent (for work with no input
   * offset to fall back on: a timer run). With `forward`, the outputs of that topic go to
   * the given partition (the same key's partition: the topics are co-partitioned) and are
   * pushed to `produced` with the offsets they landed at.
   */
  async send(outputs: readonly PendingOutput[], views: Iterable<BatchView>, partition: number, changelogTimestamp: number, opts: { outputsFirst?: boolean; forward?: ForwardSpec; produced?: Produced[] } = {}): Promise<Map<string, bigint>> {
    const messages: Sized[] = [];
    for (const o of outputs) {
      const m = await this.encode(o, opts.forward);
      messages.push(m);
      if (m.produced) opts.produced?.push(m.produced);
    }
    if (opts.outputsFirst && messages.length) await this.sendBounded(messages.splice(0), null);
    const changelogs = new Set<string>();
    for (const view of views) {
      const topic = view.store.changelog;
      if (!topic) continue;
      changelogs.add(topic);
      for (const c of view.changelog()) {
        const message: Message = { key: c.key, value: c.value === null ? null : Buffer.from(c.value), partition, timestamp: String(changelogTimestamp) };
        messages.push({ topic, message, bytes: c.key.length + (c.value?.length ?? 0) + 64 });
      }
    }
    return this.sendBounded(messages, { partition, changelogs });
  }

  private async sendBounded(messages: Sized[], track: { partition: number; changelogs: Set<string> } | null): Promise<Map<string, bigint>> {
    const last = new Map<string, bigint>();
    for (let i = 0; i < messages.length;) {
      const from = i;
      const byTopic = new Map<string, Message[]>();
      let bytes = 0;
      for (; i < messages.length && (bytes === 0 || bytes + messages[i]!.bytes <= MAX_REQUEST_BYTES); i++) {
        const m = messages[i]!;
        bytes += m.bytes;
        const list = byTopic.get(m.topic);
        if (list) list.push(m.message);
        else byTopic.set(m.topic, [m.message]);
      }
      const sent = messages.slice(from, i);
      const meta = await this.producer.sendBatch({ acks: -1, topicMessages: [...byTopic].map(([topic, ms]) => ({ topic, messages: ms })) }, bytes);
      placeProduced(sent, meta);
      if (!track) continue;
      for (const m of meta) {
        if (!track.changelogs.has(m.topicName) || m.partition !== track.partition || m.baseOffset === undefined) continue;
        const n = byTopic.get(m.topicName)?.length ?? 0;
        if (n) last.set(m.topicName, BigInt(m.baseOffset) + BigInt(n - 1));
      }
    }
    return last;
  }
}

/** Gives each forwarded record of one request its offset: the request's base offset in that partition plus its place. */
function placeProduced(sent: readonly Sized[], meta: readonly { topicName: string; partition: number; baseOffset?: string }[]): void {
  const seen = new Map<string, bigint>();
  for (const m of sent) {
    if (!m.produced) continue;
    const k = `${m.topic}\u0000${m.produced.partition}`;
    const n = seen.get(k) ?? 0n;
    seen.set(k, n + 1n);
    const base = meta.find((x) => x.topicName === m.topic && x.partition === m.produced!.partition)?.baseOffset;
    if (base === undefined) throw new Error(`no offset came back for ${m.topic}[${m.produced.partition}]`);
    m.produced.offset = (BigInt(base) + n).toString();
  }
}

/** The bytes of a record's headers, for sizing produce requests. */
function headerBytes(h: PendingOutput['headers']): number {
  let n = 0;
  for (const [name, v] of Object.entries(h ?? {})) {
    if (v === undefined) continue;
    n += name.length;
    for (const x of Array.isArray(v) ? v : [v]) n += typeof x === 'string' ? Buffer.byteLength(x) : x.length;
  }
  return n;
}
