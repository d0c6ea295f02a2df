/**
 * route: channels = rule channels (in order) ∩ preferences ∩ reachable addresses ∩
 * channels this deployment can deliver; renders the template per channel and locale;
 * drops notifications past their expiry (stream time). One DeliveryTask per channel.
 */
import { userKey } from '../topology.ts';
import Mustache from 'mustache';
import type { Channel, Rule, Template } from '../rules/rules.ts';
import type { StageFactory } from '../runtime/contract.ts';
import type { ReasonCode } from '../schemas/lifecycle.ts';
import type { DeliveryTask, UserProfile } from '../schemas/types.ts';
import { about } from './about.ts';
import { deliveryId } from './ids.ts';

/** Where a channel reaches the user, or null when the profile has no address for it. */
export function addressFor(channel: Channel, user: UserProfile): string | null {
  switch (channel) {
    case 'webhook': return user.webhookUrl;
    case 'email': return user.email;
    case 'chat': return user.chatWebhookUrl;
    case 'inapp': return user.userId;
  }
}

/** Picks the template for a locale: exact, then language, then "en" (a digest's from the rule's digest templates). */
export function templateFor(rule: Rule, channel: Channel, locale: string, digest = false): { template: Template; locale: string } {
  const byLocale = (digest && rule.throttle.digest ? rule.throttle.digest.templates : rule.templates)[channel]!;
  for (const l of [locale, locale.split('-')[0]!, 'en']) {
    const t = byLocale[l];
    if (t) return { template: t, locale: l };
  }
  throw new Error(`rule ${rule.id} has no "en" template for ${channel}`); // the rules schema requires one
}

const render = (text: string, view: object) => Mustache.render(text, view, {}, { escape: (s: string) => s });

export const route: StageFactory<'route'> = ({ rules, availableChannels }) => ({
  async process(batch, ctx) {
    for (const rec of batch) {
      const { request: req, user, preferences } = rec.value;
      const drop = (reasonCode: ReasonCode, reason: string) => ctx.outcome(rec, { ...about(req), status: 'DROPPED', reasonCode, reason });
      if (req.expiresAt !== null && rec.timestamp >= req.expiresAt) {
        ctx.outcome(rec, { ...about(req), status: 'EXPIRED', reasonCode: 'expired_before_routing', reason: `expired at ${new Date(req.expiresAt).toISOString()}` });
        continue;
      }
      const rule = rules.byId(req.ruleId);
      if (!rule) {
        drop('rule_removed', `rule ${req.ruleId} is no longer in the rules file`);
        continue;
      }
      if (preferences?.categories[req.category] === false) {
        drop('category_opted_out', `user opted out of category "${req.category}"`);
        continue;
      }
      const excluded: string[] = [];
      const chosen: { channel: Channel; address: string }[] = [];
      for (const channel of rule.channels) {
        const address = addressFor(channel, user);
        if (preferences?.channels[channel] === false) excluded.push(`${channel}: opted out`);
        else if (!availableChannels.has(channel)) excluded.push(`${channel}: not configured in this deployment`);
        else if (!address) excluded.push(`${channel}: no address in profile`);
        else chosen.push({ channel, address });
      }
      if (chosen.length === 0) {
        drop('no_reachable_channel', `no channel can reach the user (${excluded.join('; ')})`);
        continue;
      }
      const data = JSON.parse(req.data) as Record<string, unknown>;
      const digest = req.digestOf.length > 0;
      // A digest's view also has {{count}} and {{#items}}…{{/items}} at the top.
      const view = { ...(digest ? data : {}), data, actor: req.actor ?? 'someone', recipient: req.recipient, eventType: req.eventType, user: { name: user.name ?? req.recipient, locale: user.locale } };
      const rendered = chosen.map(({ channel, address }) => {
        const { template, locale } = templateFor(rule, channel, user.locale, digest);
        return { channel, address, locale, subject: template.subject !== undefined ? render(template.subject, view) : null, body: render(template.body, view) };
      });
      // strategy "all": one task per channel; "first": the first, carrying the others, rendered, in order.
      const sends = rule.strategy === 'first' ? [{ ...rendered[0]!, fallback: rendered.slice(1).map((r) => JSON.stringify(r)) }] : rendered.map((r) => ({ ...r, fallback: [] as string[] }));
      for (const r of sends) {
        const task: DeliveryTask = {
          deliveryId: deliveryId(req.notificationId, r.channel), notificationId: req.notificationId, tenant: req.tenant,
          eventId: req.eventId, eventType: req.eventType, ruleId: req.ruleId, recipient: req.recipient, category: req.category,
          channel: r.channel, address: r.address, locale: r.locale, subject: r.subject, body: r.body, data: req.data, fallback: r.fallback, attempt: 1, notBefore: null,
          expiresAt: req.expiresAt, occurredAt: req.occurredAt, traceId: req.traceId,
        };
        ctx.emit(rec, 'deliveries', userKey(req.tenant, req.recipient), task);
      }
      const where = rule.strategy === 'first' && chosen.length > 1 ? `${chosen[0]!.channel} first, then ${chosen.slice(1).map((c) => c.channel).join(', ')} on failure (strategy first)` : chosen.map((c) => c.channel).join(', ');
      ctx.outcome(rec, {
        ...about(req), status: 'ROUTED', reasonCode: 'channels_selected',
        reason: `routed to ${where}${excluded.length ? `; skipped ${excluded.join('; ')}` : ''}`,
      });
    }
  },
});
