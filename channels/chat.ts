/**
 * Chat channel: a Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat,
 * Discord's /slack endpoint) at the user's `chatWebhookUrl`. The body is `{text, blocks}`
 * with the subject in bold; user text is escaped as Slack's mrkdwn asks (&, <, >). It is
 * sent over the webhook channel's HTTP path: the same outbound policy, signature headers,
 * failure classes and `Retry-After` (429) handling.
 */
import type { DeliveryTask } from '../schemas/types.ts';
import type { OutboundPolicy } from './outbound.ts';
import { WebhookChannel } from './webhook.ts';

const mrkdwn = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

export function chatBody(task: DeliveryTask): string {
  const text = task.subject ? `${task.subject}: ${task.body}` : task.body;
  const section = task.subject ? `*${mrkdwn(task.subject)}*\n${mrkdwn(task.body)}` : mrkdwn(task.body);
  return JSON.stringify({ text: mrkdwn(text), blocks: [{ type: 'section', text: { type: 'mrkdwn', text: section } }] });
}

export function chatChannel(secrets: string | ((tenant: string) => readonly string[]), policy: OutboundPolicy): WebhookChannel {
  return new WebhookChannel(secrets, policy, Date.now, 'chat', chatBody);
}
