/**
 * `herald explain <notificationId>` and `herald tail`: every decision, readable.
 * explain asks a running instance's HTTP API (`--url`, or HERALD_URL), or, with
 * KAFKA_BROKERS set and no URL, scans outcomes.v1 itself. tail follows outcomes.v1.
 */
import type { HeraldConfig } from '../config.ts';
import { HeraldError } from '../errors.ts';
import { applyLifecycle, notificationKey, type NotificationView } from '../processors/outcome.ts';
import type { LifecycleEvent } from '../schemas/types.ts';
import { createKafka } from '../runtime/kafka.ts';
import { createLogger } from '../runtime/logger.ts';
import { TopicReader } from '../runtime/reader.ts';
import { Serde } from '../schemas/index.ts';
import { KeyValueStore } from '../state/store.ts';
import { topicName } from '../topology.ts';

const pad = (s: string, n: number) => (s.length >= n ? s : s + ' '.repeat(n - s.length));

/** One line per decision: when, where, what and why. */
export function formatDecision(e: LifecycleEvent): string {
  const channel = e.channel ? ` ${e.channel}${e.attempt ? `#${e.attempt}` : ''}` : '';
  return `${new Date(e.timestamp).toISOString()}  ${pad(e.stage, 8)} ${pad(e.status + channel, 28)} ${pad(e.reasonCode, 26)} ${e.reason}`;
}

export function formatLifecycle(n: NotificationView): string {
  return [
    `${n.notificationId}  tenant ${n.tenant}, recipient ${n.recipient}, event ${n.eventId} (${n.eventType}), rule ${n.ruleId ?? '-'}, trace ${n.traceId}`,
    `status ${n.status}; terminal: ${n.terminal.length ? n.terminal.join(', ') : 'not yet'}`,
    ...n.events.map((e) => `  ${formatDecision(e)}`),
  ].join('\n');
}

export async function fetchLifecycle(url: string, id: string, apiKey: string): Promise<NotificationView> {
  const res = await fetch(`${url.replace(/\/$/, '')}/v1/notifications/${encodeURIComponent(id)}`, { headers: { authorization: `Bearer ${apiKey}` } });
  const body = (await res.json()) as NotificationView & { message?: string };
  if (!res.ok) throw new HeraldError('HRL_CONFIG_INVALID', body.message ?? `HTTP ${res.status} from ${url}`);
  return body;
}

/** Rebuilds one notification's lifecycle by reading outcomes.v1 from the start. */
export async function scanLifecycle(config: HeraldConfig, id: string): Promise<NotificationView | null> {
  if (config.embedded || config.embeddedRegistry) {
    throw new HeraldError('HRL_CONFIG_INVALID', 'KAFKA_BROKERS and SCHEMA_REGISTRY_URL: expected both to read outcomes.v1, or pass --url of a running instance');
  }
  const kafka = createKafka(config, config.brokers, createLogger('warn'), `herald-explain-${process.pid}`);
  const admin = kafka.admin();
  await admin.connect();
  const serde = new Serde(config.schemaRegistryUrl);
  const store = await KeyValueStore.open({ backend: 'memory', dir: '', stage: 'explain', name: 'lifecycle', partition: 0, changelog: null });
  try {
    const topic = topicName(config.topicPrefix, 'outcomes');
    const until = new Map((await admin.fetchTopicOffsets(topic)).map((o) => [o.partition, BigInt(o.high)]));
    const reader = new TopicReader(kafka, admin, {
      topic, groupPrefix: config.topicPrefix, until,
      onBatch: async ({ messages }) => {
        const events: LifecycleEvent[] = [];
        for (const m of messages) {
          if (!m.value) continue;
          const e = await serde.decode<LifecycleEvent>(m.value);
          if (e.notificationId === id) events.push(e);
        }
        if (events.length) {
          const view = store.view();
          await applyLifecycle(view, events);
          await view.flush(null);
        }
      },
    });
    await reader.readToEnd();
    return (await store.view().getMany<NotificationView>([notificationKey(id)]))[0] ?? null;
  } finally {
    await store.close();
    await admin.disconnect();
  }
}

/** Follows outcomes.v1 and prints each decision; `fromBeginning` replays the topic first. */
export async function tail(config: HeraldConfig, opts: { fromBeginning: boolean; print: (line: string) => void; signal?: AbortSignal }): Promise<void> {
  if (config.embedded || config.embeddedRegistry) {
    throw new HeraldError('HRL_CONFIG_INVALID', 'KAFKA_BROKERS and SCHEMA_REGISTRY_URL: expected both (herald start logs the embedded ones at start-up)');
  }
  const kafka = createKafka(config, config.brokers, createLogger('warn'), `herald-tail-${process.pid}`);
  const admin = kafka.admin();
  await admin.connect();
  const serde = new Serde(config.schemaRegistryUrl);
  const topic = topicName(config.topicPrefix, 'outcomes');
  const from = opts.fromBeginning ? undefined : new Map((await admin.fetchTopicOffsets(topic)).map((o) => [o.partition, BigInt(o.high)]));
  const reader = new TopicReader(kafka, admin, {
    topic, groupPrefix: config.topicPrefix, ...(from ? { from } : {}),
    onBatch: async ({ messages }) => {
      for (const m of messages) {
        if (!m.value) continue;
        const e = await serde.decode<LifecycleEvent>(m.value);
        opts.print(`${e.notificationId}  ${e.recipient}  ${formatDecision(e)}`);
      }
    },
  });
  await reader.start();
  await new Promise<void>((resolve) => {
    if (opts.signal?.aborted) resolve();
    opts.signal?.addEventListener('abort', () => resolve());
  });
  await reader.stop();
  await admin.disconnect();
}
