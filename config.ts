/**
 * Herald's one validated, frozen configuration, read from the environment.
 * Each key has a default and a one-line doc; `loadConfig` fails fast with an error that
 * names the variable and what was expected. The README's configuration table is this list.
 */
import { availableParallelism, hostname } from 'node:os';
import { resolve } from 'node:path';
import { checkFrom } from './channels/mailbox.ts';
import { parseAllowList } from './channels/outbound.ts';
import { HeraldError } from './errors.ts';

type Kind = 'string' | 'int' | 'bool' | 'enum';
interface KeySpec {
  env: string;
  kind: Kind;
  default: string;
  doc: string;
  values?: readonly string[];
  min?: number;
  max?: number;
}

/** The signing secret a fresh clone starts with: refused against real Kafka, warned about on the embedded broker. */
export const DEFAULT_WEBHOOK_SECRET = 'herald-dev-secret';
/**
 * The refusal of the public development signing secret where webhooks go to real receivers:
 * a process that delivers (the deliver stage) against a real cluster. Read-only commands
 * (explain, replay, tail, describe) sign nothing and need no secret.
 */
export function checkSigningSecret(config: { embedded: boolean; webhookSecret: string }): void {
  // An empty HMAC key signs, and anyone can compute the signature.
  if (config.webhookSecret.split(',').some((part) => part.trim() === '')) {
    throw new HeraldError('HRL_CONFIG_INVALID', `HERALD_WEBHOOK_SECRET: expected a secret (or \`new,old\` while rotating), got ${config.webhookSecret.trim() === '' ? 'an empty value' : 'an empty part'}: anyone could sign with it; set a secret of your own, e.g. $(openssl rand -hex 32)${config.embedded ? ', or unset it for the development default' : ''}`);
  }
  if (!config.embedded && signsWithDefaultSecret(config.webhookSecret)) {
    throw new HeraldError('HRL_CONFIG_INVALID', `HERALD_WEBHOOK_SECRET: the default development secret cannot sign webhooks against a real cluster (KAFKA_BROKERS is set); set a secret of your own, e.g. $(openssl rand -hex 32)`);
  }
}

/** Whether HERALD_WEBHOOK_SECRET (one secret, or `new,old` while rotating) still signs with the public default. */
export const signsWithDefaultSecret = (webhookSecret: string): boolean => webhookSecret.split(',').map((s) => s.trim()).includes(DEFAULT_WEBHOOK_SECRET);

