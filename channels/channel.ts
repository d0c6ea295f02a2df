/**
 * A delivery channel: the only place Herald performs effects on the outside world.
 * `send` must pass the task's deliveryId as the provider's idempotency key, so that a
 * redelivered task does not reach the user twice.
 */
import type { DeliveryTask } from '../schemas/types.ts';

export type SendResult =
  | { ok: true; providerMessageId: string | null; detail: string }
  | { ok: false; retriable: boolean; code: string; detail: string; retryAfterMs?: number };

export interface ChannelProvider {
  readonly name: string;
  send(task: DeliveryTask, signal: AbortSignal): Promise<SendResult>;
  close?(): Promise<void>;
}
