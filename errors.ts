/**
 * All of Herald's errors. Every error carries a stable `code` (documented in the
 * README's error table and never reused), whether it is `retriable`, its `cause`, and
 * where it happened. Retry and dead-letter decisions read `retriable` and `code`,
 * never the message.
 *
 * @example
 *   throw new HeraldError('HRL_SCHEMA_VIOLATION', 'recipients[0]: expected a string', { retriable: false });
 */
export const ERROR_CODES = {
  HRL_CONFIG_INVALID: 'A configuration value from the environment is missing or malformed.',
  HRL_RULES_INVALID: 'The rules file does not match the rules schema.',
  HRL_DECODE_FAILED: 'A record could not be decoded (not Avro in Confluent wire format, not JSON, or unknown schema id).',
  HRL_TOMBSTONE: 'A record on a stream topic has a null value (a tombstone); only the compacted tables take deletes.',
  HRL_SCHEMA_VIOLATION: 'A record decoded but does not match its Avro schema.',
  HRL_WRONG_PARTITION: 'A global table record sits on another partition than Kafka\'s default partitioner puts its key on (a producer partitioning otherwise); the table skips it, since its order against the key\'s other records is unknown.',
  HRL_KEY_MISMATCH: 'A global table record\'s value names another tenant, user or audience than its key; the table skips it (the key is where Herald looks the value up).',
  HRL_PAYLOAD_TOO_LARGE: 'A record is larger than the configured limit.',
  HRL_UNKNOWN_EVENT_TYPE: 'No notification rule matches the event type.',
  HRL_NO_RECIPIENTS: 'An event names no recipients.',
  HRL_IDEMPOTENCY_KEY_REUSED: 'An Idempotency-Key was sent again with a different request body.',
  HRL_STATE_MISMATCH: 'The state directory was built against another Kafka cluster or another embedded journal; it is never discarded silently (`herald reset` starts over).',
  HRL_STATE_DIR_UNUSABLE: 'The state directory cannot be created, read or written (path and system error in the message).',
  HRL_BACKPRESSURE: 'The embedded broker is close to dropping records a stage has not read yet; the API answers 503 with Retry-After until the stages catch up.',
  HRL_JOURNAL_BEHIND: 'The embedded broker\'s journal could not confirm a record in time (or the broker dropped it first); the API answers 503: retry with the same Idempotency-Key.',
  HRL_EMBEDDED_BROKER: 'The embedded broker could not be built or started, or died while Herald ran (Herald exits 1; a restart replays the journal).',
  HRL_PROCESSING_FAILED: 'A stage failed to process a record for a reason not classified above.',
  HRL_BAD_REQUEST: 'An HTTP request is malformed (body not parseable, wrong shape).',
  HRL_UNSUPPORTED_MEDIA_TYPE: 'An HTTP request body has a content type the route does not take.',
  HRL_NOT_FOUND: 'The HTTP route, notification, user or audience does not exist (yet).',
  HRL_METHOD_NOT_ALLOWED: 'The HTTP path exists but not with this method; the Allow header lists the ones it takes (HTTP 405).',
  HRL_BROKER_UNREACHABLE: 'The Kafka brokers (the running instance\'s embedded broker, or KAFKA_BROKERS) could not be reached, or were lost: a CLI command that follows a topic ends instead of retrying for ever, and an API write they do not acknowledge within HERALD_PUBLISH_TIMEOUT_MS answers 503 with Retry-After (send it again with the same Idempotency-Key).',
  HRL_OWNER_UNAVAILABLE: 'The instance that holds the partition a query needs is unknown or unreachable (a rebalance or restore is under way); retry shortly.',
  HRL_INTERNAL: 'An unexpected server error; the log has the details.',
  HRL_UNAUTHORIZED: 'A /v1 request has no API key, or one that is unknown or revoked; or a /metrics request lacks HERALD_METRICS_TOKEN when it is set (HTTP 401).',
  HRL_FORBIDDEN: 'The API key lacks the scope the route needs (publish, read or admin) (HTTP 403).',
  HRL_TENANT_MISMATCH: 'A request body names another tenant than the API key\'s; the tenant always comes from the key (HTTP 403).',
  HRL_RATE_LIMITED: 'The tenant publishes faster than HERALD_API_RATE allows; retry after the Retry-After header (HTTP 429).',
  HRL_LIMIT_EXCEEDED: 'A value a caller controls is longer or larger than its documented limit (the field and the limit are named).',
  HRL_DESTINATION_REFUSED: 'A webhook or chat URL points at an address Herald may not reach (loopback, private, link-local...) or uses a refused scheme or credentials.',
  HRL_PARTITION_NOT_HELD: 'A fused stage was handed records of a partition it does not hold (its group is rebalancing); the batch is not committed and runs again.',
  HRL_STARTING: 'The instance is starting (replaying its journal, catching up tables, restoring stores): only /healthz, /readyz and /metrics answer until it is ready; retry after Retry-After.',
  HRL_SHUTTING_DOWN: 'Work was cut short because the process is stopping; it is not committed and runs again after the restart.',
  HRL_WORKER_READ_ONLY: 'A write reached a --workers worker process, which answers only the queries its primary forwards; writes go to the primary (their journaling and back-pressure are there).',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Whether `code` is one of Herald's error codes (a code that crossed a process boundary as a string). */
export const isErrorCode = (code: string): code is ErrorCode => Object.hasOwn(ERROR_CODES, code);

export interface ErrorWhere {
  stage?: string;
  topic?: string;
  partition?: number;
  offset?: string;
}

export class HeraldError extends Error {
  readonly code: ErrorCode;
  readonly retriable: boolean;
  readonly where: ErrorWhere;
  /** Field path the error is about, when it is about one field. */
  readonly field: string | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    opts: { retriable?: boolean; cause?: unknown; where?: ErrorWhere; field?: string } = {},
  ) {
    super(message, { cause: opts.cause });
    this.name = 'HeraldError';
    this.code = code;
    this.retriable = opts.retriable ?? false;
    this.where = opts.where ?? {};
    this.field = opts.field;
  }
}

