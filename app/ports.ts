/**
 * The API's ports over Kafka and the global tables: events and profile changes are
 * produced (acks=-1) to their topics, profiles are read from this instance's copy of the
 * users table, and health reads the stage runners and the tables.
 */
import type { ProducerRecord, RecordMetadata } from 'kafkajs';
import type { EventPublisher, Health, Profiles } from '../api/ports.ts';
import type { HeraldConfig } from '../config.ts';
import { HeraldError } from '../errors.ts';
import { CoalescingSender, unacknowledged } from './coalesce.ts';
import { audienceKey } from '../processors/ingest.ts';
import type { Metrics } from '../runtime/metrics.ts';
import type { WorkerPool } from './workers.ts';
import type { StageRunner } from '../runtime/stage-runner.ts';
import type { GlobalTables } from '../runtime/tables.ts';
import type { Serde } from '../schemas/index.ts';
import type { AudienceMember, DomainEvent, LifecycleEvent, UserPreferences, UserProfile } from '../schemas/types.ts';
import { type StageName, topicName, userKey } from '../topology.ts';

/** Produces acks=-1 (and, on the embedded broker, returns once the records are journaled). */
export type Send = (record: ProducerRecord) => Promise<RecordMetadata[]>;

export function kafkaPublisher(producer: { send: Send }, serde: Serde, config: HeraldConfig, pressure: () => string | null = () => null): EventPublisher {
  const topic = topicName(config.topicPrefix, 'events');
  // Events published while a produce is in flight go out together in the next one.
  const events = new CoalescingSender(producer.send);
  return {
    async publish(ev: DomainEvent) {
      const full = pressure();
      if (full) throw new HeraldError('HRL_BACKPRESSURE', `not accepted: ${full}; retry shortly (same Idempotency-Key)`, { retriable: true });
      // While a produce has waited longer than the timeout (brokers gone), answer at once
      // rather than queue behind it: nothing of this request is written.
      const wait = config.publishTimeoutMs;
      if (events.stalledMs(topic) > wait) throw unacknowledged(`event ${ev.id}`, wait, false);
      await events.produce(topic, { key: ev.id, value: await serde.encode(topic, ev) }, wait, `event ${ev.id}`);
    },
    async record(ev: LifecycleEvent) {
      const outcomes = topicName(config.topicPrefix, 'outcomes');
      await producer.send({ topic: outcomes, acks: -1, messages: [{ key: userKey(ev.tenant, ev.recipient), value: await serde.encode(outcomes, ev), timestamp: String(ev.timestamp) }] });
    },
  };
}

/** `p`, or HRL_BROKER_UNREACHABLE after `ms` (the write itself goes on: it may still land). */
function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(unacknowledged(what, ms, true)), ms);
    timer.unref();
  });
  p.catch(() => undefined);
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

