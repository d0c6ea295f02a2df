/**
 * deliver: calls the channel for each task, with the delivery id as idempotency key.
 * A task whose result is already recorded (DELIVERED, DEAD_LETTERED or EXPIRED) is
 * skipped, and so is an attempt already made, so a redelivered batch never reaches the
 * user twice through Herald. ATTEMPTED is on outcomes.v1 before the channel is called;
 * the result follows with the batch.
 *
 * Retriable failures go to deliver.retry.v1 with a due time (exponential backoff or the
 * provider's Retry-After, wall clock). A retry record that is not due yet is held in the
 * changelogged `retries` store, indexed by due time, and a wall-clock timer releases it
 * when due: no partition ever waits for a retry, fresh deliveries go on, and a held retry
 * survives a crash (restored with the store, fired once after the restart).
 */
import { userKey } from '../topology.ts';
import type { ChannelProvider, SendResult } from '../channels/channel.ts';
import { recordRef, type Processor, type RecordRef, type StageContext, type StageDeps, type StageFactory } from '../runtime/contract.ts';
import pLimit, { type LimitFunction } from 'p-limit';
import { type Admission, CircuitBreakers, circuitName, endpointOf, hostCircuitOf, tenantUrlCircuitOf } from '../channels/breaker.ts';
import type { Channel } from '../rules/rules.ts';
import type { ReasonCode } from '../schemas/lifecycle.ts';
import type { DeliveryTask, UserPreferences, UserProfile } from '../schemas/types.ts';
import { inboxContent } from '../channels/inapp.ts';
import { duration } from './about.ts';
import { deliveryId } from './ids.ts';
import { addressFor } from './route.ts';

export interface DeliveryResult {
  status: 'DELIVERED' | 'DEAD_LETTERED' | 'EXPIRED' | 'DROPPED';
  attempt: number;
  at: number;
}

/**
 * A retry held until its due time, with the record that scheduled it (provenance); or,
 * with `lease`, an attempt whose call is under way: due when the call would have timed out,
 * so an attempt whose instance died is made again (under the same Idempotency-Key).
 */
export interface HeldRetry {
  task: DeliveryTask;
  cause: RecordRef;
  lease?: boolean;
}

/** A lease outlives its call's timeout by this much before the attempt is made again. */
const LEASE_MARGIN_MS = 5000;
/** How long a clean stop waits for calls that outlived their batch's wait (see `settle`). */
const SETTLE_ON_STOP_MS = 10_000;
/** Held retries released per timer run; the rest wait for the next run. */
const RELEASE_LIMIT = 500;

const resultKey = (deliveryId: string) => deliveryId;
const attemptKey = (deliveryId: string) => `a:${deliveryId}`;
const retryKey = (task: DeliveryTask) => `${task.deliveryId}#${task.attempt}`;

/** The lifecycle fields every decision about a delivery task carries. */
const baseOf = (task: DeliveryTask) => ({
  notificationId: task.notificationId, deliveryId: task.deliveryId, tenant: task.tenant, recipient: task.recipient, eventId: task.eventId,
  eventType: task.eventType, ruleId: task.ruleId, channel: task.channel, attempt: task.attempt, traceId: task.traceId,
});

/** `readdressed`: sent to the address the profile has now, not the one it was routed with. */
interface Item { cause: RecordRef; task: DeliveryTask; readdressed?: boolean }

/**
 * What the recipient's profile and preferences as they are now say of a task routed with
 * older ones: null (send it as routed), another address to send it to, or why it is not
 * sent (`channelOnly`: on this channel; a strategy "first" rule's next channel takes over).
 */
type Recheck = null | { address: string } | { reasonCode: ReasonCode; reason: string; channelOnly: boolean };

function recheck(task: DeliveryTask, user: UserProfile | undefined, prefs: UserPreferences | undefined): Recheck {
  if (!user) return { reasonCode: 'unknown_recipient', reason: `user "${task.recipient}" has no profile any more (deleted after routing); not sent`, channelOnly: false };
  if (!user.active) return { reasonCode: 'recipient_inactive', reason: `user "${task.recipient}" was deactivated after routing; not sent`, channelOnly: false };
  if (prefs?.categories[task.category] === false) return { reasonCode: 'category_opted_out', reason: `user opted out of category "${task.category}" after routing; not sent`, channelOnly: false };
  if (prefs?.channels[task.channel] === false) return { reasonCode: 'channel_opted_out', reason: `user opted out of ${task.channel} after routing; not sent on it`, channelOnly: true };
  if (task.channel === 'inapp') return null;
  const address = addressFor(task.channel as Channel, user);
  if (!address) return { reasonCode: 'address_removed', reason: `the profile has no ${task.channel} address any more; not sent on it`, channelOnly: true };
  return address === task.address ? null : { address };
}

