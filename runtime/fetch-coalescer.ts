/**
 * Fetch requests shared by the consumers of one process. Kafka Streams fetches every input
 * partition of a stream thread with one consumer, so one Fetch request per broker brings
 * records for every task. Herald keeps a consumer (and a group) per stage, so each stage's
 * offsets, lag and resets stay its own; what it shares instead is the request: the fetches
 * its consumers send to the same broker in the same turn of the event loop go out as one
 * Fetch request, and each consumer is answered with its own partitions only.
 *
 * Each consumer still decides what it fetches (its positions, pauses and seeks), and reads
 * the answer as if it had sent the request alone. The shared request waits as long as the
 * shortest wait asked for (`maxWaitTime`), so no consumer waits longer than it asked; one
 * answered early returns empty, and the consumer fetches again. Consumers asking for the
 * same partition (a stage and a reader of its input), or with other settings (minBytes,
 * isolation level, rack), never share a request. A shared request that fails for a
 * partition's sake (its error fails the whole response) is sent again as the separate
 * requests it was made of, so each consumer gets its own answer or error; one that fails
 * for the request's sake (a connection closed, a timeout) fails every consumer in it.
 */
import type { FetchBroker, FetchCoalescer, FetchRequest, FetchResponse } from 'kafkajs';

interface Caller {
  broker: FetchBroker;
  request: FetchRequest;
  partitions: Set<string>;
  resolve: (r: FetchResponse) => void;
  reject: (e: unknown) => void;
}

interface Pending {
  key: string;
  callers: Caller[];
  partitions: Set<string>;
}

const partitionKey = (topic: string, partition: number) => `${topic}\u0000${partition}`;

export interface FetchSharing {
  /** Consumer fetches sent, alone or shared. */
  fetches: number;
  /** Fetch requests sent to brokers for them. */
  requests: number;
  /** Shared requests that failed and were sent again separately. */
  split: number;
}

/** Makes the coalescer handed to every consumer of one Kafka client (see runtime/kafka.ts). */
export function fetchCoalescer(counts: FetchSharing = { fetches: 0, requests: 0, split: 0 }): FetchCoalescer & { counts: FetchSharing } {
  /** Requests being gathered, per broker and request settings (sent at the next setImmediate). */
  const gathering = new Map<string, Pending[]>();

  const send = (p: Pending): void => {
    const list = gathering.get(p.key);
    if (list) {
      list.splice(list.indexOf(p), 1);
      if (list.length === 0) gathering.delete(p.key);
    }
    counts.requests++;
    if (p.callers.length === 1) {
      const [c] = p.callers as [Caller];
      c.broker.fetch(c.request).then(c.resolve, c.reject);
      return;
    }
    const topics = new Map<string, FetchRequest['topics'][number]['partitions']>();
    for (const c of p.callers) {
      for (const t of c.request.topics) {
        const parts = topics.get(t.topic) ?? topics.set(t.topic, []).get(t.topic)!;
        parts.push(...t.partitions);
      }
    }
    const first = p.callers[0]!;
    const shared: FetchRequest = {
      ...first.request,
      maxWaitTime: Math.min(...p.callers.map((c) => c.request.maxWaitTime)),
      maxBytes: Math.max(...p.callers.map((c) => c.request.maxBytes)),
      topics: [...topics].map(([topic, partitions]) => ({ topic, partitions })),
    };
    first.broker.fetch(shared).then(
      (response) => {
        for (const c of p.callers) c.resolve(own(response, c.partitions));
      },
      (err: unknown) => {
        // A connection that closed or a request that timed out is every consumer's error,
        // as it would have been alone (the consumer whose broker it was drops the connection).
        if (!partitionError(err)) {
          for (const c of p.callers) c.reject(err);
          return;
        }
        // One partition's error fails the whole response: each consumer asks again alone
        // and gets its own answer (fetching changes nothing on the broker: no fetch sessions).
        counts.split++;
        for (const c of p.callers) {
          counts.requests++;
          c.broker.fetch(c.request).then(c.resolve, c.reject);
        }
      },
    );
  };

  const coalesce = (broker: FetchBroker, request: FetchRequest): Promise<FetchResponse> => {
    counts.fetches++;
    const partitions = new Set<string>();
    for (const t of request.topics) for (const p of t.partitions) partitions.add(partitionKey(t.topic, p.partition));
    return new Promise<FetchResponse>((resolve, reject) => {
      const caller: Caller = { broker, request, partitions, resolve, reject };
      // Only fetches with the same settings share: a consumer's minBytes is kept as it asked.
      const key = `${broker.nodeId}\u0000${broker.brokerAddress}\u0000${request.isolationLevel}\u0000${request.rackId}\u0000${request.minBytes}`;
      const list = gathering.get(key) ?? gathering.set(key, []).get(key)!;
      let p = list.find((g) => ![...partitions].some((k) => g.partitions.has(k)));
      if (!p) {
        const fresh: Pending = { key, callers: [], partitions: new Set() };
        list.push(fresh);
        setImmediate(() => send(fresh));
        p = fresh;
      }
      p.callers.push(caller);
      for (const k of partitions) p.partitions.add(k);
    });
  };
  return Object.assign(coalesce, { counts });
}

/**
 * Whether a failed Fetch failed for a partition's sake (kafkajs fails the whole response on
 * the first partition's error code: an offset out of range, a leader moved, a topic gone),
 * rather than for the request's (a connection closed, a timeout).
 */
function partitionError(err: unknown): boolean {
  const name = (err as { name?: string } | null)?.name;
  return name === 'KafkaJSOffsetOutOfRange' || name === 'KafkaJSProtocolError';
}

/** The part of a shared response that answers one consumer: its partitions, nothing else. */
function own(response: FetchResponse, partitions: ReadonlySet<string>): FetchResponse {
  const responses: FetchResponse['responses'] = [];
  for (const r of response.responses) {
    const mine = r.partitions.filter((p) => partitions.has(partitionKey(r.topicName, p.partition)));
    if (mine.length) responses.push({ ...r, partitions: mine });
  }
  return { ...response, responses };
}
