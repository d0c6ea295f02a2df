/**
 * Waiting inside a batch without losing the group: kafkajs heartbeats only between
 * batches, so a long wait (a table catching up, a partition restoring, a slow batch) calls
 * the batch's `heartbeat` every second until it is over.
 */
import { HeraldError } from '../errors.ts';

/**
 * Resolves with `p`, heartbeating every second meanwhile. When `stopping()` turns true the
 * wait ends with HRL_SHUTTING_DOWN (a shutdown, not a processing failure).
 */
export async function heartbeating<T>(p: Promise<T>, heartbeat: () => Promise<void>, stopping: () => boolean): Promise<T> {
  let settled = false;
  const done = p.finally(() => (settled = true));
  while (!settled) {
    // The second's timer is cleared once the wait is over: most waits end at once, and a
    // timer left pending per call would pile up thousands a second under load.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([done.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, 1000)))]);
    clearTimeout(timer);
    if (settled) break;
    if (stopping()) throw new HeraldError('HRL_SHUTTING_DOWN', 'the stage is stopping', { retriable: true });
    await heartbeat().catch(() => undefined);
  }
  return done;
}