export function kafkaProfiles(sender: { send: Send }, serde: Serde, tables: GlobalTables, config: HeraldConfig): Profiles {
  const t = (k: 'users' | 'preferences' | 'audiences') => topicName(config.topicPrefix, k);
  // A write the brokers do not acknowledge in time answers 503; these writes are
  // idempotent (a PUT of the same profile, members added again), so sending again is safe.
  const producer = { send: (record: ProducerRecord) => withTimeout(sender.send(record), config.publishTimeoutMs, `the write to ${record.topic}`) };
  return {
    async putUser(profile: UserProfile) {
      await producer.send({ topic: t('users'), acks: -1, messages: [{ key: userKey(profile.tenant!, profile.userId), value: await serde.encode(t('users'), profile) }] });
    },
    async deleteUser(tenant: string, userId: string) {
      await producer.send({ topic: t('users'), acks: -1, messages: [{ key: userKey(tenant, userId), value: null }] });
    },
    async getUser(tenant: string, userId: string) {
      // Reads see every write acknowledged before them (a PUT, then a GET).
      await tables.catchUp(['users'], Date.now());
      const [user] = await tables.getMany<UserProfile>('users', [userKey(tenant, userId)]);
      return user && user.tenant === tenant ? user : undefined;
    },
    async putPreferences(prefs: UserPreferences) {
      await producer.send({ topic: t('preferences'), acks: -1, messages: [{ key: userKey(prefs.tenant!, prefs.userId), value: await serde.encode(t('preferences'), prefs) }] });
    },
    async getPreferences(tenant: string, userId: string) {
      if (!tables.has('preferences')) return null;
      await tables.catchUp(['preferences'], Date.now());
      const [prefs] = await tables.getMany<UserPreferences>('preferences', [userKey(tenant, userId)]);
      return prefs && prefs.tenant === tenant ? prefs : undefined;
    },
    async updateAudience(tenant, audience, add, remove) {
      const now = Date.now();
      const messages = [
        ...(await Promise.all(add.map(async (userId) => ({ key: audienceKey(tenant, audience, userId), value: await serde.encode(t('audiences'), { tenant, audience, userId, addedAt: now } satisfies AudienceMember) })))),
        ...remove.map((userId) => ({ key: audienceKey(tenant, audience, userId), value: null })),
      ];
      for (let i = 0; i < messages.length; i += 5000) await producer.send({ topic: t('audiences'), acks: -1, messages: messages.slice(i, i + 5000) });
    },
    async audienceMembers(tenant, audience, limit, after) {
      if (!tables.has('audiences')) return null;
      await tables.catchUp(['audiences'], Date.now());
      const members: string[] = [];
      const from = after === undefined ? null : audienceKey(tenant, audience, after);
      for await (const [key, m] of tables.scan<AudienceMember>('audiences', audienceKey(tenant, audience))) {
        if (from !== null && key <= from) continue;
        members.push(m.userId);
        if (members.length >= limit) break;
      }
      return members;
    },
  };
}

export function processHealth(o: { runners: ReadonlyMap<StageName, StageRunner>; tables: GlobalTables; metrics: Metrics; started: () => boolean; endpoints: { brokers: string; registry: string }; warnings?: () => string[]; workers?: WorkerPool | null }): Health {
  return {
    readiness() {
      const reports = [...o.runners].map(([name, r]) => [name, r.report()] as const);
      const stages = Object.fromEntries(reports.map(([name, r]) => [name, r.member]));
      const tables = Object.fromEntries((['users', 'preferences', 'audiences'] as const).filter((t) => o.tables.has(t)).map((t) => [t, o.tables.isCaughtUp(t)]));
      const reasons = [
        ...(o.started() ? [] : ['starting']),
        ...reports.flatMap(([name, r]) => r.reasons.map((why) => `${name}: ${why}`)),
        ...Object.entries(tables).filter(([, caught]) => !caught).map(([t]) => `table ${t} is catching up`),
        ...(o.workers?.reasons() ?? []),
      ];
      const detail = Object.fromEntries(reports.filter(([, r]) => r.restoring.length || r.lastError).map(([name, r]) => [name, { restoring: r.restoring, lastError: r.lastError }]));
      const warnings = o.warnings?.() ?? [];
      // The partitions this process holds, per stage (with workers, each process its own).
      const partitions = Object.fromEntries([...o.runners].map(([name, r]) => [name, r.partitions()]));
      return { ready: reasons.length === 0, reasons, ...(warnings.length ? { warnings } : {}), stages, partitions, tables, ...(o.workers ? { workers: o.workers.describe() } : {}), ...(Object.keys(detail).length ? { detail } : {}), endpoints: o.endpoints };
    },
    async metrics() {
      if (o.workers) return o.workers.aggregate(await o.metrics.registry.getMetricsAsJSON() as never);
      return { contentType: o.metrics.registry.contentType, body: await o.metrics.registry.metrics() };
    },
  };
}
