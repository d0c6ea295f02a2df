/**
 * deliver: calls the channel for each task, with the delivery id as idempotency key.
 * A task whose result is already recorded (DELIVERED or DEAD_LETTERED) is skipped, so a
 * redelivered batch never reaches the user twice through Herald. Retriable failures go
 * to deliver.retry.v1 with a due time (exponential backoff, wall clock); the rest, and
 * tasks out of attempts, are DEAD_LETTERED. ATTEMPTED is on outcomes.v1 before the
 * channel is called; the result follows with the batch.
 */
import type { SendResult } from '../channels/channel.ts';
import type { InRecord, StageFactory } from './contract.ts';
import type { DeliveryTask } from './types.ts';

export interface DeliveryResult {
  status: 'DELIVERED' | 'DEAD_LETTERED' | 'EXPIRED';
  attempt: number;
  at: number;
}

const CONCURRENCY = 16;

/** The lifecycle fields every decision about a delivery task carries. */
const baseOf = (task: DeliveryTask) => ({
  notificationId: task.notificationId, deliveryId: task.deliveryId, tenant: task.tenant, recipient: task.recipient, eventId: task.eventId,
  eventType: task.eventType, ruleId: task.ruleId, channel: task.channel, attempt: task.attempt, traceId: task.traceId,
});

export const deliver: StageFactory = ({ channels, config, metrics }) => {
  // Results of calls this instance made whose batch may not be written yet: when a batch
  // is re-run record by record (one bad record), a task already sent is not sent again.
  const sent = new Map<string, SendResult>();
  return {
    // Retries wait for their due time (the runtime waits, outside the partition lock).
    dueAt(batch) {
      const due = Math.max(0, ...(batch as InRecord<DeliveryTask>[]).map((r) => r.value.notBefore ?? 0));
      return due > 0 ? due : undefined;
    },

    async process(batch, ctx) {
      const results = ctx.store('results');
      const recs = batch as InRecord<DeliveryTask>[];
      const recorded = await results.getMany<DeliveryResult>(recs.map((r) => r.value.deliveryId));

      const todo: number[] = [];
      const seen = new Set<string>();
      recs.forEach((r, i) => {
        const task = r.value;
        const prior = recorded[i];
        if (prior) {
          // Already settled: no second call. The terminal decision is written again so it
          // is never missing on outcomes.v1 (the projection ignores a decision it has).
          ctx.log.debug({ deliveryId: task.deliveryId, notificationId: task.notificationId }, 'result already recorded; skipped');
          ctx.outcome(r, {
            ...baseOf(task), attempt: prior.attempt, status: prior.status, terminal: true,
            reasonCode: 'already_recorded', reason: `${prior.status} was recorded at ${new Date(prior.at).toISOString()} (attempt ${prior.attempt}); not sent again`, timestamp: prior.at,
          });
        } else if (!seen.has(task.deliveryId)) todo.push(i);
        seen.add(task.deliveryId);
      });
      const outcomes = new Array<Awaited<ReturnType<typeof call>>>(recs.length);
      async function call(task: DeliveryTask): Promise<SendResult> {
        const key = `${task.deliveryId}#${task.attempt}`;
        const earlier = sent.get(key);
        if (earlier) return earlier;
        const r = await callChannel(task);
        sent.set(key, r);
        if (sent.size > 10_000) sent.delete(sent.keys().next().value!);
        return r;
      }
      async function callChannel(task: DeliveryTask): Promise<SendResult> {
        const provider = channels.get(task.channel);
        const started = performance.now();
        if (!provider) return { ok: false as const, retriable: false, code: 'channel_unavailable', detail: `no provider for channel ${task.channel}` };
        const r = await provider.send(task, AbortSignal.timeout(config.deliveryTimeoutMs)).catch((err: Error) => ({ ok: false as const, retriable: true, code: 'provider_error', detail: err.message }));
        metrics.deliveryLatency.observe({ channel: task.channel }, (performance.now() - started) / 1000);
        metrics.deliveries.inc({ channel: task.channel, result: r.ok ? 'delivered' : r.retriable ? 'retriable' : 'permanent' });
        return r;
      }
      // Expired tasks are not sent; the others are recorded as ATTEMPTED before the call.
      const expired = new Set(todo.filter((idx) => { const t = recs[idx]!.value; return t.expiresAt !== null && ctx.wallClock() >= t.expiresAt; }));
      const send = todo.filter((idx) => !expired.has(idx));
      const attemptedAt = ctx.wallClock();
      await ctx.recordNow(send.map((idx) => {
        const task = recs[idx]!.value;
        return [recs[idx]!, { ...baseOf(task), status: 'ATTEMPTED', reasonCode: 'channel_called', reason: `attempt ${task.attempt} via ${task.channel}`, timestamp: attemptedAt }];
      }));
      for (let i = 0; i < send.length; i += CONCURRENCY) {
        await Promise.all(send.slice(i, i + CONCURRENCY).map(async (idx) => {
          outcomes[idx] = await call(recs[idx]!.value);
        }));
      }
      for (const idx of todo) {
        const rec = recs[idx]!;
        const task = rec.value;
        const base = baseOf(task);
        const now = ctx.wallClock();
        const r = outcomes[idx];
        if (!r) {
          results.put(task.deliveryId, { status: 'EXPIRED', attempt: task.attempt, at: now } satisfies DeliveryResult);
          ctx.outcome(rec, { ...base, status: 'EXPIRED', terminal: true, reasonCode: 'expired_before_delivery', reason: `expired at ${new Date(task.expiresAt!).toISOString()} before attempt ${task.attempt}`, timestamp: now });
          continue;
        }
        if (r.ok) {
          results.put(task.deliveryId, { status: 'DELIVERED', attempt: task.attempt, at: now } satisfies DeliveryResult);
          ctx.outcome(rec, { ...base, status: 'DELIVERED', terminal: true, reasonCode: 'accepted_by_provider', reason: `${task.channel} accepted: ${r.detail}`, providerMessageId: r.providerMessageId, timestamp: now });
        } else if (r.retriable && task.attempt < config.maxDeliveryAttempts) {
          const delay = Math.min(config.maxRetryDelayMs, Math.max(r.retryAfterMs ?? 0, config.retryBaseMs * 2 ** (task.attempt - 1)));
          const next: DeliveryTask = { ...task, attempt: task.attempt + 1, notBefore: now + delay };
          ctx.emit(rec, 'deliverRetry', task.recipient, next);
          ctx.outcome(rec, { ...base, status: 'RETRY_SCHEDULED', reasonCode: r.code, reason: `${r.detail}; attempt ${next.attempt} of ${config.maxDeliveryAttempts} at ${new Date(next.notBefore!).toISOString()}`, timestamp: now });
        } else {
          results.put(task.deliveryId, { status: 'DEAD_LETTERED', attempt: task.attempt, at: now } satisfies DeliveryResult);
          const why = r.retriable ? `gave up after ${task.attempt} attempts; last: ${r.detail}` : `permanent failure: ${r.detail}`;
          ctx.outcome(rec, { ...base, status: 'FAILED', reasonCode: r.code, reason: r.detail, timestamp: now });
          ctx.outcome(rec, { ...base, status: 'DEAD_LETTERED', terminal: true, reasonCode: r.retriable ? 'attempts_exhausted' : 'permanent_failure', reason: why, timestamp: now });
        }
      }
    },
  };
};
