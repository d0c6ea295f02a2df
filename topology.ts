/**
 * The one declaration of Herald's shape: topics (names, schemas, keys, partition counts,
 * compaction), stages (inputs, outputs, stores, global tables) and changelogs. The
 * embedded launcher, `herald topics create`, the runtime, the schema registration and
 * the docs all read it. `describe()` prints it; a snapshot test keeps the picture honest.
 */
import type { SchemaName } from './schemas/index.ts';

export interface TopicSpec {
  /** Name without prefix; the version suffix is part of it. */
  name: string;
  /** Avro schema of the value; null for raw bytes (the DLQ). */
  schema: SchemaName | null;
  key: string;
  compacted: boolean;
  /** 'shared' = the recipient-keyed partition count; a number fixes it. */
  partitions: 'shared' | number;
  doc: string;
}

export const TOPICS = {
  events: { name: 'events.v1', schema: 'DomainEvent', key: 'event id', compacted: false, partitions: 'shared', doc: 'Domain events from services and agents (Avro or JSON).' },
  requests: { name: 'requests.v1', schema: 'NotificationRequest', key: 'tenant/recipient', compacted: false, partitions: 'shared', doc: 'One record per (event, rule, recipient).' },
  enriched: { name: 'enriched.v1', schema: 'EnrichedNotification', key: 'tenant/recipient', compacted: false, partitions: 'shared', doc: 'Requests joined with profile and preferences.' },
  deduped: { name: 'deduped.v1', schema: 'EnrichedNotification', key: 'tenant/recipient', compacted: false, partitions: 'shared', doc: 'Notifications that passed dedupe.' },
  admitted: { name: 'admitted.v1', schema: 'EnrichedNotification', key: 'tenant/recipient', compacted: false, partitions: 'shared', doc: 'Notifications admitted by throttle.' },
  deliveries: { name: 'deliveries.v1', schema: 'DeliveryTask', key: 'tenant/recipient', compacted: false, partitions: 'shared', doc: 'One rendered task per channel.' },
  deliverRetry: { name: 'deliver.retry.v1', schema: 'DeliveryTask', key: 'tenant/recipient', compacted: false, partitions: 'shared', doc: 'Delivery tasks waiting for a retry.' },
  outcomes: { name: 'outcomes.v1', schema: 'LifecycleEvent', key: 'tenant/recipient', compacted: false, partitions: 'shared', doc: 'Every decision of every stage.' },
  users: { name: 'users.v1', schema: 'UserProfile', key: 'tenant/user id', compacted: true, partitions: 'shared', doc: 'Recipient profiles (global table).' },
  audiences: { name: 'audiences.v1', schema: 'AudienceMember', key: 'tenant/audience/user id', compacted: true, partitions: 'shared', doc: 'Audience members (global table).' },
  preferences: { name: 'preferences.v1', schema: 'UserPreferences', key: 'tenant/user id', compacted: true, partitions: 'shared', doc: 'Recipient preferences (global table).' },
  dlq: { name: 'dlq.v1', schema: null, key: 'original key', compacted: false, partitions: 'shared', doc: 'Bad input: original bytes plus reason headers.' },
  keys: { name: 'keys.v1', schema: null, key: 'key id', compacted: true, partitions: 1, doc: 'API keys: tenant, scopes and a scrypt hash (never the secret); a revoked key keeps its record, with revokedAt.' },
  signingSecrets: { name: 'signing-secrets.v1', schema: null, key: 'tenant', compacted: true, partitions: 1, doc: 'Webhook signing secrets per tenant: the current one and rotated-out ones until they expire (restrict this topic with ACLs).' },
  instances: { name: 'instances.v1', schema: null, key: 'stage/instance id', compacted: true, partitions: 1, doc: 'Which instance holds which partitions of each stage, and its HTTP address (queries any instance answers).' },
} as const satisfies Record<string, TopicSpec>;

export type TopicKey = keyof typeof TOPICS;

