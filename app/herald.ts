/**
 * Assembles a Herald process: the embedded broker and schema registry when no real ones
 * are configured, schema registration, the chosen stages (each its own consumer group),
 * the global tables, and the HTTP API. `stop()` shuts everything down in order:
 * API, stages (in-flight batches finish and commit), tables, clients, registry, broker.
 */
import { accessSync, constants, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { hostname } from 'node:os';
import type { Admin, Kafka, Producer, ProducerRecord } from 'kafkajs';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../api/server.ts';
import { Journal, type GroupOffsets } from '../embedded/journal.ts';
import { BrokerJournal, type Pressure } from '../embedded/persistence.ts';
import { type AttachJob, type RelayedPressure, WorkerPool } from './workers.ts';
import { InstanceDirectory } from './instances.ts';
import { KeyDirectory, writeKeyRecord } from './keys.ts';
import { SigningSecrets, signingPort } from './signing-secrets.ts';
import { keyIdOf, newKeyRecord, generateKey } from '../auth/keys.ts';
import { type OutboundPolicy, parseAllowList } from '../channels/outbound.ts';
import { kafkaProfiles, kafkaPublisher, processHealth, type Send } from './ports.ts';
import { InboxHub, LifecycleRouter, partitionOf } from './queries.ts';
import { InAppChannel } from '../channels/inapp.ts';
import { chatChannel } from '../channels/chat.ts';
import type { ChannelProvider } from '../channels/channel.ts';
import { secretsOf, WebhookChannel } from '../channels/webhook.ts';
import { EmailChannel } from '../channels/email.ts';
import { SmtpSink } from '../channels/smtp-sink.ts';
import { checkSigningSecret, CONFIG_KEYS, type HeraldConfig, signsWithDefaultSecret } from '../config.ts';
import { EmbeddedBroker } from '../embedded/broker.ts';
import { HeraldError } from '../errors.ts';
import { EmbeddedSchemaRegistry } from '../embedded/schema-registry.ts';
import { processors } from '../processors/index.ts';
import { loadRules, type RuleSet } from '../rules/rules.ts';
import { Serde } from '../schemas/index.ts';
import { checkStoresBuiltAgainst, tuneStores } from '../state/store.ts';
import { STAGES, type StageName, STAGE_NAMES, TOPICS, type TopicKey, changelogTopic, fusedRuns, groupId, topicName, topicPlan } from '../topology.ts';
import { Codec } from '../runtime/codec.ts';
import type { StageFactory, TableName } from '../runtime/contract.ts';
import { createKafka, createProducer } from '../runtime/kafka.ts';
import { createLogger, type Logger } from '../runtime/logger.ts';
import { Metrics } from '../runtime/metrics.ts';
import { StageRunner } from '../runtime/stage-runner.ts';
import { StartingServer } from './starting.ts';
import { CoalescingProducer } from '../runtime/coalescing-producer.ts';
import { GlobalTables } from '../runtime/tables.ts';

export interface StartOptions {
  config: HeraldConfig;
  stages?: readonly StageName[];
  api?: boolean;
  log?: Logger;
  metrics?: Metrics;
  /** Extra or replacement channel providers (tests, demo). */
  channels?: ChannelProvider[];
  /**
   * Called at once if the instance can no longer run (its embedded broker died), during the
   * start too: a start waiting on a broker that is gone would otherwise wait out kafkajs's
   * retries. The CLI exits 1 on it. (`Herald.failure` settles too.)
   */
  onFailure?: (err: HeraldError) => void;
  /**
   * Runs as a worker of another process's embedded default (`--workers`): its broker,
   * registry, journal offsets, SMTP sink and back-pressure, no development key.
   */
  attach?: AttachJob & {
    pressure: RelayedPressure;
    /** Called when every member of this worker is about to join; resolves when they may (the primary's word). */
    together: () => Promise<void>;
  };
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
  /** The development API key (tenant acme, admin), when one is configured or kept in the state dir. */
  devKey: string | null;
  isReady(): boolean;
  /** /readyz's answer: ready, or the reasons not (every worker's included). */
  readiness(): { ready: boolean; reasons: string[] };
  /** The worker processes (`--workers`), when there are any. */
  workers: WorkerPool | null;
  /**
   * Settles if this instance can no longer run: its embedded broker died (its topics and
   * groups lived in that process's memory). The CLI exits with 1 on it; the restart replays
   * the journal.
   */
  failure: Promise<HeraldError>;
  /** The first half of a stop: every stage stops consuming, finishes, settles and commits, and stays in its groups (see StageRunner.quiesce). `stop` does it too. */
  quiesce(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * The state directory belongs to one cluster (a real one by its id, the embedded one by its
 * journal). Stores built against another are never discarded silently: starting refuses,
 * says why, and names the way out.
 */
function guardStateDir(stateDir: string, identity: string): void {
  const marker = join(stateDir, 'CLUSTER_ID');
  const previous = existsSync(marker) ? readFileSync(marker, 'utf8').trim() : null;
  if (previous !== null && previous !== identity) {
    throw new HeraldError('HRL_STATE_MISMATCH', `HERALD_STATE_DIR ${stateDir}: its stores were built against ${previous.startsWith('embedded:') || previous.startsWith('kafka:') ? previous : `an earlier embedded broker (${previous})`}, not ${identity}${previous.startsWith('embedded:') && identity.startsWith('embedded:') ? ` (the journal, which held their changelogs, was deleted or replaced)` : ''}; the stores were left as they are. Run \`HERALD_STATE_DIR=${stateDir.replace(/[\\/]workers[\\/]\d+$/, '')} npm run herald -- reset\` to delete it and start over, or set HERALD_STATE_DIR to another directory`);
  }
  writeFileSync(marker, identity);
}

/** The URL of an HTTP server listening on `host:port`, as Fastify's listen names it (a wildcard host as loopback). */
function urlOf(host: string, port: number): string {
  const h = host === '0.0.0.0' || host === '' ? '127.0.0.1' : host === '::' ? '::1' : host;
  return `http://${h.includes(':') ? `[${h}]` : h}:${port}`;
}

/** The pid of a live Herald process using `stateDir`, if any. */
export function runningHerald(stateDir: string): number | null {
  const file = join(stateDir, 'herald.pid');
  if (!existsSync(file)) return null;
  const pid = Number(readFileSync(file, 'utf8').trim());
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return null;
  try {
    process.kill(pid, 0);
  } catch {
    return null; // gone (a crash left the file behind)
  }
  // A live pid may have been reused by an unrelated process: only a Herald counts.
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('herald') ? pid : null;
  } catch {
    return pid; // no /proc (not Linux): trust the live pid
  }
}

/** Creates the state directory, or explains with its path why it cannot. */
function ensureStateDir(stateDir: string): void {
  try {
    mkdirSync(stateDir, { recursive: true });
    accessSync(stateDir, constants.R_OK | constants.W_OK);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new HeraldError('HRL_STATE_DIR_UNUSABLE', `HERALD_STATE_DIR ${stateDir}: cannot use it (${e.code ?? e.message}); make it writable by this user or choose another directory`, { cause: err });
  }
}

/**
 * The development key: HERALD_DEV_KEY, else (embedded broker only) the one kept in the
 * state dir, made at first start. It is registered for tenant acme with the admin scope,
 * unless it was revoked.
 */
async function devKeyOf(config: HeraldConfig, keys: KeyDirectory, send: Send, log: Logger): Promise<string | null> {
  let key = config.devKey;
  const file = join(config.stateDir, 'dev-key');
  if (!key && config.embedded) {
    key = existsSync(file) ? readFileSync(file, 'utf8').trim() : '';
    if (!key) {
      key = generateKey();
      writeFileSync(file, `${key}\n`, { mode: 0o600 });
    }
  }
  if (!key) return null;
  const known = keys.get(keyIdOf(key));
  if (known?.revokedAt) {
    log.warn({ keyId: known.keyId }, 'the development API key was revoked; it stays revoked (delete the dev-key file in the state dir, or set another HERALD_DEV_KEY, for a new one)');
    return null;
  }
  if (!known) {
    const { record } = await newKeyRecord({ tenant: 'acme', scopes: ['admin'], label: 'development key', key });
    await writeKeyRecord({ send }, topicName(config.topicPrefix, 'keys'), record);
    await keys.waitFor(record.keyId);
  }
  return key;
}

/** How often the embedded broker's topics are listed for ones a client made by mistake. */
const STRAY_TOPIC_CHECK_MS = 5_000;

/** How many records of each partition a send carried, keyed as the journal waits for them. */
function countsOf(record: ProducerRecord, partitions: number): Map<string, number> {
  const counts = new Map<string, number>();
  for (const m of record.messages) {
    const p = m.partition ?? (m.key !== null && m.key !== undefined ? partitionOf(String(m.key), partitions) : 0);
    const k = `${record.topic}\u0000${p}`;
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  return counts;
}

export async function startHerald(opts: StartOptions): Promise<Herald> {
  const { config } = opts;
  const log = opts.log ?? createLogger(config.logLevel);
  const metrics = opts.metrics ?? new Metrics({ defaults: true, process: opts.attach ? `worker-${opts.attach.index}` : 'primary' });
  const stages = [...new Set(opts.stages ?? STAGE_NAMES)];
  if (stages.includes('deliver')) checkSigningSecret(config);
  const rules = loadRules(config.rulesFile);
  tuneStores({ writeBufferBytes: config.storeWriteBufferBytes, cacheBytes: config.storeCacheBytes, compression: config.storeCompression });
  const cleanups: (() => Promise<void>)[] = [];
  const cleanup = async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch((err: unknown) => log.warn({ err }, 'shutdown step failed'));
  };
  let ready = false;
  /** Topics a client made on the embedded broker that no stage reads, and the Herald topic probably meant. */
  const strayTopics = new Map<string, string | null>();
  let failed: (err: HeraldError) => void = () => undefined;
  let dead = false;
  const failure = new Promise<HeraldError>((resolve) => (failed = resolve));
  try {
    let broker: EmbeddedBroker | null = null;
    let brokers = config.brokers;
    ensureStateDir(config.stateDir);
    const other = runningHerald(config.stateDir);
    if (other) throw new HeraldError('HRL_STATE_DIR_UNUSABLE', `HERALD_STATE_DIR ${config.stateDir}: another Herald (pid ${other}) is running on it; give each instance its own state directory`);
    const pidFile = join(config.stateDir, 'herald.pid');
    writeFileSync(pidFile, String(process.pid));
    cleanups.push(async () => rmSync(pidFile, { force: true }));
    // The HTTP port, taken now: probes meet a starting instance, not a refused connection.
    let startDetail = (): string[] => [];
    const early = (opts.api ?? true) && !opts.attach ? await StartingServer.listen(config.httpHost, config.httpPort, { registry: metrics.registry, detail: () => startDetail(), metricsToken: config.metricsToken }) : null;
    if (early) {
      cleanups.push(() => early.close());
      early.phase = config.embedded ? 'starting the embedded broker' : 'connecting to the brokers';
    }
    let journal: Journal | null = null;
    const attach = opts.attach ?? null;
    // Whose stores the state directory holds: the embedded journal's, or a real cluster's.
    let identity = attach?.identity ?? '';
    if (attach) {
      guardStateDir(config.stateDir, attach.identity);
      await checkStoresBuiltAgainst(config.stateBackend, config.stateDir, attach.identity);
      brokers = attach.brokers;
    } else if (config.embedded) {
      await Journal.waitForEarlierWriter(join(config.stateDir, 'journal'), log);
      journal = Journal.open(join(config.stateDir, 'journal'));
      identity = `embedded:${journal.id}`;
      guardStateDir(config.stateDir, identity);
      await checkStoresBuiltAgainst(config.stateBackend, config.stateDir, identity);
      broker = await EmbeddedBroker.start({ brokers: config.embeddedBrokers });
      cleanups.push(() => broker!.stop());
      broker.whenDied((d) => {
        const how = d.signal ? `killed by ${d.signal}` : `exit code ${String(d.code)}`;
        const err = new HeraldError('HRL_EMBEDDED_BROKER', `the embedded broker died (${how})${d.stderr ? `, saying: ${d.stderr.replace(/\s*\n\s*/g, ' | ').replace(/\.$/, '')}` : ''}. Its topics, offsets and groups lived in its memory, so this process cannot go on; a restart replays them from the journal in ${join(config.stateDir, 'journal')}`);
        log.fatal({ code: err.code, exitCode: d.code, signal: d.signal, stderr: d.stderr }, 'embedded broker died');
        ready = false;
        dead = true;
        failed(err);
        opts.onFailure?.(err);
      });
      for (const t of topicPlan(config.topicPrefix, config.partitions)) await broker.createTopic(t.name, t.partitions, Math.min(config.embeddedBrokers, 3));
      brokers = broker.bootstraps;
      log.info({ brokers, partitions: config.partitions }, 'embedded broker started (librdkafka mock cluster)');
    }
    let registryUrl = attach ? attach.registryUrl : config.schemaRegistryUrl;
    if (config.embeddedRegistry && !config.embedded) {
      log.warn('KAFKA_BROKERS is set but SCHEMA_REGISTRY_URL is not: the embedded registry numbers schemas per process, so records written now may not decode after a restart or on another instance; set SCHEMA_REGISTRY_URL for real deployments');
    }
    if (config.embeddedRegistry && !attach) {
      const registry = new EmbeddedSchemaRegistry(config.embedded ? join(config.stateDir, 'registry.json') : null);
      registryUrl = await registry.start();
      cleanups.push(() => registry.stop());
      log.info({ url: registryUrl }, 'embedded schema registry started (development stand-in)');
    }
    const serde = new Serde(registryUrl);
    if (early) early.phase = 'registering the schemas';
    for (const key of Object.keys(TOPICS) as TopicKey[]) {
      const schema = TOPICS[key].schema;
      if (schema) await serde.register(topicName(config.topicPrefix, key), schema);
    }
    const runners = new Map<StageName, StageRunner>();
    startDetail = () => [...runners].flatMap(([name, r]) => r.report().reasons.map((why) => `${name}: ${why}`));
    // The broker dropped records a group had not read (kafkajs resets the offset): that is lost data, shown on /readyz.
    const kafka = createKafka(config, brokers, log, undefined, (message, extra) => {
      if (!message.startsWith('Offset out of range, resetting')) return;
      const runner = [...runners].find(([s]) => groupId(config.topicPrefix, s) === extra.groupId)?.[1];
      runner?.health.recordsLost(`${String(extra.topic)}[${String(extra.partition)}] at ${new Date().toISOString()}`);
    });
    const admin = kafka.admin();
    await admin.connect();
    cleanups.push(() => admin.disconnect());
    if (!config.embedded) {
      const existing = new Set(await admin.listTopics());
      const missing = topicPlan(config.topicPrefix, config.partitions).filter((t) => !existing.has(t.name)).map((t) => t.name);
      if (missing.length) {
        throw new HeraldError('HRL_CONFIG_INVALID', `KAFKA_BROKERS: the cluster lacks ${missing.length} Herald topic(s) (${missing.slice(0, 3).join(', ')}${missing.length > 3 ? ', …' : ''}); run \`npm run herald -- topics create\` first`);
      }
    }
    if (!config.embedded && !attach) {
      identity = `kafka:${(await admin.describeCluster()).clusterId}`;
      guardStateDir(config.stateDir, identity);
      await checkStoresBuiltAgainst(config.stateBackend, config.stateDir, identity);
    }
    const producer = createProducer(kafka);
    await producer.connect();
    cleanups.push(() => producer.disconnect());

    // The embedded broker keeps its records in memory: replay the journal into it, then keep journaling.
    const groups = stages.map((s) => ({ groupId: groupId(config.topicPrefix, s), topics: STAGES[s].inputs.map((t) => topicName(config.topicPrefix, t)) }));
    let durable: BrokerJournal | null = null;
    let following: Promise<void> = Promise.resolve();
    let resume: GroupOffsets = attach?.resume ?? {};
    if (journal) {
      const compacted = new Set(topicPlan(config.topicPrefix, config.partitions).filter((t) => t.compacted).map((t) => t.name));
      durable = new BrokerJournal(journal, broker, admin, producer, log.child({ component: 'journal' }), (t) => compacted.has(t));
      if (early) early.phase = 'replaying the embedded broker\'s journal';
      const replayed = await durable.replay();
      if (replayed.records) log.info({ ...replayed, seconds: Number(replayed.seconds.toFixed(3)) }, 'embedded broker restored from its journal');
      resume = durable.resumeOffsets();
      // Joins its group while the stages join theirs (below); the API opens after both.
      const d0 = durable;
      following = d0.follow(topicPlan(config.topicPrefix, config.partitions).map((t) => t.name)).then(() => d0.startSnapshots(groups, config.commitIntervalMs));
      following.catch(() => undefined);
      durable.watchPressure(groups, config.embeddedMaxUnreadBytes, resume);
      const d = durable;
      cleanups.push(() => d.stop(groups));
      // The embedded broker, like Kafka with auto.create.topics.enable, makes a topic on a
      // client's first write: a record sent to `events.v1` (the prefix forgotten) was accepted
      // and never read. Such topics are said, once each, with the Herald topic meant.
      const planned = topicPlan(config.topicPrefix, config.partitions).map((t) => t.name);
      const watch = setInterval(() => {
        void admin.listTopics().then((names) => {
          for (const name of names) {
            if (planned.includes(name) || name.startsWith('__') || strayTopics.has(name)) continue;
            const meant = planned.find((p) => p === `${config.topicPrefix}${name}` || p.endsWith(`.${name}`)) ?? null;
            strayTopics.set(name, meant);
            log.warn({ topic: name, meant }, `a client wrote to topic ${name} on the embedded broker: no Herald stage reads it${meant ? ` (did you mean ${meant}?)` : ''}`);
          }
        }, () => undefined);
      }, STRAY_TOPIC_CHECK_MS);
      watch.unref();
      cleanups.push(async () => clearInterval(watch));
    }
    let closed = false;
    let quiesced: Promise<void> | null = null;
    let quiesce: () => Promise<void> = async () => undefined;
    const pressure = (): string | null => {
      const p = durable?.pressure();
      return p ? `${p.group} has ${p.records} records (~${Math.round(p.bytes / 1024)} KiB as the broker counts them) unread on ${p.topic}[${p.partition}] (limit ${Math.round(config.embeddedMaxUnreadBytes / 1024)} KiB${p.held !== undefined ? `, or half of the ${p.held} records the broker holds` : ''})` : null;
    };
    /**
     * Back-pressure for a stage: before each batch, it waits while a reader of a topic it
     * writes to (its outputs, its changelogs) is close to losing records at the embedded broker.
     */
    const roomFor = (d: { holding(writes: ReadonlySet<string>, self: string): Pressure | null }, stage: StageName, fused: readonly StageName[]) => {
      // A fused run's first stage waits for room for everything the run writes.
      const run = fused.length ? fused : [stage];
      const writes = new Set(run.flatMap((st) => [...STAGES[st].outputs.map((t) => topicName(config.topicPrefix, t)), ...STAGES[st].stores.filter((s) => s.changelog === true).map((s) => changelogTopic(config.topicPrefix, st, s.name))]));
      const self = groupId(config.topicPrefix, stage);
      return async () => {
        while (d.holding(writes, self) && !closed) await new Promise((r) => setTimeout(r, 50));
      };
    };
    /** Sends that the API acknowledges: acks=-1 and, on the embedded broker, journaled. */
    const send: Send = async (record) => {
      const meta = await producer.send(record);
      if (durable) await durable.journaled(meta, countsOf(record, config.partitions));
      return meta;
    };

    if (signsWithDefaultSecret(config.webhookSecret) && !attach) {
      log.warn('HERALD_WEBHOOK_SECRET is or includes the public development default: anyone can forge webhooks that verify; set your own before sending to real receivers (Herald refuses it against real Kafka wherever the deliver stage runs)');
    }
    if (config.smtpUrl && /@herald\.invalid>?\s*$/.test(config.smtpFrom) && !attach) {
      log.warn('HERALD_SMTP_FROM is the default notifications@herald.invalid: mail sent through HERALD_SMTP_URL comes from a domain that does not exist, so bounces go nowhere and receivers may refuse it; set an address of your own domain');
    }
    const outbound: OutboundPolicy = { requireHttps: !config.embedded, allow: parseAllowList(config.outboundAllow) };
    const tables = new GlobalTables(kafka, admin, serde, config, log.child({ component: 'tables' }), metrics);
    cleanups.push(() => tables.stop());
    // Per-tenant signing secrets (HERALD_WEBHOOK_SECRET for tenants without any), read before deliver signs anything.
    const wantApi = opts.api ?? true;
    const signing = new SigningSecrets(kafka, admin, topicName(config.topicPrefix, 'signingSecrets'), config.topicPrefix, log.child({ component: 'signing-secrets' }), secretsOf(config.webhookSecret));
    const wantSigning = wantApi || stages.includes('deliver');
    const signingReady = wantSigning ? signing.start() : Promise.resolve();
    signingReady.catch(() => undefined);
    if (wantSigning) cleanups.push(() => signing.stop());
    const secretsFor = (tenant: string) => signing.secretsFor(tenant);
    const channelMap = new Map<string, ChannelProvider>([['webhook', new WebhookChannel(secretsFor, outbound)], ['chat', chatChannel(secretsFor, outbound)], ['inapp', new InAppChannel()]]);
    const inbox = new InboxHub();
    // Email: the configured SMTP server; on the embedded default without one, a local sink.
    let sink: SmtpSink | null = null;
    if (!config.smtpUrl && config.embedded && !attach) {
      sink = new SmtpSink();
      await sink.start();
      const s = sink;
      cleanups.push(() => s.stop());
    }
    const smtpUrl = config.smtpUrl || sink?.url || attach?.smtpUrl;
    if (smtpUrl) channelMap.set('email', new EmailChannel({ url: smtpUrl, from: config.smtpFrom, timeoutMs: config.deliveryTimeoutMs, tenantHeader: !config.smtpUrl }));
    for (const c of opts.channels ?? []) channelMap.set(c.name, c);
    cleanups.push(async () => {
      await Promise.all([...channelMap.values()].map((c) => c.close?.()));
    });
    const codec = new Codec(serde, config);
    // One produce pipe for every stage: batches handed over while a request is out go together in the next.
    const stageProducer = new CoalescingProducer(producer, 1, config.producerLingerMs);
    const deps = { config, rules, log, metrics, tables, availableChannels: new Set(channelMap.keys()), inbox };
    const factories = processors(channelMap);
    const neededTables = [...new Set(stages.flatMap((s) => STAGES[s].tables))] as TableName[];
    // The API answers GET /v1/users/:id from the users table.
    if (wantApi && !neededTables.includes('users')) neededTables.push('users');
    const tablesReady = tables.start(neededTables);
    tablesReady.catch(() => undefined);
    const wantDirectory = wantApi || stages.includes('outcome');
    const directory = new InstanceDirectory(kafka, admin, producer, config, log.child({ component: 'instances' }));
    const directoryReady = wantDirectory ? directory.start() : Promise.resolve();
    directoryReady.catch(() => undefined);
    if (wantDirectory) {
      cleanups.push(() => directory.stop());
    }
    const keys = new KeyDirectory(kafka, admin, topicName(config.topicPrefix, 'keys'), config.topicPrefix, log.child({ component: 'keys' }));
    const keysReady = wantApi ? keys.start() : Promise.resolve();
    keysReady.catch(() => undefined);
    if (wantApi) cleanups.push(() => keys.stop());
    let advertised = config.advertisedUrl;
    // Fused runs (topology.ts SUB_TOPOLOGY): the first stage fetches; each one hands what it
    // produced for the next to that stage's task of the same partition, in process.
    // Not with --workers: a fused run hands records to the next stage's task of the same
    // partition in this process, so every group must give partition p to the same process
    // at every moment; with several members per group, one group's rebalance then waits on
    // another's (a batch retrying a hand-over cannot rejoin), which the broker only breaks
    // with its rebalance timeout. Workers run each stage on its own.
    const runs = config.fuseStages && config.workers === 1 ? fusedRuns(stages) : [];
    if (config.fuseStages && config.workers > 1 && !attach) log.info({ workers: config.workers }, 'stages not fused: with several workers each stage fetches its own input');
    // Resolves once every runner below exists.
    let created!: () => void;
    const started = new Promise<void>((r) => (created = r));
    const runOf = (stage: StageName) => runs.find((r) => r.includes(stage)) ?? [];
    for (const r of runs) log.info({ stages: r }, 'stages fused: one task per partition runs them together (HERALD_FUSE_STAGES=false runs each on its own)');
    // With --workers every process's members join together (WorkerPool.joinTogether): each
    // waits until all of this process's are about to join, then for the other processes'.
    let atJoin = 0;
    let allAtJoin!: () => void;
    const together = new Promise<void>((resolve) => (allAtJoin = resolve)).then(() => (attach ? attach.together() : workers?.joinTogether()));
    together.catch(() => undefined);
    const joinAt = () => {
      if (++atJoin === runners.size) allAtJoin();
      return together;
    };
    for (const stage of stages) {
      const run = runOf(stage);
      const own = stage === 'deliver' ? Promise.all([signingReady, tablesReady]).then(() => undefined) : STAGES[stage].tables.length ? tablesReady : undefined;
      // A fused run's first stage starts once the others hold their partitions and have done their backlog.
      const gate = run[0] === stage ? Promise.all([own, ...run.slice(1).map((s) => started.then(() => runners.get(s)!.joined).then(() => runners.get(s)!.settled()))]).then(() => undefined) : own;
      gate?.catch(() => undefined);
      const next = run[run.indexOf(stage) + 1];
      const fused = {
        ...(run.length && run[0] !== stage ? { fed: true } : {}),
        ...(next ? { forward: { topicKey: STAGES[next].inputs[0] as TopicKey, to: (p: number, produced: Parameters<StageRunner['feed']>[1]) => runners.get(next)!.feed(p, produced) } } : {}),
      };
      runners.set(stage, new StageRunner({
        ...fused,
        stage, factory: factories[stage] as StageFactory, deps, kafka, admin, producer: stageProducer, codec, config, log, metrics, ...(gate ? { gate } : {}),
        resumeAt: new Map(Object.entries(resume[groupId(config.topicPrefix, stage)] ?? {}).map(([t, parts]) => [t, new Map(Object.entries(parts).map(([p, o]) => [Number(p), BigInt(o)]))])),
        advertisedUrl: () => advertised,
        // The projection is not on the delivery path: fewer, larger batches cost less CPU per decision.
        ...(stage === 'outcome' ? { lingerMs: config.projectionLingerMs } : {}),
        ...(durable && !fused.fed ? { room: roomFor(durable, stage, run) } : {}),
        ...(attach && !fused.fed ? { room: roomFor(attach.pressure, stage, run) } : {}),
        onAssignment: (partitions, memberId) => directory.assigned(stage, partitions, memberId),
        // With workers, the primary (API, journal, embedded broker) takes a smaller share of the partitions.
        ...(config.workers > 1 ? { joinAt, assignWeight: attach ? 1 : config.primaryShare / 100 } : {}),
      }));
    }
    created();
    // --workers (below): declared here, so the stop step below can see them.
    let workers: WorkerPool | null = null;
    /** Runs `fn` on every runner; a fused run in order: a stage after the one that hands it records. */
    const inOrder = (fn: (r: StageRunner) => Promise<void>) => {
      const started = new Map<StageName, Promise<void>>();
      const go = (stage: StageName): Promise<void> => {
        const known = started.get(stage);
        if (known) return known;
        const run = runOf(stage);
        const before = run[run.indexOf(stage) - 1];
        const p = (before && runners.has(before) ? go(before) : Promise.resolve()).then(() => fn(runners.get(stage)!));
        started.set(stage, p);
        return p;
      };
      return Promise.allSettled([...runners.keys()].map(go));
    };
    // Every process finishes, settles and commits before any member leaves its groups: a
    // leave starts a rebalance, and a commit made during one is refused (the records since
    // the last commit would run again after the restart).
    quiesce = () => (quiesced ??= Promise.allSettled([workers?.quiesce() ?? Promise.resolve(), inOrder((r) => r.quiesce())]).then(() => undefined));
    cleanups.push(async () => {
      await quiesce();
      // The workers stop with the primary's stages, so no partition moves in between; and
      // all of them are waited for, even if one fails, before the broker goes.
      const stopped = await Promise.allSettled([workers?.stop() ?? Promise.resolve(), inOrder((r) => r.stop())]);
      const failed = [...stopped, ...(stopped[1]?.status === 'fulfilled' ? stopped[1].value : [])].find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
    });
    // --workers: N-1 more members of every group, in processes of their own.
    workers = !attach && config.workers > 1 ? new WorkerPool({
      count: config.workers - 1,
      job: { instanceId: config.instanceId, stateDir: config.stateDir, brokers, registryUrl, identity, resume, smtpUrl: smtpUrl ?? null, stages: [...stages], api: wantApi, advertisedUrl: config.advertisedUrl, overrides: Object.fromEntries(Object.keys(CONFIG_KEYS).map((k) => [k, config[k as keyof typeof CONFIG_KEYS]])) },
      hot: () => durable?.hotReaders() ?? [],
      log: log.child({ component: 'workers' }),
    }) : null;
    if (early) early.phase = 'catching up the global tables, joining the stage groups and restoring their stores';
    await Promise.all([
      // The workers join with this process's members: on a fresh group every member gets
      // in within the broker's initial rebalance delay (3 s); joining a group already up
      // would make it wait for its members to rejoin, up to the session timeout.
      workers?.start(),
      tablesReady,
      following,
      directoryReady,
      keysReady,
      signingReady,
      ...[...runners.values()].map(async (r) => {
        await r.start();
        await r.joined;
        await r.settled();
      }),
    ]);
    const devKey = wantApi && !attach ? await devKeyOf(config, keys, send, log) : null;
    ready = !dead;

    const health = processHealth({ runners, tables, metrics, started: () => ready, endpoints: { brokers, registry: registryUrl }, workers, warnings: () => {
      const p = pressure();
      return [
        ...(p ? [`back-pressure: ${p}`] : []),
        ...(signsWithDefaultSecret(config.webhookSecret) ? ['HERALD_WEBHOOK_SECRET is or includes the public development default'] : []),
        ...[...strayTopics].map(([name, meant]) => `topic ${name} is not Herald's: no stage reads it${meant ? ` (did you mean ${meant}?)` : ''}`),
      ];
    } });
    const herald: Herald = {
      config, brokers, registryUrl, httpUrl: null, broker, kafka, admin, producer, serde, rules, tables, runners, directory, metrics, log, api: null, devKey, workers,
      isReady: () => ready,
      failure,
      readiness: () => { const r = health.readiness(); return { ready: r.ready, reasons: (r.reasons as string[] | undefined) ?? [] }; },
      quiesce: () => quiesce(),
      stop: async () => {
        ready = false;
        closed = true;
        await cleanup();
      },
    };
    if (wantApi) {
      const api = await buildApi({
        ...(early ? { serverFactory: (handler: Parameters<StartingServer['handOver']>[0]) => early.handOver(handler) } : {}),
        publisher: kafkaPublisher({ send }, serde, config, pressure),
        profiles: kafkaProfiles({ send }, serde, tables, config),
        lifecycle: new LifecycleRouter({
          local: () => runners.get('outcome')?.stores('lifecycle') ?? new Map(),
          directory, partitions: config.partitions, timeoutMs: config.queryTimeoutMs, log: log.child({ component: 'queries' }), inbox,
        }),
        health, ...(attach ? { workerOf: attach.instanceId } : {}),
        httpMetrics: { observe: (method, route, status, seconds) => {
          metrics.httpRequests.inc({ method, route, status: String(status) });
          metrics.httpDuration.observe({ method, route }, seconds);
        } },
        keys: keys.authenticator, outbound, signing: signingPort(signing, { send }), ...(sink ? { mailbox: sink } : {}), rate: { perSecond: config.apiRate, burst: config.apiBurst },
        rules, maxPayloadBytes: config.maxPayloadBytes, idempotencyCacheBytes: config.idempotencyCacheBytes, metricsToken: config.metricsToken, log: log.child({ component: 'api' }),
      });
      cleanups.push(() => api.close());
      herald.api = api;
      // The starting answers end; the API takes the port they held.
      // The API takes over the server the start has been answering on (no request refused
      // or reset in between); without one it listens itself.
      const address = early ? await api.ready().then(() => (early.takeOver(), urlOf(config.httpHost, early.port))) : await api.listen({ port: config.httpPort, host: config.httpHost }).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EADDRINUSE' && err.code !== 'EACCES') throw err;
        const why = err.code === 'EADDRINUSE' ? 'is already in use (another Herald, or another server)' : 'may not be opened by this user';
        throw new HeraldError('HRL_CONFIG_INVALID', `HERALD_HTTP_PORT: ${config.httpHost}:${config.httpPort} ${why}; stop what holds it, or set HERALD_HTTP_PORT to another port (0 picks a free one)`, { cause: err });
      });
      herald.httpUrl = address;
      // A worker is reached at the primary's advertised host, on its own port.
      const base = attach?.advertisedUrl;
      // Bound to every interface, the address listened on says 127.0.0.1, which every other
      // instance would take for itself (a query forwarded there reached the wrong instance):
      // this machine's host name is advertised instead.
      const wildcard = ['0.0.0.0', '::', ''].includes(config.httpHost);
      const reachable = wildcard ? Object.assign(new URL(address), { hostname: hostname() }).toString().replace(/\/+$/, '') : address;
      advertised ||= base ? Object.assign(new URL(base), { port: new URL(address).port }).toString().replace(/\/+$/, '') : reachable;
      directory.setUrl(advertised);
      // Where the CLI (`herald keys`, `herald tail`) finds this instance's broker and API.
      const endpoints = join(config.stateDir, 'endpoints.json');
      writeFileSync(endpoints, JSON.stringify({ pid: process.pid, brokers, registry: registryUrl, http: address, rules: rules.source }));
      cleanups.push(async () => rmSync(endpoints, { force: true }));
    }
    return herald;
  } catch (err) {
    await cleanup();
    throw err;
  }
}
