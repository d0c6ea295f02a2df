/**
 * kafkajs client factory: connection settings from the config, kafkajs logs routed to
 * pino, and the producer settings Herald's guarantees rest on (acks=-1 per send; not the
 * idempotent producer, which the embedded mock cluster cannot serve).
 */
import { Kafka, logLevel, type Producer, type SASLOptions } from 'kafkajs';
import { registerCodecs } from './codecs.ts';
import { type FetchSharing, fetchCoalescer } from './fetch-coalescer.ts';
import { KafkaDefaultPartitioner } from './partitioner.ts';
import type { HeraldConfig } from '../config.ts';
import type { Logger } from './logger.ts';

const LEVELS: Record<number, 'error' | 'warn' | 'info' | 'debug'> = {
  [logLevel.ERROR]: 'error', [logLevel.WARN]: 'warn', [logLevel.INFO]: 'info', [logLevel.DEBUG]: 'debug',
};

/** kafkajs log entries Herald acts on (besides logging them), e.g. an offset found out of range. */
export type KafkaLogListener = (message: string, extra: Record<string, unknown>) => void;

/** Requests this process's kafkajs clients have sent, by client and API name, for herald_kafka_requests_total. */
const requests = new Map<string, Map<string, number>>();
export function kafkaRequests(): ReadonlyMap<string, ReadonlyMap<string, number>> {
  return requests;
}

/** Consumer fetches and the Fetch requests sent for them, in this process (herald_kafka_fetch_sharing_total). */
const sharing: FetchSharing = { fetches: 0, requests: 0, split: 0 };
export function fetchSharing(): Readonly<FetchSharing> {
  return sharing;
}

/**
 * The client a consumer's requests are counted under: its group, with what makes a group id
 * unique per start left out (a table or topic reader's random suffix), so the label's values
 * stay few.
 */
export function requestClient(groupId: string): string {
  if (/reader\.[0-9a-f-]{36}$/.test(groupId)) return 'reader';
  return groupId;
}

const counting = (client: string) => {
  const byApi = requests.get(client) ?? requests.set(client, new Map()).get(client)!;
  return ({ payload }: { payload: { apiName: string } }): void => {
    byApi.set(payload.apiName, (byApi.get(payload.apiName) ?? 0) + 1);
  };
};

/**
 * Every consumer, producer and admin client made from `kafka` counts its requests by API
 * (kafkajs' request instrumentation event), as Kafka's clients report request totals per
 * client: consumers under their group (requestClient), producers and admin clients together.
 * With `shareFetches`, its consumers share Fetch requests (runtime/fetch-coalescer.ts); a
 * shared request is counted once, under the consumer whose connection sent it.
 */
function countingRequests(kafka: Kafka, shareFetches: boolean): Kafka {
  const { consumer, producer, admin } = kafka;
  // One per client: its consumers' fetches to a broker in the same turn share a request.
  const coalescer = shareFetches ? fetchCoalescer(sharing) : undefined;
  kafka.consumer = (c) => {
    const client = consumer.call(kafka, coalescer ? { fetchCoalescer: coalescer, ...c } : c);
    client.on(client.events.REQUEST, counting(requestClient(c.groupId)));
    return client;
  };
  kafka.producer = (c) => {
    const client = producer.call(kafka, c);
    client.on(client.events.REQUEST, counting('producer'));
    return client;
  };
  kafka.admin = (c) => {
    const client = admin.call(kafka, c);
    client.on(client.events.REQUEST, counting('admin'));
    return client;
  };
  return kafka;
}

/**
 * kafkajs logs each response carrying a broker error at ERROR, among them the heartbeat a
 * coordinator answers with REBALANCE_IN_PROGRESS: the usual sign of a rebalance (a member
 * joined or left, every stop), which the consumer handles by rejoining. Kafka's Java
 * client logs it at INFO; so does Herald.
 */
export function pinoLevel(level: number, message: string, extra: Record<string, unknown>): 'error' | 'warn' | 'info' | 'debug' {
  // The same for an offset commit a rebalance refuses (REBALANCE_IN_PROGRESS, or a generation
  // the rebalance ended): the runtime replays those batches, as Kafka Streams does.
  if (level === logLevel.ERROR && /^Response (Heartbeat|OffsetCommit)/.test(message) && /rebalanc|generation id is not valid/i.test(String(extra.error ?? ''))) return 'info';
  return LEVELS[level] ?? 'info';
}

export function createKafka(config: HeraldConfig, brokers: string, log: Logger, clientId = `herald-${config.instanceId}`, onLog?: KafkaLogListener, retries = 8): Kafka {
  registerCodecs();
  const sasl = config.saslMechanism
    ? ({ mechanism: config.saslMechanism, username: config.saslUsername, password: config.saslPassword } as SASLOptions)
    : undefined;
  const kl = log.child({ component: 'kafkajs' });
  return countingRequests(new Kafka({
    clientId,
    brokers: brokers.split(',').map((b) => b.trim()).filter(Boolean),
    ssl: config.ssl,
    ...(sasl ? { sasl } : {}),
    connectionTimeout: 3000,
    requestTimeout: 30000,
    retry: { initialRetryTime: 100, retries, maxRetryTime: 5000 },
    // kafkajs' own INFO lines (joins, commits) are per-event noise; keep WARN and up.
    logLevel: logLevel.WARN,
    logCreator: () => ({ namespace, level, log: entry }) => {
      const { message, timestamp: _t, logger: _l, ...rest } = entry as { message: string } & Record<string, unknown>;
      kl[pinoLevel(level, message, rest)]({ namespace, ...rest }, message);
      onLog?.(message, rest);
    },
  }), config.shareFetches);
}

export function createProducer(kafka: Kafka): Producer {
  return kafka.producer({
    createPartitioner: KafkaDefaultPartitioner,
    allowAutoTopicCreation: false,
    idempotent: false,
  });
}
