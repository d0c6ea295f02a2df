/**
 * The stages' shared producer, batching like Kafka's producer does across sends: while
 * `maxInFlight` produce requests are outstanding, the batches that stages hand over wait
 * and then go out together, merged per topic, in one request (bounded in bytes). Records
 * of one batch stay in order and contiguous within each partition, so each caller still
 * learns where its own records landed: for messages with an explicit partition (the
 * changelogs, whose offsets become store checkpoints) the metadata returned is the
 * caller's own first offset in that partition. Keyed messages get no metadata back.
 *
 * Every caller waits for the acknowledgement (acks=-1) of the request that carried its
 * records; a failed request fails every batch it carried, and each is retried by its
 * stage's failure policy (at-least-once, as before).
 *
 * On the embedded broker, which answers a fetch with one message set per partition, this is
 * what makes downstream batches grow: outcomes.v1 gets one set per partition per request
 * instead of one per stage batch.
 */
import type { Message, Producer, RecordMetadata } from 'kafkajs';

export interface BatchSender {
  sendBatch(batch: { acks: -1; topicMessages: { topic: string; messages: Message[] }[] }, bytes?: number): Promise<RecordMetadata[]>;
}

interface Pending {
  topicMessages: { topic: string; messages: Message[] }[];
  bytes: number;
  resolve: (meta: RecordMetadata[]) => void;
  reject: (err: unknown) => void;
}

/** One produce request's worth, well under the broker's message.max.bytes per partition. */
const MAX_REQUEST_BYTES = 900 * 1024;

export class CoalescingProducer implements BatchSender {
  private readonly waiting: Pending[] = [];
  private waitingBytes = 0;
  private inFlight = 0;
  private readonly producer: Pick<Producer, 'sendBatch'>;
  private readonly maxInFlight: number;
  private readonly lingerMs: number;
  private linger: ReturnType<typeof setTimeout> | null = null;

  /**
   * `lingerMs` is Kafka's linger.ms: a batch handed over while no request is outstanding
   * waits up to that long for others to share its request (a request's worth goes at once);
   * batches that arrive while one is outstanding go as soon as it is answered.
   */
  constructor(producer: Pick<Producer, 'sendBatch'>, maxInFlight = 1, lingerMs = 0) {
    this.producer = producer;
    this.maxInFlight = maxInFlight;
    this.lingerMs = lingerMs;
  }

  sendBatch(batch: { acks: -1; topicMessages: { topic: string; messages: Message[] }[] }, bytes = 0): Promise<RecordMetadata[]> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ topicMessages: batch.topicMessages, bytes, resolve, reject });
      this.waitingBytes += bytes;
      // Only a batch that would go out at once lingers: one that arrives while a request is
      // outstanding goes with the next request, as soon as that one is answered.
      if (this.lingerMs > 0 && this.inFlight === 0 && this.waitingBytes < MAX_REQUEST_BYTES) {
        this.linger ??= setTimeout(() => {
          this.linger = null;
          this.pump();
        }, this.lingerMs);
        return;
      }
      this.pump();
    });
  }

  private pump(): void {
    // Lingering: nothing outstanding, and not a request's worth waiting yet.
    if (this.linger && this.inFlight === 0 && this.waitingBytes < MAX_REQUEST_BYTES) return;
    if (this.linger && this.waiting.length > 0 && this.inFlight < this.maxInFlight) {
      clearTimeout(this.linger);
      this.linger = null;
    }
    while (this.inFlight < this.maxInFlight && this.waiting.length > 0) {
      const taken: Pending[] = [];
      let bytes = 0;
      while (this.waiting.length > 0 && (taken.length === 0 || bytes + this.waiting[0]!.bytes <= MAX_REQUEST_BYTES)) {
        const p = this.waiting.shift()!;
        bytes += p.bytes;
        taken.push(p);
      }
      this.waitingBytes -= bytes;
      this.inFlight++;
      void this.produce(taken).finally(() => {
        this.inFlight--;
        this.pump();
      });
    }
  }

  private async produce(taken: Pending[]): Promise<void> {
    // Merge per topic, callers in arrival order; note where each caller's explicit-partition records start.
    // Per topic, explicit-partition records go first and keyed ones after, so a keyed record
    // the partitioner puts in the same partition never shifts the offsets a caller is told.
    const byTopic = new Map<string, Message[]>();
    const keyed = new Map<string, Message[]>();
    const before = new Map<string, number>(); // topic \0 partition -> records placed so far
    const starts: Map<string, number>[] = [];
    for (const p of taken) {
      const mine = new Map<string, number>();
      for (const { topic, messages } of p.topicMessages) {
        let list = byTopic.get(topic);
        if (!list) byTopic.set(topic, (list = []));
        for (const m of messages) {
          if (m.partition === undefined) {
            const k = keyed.get(topic);
            if (k) k.push(m);
            else keyed.set(topic, [m]);
            continue;
          }
          list.push(m);
          const k = `${topic}\u0000${m.partition}`;
          const n = before.get(k) ?? 0;
          if (!mine.has(k)) mine.set(k, n);
          before.set(k, n + 1);
        }
      }
      starts.push(mine);
    }
    for (const [topic, ms] of keyed) byTopic.get(topic)!.push(...ms);
    let meta: RecordMetadata[];
    try {
      meta = await this.producer.sendBatch({ acks: -1, topicMessages: [...byTopic].map(([topic, messages]) => ({ topic, messages })) });
    } catch (err) {
      for (const p of taken) p.reject(err);
      return;
    }
    const base = new Map(meta.map((m) => [`${m.topicName}\u0000${m.partition}`, m]));
    taken.forEach((p, i) => {
      const own: RecordMetadata[] = [];
      for (const [k, start] of starts[i]!) {
        const m = base.get(k);
        if (!m || m.baseOffset === undefined) continue;
        own.push({ ...m, baseOffset: String(BigInt(m.baseOffset) + BigInt(start)) });
      }
      p.resolve(own);
    });
  }
}
