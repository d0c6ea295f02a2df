/**
 * `herald explain <notificationId>`, `herald explain --event <eventId>` and `herald tail`:
 * every decision, readable. explain asks a running instance's HTTP API (`--url`,
 * HERALD_URL, or the running embedded instance), or scans outcomes.v1 itself (always for
 * --event: an event's notifications are spread over partitions). tail follows outcomes.v1.
 */
import type { HeraldConfig } from '../config.ts';
import { HeraldError, isErrorCode } from '../errors.ts';
import { withCluster } from '../app/cluster.ts';
import { duration } from '../processors/about.ts';
import { applyLifecycle, type NotificationView, readNotification } from '../processors/outcome.ts';
import type { Serde } from '../schemas/index.ts';
import type { LifecycleEvent } from '../schemas/types.ts';
import { TopicReader } from '../runtime/reader.ts';
import { KeyValueStore } from '../state/store.ts';
import { topicName } from '../topology.ts';

const pad = (s: string, n: number) => (s.length >= n ? s : s + ' '.repeat(n - s.length));

/** One line per decision: when, where, what and why. */
export function formatDecision(e: LifecycleEvent): string {
  const channel = e.channel ? ` ${e.channel}${e.attempt ? `#${e.attempt}` : ''}` : '';
  return `${new Date(e.timestamp).toISOString()}  ${pad(e.stage, 8)} ${pad(e.status + channel, 28)} ${pad(e.reasonCode, 26)} ${e.reason}`;
}

/** The timeline: each decision with the time since the one before it. */
export function formatLifecycle(n: NotificationView): string {
  return [
    `${n.notificationId}  tenant ${n.tenant}, recipient ${n.recipient || '(none: the event was rejected before its recipients were read)'}, event ${n.eventId} (${n.eventType}), rule ${n.ruleId ?? '-'}, trace ${n.traceId}`,
    `status ${n.status}; terminal: ${n.terminal.length ? n.terminal.join(', ') : 'not yet'}${pendingOf(n).length ? `; not finished: ${pendingOf(n).join(', ')}` : ''}; ${duration(n.updatedAt - n.createdAt)} from first to last decision`,
    ...n.events.map((e, i) => `  ${pad(i === 0 ? '' : `+${duration(e.timestamp - n.events[i - 1]!.timestamp)}`, 12)}${formatDecision(e)}`),
  ].join('\n');
}

/**
 * GET `path` from a Herald API at `url`: the answer, or the API's own error code and message
 * (HRL_UNAUTHORIZED, HRL_NOT_FOUND, …); an unreachable URL or an answer that is not Herald's
 * is said as such.
 */
export async function getApi<T>(url: string, path: string, apiKey: string): Promise<T> {
  const base = url.replace(/\/+$/, '');
  let res: Response;
  try {
    res = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${apiKey}` } });
  } catch (err) {
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    throw new HeraldError('HRL_CONFIG_INVALID', `${base}: could not reach a Herald API there (${cause?.code ?? cause?.message ?? (err as Error).message}); check --url/--from or HERALD_URL, and that Herald runs`);
  }
  const text = await res.text();
  let body: (T & { error?: string; message?: string }) | undefined;
  try {
    body = JSON.parse(text) as T & { error?: string; message?: string };
  } catch {
    throw new HeraldError('HRL_CONFIG_INVALID', `${base}: HTTP ${res.status}, and not a Herald API's answer (not JSON); check --url/--from or HERALD_URL`);
  }
  if (!res.ok) {
    const code = typeof body?.error === 'string' && isErrorCode(body.error) ? body.error : 'HRL_CONFIG_INVALID';
    throw new HeraldError(code, `${base}: HTTP ${res.status}: ${body?.message ?? 'no message'}`);
  }
  return body as T;
}