export interface StoreSpec {
  name: string;
  /**
   * How the store survives the loss of its directory or a move to another instance:
   * `true` = every write goes to a compacted changelog topic that restores it;
   * `'source'` = the store is a projection of the stage's single input topic: it records
   * the input offset it reflects, and on assignment the input is replayed from there up
   * to the group's committed offset (Kafka Streams' source-topic changelog).
   */
  changelog: boolean | 'source';
  doc: string;
}

export interface StageSpec {
  name: StageName;
  inputs: readonly TopicKey[];
  outputs: readonly TopicKey[];
  stores: readonly StoreSpec[];
  /** Compacted topics materialised in full on every instance. */
  tables: readonly TopicKey[];
  doc: string;
}

export const STAGE_NAMES = ['ingest', 'enrich', 'dedupe', 'throttle', 'route', 'deliver', 'outcome'] as const;
export type StageName = (typeof STAGE_NAMES)[number];

export const STAGES = {
  ingest: { name: 'ingest', inputs: ['events'], outputs: ['requests', 'outcomes', 'dlq'], stores: [], tables: ['audiences'], doc: 'validate, match rules, fan out to recipients, derive ids' },
  enrich: { name: 'enrich', inputs: ['requests'], outputs: ['enriched', 'outcomes', 'dlq'], stores: [], tables: ['users', 'preferences'], doc: 'join profile and preferences; drop unknown or inactive recipients' },
  dedupe: { name: 'dedupe', inputs: ['enriched'], outputs: ['deduped', 'outcomes', 'dlq'], stores: [{ name: 'seen', changelog: true, doc: 'dedupe key -> first notification and when it was seen' }], tables: [], doc: 'suppress repeats of a dedupe key inside the rule window' },
  throttle: { name: 'throttle', inputs: ['deduped'], outputs: ['admitted', 'outcomes', 'dlq'], stores: [{ name: 'counters', changelog: true, doc: 'per user (and category, rule) scope -> admission times inside the longest limit window' }, { name: 'held', changelog: true, doc: 'deferred notifications and open digests, indexed by release time, released by a timer' }], tables: [], doc: 'per-user rate limits (defer, digest, drop), quiet hours, CRITICAL bypass' },
  route: { name: 'route', inputs: ['admitted'], outputs: ['deliveries', 'outcomes', 'dlq'], stores: [], tables: [], doc: 'pick channels, render templates, drop expired' },
  deliver: { name: 'deliver', inputs: ['deliveries', 'deliverRetry'], outputs: ['deliverRetry', 'outcomes', 'dlq'], stores: [{ name: 'results', changelog: true, doc: 'deliveryId -> recorded result (for HERALD_DELIVERY_RESULT_RETENTION_MS) or the last attempt of an open delivery, to skip redelivered tasks' }, { name: 'retries', changelog: true, doc: 'retry tasks held until their due time (wall clock), released by a timer' }], tables: ['users', 'preferences'], doc: 'call the channel with an idempotency key (at the profile\'s current address, unless the user was deleted or opted out since routing); retry on a timer; dead-letter' },
  outcome: { name: 'outcome', inputs: ['outcomes'], outputs: ['dlq'], stores: [{ name: 'lifecycle', changelog: 'source', doc: 'notification -> ordered lifecycle events; user -> notifications (rebuildable from outcomes.v1)' }], tables: [], doc: 'lifecycle projection' },
} as const satisfies Record<StageName, StageSpec>;

/**
 * The co-partitioned run of the chain (Kafka Streams' sub-topology): enrich, dedupe,
 * throttle and route all read and write topics keyed by tenant/recipient with the shared
 * partition count, each reading only what the one before it writes. With
 * HERALD_FUSE_STAGES (the default) one task per partition runs them together: each stage's
 * output topic is still written, acks=-1, before the next stage handles the same records in
 * process, so the chain stays replayable and observable stage by stage, and each stage keeps
 * its own group, offsets, stores and timers. ingest (events.v1 is keyed by event id),
 * deliver (the outside world) and outcome stay on their own.
 */
export const SUB_TOPOLOGY = ['enrich', 'dedupe', 'throttle', 'route'] as const satisfies readonly StageName[];

/**
 * The fused runs among `stages`: maximal runs of consecutive SUB_TOPOLOGY stages, each with
 * at least two stages (one stage alone has nothing to fuse with).
 */