/** deliver, given the channels: the only stage that may call the outside world. */
export const deliver = (channels: ReadonlyMap<string, ChannelProvider>, random: () => number = Math.random): StageFactory<'deliver'> => {
  // One set of circuits per process: every partition learns of an endpoint's outage at once.
  let breakers: CircuitBreakers | null = null;
  // Calls in flight per channel and per endpoint, also per process: one busy host cannot take
  // every connection, and one channel cannot starve the others.
  let limits: CallLimits | null = null;
  return (deps) => deliverPartition(channels, random, deps, (limits ??= new CallLimits(deps.config.channelConcurrency, deps.config.endpointConcurrency, (url, slow) => {
    deps.metrics.slowLanes.inc(slow ? 1 : -1);
    // The host only: a URL's path or query may carry a token.
    const host = (() => { try { return new URL(url).host; } catch { return '?'; } })();
    if (slow) deps.log.warn({ host }, 'a webhook URL outlived its batch wait: its calls now run one at a time in a lane of their own, outside the host\'s slots');
  })), (breakers ??= new CircuitBreakers({
    failures: deps.config.breakerFailures, openMs: deps.config.breakerOpenMs, probeMs: deps.config.deliveryTimeoutMs,
    onChange: (circuit, from, to, failures) => {
      // The gauge shows each host's or URL's worst circuit over the tenants, without them.
      const endpoint = circuitName(circuit);
      const worst = breakers!.worst(endpoint);
      // A URL's circuit (host#hash) leaves the gauge once closed: failing URLs come and go.
      if (worst === 'closed' && endpoint.includes('#')) deps.metrics.circuitState.remove({ endpoint });
      else deps.metrics.circuitState.set({ endpoint }, worst === 'closed' ? 0 : worst === 'open' ? 1 : 2);
      deps.log.warn({ endpoint, ...(circuit !== endpoint ? { tenant: circuit.slice(0, circuit.indexOf('|')) } : {}), from, to, failures }, `circuit ${to}`);
    },
  })));
};

/** How long a URL stays in its slow lane without a fast answer (a fast answer ends it at once). */
const SLOW_LANE_MS = 10 * 60_000;
/** Calls a slow lane holds (running and waiting); more tasks for the URL are rescheduled without a call. */
const LANE_DEPTH = 4;

/**
 * p-limit queues per channel and per endpoint (host): a call starts when both have room.
 *
 * A URL whose call outlived its batch's wait (it hangs, or answers slowly) gets a slow lane
 * of its own: its next calls run one at a time there, outside the host's slots, and no batch
 * waits for them. So a hanging webhook never holds the slots of healthy webhooks on the same
 * host (a shared receiver, a SaaS inbox), and its retries queue behind each other, not
 * in front of everyone else. A call that answers within the batch wait ends the lane.
 */
export class CallLimits {
  private readonly byChannel = new Map<string, LimitFunction>();
  private readonly byEndpoint = new Map<string, LimitFunction>();
  private readonly lanes = new Map<string, { until: number; limit: LimitFunction }>();
  private swept = 0;
  /** Set when the process stops: a call still waiting for its slot (a slow lane's queue) is not started. */
  stopping = false;
  private readonly perChannel: number;
  private readonly perEndpoint: number;
  private readonly onSlow: ((url: string, slow: boolean) => void) | undefined;

  constructor(perChannel: number, perEndpoint: number, onSlow?: (url: string, slow: boolean) => void) {
    this.perChannel = perChannel;
    this.perEndpoint = perEndpoint;
    this.onSlow = onSlow;
  }

  /** Is `url` in its slow lane with LANE_DEPTH calls in it already, counting `more` about to join? */
  laneFull(url: string | null, now: number, more = 0): boolean {
    if (!this.isSlow(url, now)) return false;
    const { limit } = this.lanes.get(url!)!;
    return limit.activeCount + limit.pendingCount + more >= LANE_DEPTH;
  }

  /** Is `url` in its slow lane at `now`? */
  isSlow(url: string | null, now: number): boolean {
    if (url === null) return false;
    const lane = this.lanes.get(url);
    if (!lane) return false;
    if (lane.until > now) return true;
    this.release(url);
    return false;
  }

  /** A call to `url` outlived its batch's wait: its next calls go to its slow lane. */
  markSlow(url: string | null, now: number): void {
    if (url === null) return;
    this.release(url);
    const lane = this.lanes.get(url) ?? this.lanes.set(url, { until: 0, limit: pLimit(1) }).get(url)!;
    if (lane.until <= now) this.onSlow?.(url, true);
    lane.until = now + SLOW_LANE_MS;
  }

  /** A call to `url` answered within its batch's wait: its next calls use the host's slots again. */
  markFast(url: string | null, now: number): void {
    if (url === null) return;
    const lane = this.lanes.get(url);
    if (!lane) return;
    if (lane.until > now) this.onSlow?.(url, false);
    lane.until = 0;
    this.release(url);
  }

  /** Ends a lane whose time is up (reported once), and forgets it once no call is left in it. */
  private release(url: string): void {
    const lane = this.lanes.get(url);
    if (!lane || lane.until > Date.now()) return;
    if (lane.until > 0) {
      lane.until = 0;
      this.onSlow?.(url, false);
    }
    if (lane.limit.activeCount === 0 && lane.limit.pendingCount === 0) this.lanes.delete(url);
  }

