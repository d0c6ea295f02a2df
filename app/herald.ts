/**
 * Assembles a Herald process: the embedded broker and schema registry when no real ones
 * are configured, schema registration, the chosen stages (each its own consumer group),
 * the global tables, and the HTTP API. `stop()` shuts everything down in order:
 * API, stages (in-flight batches finish and commit), tables, clients, registry, broker.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Admin, Kafka, Producer } from 'kafkajs';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../api/server.ts';
import { InstanceDirectory } from './instances.ts';
import { kafkaProfiles, kafkaPublisher, processHealth } from './ports.ts';
import { LifecycleRouter } from './queries.ts';
import type { ChannelProvider } from '../channels/channel.ts';
import { WebhookChannel } from '../channels/webhook.ts';
import type { HeraldConfig } from '../config.ts';
import { EmbeddedBroker } from '../embedded/broker.ts';
import { HeraldError } from '../errors.ts';
import { EmbeddedSchemaRegistry } from '../embedded/schema-registry.ts';
import { processors } from '../processors/index.ts';
import { loadRules, type RuleSet } from '../rules/rules.ts';
import { Serde } from '../schemas/index.ts';
import { STAGES, type StageName, STAGE_NAMES, TOPICS, type TopicKey, topicName, topicPlan } from '../topology.ts';
import { Codec } from '../runtime/codec.ts';
import type { StageFactory, TableName } from '../runtime/contract.ts';
import { createKafka, createProducer } from '../runtime/kafka.ts';
import { createLogger, type Logger } from '../runtime/logger.ts';
import { Metrics } from '../runtime/metrics.ts';
import { StageRunner } from '../runtime/stage-runner.ts';
import { GlobalTables } from '../runtime/tables.ts';

export interface StartOptions {
  config: HeraldConfig;
  stages?: readonly StageName[];
  api?: boolean;
  log?: Logger;
  metrics?: Metrics;
  /** Extra or replacement channel providers (tests, demo). */
  channels?: ChannelProvider[];
}

export interface Herald {
  config: HeraldConfig;
  brokers: string;
  registryUrl: string;
  httpUrl: string | null;
  broker: EmbeddedBroker | null;
  kafka: Kafka;
  admin: Admin;
  producer: Producer;
  serde: Serde;
  rules: RuleSet;
  tables: GlobalTables;
  runners: Map<StageName, StageRunner>;
  /** Which instance holds which partition, and where it answers queries. */
  directory: InstanceDirectory;
  metrics: Metrics;
  log: Logger;
  api: FastifyInstance | null;
  isReady(): boolean;
  stop(): Promise<void>;
}

/** Discards local state that was built against another cluster (the embedded one is new at every start). */
function guardStateDir(stateDir: string, clusterId: string, log: Logger): void {
  mkdirSync(stateDir, { recursive: true });
  const marker = join(stateDir, 'CLUSTER_ID');
  const previous = existsSync(marker) ? readFileSync(marker, 'utf8').trim() : null;
  if (previous !== null && previous !== clusterId) {
    log.warn({ stateDir, previous, clusterId }, 'state directory belongs to another Kafka cluster: discarding it');
    rmSync(stateDir, { recursive: true, force: true });
    mkdirSync(stateDir, { recursive: true });
  }
  writeFileSync(marker, clusterId);
}

