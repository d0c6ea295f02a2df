/**
 * Group commit for the API's produces: while a produce to a topic is in flight, the
 * messages that arrive meanwhile wait and go out together in the next one (one message set
 * per partition instead of one per request), and each caller is answered when the produce
 * carrying its message is acknowledged (and journaled). An idle API adds no delay; under
 * load the sets grow with the load, like the producer's `linger.ms` without its fixed wait.
 *
 * It matters most on the embedded broker, which answers a fetch with one message set per
 * partition: 50 clients each producing a set of one record made every stage downstream
 * handle batches of one record.
 */
import type { Message } from 'kafkajs';
import { HeraldError } from '../errors.ts';
import type { Send } from './ports.ts';

interface Waiting { message: Message; resolve: () => void; reject: (err: unknown) => void }

/** The answer to a write the brokers have not acknowledged in time. */
export function unacknowledged(what: string, ms: number, handedOver: boolean): HeraldError {
  return new HeraldError('HRL_BROKER_UNREACHABLE', handedOver
    ? `${what}: the brokers have not acknowledged it within ${ms} ms (unreachable or overloaded); it may still be written: send it again with the same Idempotency-Key (or id), which is never delivered twice`
    : `${what}: not written, the brokers have not acknowledged a write for ${ms} ms (unreachable or overloaded); send it again shortly`, { retriable: true });
}

export class CoalescingSender {
  private readonly queues = new Map<string, Waiting[]>();
  /** Per topic, when the produce in flight started. */
  private readonly busy = new Map<string, number>();
  private readonly send: Send;
  private readonly maxRecords: number;

  constructor(send: Send, maxRecords = 1000) {
    this.send = send;
    this.maxRecords = maxRecords;
  }

  /**
   * Produces `message` to `topic` (acks=-1) with whatever else is waiting for that topic.
   * With `timeoutMs`, a message not acknowledged by then fails with HRL_BROKER_UNREACHABLE:
   * taken out of the queue when its produce has not started (it is not written), or left to
   * its produce when it has (it may still be written).
   */
  produce(topic: string, message: Message, timeoutMs = 0, what = `a record for ${topic}`): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let queue = this.queues.get(topic);
      if (!queue) this.queues.set(topic, (queue = []));
      let timer: NodeJS.Timeout | undefined;
      const w: Waiting = { message, resolve: () => { clearTimeout(timer); resolve(); }, reject: (err) => { clearTimeout(timer); reject(err); } };
      queue.push(w);
      if (timeoutMs > 0) {
        timer = setTimeout(() => {
          const waiting = this.queues.get(topic) ?? [];
          const i = waiting.indexOf(w);
          if (i >= 0) waiting.splice(i, 1);
          reject(unacknowledged(what, timeoutMs, i < 0));
        }, timeoutMs);
        timer.unref();
      }
      if (!this.busy.has(topic)) void this.drain(topic);
    });
  }

  /** How long the produce in flight to `topic` has been waiting for its acknowledgement (0: none). */
  stalledMs(topic: string, now = Date.now()): number {
    const since = this.busy.get(topic);
    return since === undefined ? 0 : now - since;
  }

  private async drain(topic: string): Promise<void> {
    this.busy.set(topic, Date.now());
    try {
      for (let queue = this.queues.get(topic); queue && queue.length > 0; queue = this.queues.get(topic)) {
        const batch = queue.splice(0, this.maxRecords);
        this.busy.set(topic, Date.now());
        try {
          await this.send({ topic, acks: -1, messages: batch.map((w) => w.message) });
          for (const w of batch) w.resolve();
        } catch (err) {
          // One failed produce fails the requests it carried (they answer 5xx and may be retried); later ones go on.
          for (const w of batch) w.reject(err);
        }
      }
    } finally {
      this.busy.delete(topic);
    }
  }
}