  run<T>(channel: string, endpoint: string | null, url: string | null, now: number, fn: () => Promise<T>): Promise<T> {
    // Lanes of URLs never called again end here, once a minute.
    if (now - this.swept > 60_000) {
      this.swept = now;
      for (const u of [...this.lanes.keys()]) this.release(u);
    }
    const channelLimit = this.byChannel.get(channel) ?? this.byChannel.set(channel, pLimit(this.perChannel)).get(channel)!;
    if (url !== null && this.isSlow(url, now)) {
      const lane = this.lanes.get(url)!;
      return lane.limit(() => channelLimit(fn)).finally(() => this.release(url));
    }
    if (!endpoint) return channelLimit(fn);
    const endpointLimit = this.byEndpoint.get(endpoint) ?? this.byEndpoint.set(endpoint, pLimit(this.perEndpoint)).get(endpoint)!;
    // Endpoint first, so calls waiting for a busy host do not hold channel slots.
    return endpointLimit(() => channelLimit(fn)).finally(() => {
      if (endpointLimit.activeCount === 0 && endpointLimit.pendingCount === 0) this.byEndpoint.delete(endpoint);
    });
  }
}

/**
 * An SMTP reply about this message or recipient (450, 451, 452, 5xx …): the mail server is up
 * and talking. 421 (service not available, closing the channel) and 454 (throttling, TLS not
 * available) are about the server itself, for everyone: they count toward its circuit.
 */
const smtpReplied = (task: DeliveryTask, r: SendResult) => task.channel === 'email' && !r.ok && r.code.startsWith('smtp_') && r.code !== 'smtp_421' && r.code !== 'smtp_454';

/** What a call waiting for its slot answers once the process stops: it was never made. */
const NOT_STARTED: SendResult = { ok: false, retriable: true, code: 'not_started', detail: 'not called: the instance stopped first' };

/** The URL a webhook or chat call goes to (its lane key); null for channels without one. */
const urlOf = (task: DeliveryTask): string | null => (task.channel === 'webhook' || task.channel === 'chat' ? task.address : null);

