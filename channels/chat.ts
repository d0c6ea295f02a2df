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

/** Slack's limits (Block Kit reference, chat.postMessage): a section's text, blocks per message, the top-level text. */
export const SLACK_LIMITS = { sectionText: 3000, blocks: 50, text: 40_000, subject: 300 } as const;

/** Where `s` may be cut at or before `at`: never inside an entity (`&amp;`) or a surrogate pair. */
function safeCut(s: string, at: number): number {
  let cut = at;
  const amp = s.lastIndexOf('&', cut - 1);
  if (amp !== -1 && amp > cut - 5 && s.indexOf(';', amp) >= cut) cut = amp;
  const c = s.charCodeAt(cut - 1);
  if (c >= 0xd800 && c <= 0xdbff) cut--;
  return cut;
}

/** `s` clipped to `max` characters, ending with an ellipsis when clipped. */
const clipTo = (s: string, max: number) => (s.length <= max ? s : `${s.slice(0, safeCut(s, max - 1))}…`);

/** Splits escaped text into pieces of at most `max` characters, at a line break or a space where one is near. */
export function splitText(s: string, max: number): string[] {
  const out: string[] = [];
  let rest = s;
  while (rest.length > max) {
    let cut = rest.lastIndexOf('\n', max);
    if (cut < max / 2) cut = rest.lastIndexOf(' ', max);
    cut = cut < max / 2 ? safeCut(rest, max) : cut;
    out.push(rest.slice(0, cut));
    rest = rest.slice(cut).replace(/^[\n ]/, '');
  }
  if (rest) out.push(rest);
  return out;
}

/**
 * The message, within Slack's limits: a long body goes in as many sections as it needs (at
 * most 3,000 characters each, 50 blocks, the last ending with an ellipsis if more was cut),
 * a long subject is clipped, and an empty one has no section (Slack refuses empty text).
 */
export function chatBody(task: DeliveryTask): string {
  const subject = task.subject ? clipTo(task.subject, SLACK_LIMITS.subject) : '';
  const text = subject ? `${subject}: ${task.body}` : task.body;
  const section = subject ? `*${mrkdwn(subject)}*${task.body ? `\n${mrkdwn(task.body)}` : ''}` : mrkdwn(task.body);
  let pieces = splitText(section, SLACK_LIMITS.sectionText);
  if (pieces.length > SLACK_LIMITS.blocks) {
    const last = pieces[SLACK_LIMITS.blocks - 1]!;
    pieces = [...pieces.slice(0, SLACK_LIMITS.blocks - 1), `${last.slice(0, safeCut(last, SLACK_LIMITS.sectionText - 1))}…`];
  }
  const blocks = pieces.map((t) => ({ type: 'section', text: { type: 'mrkdwn', text: t } }));
  return JSON.stringify({ text: clipTo(mrkdwn(text), SLACK_LIMITS.text) || '(no text)', ...(blocks.length ? { blocks } : {}) });
}

export function chatChannel(secrets: string | ((tenant: string) => readonly string[]), policy: OutboundPolicy): WebhookChannel {
  return new WebhookChannel(secrets, policy, Date.now, 'chat', chatBody);
}
