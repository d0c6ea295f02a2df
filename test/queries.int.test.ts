/**
 * Queries any instance answers: two instances share the consumer groups (each holds half
 * of the outcome partitions) on the embedded broker. Every notification's lifecycle and
 * every user's notification list read the same through either instance; lookups for
 * partitions the other instance holds are forwarded to it, once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Herald } from '../app/herald.ts';
import { partitionOf } from '../app/queries.ts';
import type { NotificationView } from '../processors/outcome.ts';
import { api, eventually, removeDir, startCluster, startTestHerald, AUTH } from './support/herald.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';
import { userKey } from '../topology.ts';

const PARTITIONS = 4;
const USERS = Array.from({ length: 12 }, (_, i) => `q${i}`);
let cluster: Awaited<ReturnType<typeof startCluster>>;
const instances: (Herald & { stateDir: string })[] = [];
const hooks = new WebhookReceiver();

beforeAll(async () => {
  await hooks.start();
  cluster = await startCluster(PARTITIONS);
  for (const id of ['qa', 'qb']) {
    instances.push(await startTestHerald({ env: { ...cluster.env, HERALD_PARTITIONS: String(PARTITIONS), HERALD_INSTANCE_ID: id } }));
  }
  // Both members in the outcome group, each holding its half, and each claim published.
  await eventually(() => instances.every((h) => h.runners.get('outcome')!.stores('lifecycle').size === PARTITIONS / 2), 40_000);
  await eventually(() => instances.every((h) => [...Array(PARTITIONS).keys()].every((p) => h.directory.owner('outcome', p) !== undefined)), 20_000);
}, 90_000);

afterAll(async () => {
  for (const h of instances) await h.stop();
  await cluster?.stop();
  await hooks.stop();
  for (const h of instances) removeDir(h.stateDir);
});

describe('queries any instance answers', () => {
  it('reads every notification and every user list the same through both instances', async () => {
    const a = instances[0]!;
    const b = instances[1]!;
    for (const u of USERS) expect((await api(a, 'PUT', `/v1/users/${u}`, { name: u, webhookUrl: `${hooks.url}/${u}` })).status).toBe(202);
    await eventually(async () => (await Promise.all(USERS.map((u) => api(b, 'GET', `/v1/users/${u}`)))).every((r) => r.status === 200));

    const ids: string[] = [];
    for (const u of USERS) {
      const res = await api<{ notifications: { notificationId: string }[] }>(a, 'POST', '/v1/events', { id: `qe-${u}`, type: 'comment.created', tenant: 'acme', recipients: [u], data: { commentId: `c-${u}` } });
      expect(res.status).toBe(202);
      ids.push(res.body.notifications[0]!.notificationId);
    }
    await eventually(() => hooks.received.length >= USERS.length, 30_000);

    // The users' partitions are spread over both instances, so both paths are exercised.
    const owners = new Set(USERS.map((u) => a.directory.owner('outcome', partitionOf(userKey('acme', u), PARTITIONS))?.instanceId));
    expect(owners).toEqual(new Set(['qa', 'qb']));

    const servedBy = new Set<string>();
    for (const id of ids) {
      const [viaA, viaB] = await eventually(async () => {
        const both = await Promise.all([a, b].map((h) => fetch(`${h.httpUrl}/v1/notifications/${id}`, { headers: AUTH })));
        const bodies = await Promise.all(both.map(async (r) => ({ status: r.status, by: r.headers.get('x-herald-served-by'), body: (await r.json()) as NotificationView })));
        return bodies.every((x) => x.status === 200 && x.body.terminal.length === 1) ? bodies : false;
      });
      expect(viaB!.body).toEqual(viaA!.body);
      expect(viaA!.by).toBe(viaB!.by); // one instance holds it, whichever is asked
      servedBy.add(viaA!.by!);
    }
    expect(servedBy).toEqual(new Set(['qa', 'qb']));

    for (const u of USERS) {
      const [viaA, viaB] = await Promise.all([a, b].map((h) => api<{ userId: string; notifications: { notificationId: string }[] }>(h, 'GET', `/v1/users/${u}/notifications`)));
      expect([viaA!.status, viaB!.status]).toEqual([200, 200]);
      expect(viaA!.body.notifications.map((n) => n.notificationId)).toEqual([ids[USERS.indexOf(u)]]);
      expect(viaB!.body).toEqual(viaA!.body);
    }

    // Pages: five more notifications for each of two users (one held by each instance), read
    // through both instances two at a time with `before`: newest first, each once, to the end.
    const paged = USERS.filter((u, i, all) => all.findIndex((x) => a.directory.owner('outcome', partitionOf(userKey('acme', x), PARTITIONS))?.instanceId === a.directory.owner('outcome', partitionOf(userKey('acme', u), PARTITIONS))?.instanceId) === i);
    expect(paged).toHaveLength(2);
    const sent = new Map<string, string[]>();
    for (const u of paged) {
      for (let i = 0; i < 5; i++) {
        const res = await api<{ notifications: { notificationId: string }[] }>(a, 'POST', '/v1/events', { id: `qp-${u}-${i}`, type: 'comment.created', tenant: 'acme', recipients: [u], data: { commentId: `p-${i}` } });
        sent.set(u, [...(sent.get(u) ?? []), res.body.notifications[0]!.notificationId]);
        await new Promise((r) => setTimeout(r, 5)); // distinct times: the order is the publish order
      }
    }
    for (const u of paged) {
      const whole = await eventually(async () => {
        const r = await api<{ notifications: { notificationId: string }[] }>(a, 'GET', `/v1/users/${u}/notifications?limit=100`);
        return r.body.notifications?.length === 6 && r.body.notifications.map((n) => n.notificationId);
      }, 30_000);
      expect(new Set(whole)).toEqual(new Set([...sent.get(u)!, ids[USERS.indexOf(u)]!]));
      for (const h of [a, b]) {
        const seen: string[] = [];
        let before: string | null = null;
        for (let page = 0; page < 10; page++) {
          const r: { status: number; body: { notifications: { notificationId: string }[]; next: string | null } } = await api<{ notifications: { notificationId: string }[]; next: string | null }>(h, 'GET', `/v1/users/${u}/notifications?limit=2${before ? `&before=${encodeURIComponent(before)}` : ''}`);
          expect(r.status).toBe(200);
          seen.push(...r.body.notifications.map((n) => n.notificationId));
          before = r.body.next;
          if (before === null) break;
        }
        // Every notification once, in the order of the whole list (newest first by when ingest accepted it).
        expect(seen).toEqual(whole);
      }
    }
  }, 120_000);

  it('answers 404 for an unknown notification after asking the other instance, and never forwards a forwarded query', async () => {
    const a = instances[0]!;
    const res = await api(a, 'GET', '/v1/notifications/ntf_does_not_exist');
    expect(res).toMatchObject({ status: 404, body: { error: 'HRL_NOT_FOUND' } });
    // A forwarded query for a user whose partition is elsewhere is not forwarded again: 503, not a hop.
    const elsewhere = USERS.find((u) => a.directory.owner('outcome', partitionOf(userKey('acme', u), PARTITIONS))?.instanceId !== 'qa')!;
    const hop = await api(a, 'GET', `/v1/users/${elsewhere}/notifications`, undefined, { 'x-herald-forwarded': 'qb' });
    expect(hop).toMatchObject({ status: 503, body: { error: 'HRL_OWNER_UNAVAILABLE' } });
  });
});
