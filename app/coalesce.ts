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
import type { Send } from './ports.ts';

interface Waiting { message: Message; resolve: () => void; reject: (err: unknown) => void }

export class CoalescingSender {
  private readonly queues = new Map<string, Waiting[]>();
  private readonly busy = new Set<string>();
  private readonly send: Send;
  private readonly maxRecords: number;

  constructor(send: Send, maxRecords = 1000) {
    this.send = send;
    this.maxRecords = maxRecords;
  }

  /** Produces `message` to `topic` (acks=-1) with whatever else is waiting for that topic. */
  produce(topic: string, message: Message): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let queue = this.queues.get(topic);
      if (!queue) this.queues.set(topic, (queue = []));
      queue.push({ message, resolve, reject });
      if (!this.busy.has(topic)) void this.drain(topic);
    });
  }

  private async drain(topic: string): Promise<void> {
    this.busy.add(topic);
    try {
      for (let queue = this.queues.get(topic); queue && queue.length > 0; queue = this.queues.get(topic)) {
        const batch = queue.splice(0, this.maxRecords);
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