/**
 * What a log line may say of an error about a record. A HeraldError quotes the record
 * ("recipients: expected an array, got \"Ada <ada@example.com>\""), and records carry
 * personal data: the log gets its code and field, and the full reason stays where the
 * record is (the dead-letter header, the REJECTED decision). Any other error (a bug's
 * TypeError) is logged whole.
 */
export function loggableError(err: unknown): { code: string; field?: string } | { err: unknown } {
  // (Also one without a field: an error wrapped from a library, such as avsc's, quotes the value it failed on.)
  if (err instanceof HeraldError) return { code: err.code, ...(err.field !== undefined ? { field: err.field } : {}) };
  return { err };
}

/** Kafka protocol errors that retrying the same records cannot fix. */
const PERMANENT_KAFKA = new Set(['MESSAGE_TOO_LARGE', 'RECORD_LIST_TOO_LARGE', 'INVALID_RECORD', 'CORRUPT_MESSAGE', 'INVALID_REQUIRED_ACKS']);
const NETWORK = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'EAI_AGAIN', 'UND_ERR_SOCKET']);

/**
 * Whether an error comes from the infrastructure (broker, store, registry, network) rather
 * than from the record being processed: such errors are retried with the whole batch,
 * never blamed on a record and dead-lettered. Walks the `cause` chain.
 */
export function isTransient(err: unknown): boolean {
  for (let e = err as { name?: string; code?: unknown; type?: string; retriable?: boolean; message?: string; status?: number; cause?: unknown } | undefined, depth = 0; e && depth < 8; e = e.cause as typeof e, depth++) {
    if (typeof e !== 'object') return false;
    if (e.retriable === true) return true;
    const name = e.name ?? '';
    if (name === 'KafkaJSProtocolError' && e.type && PERMANENT_KAFKA.has(e.type)) return false;
    if (name.startsWith('KafkaJS')) return true;
    if (typeof e.code === 'string' && (e.code.startsWith('LEVEL_') || NETWORK.has(e.code))) return true;
    if (name.startsWith('ConfluentSchemaRegistry') && !/not found/i.test(e.message ?? '')) return true;
    // The registry client's HTTP layer answers a network failure or a timeout with status 400
    // and the socket's message: an unreachable registry, not a bad record.
    if (name === 'ResponseError' && /\b(ECONNREFUSED|ECONNRESET|ETIMEDOUT|EPIPE|EHOSTUNREACH|ENETUNREACH|EAI_AGAIN|ENOTFOUND)\b|socket hang up|timeout/i.test(e.message ?? '')) return true;
    if (typeof e.status === 'number' && (e.status >= 500 || e.status === 408 || e.status === 429)) return true;
  }
  return false;
}

/** Wraps anything thrown into a HeraldError, keeping HeraldErrors as they are. */
export function asHeraldError(err: unknown, where: ErrorWhere = {}): HeraldError {
  if (err instanceof HeraldError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new HeraldError('HRL_PROCESSING_FAILED', message, { cause: err, retriable: isTransient(err), where });
}