export async function fetchLifecycle(url: string, id: string, apiKey: string): Promise<NotificationView> {
  if (!/^ntf_[0-9a-f]{32}$/.test(id)) throw new HeraldError('HRL_NOT_FOUND', `"${id.slice(0, 80)}" is not a notification id: expected ntf_ and 32 hex digits, as the API's answers and \`tail\` show them (an event's notifications: explain --event <event id>)`);
  try {
    return await getApi<NotificationView>(url, `/v1/notifications/${encodeURIComponent(id)}`, apiKey);
  } catch (err) {
    // The API answers only the key's tenant: another tenant's notification is "not found" there.
    if (err instanceof HeraldError && err.code === 'HRL_NOT_FOUND') throw new HeraldError('HRL_NOT_FOUND', `${err.message} (or not this API key's tenant's: the API shows each key only its own tenant's notifications; set HERALD_API_KEY to a key of the notification's tenant)`);
    throw err;
  }
}

/**
 * An outcome record that cannot be decoded (written by someone else, or damaged): the
 * readers skip it and say so, as the live outcome stage (which dead-letters it) and
 * `lifecycle rebuild` do; a registry that cannot be reached still fails the read.
 */
async function decodeOutcome(serde: Serde, value: Buffer, skipped: (why: string) => void): Promise<LifecycleEvent | null> {
  try {
    return await serde.decode<LifecycleEvent>(value, 'LifecycleEvent');
  } catch (err) {
    if (err instanceof HeraldError && !err.retriable) {
      skipped(err.message);
      return null;
    }
    throw err;
  }
}

/** Rebuilds the lifecycles of the notifications `pick` chooses by reading outcomes.v1 from the start; `onSkipped` hears of each undecodable record. */
export async function scanLifecycles(config: HeraldConfig, pick: (e: LifecycleEvent) => boolean, onSkipped: (where: string, why: string) => void = () => undefined): Promise<NotificationView[]> {
  return withCluster(config, 'explain', async (c) => {
    const serde = c.serde();
    const store = await KeyValueStore.open({ backend: 'memory', dir: '', stage: 'explain', name: 'lifecycle', partition: 0, changelog: null });
    const ids = new Set<string>();
    try {
      const topic = topicName(config.topicPrefix, 'outcomes');
      const until = new Map((await c.admin.fetchTopicOffsets(topic)).map((o) => [o.partition, BigInt(o.high)]));
      const reader = new TopicReader(c.kafka, c.admin, {
        topic, groupPrefix: `${config.topicPrefix}explain.`, until,
        onBatch: async ({ partition, messages }) => {
          const events: LifecycleEvent[] = [];
          for (const m of messages) {
            if (!m.value) continue;
            const e = await decodeOutcome(serde, m.value, (why) => onSkipped(`${topic}[${partition}]@${m.offset}`, why));
            if (e && pick(e)) events.push(e);
          }
          if (events.length) {
            for (const e of events) ids.add(e.notificationId);
            const view = store.view();
            await applyLifecycle(view, events);
            await view.flush(null);
          }
        },
      });
      await reader.readToEnd();
      const views = await Promise.all([...ids].map((id) => readNotification(store.view(), id)));
      return views.filter((v): v is NotificationView => v !== undefined).sort((a, b) => a.createdAt - b.createdAt || a.recipient.localeCompare(b.recipient));
    } finally {
      await store.close();
    }
  });
}

/** Rebuilds one notification's lifecycle by reading outcomes.v1 from the start. */
export async function scanLifecycle(config: HeraldConfig, id: string, onSkipped?: (where: string, why: string) => void): Promise<NotificationView | null> {
  return (await scanLifecycles(config, (e) => e.notificationId === id, onSkipped))[0] ?? null;
}

/** Where an explanation ends: the notification's last word on each channel, or on itself. */
/** Channels whose delivery has not ended yet, as `channel:STATUS` (a retry scheduled, an attempt under way). */
function pendingOf(n: NotificationView): string[] {
  const ended = new Set(n.terminal.map((t) => t.split(':')[0]));
  return Object.entries(n.channels ?? {}).filter(([ch]) => !ended.has(ch)).map(([ch, st]) => `${ch}:${st}`).sort();
}

function outcomeOf(n: NotificationView): string {
  const pending = pendingOf(n);
  if (n.terminal.length || pending.length) return [...n.terminal, ...pending.map((p) => `${p} (not finished)`)].join(', ');
  const last = n.events.at(-1);
  return last ? `${last.status} (not finished)` : 'no decision yet';
}

