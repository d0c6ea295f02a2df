/**
 * Where the command line finds the cluster: KAFKA_BROKERS and SCHEMA_REGISTRY_URL, or, on
 * the embedded default, the running instance's broker and registry, which it writes to
 * `<state dir>/endpoints.json` once its API listens.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Admin, Kafka, Producer } from 'kafkajs';
import type { HeraldConfig } from '../config.ts';
import { HeraldError } from '../errors.ts';
import { createKafka, createProducer } from '../runtime/kafka.ts';
import { createLogger, type Logger } from '../runtime/logger.ts';
import { Serde } from '../schemas/index.ts';

/** What a running Herald writes into its state dir once its API listens. */
export interface Endpoints { pid: number; brokers: string; registry: string; http: string; /** The rules file it runs with. */ rules?: string }

/** The running embedded instance's endpoints, or an error that says how to get one. */
export function runningEndpoints(config: HeraldConfig): Endpoints {
  const file = join(config.stateDir, 'endpoints.json');
  const e = existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as Endpoints) : null;
  const alive = e && (() => {
    try {
      process.kill(e.pid, 0);
      return true;
    } catch {
      return false;
    }
  })();
  if (!e || !alive) throw new HeraldError('HRL_CONFIG_INVALID', `KAFKA_BROKERS is not set and no Herald is running on HERALD_STATE_DIR ${config.stateDir}: start it (npm start) or set KAFKA_BROKERS`);
  return e;
}

export interface ClusterClients { kafka: Kafka; admin: Admin; producer: Producer; log: Logger; registry: string; serde: () => Serde; /** The running embedded instance's endpoints, if that is where the cluster is. */ running: Endpoints | null }

/** Clients of the cluster Herald runs on: KAFKA_BROKERS (and SCHEMA_REGISTRY_URL), or the running embedded instance's. */
/**
 * `follows`: a command that follows a topic until stopped (`tail`). When the brokers go (the
 * instance stopped) it should end within seconds, saying so once, not after kafkajs has
 * retried for 18 s and printed each failed connection: fewer retries, and the client's own
 * log lines are left out (the command names the lost broker itself).
 */
export async function withCluster<T>(config: HeraldConfig, name: string, fn: (c: ClusterClients) => Promise<T>, opts: { follows?: boolean } = {}): Promise<T> {
  const running = config.embedded ? runningEndpoints(config) : null;
  const brokers = running?.brokers ?? config.brokers;
  const registry = config.embeddedRegistry ? running?.registry : config.schemaRegistryUrl;
  const log = createLogger('warn');
  const kafka = createKafka(config, brokers, opts.follows ? createLogger('silent') : log, `herald-${name}-${process.pid}`, undefined, opts.follows ? 4 : 8);
  const admin = kafka.admin();
  const producer = createProducer(kafka);
  await Promise.all([admin.connect(), producer.connect()]);
  const serde = () => {
    if (!registry) throw new HeraldError('HRL_CONFIG_INVALID', 'SCHEMA_REGISTRY_URL: expected the registry the cluster\'s records were written with (KAFKA_BROKERS is set, so the embedded one is not running here)');
    return new Serde(registry);
  };
  try {
    return await fn({ kafka, admin, producer, log, registry: registry ?? '', serde, running });
  } finally {
    await Promise.all([admin.disconnect(), producer.disconnect()]);
  }
}