export const CONFIG_KEYS = {
  brokers: { env: 'KAFKA_BROKERS', kind: 'string', default: '', doc: 'Comma-separated Kafka bootstrap servers; empty starts the embedded broker.' },
  schemaRegistryUrl: { env: 'SCHEMA_REGISTRY_URL', kind: 'string', default: '', doc: 'Confluent Schema Registry URL; empty starts the embedded registry.' },
  saslMechanism: { env: 'KAFKA_SASL_MECHANISM', kind: 'enum', default: '', values: ['', 'plain', 'scram-sha-256', 'scram-sha-512'], doc: 'SASL mechanism for real Kafka.' },
  saslUsername: { env: 'KAFKA_SASL_USERNAME', kind: 'string', default: '', doc: 'SASL user name.' },
  saslPassword: { env: 'KAFKA_SASL_PASSWORD', kind: 'string', default: '', doc: 'SASL password (never logged).' },
  ssl: { env: 'KAFKA_SSL', kind: 'bool', default: 'false', doc: 'Use TLS to reach the brokers.' },
  topicPrefix: { env: 'HERALD_TOPIC_PREFIX', kind: 'string', default: 'herald.', doc: 'Prefix of every Herald topic name.' },
  partitions: { env: 'HERALD_PARTITIONS', kind: 'int', default: '4', min: 1, max: 256, doc: 'Partition count shared by every recipient-keyed topic.' },
  replicationFactor: { env: 'HERALD_REPLICATION_FACTOR', kind: 'int', default: '1', min: 1, max: 5, doc: 'Replication factor used by `herald topics create`.' },
  embeddedBrokers: { env: 'HERALD_EMBEDDED_BROKERS', kind: 'int', default: '1', min: 1, max: 16, doc: 'Broker count of the embedded mock cluster.' },
  stateDir: { env: 'HERALD_STATE_DIR', kind: 'string', default: '.herald/state', doc: 'Directory of the local state stores.' },
  stateBackend: { env: 'HERALD_STATE_BACKEND', kind: 'enum', default: 'rocksdb', values: ['rocksdb', 'level', 'memory'], doc: 'Store backend: RocksDB on disk, LevelDB on disk (level), or memory (tests).' },
  httpHost: { env: 'HERALD_HTTP_HOST', kind: 'string', default: '127.0.0.1', doc: 'Interface the HTTP API listens on.' },
  httpPort: { env: 'HERALD_HTTP_PORT', kind: 'int', default: '8080', min: 0, max: 65535, doc: 'Port of the HTTP API; 0 picks a free one.' },
  advertisedUrl: { env: 'HERALD_ADVERTISED_URL', kind: 'string', default: '', doc: 'Base URL other instances use to reach this one\'s HTTP API (Kafka Streams\' application.server); default http://<host>:<port> as listened on.' },
  publishTimeoutMs: { env: 'HERALD_PUBLISH_TIMEOUT_MS', kind: 'int', default: '10000', min: 100, max: 120000, doc: 'How long an API write (an event, a profile, preferences, audience members) waits for the brokers to acknowledge it (and, embedded, for the journal); then 503 HRL_BROKER_UNREACHABLE.' },
  queryTimeoutMs: { env: 'HERALD_QUERY_TIMEOUT_MS', kind: 'int', default: '3000', min: 100, max: 60000, doc: 'Timeout of a query forwarded to the instance that holds its partition.' },
  rulesFile: { env: 'HERALD_RULES', kind: 'string', default: 'rules/default.json', doc: 'Notification rules file.' },
  webhookSecret: { env: 'HERALD_WEBHOOK_SECRET', kind: 'string', default: DEFAULT_WEBHOOK_SECRET, doc: 'HMAC-SHA256 key that signs outgoing webhooks (never logged); `new,old` while rotating: both signatures are sent.' },
  smtpUrl: { env: 'HERALD_SMTP_URL', kind: 'string', default: '', doc: 'SMTP server for the email channel, e.g. smtps://user:pass@smtp.example.com:465 (never logged); empty: the embedded default runs a local SMTP sink (GET /v1/dev/mailbox), real Kafka sends no email.' },
  smtpFrom: { env: 'HERALD_SMTP_FROM', kind: 'string', default: 'Herald <notifications@herald.invalid>', doc: 'From address of notification emails.' },
  devKey: { env: 'HERALD_DEV_KEY', kind: 'string', default: '', doc: 'API key (16-256 characters) registered for tenant acme with the admin scope at start (never logged); on the embedded broker a random one is made and kept in the state dir when unset.' },
  metricsToken: { env: 'HERALD_METRICS_TOKEN', kind: 'string', default: '', doc: 'When set, GET /metrics needs `Authorization: Bearer <this>` (Prometheus: `authorization: { credentials: ... }` in the scrape config); its labels name the webhook and chat hosts of every tenant. Empty: /metrics is open. Never logged.' },
  outboundAllow: { env: 'HERALD_OUTBOUND_ALLOW', kind: 'string', default: '', doc: 'IPs or CIDR ranges that webhook and chat deliveries may reach although they are not public (loopback, private, link-local, CGNAT...); default 127.0.0.0/8,::1 on the embedded broker, none otherwise.' },
  apiRate: { env: 'HERALD_API_RATE', kind: 'int', default: '5000', min: 1, max: 1000000, doc: 'Events per second each tenant may publish through the API (token bucket); above it the API answers 429 with Retry-After.' },
  apiBurst: { env: 'HERALD_API_BURST', kind: 'int', default: '10000', min: 1, max: 10000000, doc: 'Size of each tenant\'s token bucket: events it may publish at once after a quiet spell.' },
  idempotencyCacheBytes: { env: 'HERALD_IDEMPOTENCY_CACHE_BYTES', kind: 'int', default: '33554432', min: 65536, max: 1073741824, doc: 'Memory for remembered answers to requests with an Idempotency-Key (24 h, least recently used first out).' },
  maxFanout: { env: 'HERALD_MAX_FANOUT', kind: 'int', default: '20000', min: 1, max: 1000000, doc: 'Most notifications one event may fan out to (explicit recipients plus audience members, per rule); larger events are REJECTED and dead-lettered, so one event cannot take the memory of a batch.' },
  logLevel: { env: 'HERALD_LOG_LEVEL', kind: 'enum', default: 'info', values: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], doc: 'pino log level.' },
  maxPayloadBytes: { env: 'HERALD_MAX_PAYLOAD_BYTES', kind: 'int', default: '262144', min: 1024, max: 16777216, doc: 'Largest accepted event, in bytes; larger ones are dead-lettered.' },
  workers: { env: 'HERALD_WORKERS', kind: 'int', default: '0', min: 0, max: 64, doc: 'Processes that run the stages (as Kafka Streams\' num.stream.threads); 0: one per core (os.availableParallelism()), at most HERALD_PARTITIONS. `herald start` forks N-1 workers, each one more member of every stage group; partitions spread across them; the HTTP API, /metrics and /readyz cover all. Also `herald start --workers N`.' },
  heapMb: { env: 'HERALD_HEAP_MB', kind: 'int', default: '256', min: 64, max: 65536, doc: 'V8 old-space limit of each Herald process, in MB (node --max-old-space-size; the young generation is held to 16 MB semi-spaces): `npm start` and the image start node with it, and workers inherit the flags of the process that forks them. A tighter limit makes V8 collect sooner, so a process keeps less garbage resident; a process whose live heap reaches it stops with "JavaScript heap out of memory" (raise it then). It replaces a --max-old-space-size in NODE_OPTIONS (flags on the command line win); `node cli/herald.ts start` run by hand keeps whatever node was given.' },
  primaryShare: { env: 'HERALD_PRIMARY_SHARE', kind: 'int', default: '100', min: 0, max: 100, doc: 'With workers: the share of partitions the process you start takes, in percent of a worker\'s (it also answers the HTTP API; the embedded broker and its journal writer run in a process of their own). 100: an equal share; 50: half a worker\'s (1 of 4 partitions beside one worker); 0: none while a worker runs.' },
  instanceId: { env: 'HERALD_INSTANCE_ID', kind: 'string', default: '', doc: 'Name of this instance in logs and client ids; default host-pid.' },
  sessionTimeoutMs: { env: 'HERALD_SESSION_TIMEOUT_MS', kind: 'int', default: '30000', min: 3000, max: 300000, doc: 'Consumer group session timeout: how long a dead instance holds its partitions.' },
  dedupeGraceMs: { env: 'HERALD_DEDUPE_GRACE_MS', kind: 'int', default: '3600000', min: 0, max: 604800000, doc: 'How long after its window a dedupe key is kept for late records.' },
  commitIntervalMs: { env: 'HERALD_COMMIT_INTERVAL_MS', kind: 'int', default: '1000', min: 0, max: 60000, doc: 'How often completed batches commit their offsets (0 = after every batch).' },
  deliveryTimeoutMs: { env: 'HERALD_DELIVERY_TIMEOUT_MS', kind: 'int', default: '10000', min: 100, max: 120000, doc: 'Timeout of one channel call.' },
  maxDeliveryAttempts: { env: 'HERALD_MAX_DELIVERY_ATTEMPTS', kind: 'int', default: '5', min: 1, max: 50, doc: 'Attempts per delivery before it is dead-lettered.' },
  deliveryResultRetentionMs: { env: 'HERALD_DELIVERY_RESULT_RETENTION_MS', kind: 'int', default: '604800000', min: 86400000, max: 31536000000, doc: 'How long deliver remembers a settled delivery (its result, which skips a task read again) before a timer deletes it; at least a day, the longest HERALD_MAX_RETRY_DELAY_MS, so an open delivery\'s last attempt is remembered until its next one. Results written before this setting existed are kept. Keep it at least as long as deliveries.v1 and deliver.retry.v1 keep records (Kafka\'s default: 7 days), or a task read again after its result was forgotten (offsets reset to the earliest) is sent again.' },
  maxRetryDelayMs: { env: 'HERALD_MAX_RETRY_DELAY_MS', kind: 'int', default: '300000', min: 10, max: 86400000, doc: 'Longest wait before a retry, whatever Retry-After asks.' },
  embeddedMaxUnreadBytes: { env: 'HERALD_EMBEDDED_MAX_UNREAD_BYTES', kind: 'int', default: '3145728', min: 65536, max: 4718592, doc: 'Embedded broker only: unread bytes of one partition (as the broker counts them, estimated), for any stage or the journal, above which the API answers 503 and the stages writing to that topic wait; the broker keeps ~5 MB per partition and drops older records, so pressure also comes on when a reader is behind by half of what it holds.' },
  stallMs: { env: 'HERALD_STALL_MS', kind: 'int', default: '60000', min: 1000, max: 3600000, doc: 'A stage with a batch running or failing, or with lag and no progress, for this long is reported not ready.' },
  timerIntervalMs: { env: 'HERALD_TIMER_INTERVAL_MS', kind: 'int', default: '100', min: 10, max: 60000, doc: 'How often wall-clock timers run (due retries are released at this granularity).' },
  endpointConcurrency: { env: 'HERALD_ENDPOINT_CONCURRENCY', kind: 'int', default: '16', min: 1, max: 1000, doc: 'Calls in flight to one endpoint (webhook or chat host, the SMTP server) per process; more wait their turn (and are detached from their batch if they wait long).' },
  channelConcurrency: { env: 'HERALD_CHANNEL_CONCURRENCY', kind: 'int', default: '128', min: 1, max: 10000, doc: 'Calls in flight per channel per process.' },
  breakerFailures: { env: 'HERALD_BREAKER_FAILURES', kind: 'int', default: '5', min: 1, max: 1000, doc: 'Consecutive transient failures of one endpoint (webhook or chat host, SMTP server) that open its circuit.' },
  breakerOpenMs: { env: 'HERALD_BREAKER_OPEN_MS', kind: 'int', default: '30000', min: 100, max: 3600000, doc: 'How long an open circuit holds tasks before one probe is let through.' },
  deliveryBatchWaitMs: { env: 'HERALD_DELIVERY_BATCH_WAIT_MS', kind: 'int', default: '1000', min: 10, max: 120000, doc: 'How long a deliver batch waits for its channel calls; calls still running then finish on their own and are recorded by a timer, so a slow endpoint never holds back other deliveries.' },
  storeWriteBufferBytes: { env: 'HERALD_STORE_WRITE_BUFFER_BYTES', kind: 'int', default: '4194304', min: 65536, max: 268435456, doc: 'RocksDB memtable size (write_buffer_size; up to 6 memtables) of the one database all store partitions of a state directory share; also sizes the write-ahead log it preallocates.' },
  storeCompression: { env: 'HERALD_STORE_COMPRESSION', kind: 'bool', default: 'false', doc: 'RocksDB stores: ZSTD with trained dictionaries below the level L0 compacts into, and a ZSTD-compressed write-ahead log. Off, as in Kafka Streams: L0, that level and the log stay uncompressed and deeper levels plain ZSTD; writing the projection cost a fifth less CPU that way, for about the same disk.' },
  storeCacheBytes: { env: 'HERALD_STORE_CACHE_BYTES', kind: 'int', default: '16777216', min: 0, max: 1073741824, doc: 'RocksDB block cache shared by all store partitions of a state directory.' },
  fuseStages: { env: 'HERALD_FUSE_STAGES', kind: 'bool', default: 'true', doc: 'Run enrich, dedupe, throttle and route fused, one task per partition (a Kafka Streams sub-topology): each still writes its output topic before the next handles the records in process, instead of fetching them back from the broker. false runs every stage on its own.' },
  fetchMinBytes: { env: 'HERALD_FETCH_MIN_BYTES', kind: 'int', default: '1', min: 1, max: 16777216, doc: 'Stage consumers: bytes a fetch waits for (fetch.min.bytes); more makes larger batches under load, at up to HERALD_FETCH_MAX_WAIT_MS per hop when quiet.' },
  fetchMaxPartitionBytes: { env: 'HERALD_FETCH_MAX_PARTITION_BYTES', kind: 'int', default: '262144', min: 1024, max: 16777216, doc: 'Stage consumers: most bytes one fetch returns per partition (max.partition.fetch.bytes), against real Kafka: under a backlog each stage holds what it fetched beside up to 1,000 buffered records per partition, decoded, and 256 KB (about 800 events) keeps that in bounds where Kafka\'s default 1 MB holds four times more; a record larger than this is still returned, alone. The embedded broker returns one whole produced batch per partition whatever this says.' },
  shareFetches: { env: 'HERALD_SHARE_FETCHES', kind: 'bool', default: 'true', doc: 'The consumers of a process (every stage, the table readers) share Fetch requests: fetches sent to the same broker in the same turn of the event loop go out as one request, and each consumer gets its own partitions back, as one Kafka Streams consumer fetches for all of a thread\'s tasks. Each stage keeps its own group, offsets and lag. false: every consumer sends its own.' },
  fetchIdleWaitMs: { env: 'HERALD_FETCH_IDLE_WAIT_MS', kind: 'int', default: '250', min: 0, max: 10000, doc: 'Stage consumers: after 3 empty fetches in a row, each further fetch waits twice as long as the one before, up to this (0: always HERALD_FETCH_MAX_WAIT_MS); a fetch that brings records goes back to the short wait. At most a third of HERALD_SESSION_TIMEOUT_MS (kafkajs heartbeats between fetches); at or below HERALD_FETCH_MAX_WAIT_MS it is off. The embedded broker answers a waiting fetch only when the wait ends, so a short wait is what keeps its hops quick, and every empty fetch costs about 1 ms of CPU: an idle Herald polled ~100 times a second per stage process. Real Kafka answers as soon as HERALD_FETCH_MIN_BYTES have arrived (a record, with the default of 1).' },
  projectionLingerMs: { env: 'HERALD_PROJECTION_LINGER_MS', kind: 'int', default: '0', min: 0, max: 10000, doc: 'The outcome stage (the lifecycle projection behind the notification, user and inbox API; not on the delivery path): records reaching an idle partition wait up to this long for more, and are handled as one batch of up to 500. Decisions show in the API and the live inbox up to this much later. 0 (the default): every fetch at once. 200 made its batches ~8 times larger under the HTTP bench, but Herald\'s CPU per event did not change beyond the runs\' variation.' },
  producerLingerMs: { env: 'HERALD_PRODUCER_LINGER_MS', kind: 'int', default: '5', min: 0, max: 1000, doc: 'The stages\' shared producer (linger.ms): a batch of records handed over while no produce request is outstanding waits up to this long for other stages\' batches to share its request. Fewer, larger requests and message sets (so fewer fetches downstream) at up to twice this much latency per hop (outputs, then changelog records). 5 ms is Kafka 4.0\'s producer default; 0 sends every batch at once.' },
  fetchMaxWaitMs: { env: 'HERALD_FETCH_MAX_WAIT_MS', kind: 'int', default: '20', min: 0, max: 10000, doc: 'Stage consumers: longest a fetch waits for HERALD_FETCH_MIN_BYTES (fetch.max.wait.ms).' },
  retryBaseMs: { env: 'HERALD_RETRY_BASE_MS', kind: 'int', default: '1000', min: 10, max: 600000, doc: 'First retry delay; doubles per attempt.' },
} as const satisfies Record<string, KeySpec>;