/**
 * `herald explain --event`: every notification one event caused, and for each recipient
 * whether they got it and why (the decision that settled it: unknown user, inactive,
 * opted out, a duplicate, throttled, delivered, dead-lettered).
 */
export function formatEvent(eventId: string, views: NotificationView[]): string {
  if (!views.length) return `no decision about event ${eventId} on outcomes.v1`;
  // Event ids are per tenant: two tenants' events may share one, and each is its own event.
  const tenants = [...new Set(views.map((v) => v.tenant))].sort();
  const lines: string[] = [];
  for (const tenant of tenants) {
    const mine = views.filter((v) => v.tenant === tenant);
    lines.push(`event ${eventId} (${mine[0]!.eventType}), tenant ${tenant}: ${mine.length} notification${mine.length === 1 ? '' : 's'}`);
    lines.push(...recipientLines(mine));
  }
  return lines.join('\n');
}

function recipientLines(views: NotificationView[]): string[] {
  const lines: string[] = [];
  for (const n of views) {
    // The decision that settled it: the first one that is not a plain step forward, else the last.
    const settled = n.events.find((e) => e.terminal && e.status !== 'DELIVERED') ?? n.events.find((e) => e.status === 'DELIVERED') ?? n.events.at(-1)!;
    lines.push(`  ${pad(n.recipient, 16)} ${pad(n.notificationId, 28)} rule ${pad(n.ruleId ?? '-', 14)} ${pad(outcomeOf(n), 36)} ${settled.stage}: ${settled.reason}`);
  }
  return lines;
}
/**
 * Follows outcomes.v1 and prints each decision; `fromBeginning` replays the topic first.
 * `json`: one JSON object a line (the lifecycle event with its topic, partition and offset),
 * for jq and scripts; a record that is not a lifecycle event is then told on `warn` (stderr),
 * so that stdout stays one object a line.
 */
export async function tail(config: HeraldConfig, opts: { fromBeginning: boolean; json?: boolean; print: (line: string) => void; warn?: (line: string) => void; signal?: AbortSignal }): Promise<void> {
  await withCluster(config, 'tail', async (c) => {
    const serde = c.serde();
    const topic = topicName(config.topicPrefix, 'outcomes');
    const from = opts.fromBeginning ? undefined : new Map((await c.admin.fetchTopicOffsets(topic)).map((o) => [o.partition, BigInt(o.high)]));
    let readerCrash: (err: Error) => void = () => undefined;
    const reader = new TopicReader(c.kafka, c.admin, {
      topic, groupPrefix: `${config.topicPrefix}tail.`, ...(from ? { from } : {}),
      onCrash: (err) => readerCrash(err),
      onBatch: async ({ partition, messages }) => {
        for (const m of messages) {
          if (!m.value) continue;
          const e = await decodeOutcome(serde, m.value, (why) => (opts.json ? (opts.warn ?? opts.print) : opts.print)(`(skipped ${topic}[${partition}]@${m.offset}: not a lifecycle event: ${why})`));
          if (!e) continue;
          opts.print(opts.json ? JSON.stringify({ topic, partition, offset: m.offset, ...e }) : `${e.notificationId}  ${e.tenant}/${e.recipient}  ${formatDecision(e)}`);
        }
      },
    });
    // Ends at the signal, or when the broker is lost (the instance stopped): kafkajs would
    // otherwise retry for ever, printing a connection error a second.
    let lost: (err: Error) => void = () => undefined;
    const ended = new Promise<void>((resolve, reject) => {
      lost = reject;
      if (opts.signal?.aborted) resolve();
      opts.signal?.addEventListener('abort', () => resolve());
    });
    readerCrash = (err) => lost(new HeraldError('HRL_BROKER_UNREACHABLE', `lost the broker while following ${topic}: ${err.message}${c.running ? ' (has the Herald instance stopped?)' : ''}`));
    await reader.start();
    try {
      await ended;
    } finally {
      // A broker that is gone would hold a clean leave for kafkajs' retries: a short wait, then go.
      await Promise.race([reader.stop().catch(() => undefined), new Promise((r) => setTimeout(r, 2000).unref())]);
    }
  }, { follows: true });
}