export function fusedRuns(stages: readonly StageName[]): StageName[][] {
  const runs: StageName[][] = [];
  let run: StageName[] = [];
  for (const s of SUB_TOPOLOGY) {
    if (stages.includes(s)) run.push(s);
    else run = run.length ? (runs.push(run), []) : [];
  }
  if (run.length) runs.push(run);
  return runs.filter((r) => r.length > 1);
}

/** The topics a stage consumes, its outputs and its store names, as types (they type the stage contract). */
export type StageInput<S extends StageName> = (typeof STAGES)[S]['inputs'][number];
export type StageOutput<S extends StageName> = (typeof STAGES)[S]['outputs'][number];
export type StoreName<S extends StageName> = (typeof STAGES)[S]['stores'][number] extends { name: infer N } ? N & string : never;

/** The spec of a stage, widened (for code that handles any stage). */
export function stageSpec(stage: StageName): StageSpec {
  return STAGES[stage];
}

/**
 * The key of a user within a tenant: the Kafka key of users.v1, preferences.v1 and every
 * recipient-keyed topic, and the prefix of per-user state. User ids are per tenant: acme's
 * "carol" and globex's "carol" are two people. Parts are URI-encoded so no pair can
 * collide with another.
 */
export function userKey(tenant: string, userId: string): string {
  return `${encodeURIComponent(tenant)}/${encodeURIComponent(userId)}`;
}

/** `<tenant>/<audience>/<userId>`: the key of audiences.v1, each part URI-encoded so no name can be a prefix of another. */
export const audienceKey = (tenant: string, audience: string, userId = '') =>
  `${encodeURIComponent(tenant)}/${encodeURIComponent(audience)}/${userId && encodeURIComponent(userId)}`;

/** Full topic name with prefix. */
export function topicName(prefix: string, key: TopicKey): string {
  return `${prefix}${TOPICS[key].name}`;
}

export function changelogTopic(prefix: string, stage: StageName, store: string): string {
  return `${prefix}${stage}.${store}.changelog`;
}

export function groupId(prefix: string, stage: StageName): string {
  return `${prefix}${stage}`;
}

export interface TopicPlan { name: string; partitions: number; compacted: boolean; schema: SchemaName | null }

/** Every topic Herald needs, with partition counts: what the launcher and `topics create` make. */
export function topicPlan(prefix: string, partitions: number): TopicPlan[] {
  const plan: TopicPlan[] = Object.keys(TOPICS).map((k) => {
    const t = TOPICS[k as TopicKey] as TopicSpec;
    return { name: topicName(prefix, k as TopicKey), partitions: t.partitions === 'shared' ? partitions : t.partitions, compacted: t.compacted, schema: t.schema };
  });
  for (const s of Object.values(STAGES)) {
    for (const st of s.stores) if (st.changelog === true) plan.push({ name: changelogTopic(prefix, s.name, st.name), partitions, compacted: true, schema: null });
  }
  return plan;
}

/** A text picture of the topology (kept in a snapshot test). */
export function describe(prefix = 'herald.'): string {
  const lines: string[] = [];
  for (const s of Object.values(STAGES)) {
    lines.push(`stage ${s.name} (group ${groupId(prefix, s.name)}): ${s.doc}`);
    lines.push(`  in:  ${s.inputs.map((t) => topicName(prefix, t)).join(', ')}`);
    if (s.tables.length) lines.push(`  tables: ${s.tables.map((t) => topicName(prefix, t)).join(', ')}`);
    lines.push(`  out: ${s.outputs.map((t) => topicName(prefix, t)).join(', ')}`);
    for (const st of s.stores) lines.push(`  store ${st.name}${st.changelog === true ? ` -> ${changelogTopic(prefix, s.name, st.name)}` : st.changelog === 'source' ? ' <- replays its input' : ''}: ${st.doc}`);
  }
  lines.push(`sub-topology ${SUB_TOPOLOGY.join(' -> ')}: co-partitioned by tenant/recipient; fused into one task per partition unless HERALD_FUSE_STAGES=false (every topic between them is still written)`);
  return lines.join('\n');
}