export async function startHerald(opts: StartOptions): Promise<Herald> {
  const { config } = opts;
  const log = opts.log ?? createLogger(config.logLevel);
  const metrics = opts.metrics ?? new Metrics({ defaults: true });
  const stages = opts.stages ?? STAGE_NAMES;
  const rules = loadRules(config.rulesFile);
  const cleanups: (() => Promise<void>)[] = [];
  const cleanup = async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch((err: unknown) => log.warn({ err }, 'shutdown step failed'));
  };
  try {
    let broker: EmbeddedBroker | null = null;
    let brokers = config.brokers;
    if (config.embedded) {
      broker = await EmbeddedBroker.start({ brokers: config.embeddedBrokers });
      cleanups.push(() => broker!.stop());
      for (const t of topicPlan(config.topicPrefix, config.partitions)) await broker.createTopic(t.name, t.partitions, Math.min(config.embeddedBrokers, 3));
      brokers = broker.bootstraps;
      log.info({ brokers, partitions: config.partitions }, 'embedded broker started (librdkafka mock cluster)');
    }
    let registryUrl = config.schemaRegistryUrl;
    if (config.embeddedRegistry && !config.embedded) {
      log.warn('KAFKA_BROKERS is set but SCHEMA_REGISTRY_URL is not: the embedded registry numbers schemas per process, so records written now may not decode after a restart or on another instance; set SCHEMA_REGISTRY_URL for real deployments');
    }
    if (config.embeddedRegistry) {
      const registry = new EmbeddedSchemaRegistry();
      registryUrl = await registry.start();
      cleanups.push(() => registry.stop());
      log.info({ url: registryUrl }, 'embedded schema registry started (development stand-in)');
    }
    const serde = new Serde(registryUrl);
    for (const key of Object.keys(TOPICS) as TopicKey[]) {
      const schema = TOPICS[key].schema;
      if (schema) await serde.register(topicName(config.topicPrefix, key), schema);
    }
    const kafka = createKafka(config, brokers, log);
    const admin = kafka.admin();
    await admin.connect();
    cleanups.push(() => admin.disconnect());
    if (!config.embedded) {
      const existing = new Set(await admin.listTopics());
      const missing = topicPlan(config.topicPrefix, config.partitions).filter((t) => !existing.has(t.name)).map((t) => t.name);
      if (missing.length) {
        throw new HeraldError('HRL_CONFIG_INVALID', `KAFKA_BROKERS: the cluster lacks ${missing.length} Herald topic(s) (${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', …' : ''}); run \`herald topics create\` first`);
      }
    }
    const { clusterId } = await admin.describeCluster();
    guardStateDir(config.stateDir, `${clusterId}${broker ? `:${broker.clusterId}` : ''}`, log);
    const producer = createProducer(kafka);
    await producer.connect();
    cleanups.push(() => producer.disconnect());

    const tables = new GlobalTables(kafka, admin, serde, config, log.child({ component: 'tables' }), metrics);
    cleanups.push(() => tables.stop());
    const channelMap = new Map<string, ChannelProvider>([['webhook', new WebhookChannel(config.webhookSecret)]]);
    for (const c of opts.channels ?? []) channelMap.set(c.name, c);
    const codec = new Codec(serde, config);
    const deps = { config, rules, log, metrics, tables, availableChannels: new Set(channelMap.keys()) };
    const factories = processors(channelMap);
    const neededTables = [...new Set(stages.flatMap((s) => STAGES[s].tables))] as TableName[];
    const wantApi = opts.api ?? true;
    // The API answers GET /v1/users/:id from the users table.
    if (wantApi && !neededTables.includes('users')) neededTables.push('users');
    const tablesReady = tables.start(neededTables);
    tablesReady.catch(() => undefined);
    const wantDirectory = wantApi || stages.includes('outcome');
    const directory = new InstanceDirectory(kafka, admin, producer, config, log.child({ component: 'instances' }));
    if (wantDirectory) {
      await directory.start();
      cleanups.push(() => directory.stop());
    }
    let advertised = config.advertisedUrl;
    const runners = new Map<StageName, StageRunner>();
    for (const stage of stages) {
      const gate = STAGES[stage].tables.length ? tablesReady : undefined;
      runners.set(stage, new StageRunner({
        stage, factory: factories[stage] as StageFactory, deps, kafka, admin, producer, codec, config, log, metrics, ...(gate ? { gate } : {}),
        advertisedUrl: () => advertised,
        onAssignment: (partitions, memberId) => directory.assigned(stage, partitions, memberId),
      }));
    }
    cleanups.push(async () => {
      await Promise.all([...runners.values()].map((r) => r.stop()));
    });
    let ready = false;
    await Promise.all([
      tablesReady,
      ...[...runners.values()].map(async (r) => {
        await r.start();
        await r.joined;
      }),
    ]);
    ready = true;

    const herald: Herald = {
      config, brokers, registryUrl, httpUrl: null, broker, kafka, admin, producer, serde, rules, tables, runners, directory, metrics, log, api: null,
      isReady: () => ready,
      stop: async () => {
        ready = false;
        await cleanup();
      },
    };
    if (wantApi) {
      const api = await buildApi({
        publisher: kafkaPublisher(producer, serde, config),
        profiles: kafkaProfiles(producer, serde, tables, config),
        lifecycle: new LifecycleRouter({
          local: () => runners.get('outcome')?.stores('lifecycle') ?? new Map(),
          directory, partitions: config.partitions, timeoutMs: config.queryTimeoutMs, log: log.child({ component: 'queries' }),
        }),
        health: processHealth({ runners, tables, metrics, started: () => ready, endpoints: { brokers, registry: registryUrl } }),
        rules, maxPayloadBytes: config.maxPayloadBytes, log: log.child({ component: 'api' }),
      });
      cleanups.push(() => api.close());
      herald.api = api;
      const address = await api.listen({ port: config.httpPort, host: config.httpHost });
      herald.httpUrl = address;
      advertised ||= address;
      directory.setUrl(advertised);
    }
    return herald;
  } catch (err) {
    await cleanup();
    throw err;
  }
}
