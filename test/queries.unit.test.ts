/**
 * Query routing decisions without a broker: which lookups are answered locally, which are
 * forwarded, and when the answer must be 503 (unavailable) rather than a wrong 404.
 */
import { userKey } from '../topology.ts';
import { describe, expect, it } from 'vitest';
import type { InstanceDirectory } from '../app/instances.ts';
import { LifecycleRouter, partitionOf } from '../app/queries.ts';
import { notificationKey } from '../processors/outcome.ts';
import { createLogger } from '../runtime/logger.ts';
import type { InstanceClaim } from '../schemas/types.ts';

const PARTITIONS = 4;

function store(entries: Record<string, unknown> = {}) {
  const view = () => ({
    getMany: async <T>(keys: string[]) => keys.map((k) => entries[k] as T | undefined),
    async *range<T>(): AsyncGenerator<[string, T]> {},
  });
  return { view };
}

function router(local: Map<number, ReturnType<typeof store>>, owners: Record<number, Partial<InstanceClaim>>) {
  const directory = {
    instanceId: 'me',
    owner: (_stage: string, p: number) => (owners[p] ? ({ stage: 'outcome', partitions: [p], memberId: 'm', at: 0, url: 'http://127.0.0.1:9', ...owners[p] } as InstanceClaim) : undefined),
  } as unknown as InstanceDirectory;
  return new LifecycleRouter({ local: () => local, directory, partitions: PARTITIONS, timeoutMs: 500, log: createLogger('silent') });
}

const all = (n = PARTITIONS) => new Map(Array.from({ length: n }, (_, p) => [p, store()]));

describe('lifecycle query routing', () => {
  it('answers from the local projection when it holds the notification', async () => {
    const local = all();
    local.set(2, store({ [notificationKey('n1')]: { notificationId: 'n1', events: [] } }));
    const r = router(local, {});
    expect(await r.notification('n1', { forwarded: false, authorization: '' })).toMatchObject({ status: 'ok', servedBy: 'me' });
  });

  it('answers 404 only when every partition was asked', async () => {
    const r = router(all(), {});
    expect(await r.notification('nope', { forwarded: false, authorization: '' })).toMatchObject({ status: 'not_found' });
  });

  it('answers a forwarded query meant for another instance as unavailable, naming it, never 404 (its advertised URL leads here)', async () => {
    const r = router(new Map([[0, store()]]), {});
    expect(await r.notification('nope', { forwarded: true, authorization: '', forwardedTo: 'me' })).toMatchObject({ status: 'not_found' });
    const wrong = await r.notification('nope', { forwarded: true, authorization: '', forwardedTo: 'inst-B' });
    expect(wrong).toEqual({ status: 'unavailable', detail: 'this query was forwarded to instance inst-B, and instance me got it: inst-B\'s advertised URL leads here (check its HERALD_ADVERTISED_URL)' });
    expect(await r.digest('acme', { forwarded: true, authorization: '', forwardedTo: 'inst-B' })).toMatchObject({ status: 'unavailable' });
  });

  it('answers unavailable, not 404, while a partition has no owner or is restoring here', async () => {
    const local = all();
    local.delete(3);
    expect(await router(local, {}).notification('nope', { forwarded: false, authorization: '' })).toMatchObject({ status: 'unavailable' });
    expect(await router(local, { 3: { instanceId: 'me' } }).notification('nope', { forwarded: true, authorization: '' })).toMatchObject({ status: 'unavailable' });
  });

  it('answers unavailable when the owner of a user partition cannot be reached, and never forwards a forwarded query', async () => {
    const user = 'someone';
    const p = partitionOf(userKey('acme', user), PARTITIONS);
    const local = all();
    local.delete(p);
    const r = router(local, { [p]: { instanceId: 'other', url: 'http://127.0.0.1:9' } });
    // fetch will not call port 9 (a port it blocks): the answer says why, not fetch's "TypeError".
    expect(await r.userNotifications('acme', user, 10, { forwarded: false, authorization: '' })).toMatchObject({ status: 'unavailable', detail: 'instance other, which holds the partition, did not answer (bad port)' });
    expect(await r.userNotifications('acme', user, 10, { forwarded: true, authorization: '' })).toMatchObject({ status: 'unavailable', detail: expect.stringContaining('not held by instance me') });
  });

  it('partitions user ids as the Kafka producer does (murmur2), the same for every instance', () => {
    const spread = new Set(Array.from({ length: 64 }, (_, i) => partitionOf(`user-${i}`, PARTITIONS)));
    expect(spread).toEqual(new Set([0, 1, 2, 3]));
    expect(partitionOf('ada', PARTITIONS)).toBe(partitionOf('ada', PARTITIONS));
  });
});
