/**
 * kafkajs client factory: connection settings from the config, kafkajs logs routed to
 * pino, and the producer settings Herald's guarantees rest on (acks=-1 per send; not the
 * idempotent producer, which the embedded mock cluster cannot serve).
 */
import { Kafka, logLevel, type Producer, type SASLOptions } from 'kafkajs';
import { KafkaDefaultPartitioner } from './partitioner.ts';
import type { HeraldConfig } from '../config.ts';
import type { Logger } from './logger.ts';

const LEVELS: Record<number, 'error' | 'warn' | 'info' | 'debug'> = {
  [logLevel.ERROR]: 'error', [logLevel.WARN]: 'warn', [logLevel.INFO]: 'info', [logLevel.DEBUG]: 'debug',
};

/** kafkajs log entries Herald acts on (besides logging them), e.g. an offset found out of range. */
export type KafkaLogListener = (message: string, extra: Record<string, unknown>) => void;

export function createKafka(config: HeraldConfig, brokers: string, log: Logger, clientId = `herald-${config.instanceId}`, onLog?: KafkaLogListener): Kafka {
  const sasl = config.saslMechanism
    ? ({ mechanism: config.saslMechanism, username: config.saslUsername, password: config.saslPassword } as SASLOptions)
    : undefined;
  const kl = log.child({ component: 'kafkajs' });
  return new Kafka({
    clientId,
    brokers: brokers.split(',').map((b) => b.trim()).filter(Boolean),
    ssl: config.ssl,
    ...(sasl ? { sasl } : {}),
    connectionTimeout: 3000,
    requestTimeout: 30000,
    retry: { initialRetryTime: 100, retries: 8, maxRetryTime: 5000 },
    // kafkajs' own INFO lines (joins, commits) are per-event noise; keep WARN and up.
    logLevel: logLevel.WARN,
    logCreator: () => ({ namespace, level, log: entry }) => {
      const { message, timestamp: _t, logger: _l, ...rest } = entry as { message: string } & Record<string, unknown>;
      kl[LEVELS[level] ?? 'info']({ namespace, ...rest }, message);
      onLog?.(message, rest);
    },
  });
}

export function createProducer(kafka: Kafka): Producer {
  return kafka.producer({
    createPartitioner: KafkaDefaultPartitioner,
    allowAutoTopicCreation: false,
    idempotent: false,
  });
}
