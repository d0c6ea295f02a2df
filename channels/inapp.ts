/**
 * In-app channel: the user's inbox is a projection of outcomes.v1 kept by the outcome
 * stage (restored like every store, served by whichever instance holds the user's
 * partition). Delivering is recording the DELIVERED decision with the rendered content;
 * there is no outside system to call, so it never fails.
 */
import type { DeliveryTask } from '../schemas/types.ts';
import type { ChannelProvider, SendResult } from './channel.ts';

export class InAppChannel implements ChannelProvider {
  readonly name = 'inapp';

  async send(_task: DeliveryTask): Promise<SendResult> {
    return { ok: true, providerMessageId: null, detail: 'added to the inbox' };
  }
}

/** What a DELIVERED in-app decision carries for the inbox. */
export function inboxContent(task: DeliveryTask): string {
  return JSON.stringify({ subject: task.subject, body: task.body, category: task.category, eventType: task.eventType });
}
