/**
 * throttle: admits notifications. Rate limits, quiet hours and digests build on this
 * stage (keyed state and timers); today every notification is ADMITTED.
 */
import { userKey } from '../topology.ts';
import type { StageFactory } from '../runtime/contract.ts';
import { about } from './about.ts';

export const throttle: StageFactory<'throttle'> = () => ({
  async process(batch, ctx) {
    for (const rec of batch) {
      const req = rec.value.request;
      ctx.emit(rec, 'admitted', userKey(req.tenant, req.recipient), rec.value);
      ctx.outcome(rec, { ...about(req), status: 'ADMITTED', reasonCode: 'no_limit', reason: 'no rate limit or quiet hours apply' });
    }
  },
});