type Keys = typeof CONFIG_KEYS;
type ValueOf<K extends KeySpec> = K['kind'] extends 'int' ? number : K['kind'] extends 'bool' ? boolean : K extends { values: readonly (infer V)[] } ? V : string;
export type HeraldConfig = Readonly<{ [P in keyof Keys]: ValueOf<Keys[P]> }> & { readonly embedded: boolean; readonly embeddedRegistry: boolean };

/** Reads, validates and freezes the configuration. Throws HRL_CONFIG_INVALID naming the variable. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, overrides: Partial<Record<keyof Keys, string | number | boolean>> = {}): HeraldConfig {
  const out: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(CONFIG_KEYS) as [keyof Keys, KeySpec][]) {
    const over = overrides[name];
    const raw = over !== undefined ? String(over) : (env[spec.env] ?? spec.default).trim();
    out[name] = parse(spec, raw);
  }
  if (!out.instanceId) out.instanceId = `${hostname()}-${process.pid}`;
  // One per core, but no more than there are partitions: a member beyond them would hold none (Kafka Streams' threads alike).
  if (out.workers === 0) out.workers = Math.max(1, Math.min(availableParallelism(), Number(out.partitions), CONFIG_KEYS.workers.max));
  out.stateDir = resolve(String(out.stateDir));
  out.embedded = out.brokers === '';
  out.embeddedRegistry = out.schemaRegistryUrl === '';
  if (out.saslMechanism && !out.saslUsername) {
    throw new HeraldError('HRL_CONFIG_INVALID', `KAFKA_SASL_USERNAME: expected a user name because KAFKA_SASL_MECHANISM is "${out.saslMechanism}"`);
  }
  if (out.advertisedUrl && !/^https?:\/\/[^\s/]+(\/[^\s]*)?$/.test(String(out.advertisedUrl))) {
    throw new HeraldError('HRL_CONFIG_INVALID', `HERALD_ADVERTISED_URL: expected an http(s) base URL such as http://herald-2:8080, got "${String(out.advertisedUrl)}"`);
  }
  out.advertisedUrl = String(out.advertisedUrl).replace(/\/+$/, '');
  if (!env.HERALD_OUTBOUND_ALLOW && overrides.outboundAllow === undefined && out.embedded) out.outboundAllow = '127.0.0.0/8,::1';
  try {
    parseAllowList(String(out.outboundAllow));
  } catch (err) {
    throw new HeraldError('HRL_CONFIG_INVALID', `HERALD_OUTBOUND_ALLOW: ${(err as Error).message}; expected comma-separated IPs or CIDR ranges such as 127.0.0.1,10.0.0.0/8`);
  }
  if (out.smtpUrl) {
    // It carries the SMTP password: the error names what is wrong, never the value.
    let url: URL | null = null;
    try {
      url = new URL(String(out.smtpUrl));
    } catch {
      url = null;
    }
    if (!url || (url.protocol !== 'smtp:' && url.protocol !== 'smtps:') || !url.hostname) {
      const scheme = url ? ` (its scheme is "${url.protocol.replace(/:$/, '')}")` : ' (it does not parse as a URL)';
      throw new HeraldError('HRL_CONFIG_INVALID', `HERALD_SMTP_URL: expected smtp://[user:password@]host[:port] or smtps://…${scheme}; the value is not shown, as it may hold a password`);
    }
  }
  const fromProblem = checkFrom(String(out.smtpFrom));
  if (fromProblem) throw new HeraldError('HRL_CONFIG_INVALID', `HERALD_SMTP_FROM: ${fromProblem}`);
  // RFC 6750's b64token: what a bearer credential may hold (a space could never match).
  if (out.metricsToken && !/^[A-Za-z0-9\-._~+/]+=*$/.test(String(out.metricsToken))) {
    throw new HeraldError('HRL_CONFIG_INVALID', 'HERALD_METRICS_TOKEN: expected letters, digits and - . _ ~ + / (a bearer token, RFC 6750), with no spaces');
  }
  if (out.devKey && !/^[A-Za-z0-9_-]{16,256}$/.test(String(out.devKey))) {
    throw new HeraldError('HRL_CONFIG_INVALID', 'HERALD_DEV_KEY: expected 16 to 256 letters, digits, \'_\' or \'-\'');
  }
  if (out.embedded && out.saslMechanism) {
    throw new HeraldError('HRL_CONFIG_INVALID', 'KAFKA_SASL_MECHANISM: set KAFKA_BROKERS too; the embedded broker takes no SASL');
  }
  return Object.freeze(out) as HeraldConfig;
}

function parse(spec: KeySpec, raw: string): string | number | boolean {
  switch (spec.kind) {
    case 'int': {
      const n = Number(raw);
      if (!/^-?\d+$/.test(raw) || n < (spec.min ?? -Infinity) || n > (spec.max ?? Infinity)) {
        throw new HeraldError('HRL_CONFIG_INVALID', `${spec.env}: expected an integer in [${spec.min}, ${spec.max}], got "${raw}"`);
      }
      return n;
    }
    case 'bool':
      if (!['true', 'false', '1', '0'].includes(raw)) throw new HeraldError('HRL_CONFIG_INVALID', `${spec.env}: expected true or false, got "${raw}"`);
      return raw === 'true' || raw === '1';
    case 'enum':
      if (!spec.values?.includes(raw)) throw new HeraldError('HRL_CONFIG_INVALID', `${spec.env}: expected one of ${spec.values?.map((v) => `"${v}"`).join(', ')}, got "${raw}"`);
      return raw;
    default:
      return raw;
  }
}
