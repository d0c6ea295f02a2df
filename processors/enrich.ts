/**
 * enrich: joins each request with the recipient's profile and preferences from the
 * global tables. Unknown recipients and inactive ones are DROPPED.
 */
import type { InRecord, StageFactory } from './contract.ts';
import { about, type EnrichedNotification, type NotificationRequest, type UserPreferences, type UserProfile } from './types.ts';

export const enrich: StageFactory = ({ tables }) => ({
  async process(batch, ctx) {
    for (const rec of batch as InRecord<NotificationRequest>[]) {
      const req = rec.value;
      const user = tables.get<UserProfile>('users', req.recipient);
      const drop = (reasonCode: string, reason: string) =>
        ctx.outcome(rec, { ...about(req), status: 'DROPPED', terminal: true, reasonCode, reason });
      if (!user) {
        drop('unknown_recipient', `no profile for user "${req.recipient}" in the users table`);
        continue;
      }
      if (!user.active) {
        drop('recipient_inactive', `user "${req.recipient}" is deactivated`);
        continue;
      }
      if (user.tenant && user.tenant !== req.tenant) {
        drop('tenant_mismatch', `user "${req.recipient}" belongs to another tenant than the event's`);
        continue;
      }
      const preferences = tables.get<UserPreferences>('preferences', req.recipient) ?? null;
      const out: EnrichedNotification = { request: req, user, preferences };
      ctx.emit(rec, 'enriched', req.recipient, out);
      ctx.outcome(rec, { ...about(req), status: 'ENRICHED', reasonCode: 'profile_joined', reason: `joined profile (locale ${user.locale}, timezone ${user.timezone})${preferences ? ' and preferences' : ''}` });
    }
  },
});
