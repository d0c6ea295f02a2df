/**
 * enrich: joins each request with the recipient's profile and preferences from the
 * global tables. Unknown recipients and inactive ones are DROPPED. A recipient not found
 * is looked up again once the tables have read everything written before the request's
 * timestamp: a profile PUT just before the publish may still be on its way here.
 */
import { userKey } from '../topology.ts';
import type { StageFactory } from '../runtime/contract.ts';
import type { EnrichedNotification, UserPreferences, UserProfile } from '../schemas/types.ts';
import { about } from './about.ts';

export const enrich: StageFactory<'enrich'> = ({ tables }) => ({
  async process(batch, ctx) {
    const recs = batch;
    const ids = recs.map((r) => userKey(r.value.tenant, r.value.recipient));
    const [users, prefs] = await Promise.all([tables.getMany<UserProfile>('users', ids), tables.getMany<UserPreferences>('preferences', ids)]);
    const missing = [...users.keys()].filter((i) => !users[i]);
    if (missing.length && tables.catchUp && (await tables.catchUp(['users', 'preferences'], Math.max(...missing.map((i) => recs[i]!.timestamp))))) {
      const again = missing.map((i) => ids[i]!);
      const [u, p] = await Promise.all([tables.getMany<UserProfile>('users', again), tables.getMany<UserPreferences>('preferences', again)]);
      for (const [j, i] of missing.entries()) [users[i], prefs[i]] = [u[j], p[j]];
    }
    for (const [i, rec] of recs.entries()) {
      const req = rec.value;
      const user = users[i];
      const drop = (reasonCode: 'unknown_recipient' | 'recipient_inactive' | 'tenant_mismatch', reason: string) =>
        ctx.outcome(rec, { ...about(req), status: 'DROPPED', reasonCode, reason });
      if (!user) {
        drop('unknown_recipient', `no profile for user "${req.recipient}" of tenant "${req.tenant}" in the users table`);
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
      const preferences = prefs[i] ?? null;
      const out: EnrichedNotification = { request: req, user, preferences };
      ctx.emit(rec, 'enriched', userKey(req.tenant, req.recipient), out);
      ctx.outcome(rec, { ...about(req), status: 'ENRICHED', reasonCode: 'profile_joined', reason: `joined profile (locale ${user.locale}, timezone ${user.timezone})${preferences ? ' and preferences' : ''}` });
    }
  },
});