function deliverPartition(channels: ReadonlyMap<string, ChannelProvider>, random: () => number, { config, metrics, rules, tables }: StageDeps, limits: CallLimits, breakers: CircuitBreakers): Processor<'deliver'> {
  /** The rule's retry policy, or the configured defaults. */
  const policyOf = (task: DeliveryTask) => {
    const r = rules.byId(task.ruleId)?.retry;
    return { maxAttempts: r?.maxAttempts ?? config.maxDeliveryAttempts, maxAgeMs: r?.maxAgeMs ?? null };
  };
  /** Exponential backoff with "equal jitter": half the step fixed, half random, so retries of many tasks spread out. */
  const backoff = (attempt: number) => {
    const step = config.retryBaseMs * 2 ** (attempt - 1);
    return Math.round(step / 2 + random() * (step / 2));
  };
  // Results of calls this instance made whose batch may not be written yet: when a batch
  // is re-run record by record (one bad record), a task already sent is not sent again.
  const sent = new Map<string, SendResult>();
  // Earliest due time held in this partition's `retries` store, when known: the timer then
  // skips the store scan until something can be due (it runs every HERALD_TIMER_INTERVAL_MS).
  let nextDue: number | undefined;
  // When the timer next sweeps the partition's results past their retention.
  let sweepAt = 0;

  async function callChannel(task: DeliveryTask): Promise<SendResult> {
    const provider = channels.get(task.channel);
    if (!provider) return { ok: false as const, retriable: false, code: 'channel_unavailable', detail: `no provider for channel ${task.channel}` };
    // The timeout starts when the call does, after any wait for a slot.
    let started = 0;
    let calledAt = 0;
    const queuedAt = Date.now();
    let overdue: ReturnType<typeof setTimeout> | undefined;
    const url = urlOf(task);
    const r = await limits.run(task.channel, endpointOf(task.channel, task.address), url, Date.now(), async (): Promise<SendResult> => {
      // Its slot came after the stop began: not called at all, so the restart calls it once.
      if (limits.stopping) return NOT_STARTED;
      started = performance.now();
      calledAt = Date.now();
      // Running longer than a batch waits: the URL is slow (only the call itself counts, not a wait for a slot).
      overdue = setTimeout(() => limits.markSlow(url, Date.now()), config.deliveryBatchWaitMs);
      return provider.send(task, AbortSignal.timeout(config.deliveryTimeoutMs));
    }).catch((err: Error) => ({ ok: false as const, retriable: true, code: 'provider_error', detail: err.message }));
    clearTimeout(overdue);
    if (r === NOT_STARTED) return r;
    if (started && performance.now() - started < config.deliveryBatchWaitMs) limits.markFast(url, Date.now());
    metrics.deliveryLatency.observe({ channel: task.channel }, (performance.now() - started) / 1000);
    metrics.deliveries.inc({ channel: task.channel, result: r.ok ? 'delivered' : r.retriable ? 'retriable' : 'permanent' });
    if (r.ok) return r;
    // A timeout says how long it waited, and, when the call waited for a slot first (its
    // endpoint's concurrency), when it was made: ATTEMPTED is when it was queued.
    const waited = calledAt - queuedAt;
    const detail = r.code === 'TimeoutError' ? `request failed: no response within ${duration(config.deliveryTimeoutMs)} (HERALD_DELIVERY_TIMEOUT_MS)` : r.detail;
    return detail === r.detail && waited < 1000 ? r : { ...r, detail: `${detail}${waited >= 1000 ? `; called at ${new Date(calledAt).toISOString()}, after ${duration(waited)} waiting for a slot at the endpoint` : ''}` };
  }

  // Calls under way, by delivery and attempt: a batch run again while one is in flight joins it.
  const inflight = new Map<string, Promise<SendResult>>();
  // Calls that outlived their batch's wait (a slow or hanging endpoint): settled by the timer.
  const detached = new Map<string, { item: Item; probe: string | null; startedAt: number; result: SendResult | null; answered: Promise<void> }>();

  /** Records the answers detached calls have had, and lets their leases go. */
  function settleAnswered(ctx: StageContext<'deliver'>, wallClock: number): void {
    const retries = ctx.store('retries');
    noteAnswers([...detached.values()].map((d) => [d.item, d.result]), wallClock);
    for (const [key, d] of detached) {
      if (!d.result) continue;
      detached.delete(key);
      retries.delete(key);
      settle(ctx, d.item, d.result, d.probe, d.startedAt);
    }
  }

  async function call(task: DeliveryTask): Promise<SendResult> {
    const key = `${task.deliveryId}#${task.attempt}`;
    const earlier = sent.get(key) ?? inflight.get(key);
    if (earlier) return earlier;
    const p = callChannel(task).then((r) => {
      sent.set(key, r);
      if (sent.size > 10_000) sent.delete(sent.keys().next().value!);
      return r;
    }).finally(() => inflight.delete(key));
    inflight.set(key, p);
    return p;
  }

  /**
   * Records a result (or an attempt a retry follows) for HERALD_DELIVERY_RESULT_RETENTION_MS:
   * the timer deletes it after that, so the store and its changelog hold the deliveries of
   * that long, not of all time.
   */
  function remember(results: ReturnType<StageContext<'deliver'>['store']>, key: string, value: DeliveryResult | { attempt: number }, now: number): void {
    results.putUntil(key, value, now + config.deliveryResultRetentionMs);
  }

  /** Sends the items that are not settled yet; records every decision. */
  function hold(retries: ReturnType<StageContext<'deliver'>['store']>, key: string, dueAt: number, value: HeldRetry): void {
    retries.hold(key, dueAt, value);
    if (nextDue !== undefined) nextDue = Math.min(nextDue, dueAt);
  }

  /**
   * Tasks as the recipient's profile and preferences have them now. A task carries the
   * profile its notification was enriched with: seconds old for a fresh one, hours for one
   * throttle held, longer for a retry. A user deleted or deactivated since gets nothing
   * more, and one who opted out of the category gets nothing; one who opted out of the
   * channel, or whose profile lost its address for it, gets nothing on it (the next channel
   * of a strategy "first" rule takes over: FALLBACK); a changed address is used. The tables
   * are believed where they differ from the task only once caught up to the task's record:
   * a process whose table lags never acts on an older profile than routing saw.
   */
  async function current(items: Item[], ctx: StageContext<'deliver'>): Promise<Item[]> {
    if (items.length === 0) return items;
    const keys = items.map(({ task }) => userKey(task.tenant, task.recipient));
    const look = async (ks: string[]) => {
      const [users, prefs] = await Promise.all([tables.getMany<UserProfile>('users', ks), tables.getMany<UserPreferences>('preferences', ks)]);
      return ks.map((_, i) => [users[i], prefs[i]] as const);
    };
    const found = await look(keys);
    const verdicts = items.map((item, i) => recheck(item.task, ...found[i]!));
    const differ = [...verdicts.keys()].filter((i) => verdicts[i] !== null);
    if (differ.length === 0) return items;
    const caughtUp = tables.catchUp ? await tables.catchUp(['users', 'preferences'], Math.max(...differ.map((i) => items[i]!.cause.timestamp))) : false;
    if (!caughtUp) {
      ctx.log.debug({ tasks: differ.length }, 'profiles differ from routing, but the tables could not be caught up: sent as routed');
      return items;
    }
    const again = await look(differ.map((i) => keys[i]!));
    differ.forEach((i, j) => (verdicts[i] = recheck(items[i]!.task, ...again[j]!)));
    const results = ctx.store('results');
    const go: Item[] = [];
    items.forEach((item, i) => {
      const v = verdicts[i]!;
      if (v === null) go.push(item);
      else if ('address' in v) go.push({ ...item, task: { ...item.task, address: v.address }, readdressed: true });
      else {
        const { task, cause } = item;
        const now = ctx.wallClock();
        remember(results, resultKey(task.deliveryId), { status: 'DROPPED', attempt: task.attempt, at: now } satisfies DeliveryResult, now);
        const next = v.channelOnly ? fallBack(ctx, cause, task, `${task.channel}: ${v.reason}`, now) : null;
        ctx.outcome(cause, { ...baseOf(task), status: 'DROPPED', reasonCode: v.reasonCode, reason: next ? `${v.reason}; fell back to ${next}` : v.reason, timestamp: now });
      }
    });
    return go;
  }

  /** strategy "first": the task's next channel, in rule order, gets its turn (FALLBACK); its name, or null when there is none. */
  function fallBack(ctx: StageContext<'deliver'>, cause: RecordRef, task: DeliveryTask, why: string, now: number): string | null {
    const [nextChannel, ...rest] = task.fallback;
    if (!nextChannel) return null;
    const f = JSON.parse(nextChannel) as Pick<DeliveryTask, 'channel' | 'address' | 'locale' | 'subject' | 'body'>;
    const next: DeliveryTask = { ...task, ...f, deliveryId: deliveryId(task.notificationId, f.channel), attempt: 1, notBefore: null, fallback: rest };
    ctx.emit(cause, 'deliverRetry', userKey(task.tenant, task.recipient), next);
    ctx.outcome(cause, { ...baseOf(task), status: 'FALLBACK', reasonCode: 'fallback', reason: `${why}; falling back to ${f.channel}`, timestamp: now });
    return f.channel;
  }

  async function attempt(items: Item[], ctx: StageContext<'deliver'>): Promise<void> {
    const results = ctx.store('results');
    const ids = items.map((i) => i.task.deliveryId);
    const [recorded, attempted] = await Promise.all([results.getMany<DeliveryResult>(ids.map(resultKey)), results.getMany<{ attempt: number }>(ids.map(attemptKey))]);
    const todo: Item[] = [];
    const seen = new Set<string>();
    items.forEach((item, i) => {
      const { task, cause } = item;
      const prior = recorded[i];
      const lastAttempt = attempted[i]?.attempt ?? 0;
      if (prior) {
        // Already settled: no second call. The terminal decision is written again so it
        // is never missing on outcomes.v1 (the projection ignores a decision it has).
        ctx.log.debug({ deliveryId: task.deliveryId, notificationId: task.notificationId }, 'result already recorded; skipped');
        ctx.outcome(cause, {
          ...baseOf(task), attempt: prior.attempt, status: prior.status, reasonCode: 'already_recorded',
          reason: `${prior.status} was recorded at ${new Date(prior.at).toISOString()} (attempt ${prior.attempt}); not sent again`, timestamp: prior.at,
        });
      } else if (task.attempt <= lastAttempt) {
        // This attempt was made and its outcome recorded (a retry record read again after a crash).
        ctx.log.debug({ deliveryId: task.deliveryId, attempt: task.attempt }, 'attempt already made; skipped');
      } else if (!seen.has(task.deliveryId)) {
        todo.push(item);
        seen.add(task.deliveryId);
      }
    });
    // Expired tasks are not sent; tasks for an endpoint whose circuit is open wait without a
    // call (and without using an attempt); the others are recorded as ATTEMPTED before the call.
    const now0 = ctx.wallClock();
    const live = await current(todo, ctx);
    const expired = live.filter(({ task }) => task.expiresAt !== null && now0 >= task.expiresAt);
    /** Items that probe a half-open circuit, and which one (the host's or the URL's). */
    const probes = new Map<Item, string>();
    const send: Item[] = [];
    // Calls of this batch about to join a slow lane, by URL.
    const joining = new Map<string, number>();
    for (const item of live.filter(({ task }) => task.expiresAt === null || now0 < task.expiresAt)) {
      const endpoint = hostCircuitOf(item.task.tenant, item.task.channel, item.task.address);
      const url = urlOf(item.task);
      if (limits.laneFull(url, now0, url === null ? 0 : (joining.get(url) ?? 0))) {
        // Its slow lane is full: the task waits a call's timeout, without a call and without an attempt.
        const { task, cause } = item;
        const next: DeliveryTask = { ...task, notBefore: now0 + config.deliveryTimeoutMs };
        ctx.emit(cause, 'deliverRetry', userKey(task.tenant, task.recipient), next);
        ctx.outcome(cause, { ...baseOf(task), status: 'RETRY_SCHEDULED', reasonCode: 'slow_endpoint', reason: `the URL hangs or answers slowly: its calls run one at a time and ${LANE_DEPTH} are queued; attempt ${task.attempt} waits until ${new Date(next.notBefore!).toISOString()}`, timestamp: now0 });
        continue;
      }
      // The host's circuit first (an outage of the host), then the URL's (its own HTTP errors).
      const urlCircuit = tenantUrlCircuitOf(item.task.tenant, item.task.channel, item.task.address);
      let a: Admission = endpoint ? breakers.admit(endpoint, now0) : { call: true, probe: false };
      let probing = a.call && a.probe ? endpoint : null;
      if (a.call && !a.probe && urlCircuit) {
        a = breakers.admit(urlCircuit, now0);
        if (a.call && a.probe) probing = urlCircuit;
      }
      if (a.call) {
        send.push(item);
        if (url !== null && limits.isSlow(url, now0)) joining.set(url, (joining.get(url) ?? 0) + 1);
        if (probing) probes.set(item, probing);
        continue;
      }
      const { task, cause } = item;
      const next: DeliveryTask = { ...task, notBefore: now0 + a.retryInMs };
      ctx.emit(cause, 'deliverRetry', userKey(task.tenant, task.recipient), next);
      const name = circuitName(endpoint!);
      const host = name.slice(name.indexOf(':') + 1);
      const which = endpoint && breakers.state(endpoint) !== 'closed' ? host : `this URL (on ${host}; its calls failed in a row, and the host's other URLs are called as usual)`;
      ctx.outcome(cause, { ...baseOf(task), status: 'RETRY_SCHEDULED', reasonCode: 'circuit_open', repeat: `held for ${cause.topic}[${cause.partition}]@${cause.offset}`, reason: `circuit open for ${which} since ${new Date(a.openSince).toISOString().slice(11, 19)} UTC; attempt ${task.attempt} waits until ${new Date(next.notBefore!).toISOString()}`, timestamp: now0 });
    }
    await ctx.recordNow(send.map(({ cause, task, readdressed }) => [cause, { ...baseOf(task), status: 'ATTEMPTED', reasonCode: 'channel_called', reason: `attempt ${task.attempt} via ${task.channel}${readdressed ? ' (to the address the profile has now: it changed after routing)' : ''}`, timestamp: now0 }]));
    // Every call starts now; the batch waits for them at most HERALD_DELIVERY_BATCH_WAIT_MS.
    // A call still running then is detached: the batch goes on (fresh deliveries never wait
    // behind a hanging endpoint), a lease held until the call's timeout brings the attempt
    // back if this instance dies, and the timer records the result when it comes.
    // Calls to a URL in its slow lane start too, but the batch does not wait for them.
    const outcomes = new Map<Item, SendResult>();
    const slow = new Set(send.filter((item) => limits.isSlow(urlOf(item.task), Date.now())));
    const running = send.map((item) => call(item.task).then((r) => void outcomes.set(item, r)));
    let waited: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([Promise.all(running.filter((_, i) => !slow.has(send[i]!))), new Promise<void>((r) => (waited = setTimeout(r, config.deliveryBatchWaitMs)))]);
    clearTimeout(waited);
    const retries = ctx.store('retries');
    for (const item of send.filter((i) => !outcomes.has(i))) {
      const key = retryKey(item.task);
      const entry = { item, probe: probes.get(item) ?? null, startedAt: now0, result: null as SendResult | null, answered: Promise.resolve() };
      entry.answered = call(item.task).then((r) => void (entry.result = r));
      detached.set(key, entry);
      hold(retries, key, now0 + config.deliveryTimeoutMs + LEASE_MARGIN_MS, { task: item.task, cause: recordRef(item.cause), lease: true } satisfies HeldRetry);
    }
    for (const { cause, task } of expired) {
      const now = ctx.wallClock();
      remember(results, resultKey(task.deliveryId), { status: 'EXPIRED', attempt: task.attempt, at: now } satisfies DeliveryResult, now);
      ctx.outcome(cause, { ...baseOf(task), status: 'EXPIRED', reasonCode: 'expired_before_delivery', reason: `expired at ${new Date(task.expiresAt!).toISOString()} before attempt ${task.attempt}`, timestamp: now });
    }
    noteAnswers(send.map((item) => [item, outcomes.get(item)]), ctx.wallClock());
    for (const item of send) if (outcomes.has(item)) settle(ctx, item, outcomes.get(item)!, probes.get(item) ?? null, now0);
  }

  /** The hosts that answered some of these calls are up: their failures among them are the URLs' (breaker.ts), whatever order they settle in. */
  function noteAnswers(results: [Item, SendResult | null | undefined][], now: number): void {
    for (const [item, r] of results) {
      const endpoint = r && (r.ok || smtpReplied(item.task, r)) ? hostCircuitOf(item.task.tenant, item.task.channel, item.task.address) : null;
      if (endpoint) breakers.answered(endpoint, now);
    }
  }

  /** Records the result of one call: DELIVERED, a retry, or FAILED and DEAD_LETTERED (with a fallback). */
  function settle(ctx: StageContext<'deliver'>, item: Item, r: SendResult, probe: string | null, startedAt: number): void {
    const results = ctx.store('results');
    {
      const { cause, task } = item;
      const base = baseOf(task);
      const now = ctx.wallClock();
      const endpoint = hostCircuitOf(task.tenant, task.channel, task.address);
      // Transient failures (network, 5xx, timeouts) count against the endpoint; 429 is a
      // request to slow down (Retry-After), not an outage; permanent answers mean it is up.
      // A failure while the host answers other calls is the URL's, not the host's (breaker.ts).
      // An HTTP error answer counts against the URL's own circuit, and against the host only
      // with other URLs' (breaker.ts): one URL answering 500 is not the host's outage.
      // An SMTP 4xx is the server answering about one recipient or message (greylisting, a
      // full mailbox): it never opens the circuit every other user's mail goes through.
      const transient = !r.ok && r.retriable && r.code !== 'http_429' && !smtpReplied(task, r);
      const urlCircuit = tenantUrlCircuitOf(task.tenant, task.channel, task.address);
      // The host's circuit hears which URL failed, answered or not: it opens only on failures
      // of two URLs or more (one URL that hangs is its own circuit's, and its slow lane's).
      if (endpoint) breakers.record(endpoint, transient, probe === endpoint, now, startedAt, urlCircuit ?? undefined);
      if (urlCircuit) breakers.record(urlCircuit, transient, probe === urlCircuit, now, startedAt);
      // A settled delivery's result says which attempt it took; only an attempt that leaves
      // the delivery open (a retry follows) needs its own record, so a redelivered retry
      // task is not called again. One changelog record per delivery, not two.
      if (r.ok) {
        remember(results, resultKey(task.deliveryId), { status: 'DELIVERED', attempt: task.attempt, at: now } satisfies DeliveryResult, now);
        const inbox = task.channel === 'inapp';
        ctx.outcome(cause, {
          ...base, status: 'DELIVERED', reasonCode: inbox ? 'added_to_inbox' : 'accepted_by_provider', reason: inbox ? 'added to the in-app inbox' : `${task.channel} accepted: ${r.detail}`,
          providerMessageId: r.providerMessageId, timestamp: now, ...(inbox ? { content: inboxContent(task) } : {}),
        });
      } else {
        const policy = policyOf(task);
        // 429 is the receiver's flow control, not a failure: the retry waits what Retry-After
        // asks plus up to half as much again (a burst's retries spread out instead of meeting
        // again), and may go past the attempts as during an outage (up to three times as many,
        // within maxAge): a chat webhook limited to 1 message a second lost a burst's tail.
        const slowDown = r.code === 'http_429';
        const wait = slowDown && r.retryAfterMs !== undefined ? Math.round(r.retryAfterMs * (1 + random() / 2)) : Math.max(r.retryAfterMs ?? 0, backoff(task.attempt));
        const delay = Math.min(config.maxRetryDelayMs, wait);
        const tooOld = policy.maxAgeMs !== null && now + delay - task.occurredAt > policy.maxAgeMs;
        // While the endpoint's circuit is open the failure is the endpoint's outage, not the
        // task's: it may go on past its attempts, up to three times as many (and maxAge).
        const urlCircuit = tenantUrlCircuitOf(task.tenant, task.channel, task.address);
        const outage = ((endpoint !== null && breakers.state(endpoint) !== 'closed') || (urlCircuit !== null && breakers.state(urlCircuit) !== 'closed')) && task.attempt < policy.maxAttempts * 3;
        const asked = slowDown && task.attempt < policy.maxAttempts * 3;
        if (r.retriable && (task.attempt < policy.maxAttempts || outage || asked) && !tooOld) {
          const next: DeliveryTask = { ...task, attempt: task.attempt + 1, notBefore: now + delay };
          remember(results, attemptKey(task.deliveryId), { attempt: task.attempt }, now);
          ctx.emit(cause, 'deliverRetry', userKey(task.tenant, task.recipient), next);
          const of = task.attempt < policy.maxAttempts ? `attempt ${next.attempt} of ${policy.maxAttempts}` : `attempt ${next.attempt} (beyond ${policy.maxAttempts}: ${outage ? 'the endpoint\'s circuit is open' : 'the endpoint asked to slow down'})`;
          // What the receiver asked for, and whether the wait was cut to the longest one allowed.
          const asks = r.retryAfterMs === undefined ? '' : `; Retry-After asked for ${duration(r.retryAfterMs)}${r.retryAfterMs > config.maxRetryDelayMs ? `, cut to HERALD_MAX_RETRY_DELAY_MS (${duration(config.maxRetryDelayMs)})` : ''}`;
          ctx.outcome(cause, { ...base, status: 'RETRY_SCHEDULED', reasonCode: 'transient_failure', reason: `${r.detail} (${r.code}); ${of} at ${new Date(next.notBefore!).toISOString()}${asks}`, timestamp: now });
        } else {
          remember(results, resultKey(task.deliveryId), { status: 'DEAD_LETTERED', attempt: task.attempt, at: now } satisfies DeliveryResult, now);
          const gaveUp = tooOld && r.retriable ? `gave up: the rule retries for ${Math.round(policy.maxAgeMs! / 60_000)} min after the event` : `gave up after ${task.attempt} attempts`;
          const why = r.retriable ? `${gaveUp}; last: ${r.detail} (${r.code})` : `permanent failure: ${r.detail} (${r.code})`;
          ctx.outcome(cause, { ...base, status: 'FAILED', reasonCode: r.retriable ? 'transient_failure' : 'permanent_failure', reason: `${r.detail} (${r.code})`, timestamp: now });
          // strategy "first": the next channel in rule order gets its turn.
          const nextChannel = fallBack(ctx, cause, task, `${task.channel} failed for good (${r.detail})`, now);
          ctx.outcome(cause, { ...base, status: 'DEAD_LETTERED', reasonCode: r.retriable ? 'attempts_exhausted' : 'permanent_failure', reason: nextChannel ? `${why}; fell back to ${nextChannel}` : why, timestamp: now });
        }
      }
    }
  }

  return {
    punctuation: { type: 'wall-clock', intervalMs: config.timerIntervalMs },

    async process(batch, ctx) {
      const now = ctx.wallClock();
      const retries = ctx.store('retries');
      const ready: Item[] = [];
      for (const rec of batch) {
        const task = rec.value;
        // A retry not due yet is held; the timer releases it. The record is its cause.
        if (rec.topicKey === 'deliverRetry' && task.notBefore !== null && task.notBefore > now) {
          hold(retries, retryKey(task), task.notBefore, { task, cause: recordRef(rec) } satisfies HeldRetry);
        } else ready.push({ cause: rec, task });
      }
      if (ready.length) await attempt(ready, ctx);
    },

    /**
     * A clean stop: calls still running past their batch's wait get up to their timeout (at
     * most SETTLE_ON_STOP_MS) to answer, and their results are recorded, so the restart does
     * not call again what was delivered. A call that does not answer by then keeps its lease:
     * the restart makes the attempt again, as after a crash.
     */
    async settle(ctx) {
      // From now on no call starts: one queued behind a slow URL's calls would otherwise start
      // during the stop, and the process leave before it answers (the restart calling it again).
      limits.stopping = true;
      if (detached.size === 0) return;
      let bound: ReturnType<typeof setTimeout> | undefined;
      const waited = Date.now();
      await Promise.race([
        Promise.all([...detached.values()].map((d) => d.answered)),
        new Promise<void>((r) => (bound = setTimeout(r, Math.min(config.deliveryTimeoutMs, SETTLE_ON_STOP_MS)))),
      ]);
      clearTimeout(bound);
      // Calls never started keep their leases, and nothing is recorded of them: the restart makes the attempt.
      let notStarted = 0;
      for (const [key, d] of detached) {
        if (d.result !== NOT_STARTED) continue;
        detached.delete(key);
        notStarted++;
      }
      const open = [...detached.values()].filter((d) => !d.result).length;
      ctx.log.info({ answered: detached.size - open, unanswered: open, notStarted, ms: Date.now() - waited }, 'stopping: calls under way answered and recorded; unanswered and not started ones are attempted again after the restart');
      settleAnswered(ctx, ctx.wallClock());
    },

    async punctuate(ctx, { wallClock }) {
      const retries = ctx.store('retries');
      // Results past their retention go: a bounded sweep, again at the next run while a sweep
      // finds any (a backlog drains at RELEASE_LIMIT a run), else a second later. A failed
      // sweep is tried again later; it never holds back the retries below.
      if (wallClock >= sweepAt) {
        try {
          sweepAt = (await ctx.store('results').expire(wallClock, RELEASE_LIMIT)) > 0 ? wallClock : wallClock + 1000;
        } catch (err) {
          sweepAt = wallClock + 1000;
          ctx.log.warn({ err }, 'sweeping results past their retention failed; tried again in a second');
        }
      }
      // Detached calls that have answered: their results are recorded and their leases let go.
      settleAnswered(ctx, wallClock);
      if (nextDue !== undefined && nextDue > wallClock) return;
      const due = await retries.due<HeldRetry>(wallClock, RELEASE_LIMIT);
      if (due.length === 0) {
        // Nothing due: remember when the earliest held retry will be (none: never, until a hold).
        const [next] = await retries.due<HeldRetry>(Number.MAX_SAFE_INTEGER, 1);
        nextDue = next?.dueAt ?? Number.POSITIVE_INFINITY;
        return;
      }
      nextDue = undefined; // more may be due; the next run scans again
      const release: Item[] = [];
      for (const d of due) {
        // A lease whose call is still here (running, or waiting for a slot of a busy host):
        // renewed for another call's timeout; its answer deletes it, so the renewal only
        // matters if this instance dies. (Renewing every second rewrote every waiting
        // call's lease, and its changelog record, each second under load.) A lease with no
        // call here (the instance that made it died, or the partition moved): the attempt
        // is made again.
        if (d.value.lease && detached.has(d.key)) hold(retries, d.key, wallClock + config.deliveryTimeoutMs + LEASE_MARGIN_MS, d.value);
        else {
          retries.delete(d.key);
          release.push({ cause: d.value.cause, task: d.value.task });
        }
      }
      if (release.length) await attempt(release, ctx);
    },
  };
};
