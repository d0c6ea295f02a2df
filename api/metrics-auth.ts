/**
 * `HERALD_METRICS_TOKEN`: the bearer token a scraper must send for `GET /metrics`, whose
 * labels name every tenant's webhook and chat hosts. Shared by the API and the server that
 * answers while the instance starts, so the answer is the same from the first moment.
 */
import { createHash, timingSafeEqual } from 'node:crypto';

const digest = (s: string) => createHash('sha256').update(s).digest();

/** null when the request may read /metrics, else the 401 body to answer with. */
export function metricsRefusal(token: string, authorization: string | string[] | undefined): { body: { error: 'HRL_UNAUTHORIZED'; message: string; field: 'Authorization' }; challenge: string } | null {
  if (!token) return null;
  const header = Array.isArray(authorization) ? authorization[0] : authorization;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header ?? '');
  // Compared as digests: equal lengths, and the time taken says nothing of the token.
  if (m && timingSafeEqual(digest(m[1]!), digest(token))) return null;
  // The 401's WWW-Authenticate as RFC 6750 has it: the realm, and invalid_token for a wrong one.
  // No credentials, or another scheme (Basic): the challenge alone (RFC 6750 3.1); a wrong bearer token: invalid_token.
  return !/^Bearer\s/i.test(header ?? '')
    ? { body: { error: 'HRL_UNAUTHORIZED', message: `Authorization: /metrics needs "Bearer <HERALD_METRICS_TOKEN>"${header === undefined ? '' : ', got another scheme'}`, field: 'Authorization' }, challenge: 'Bearer realm="metrics"' }
    : { body: { error: 'HRL_UNAUTHORIZED', message: 'Authorization: not the bearer token /metrics is served to (HERALD_METRICS_TOKEN)', field: 'Authorization' }, challenge: 'Bearer realm="metrics", error="invalid_token"' };
}
