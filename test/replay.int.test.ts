/**
 * Debugging with replay, on the embedded broker, as a user runs it: `herald replay`,
 * `herald lifecycle rebuild|digest` and `herald explain --event` against a running
 * instance (found through its state dir). Replay of dedupe reproduces every recorded
 * decision; replay of throttle with a rate limit added reports exactly the decisions a
 * known scenario says would change; nothing live is touched (topics' end offsets and the
 * stage groups' committed offsets are read before and after); the rebuilt projection's
 * digest equals the live one's.
 */
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Herald } from '../app/herald.ts';
import type { NotificationView } from '../processors/outcome.ts';
import type { ReplayReport } from '../replay/replay.ts';
import { STAGE_NAMES, groupId, topicName, topicPlan } from '../topology.ts';
import { api, eventually, removeDir, startTestHerald, TEST_KEY } from './support/herald.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';

const run = promisify(execFile);
let h: Herald & { stateDir: string };
let receiver: WebhookReceiver;
/** The first notification id per user and comment (the ones dedupe passes). */
const first = new Map<string, string>();
let eventWithStranger = '';

async function herald(...args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, ['cli/herald.ts', ...args], { env: { ...process.env, HERALD_STATE_DIR: h.stateDir, KAFKA_BROKERS: '', HERALD_DEV_KEY: TEST_KEY, HERALD_LOG_LEVEL: 'warn' }, maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

/** What replay must not change: every topic's end offsets and every stage group's committed offsets. */
async function liveState(): Promise<{ ends: Record<string, string[]>; committed: Record<string, string[]> }> {
  const admin = h.admin;
  const ends: Record<string, string[]> = {};
  for (const t of topicPlan(h.config.topicPrefix, h.config.partitions)) ends[t.name] = (await admin.fetchTopicOffsets(t.name)).sort((a, b) => a.partition - b.partition).map((o) => o.high);
  const committed: Record<string, string[]> = {};
  for (const s of STAGE_NAMES) {
    for (const t of await admin.fetchOffsets({ groupId: groupId(h.config.topicPrefix, s) })) committed[`${s}:${t.topic}`] = t.partitions.sort((a, b) => a.partition - b.partition).map((p) => p.offset);
  }
  return { ends, committed };
}

beforeAll(async () => {
  receiver = await new WebhookReceiver().start();
  h = await startTestHerald({ env: { HERALD_PARTITIONS: '2' } });
  for (const u of ['ada', 'bob', 'cy']) expect((await api(h, 'PUT', `/v1/users/${u}`, { webhookUrl: `${receiver.url}/${u}` })).status).toBe(202);
  await eventually(async () => (await Promise.all(['ada', 'bob', 'cy'].map((u) => api(h, 'GET', `/v1/users/${u}`)))).every((r) => r.status === 200));
  const publish = async (recipients: string[], commentId: string) => {
    const r = await api<{ eventId: string; notifications: { recipient: string; notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'comment.created', recipients, actor: 'linus', data: { commentId, documentTitle: 'Plan', excerpt: 'x' } });
    expect(r.status).toBe(202);
    // events.v1 is keyed by event id, so two events can reach ingest on different partitions and
    // leave it in either order; the what-if below counts each user's notifications in order, so
    // each event is through ingest (its ACCEPTED in the projection) before the next is published.
    await eventually(async () => (await Promise.all(r.body.notifications.map((n) => api(h, 'GET', `/v1/notifications/${n.notificationId}`)))).every((x) => x.status === 200), 30_000);
    return r.body;
  };
  // ada and bob: c1, c2, c3, then c1 and c2 again (4 duplicates). cy: five different comments. Then ada and zed (nobody).
  const remember = (body: { notifications: { recipient: string; notificationId: string }[] }, c: string) => {
    for (const n of body.notifications) if (!first.has(`${n.recipient}/${c}`)) first.set(`${n.recipient}/${c}`, n.notificationId);
  };
  for (const c of ['c1', 'c2', 'c3', 'c1', 'c2']) remember(await publish(['ada', 'bob'], c), c);
  for (const c of ['c10', 'c11', 'c12', 'c13', 'c14']) remember(await publish(['cy'], c), c);
  const stranger = await publish(['ada', 'zed'], 'c20');
  remember(stranger, 'c20');
  eventWithStranger = stranger.eventId;
  // Every notification has ended (delivered, suppressed or dropped) before anything is replayed.
  const all = 2 * 5 + 5 + 2;
  await eventually(async () => {
    const views = await Promise.all(['ada', 'bob', 'cy'].map((u) => api<{ notifications: { status: string }[] }>(h, 'GET', `/v1/users/${u}/notifications?limit=100`)));
    const ended = views.flatMap((v) => v.body.notifications ?? []).filter((n) => ['DELIVERED', 'SUPPRESSED_DUPLICATE'].includes(n.status));
    return ended.length === all - 1; // zed is nobody: dropped at enrich, in no user's list
  }, 60_000);
}, 120_000);

afterAll(async () => {
  await h?.stop();
  await receiver?.stop();
  if (h) removeDir(h.stateDir);
});

describe('herald replay', () => {
  it('replays dedupe and reproduces every recorded decision, touching no live topic, group or offset', async () => {
    const before = await liveState();
    const r = JSON.parse(await herald('replay', '--stage', 'dedupe', '--format', 'json')) as ReplayReport;
    expect(r.compared).toBe(2 * 5 + 5 + 1);
    expect(r.reproduced).toBe(r.compared);
    expect(r.changes).toEqual([]);
    expect(r.counts).toEqual({ 'UNIQUE first_seen': 12, 'SUPPRESSED_DUPLICATE duplicate_key': 4 });
    const dup = r.decisions.find((d) => d.status === 'SUPPRESSED_DUPLICATE')!;
    expect(dup.reason).toMatch(/^same dedupe key \(recipient, data\.commentId=c[12]\) as ntf_\w+, first seen \d+(\.\d+)? (ms|s) earlier \((.+)\); window 24 h, open until \S+Z \(suppressed repeats do not extend it\)$/);
    expect([first.get('ada/c1'), first.get('ada/c2'), first.get('bob/c1'), first.get('bob/c2')]).toContain(/as (ntf_\w+)/.exec(dup.reason)![1]);
    expect(await liveState()).toEqual(before);
  }, 60_000);

  it('replays ingest..route as one chain and reproduces them all', async () => {
    const r = JSON.parse(await herald('replay', '--stage', 'ingest..route', '--format', 'json')) as ReplayReport;
    expect(r.stages).toEqual(['ingest', 'enrich', 'dedupe', 'throttle', 'route']);
    if (r.changes.length) console.log(JSON.stringify(r.changes.slice(0, 4), null, 1));
    expect(r.changes).toEqual([]);
    expect(r.reproduced).toBe(r.compared);
    // 17 notifications (ada and bob x5, cy x5, ada and zed): ingest 17, enrich 17, dedupe 16 (not zed), throttle and route 12 (not the duplicates)
    expect(r.compared).toBe(17 + 17 + 16 + 12 + 12);
  }, 60_000);

  it('with a rate limit added, reports exactly the notifications it would have deferred', async () => {
    // The example what-if in rules/examples: the default rules with 2 collaboration notifications per hour, deferring the rest.
    const file = 'rules/examples/collaboration-limit.json';
    const before = await liveState();
    const r = JSON.parse(await herald('replay', '--stage', 'throttle', '--rules', file, '--format', 'json')) as ReplayReport;
    // Each user's third and later collaboration notifications past dedupe: ada c3 and c20, bob c3, cy c12..c14.
    const expected = ['ada/c3', 'ada/c20', 'bob/c3', 'cy/c12', 'cy/c13', 'cy/c14'].map((k) => first.get(k)!);
    expect(r.changes.map((c) => c.notificationId).sort()).toEqual(expected.sort());
    expect(r.changes.every((c) => c.recorded?.status === 'ADMITTED' && c.replayed?.status === 'DEFERRED' && c.replayed.reasonCode === 'limit_deferred')).toBe(true);
    expect(r.compared).toBe(12);
    const table = await herald('replay', '--stage', 'throttle', '--rules', file);
    expect(table).toContain('throttle: ADMITTED → DEFERRED for 6 notifications (3 users)');
    expect(await liveState()).toEqual(before);
  }, 90_000);

  it('with a rule removed, shows each notification once: ACCEPTED → REJECTED', async () => {
    const doc = JSON.parse(readFileSync('rules/default.json', 'utf8')) as { rules: { id: string }[] };
    const file = join(h.stateDir, 'without-comments.json');
    writeFileSync(file, JSON.stringify({ ...doc, rules: doc.rules.filter((r) => r.id !== 'comment-created') }));
    const r = JSON.parse(await herald('replay', '--stage', 'ingest', '--rules', file, '--format', 'json')) as ReplayReport;
    // Every notification of the run was a comment: 17, each one change, under the id it had.
    expect(r.changes).toHaveLength(17);
    expect(r.changes.every((c) => c.stage === 'ingest' && c.recorded?.status === 'ACCEPTED' && c.replayed?.status === 'REJECTED' && c.replayed.reasonCode === 'unknown_event_type')).toBe(true);
    expect(r.changes.map((c) => c.notificationId)).toEqual(expect.arrayContaining([...first.values()]));
    expect(r.compared).toBe(17);
  }, 90_000);

  it('takes a time range (resolved from the records\' timestamps on the embedded broker, which cannot look offsets up by time)', async () => {
    const all = JSON.parse(await herald('replay', '--stage', 'dedupe', '--from', '2000-01-01T00:00:00Z', '--to', '2100-01-01T00:00:00Z', '--format', 'json')) as ReplayReport;
    expect(all.records.inRange).toBe(16);
    expect(all.reproduced).toBe(16);
    const none = JSON.parse(await herald('replay', '--stage', 'dedupe', '--from', '2100-01-01T00:00:00Z', '--format', 'json')) as ReplayReport;
    expect(none.records.inRange).toBe(0);
    expect(none.decisions).toEqual([]);
    expect(none.changes).toEqual([]);
  }, 60_000);

  it('refuses what it cannot replay, saying why', async () => {
    const err = await herald('replay', '--stage', 'deliver').then(() => '', (e: { stderr: string }) => e.stderr);
    expect(err).toContain("deliver cannot be replayed: deliver's decisions are the receivers' answers");
    const bad = await herald('replay', '--stage', 'dedupe', '--from', 'yesterday').then(() => '', (e: { stderr: string }) => e.stderr);
    expect(bad).toContain('--from: expected an offset (digits) or an ISO time');
    const backwards = await herald('replay', '--stage', 'dedupe', '--from', '5', '--to', '2').then(() => '', (e: { stderr: string }) => e.stderr);
    expect(backwards).toContain('herald: HRL_CONFIG_INVALID: --from offset 5 is not before --to offset 2');
    const empty = await herald('replay', '--stage', 'dedupe', '--key', '').then(() => '', (e: { stderr: string }) => e.stderr);
    expect(empty).toContain('herald: HRL_CONFIG_INVALID: --key: expected tenant/user or a user id, got an empty value (leave --key out to replay every recipient)');
  }, 30_000);
});

describe('herald lifecycle rebuild', () => {
  it('gives the same digest twice, and the same as the live projection', async () => {
    const a = JSON.parse(await herald('lifecycle', 'rebuild', '--json')) as { notifications: number; digest: string; tenants: Record<string, { digest: string; notifications: number }> };
    const b = JSON.parse(await herald('lifecycle', 'rebuild', '--json')) as typeof a;
    expect(a.notifications).toBe(17);
    expect(b.digest).toBe(a.digest);
    const live = JSON.parse(await herald('lifecycle', 'digest', '--json')) as { tenant: string; digest: string; notifications: number; partitions: number[] };
    expect(live).toEqual({ tenant: 'acme', digest: a.tenants.acme!.digest, notifications: a.notifications, partitions: [0, 1] });
    expect(a.tenants.acme!.digest).toBe(a.digest);
  }, 60_000);
});

describe('herald explain', () => {
  it('--event tells, per recipient, whether they got it and why', async () => {
    const out = await herald('explain', '--event', eventWithStranger);
    expect(out).toContain(`event ${eventWithStranger} (comment.created), tenant acme: 2 notifications`);
    expect(out).toMatch(/ada +ntf_\w+ rule comment-created .*DELIVERED/);
    expect(out).toMatch(/zed +ntf_\w+ rule comment-created DROPPED +enrich: no profile for user "zed"/);
    const views = JSON.parse(await herald('explain', '--event', eventWithStranger, '--json')) as NotificationView[];
    expect(views.map((v) => v.recipient).sort()).toEqual(['ada', 'zed']);
  }, 60_000);
});

describe('a decision a table row explains', () => {
  it('names the users.v1 row that changed since, instead of calling it a mismatch', async () => {
    // bob is deactivated after his notifications were enriched: enrich would now drop them.
    expect((await api(h, 'PUT', '/v1/users/bob', { webhookUrl: `${receiver.url}/bob`, active: false })).status).toBe(202);
    await eventually(async () => (await api<{ active: boolean }>(h, 'GET', '/v1/users/bob')).body.active === false);
    const r = JSON.parse(await herald('replay', '--stage', 'enrich', '--format', 'json')) as ReplayReport;
    const bob = r.changes.filter((c) => c.recipient === 'bob');
    expect(bob).toHaveLength(5);
    expect(r.changes).toHaveLength(5);
    for (const c of bob) {
      expect(c.recorded?.status).toBe('ENRICHED');
      expect(c.replayed).toMatchObject({ status: 'DROPPED', reasonCode: 'recipient_inactive' });
      expect(c.because).toMatch(/^users\.v1 row acme\/bob changed at \S+, after the decision; replay reads tables as they are now$/);
    }
    expect(r.reproduced).toBe(r.compared - 5);
  }, 60_000);

  it('names the preferences.v1 row behind a later stage\'s difference when the replay runs enrich (route reads the preferences enrich copied)', async () => {
    // cy turns webhooks off after her five comments were delivered by webhook.
    expect((await api(h, 'PUT', '/v1/users/cy/preferences', { channels: { webhook: false } })).status).toBe(202);
    await eventually(async () => (await api<{ channels?: Record<string, boolean> }>(h, 'GET', '/v1/users/cy/preferences')).body.channels?.webhook === false);
    const r = JSON.parse(await herald('replay', '--stage', 'enrich..route', '--key', 'acme/cy', '--format', 'json')) as ReplayReport;
    const routed = r.changes.filter((c) => c.recipient === 'cy' && c.stage === 'route');
    expect(routed).toHaveLength(5);
    for (const c of routed) expect(c.because).toMatch(/^preferences\.v1 row acme\/cy changed at \S+, after the decision; replay reads tables as they are now \(through enrich\)$/);
  }, 60_000);
});

describe('dead letters under a filter', () => {
  it('--event shows that event\'s dead letter, --key shows none it cannot attribute (and says how many it left out)', async () => {
    // given an undecodable record on events.v1, keyed by its event id, dead-lettered by the live ingest
    const dlqEnd = async () => (await h.admin.fetchTopicOffsets(topicName(h.config.topicPrefix, 'dlq'))).reduce((n, o) => n + Number(o.high), 0);
    const before = await dlqEnd();
    await h.producer.send({ topic: topicName(h.config.topicPrefix, 'events'), acks: -1, messages: [{ key: 'evt_broken1', value: Buffer.from([0xff, 0x00, 0x13]) }] });
    await eventually(async () => (await dlqEnd()) > before, 30_000);
    // when ingest is replayed for that event, for a recipient, and unfiltered
    const forEvent = JSON.parse(await herald('replay', '--stage', 'ingest', '--event', 'evt_broken1', '--format', 'json')) as ReplayReport;
    const forAda = JSON.parse(await herald('replay', '--stage', 'ingest', '--key', 'acme/ada', '--format', 'json')) as ReplayReport;
    const all = JSON.parse(await herald('replay', '--stage', 'ingest', '--format', 'json')) as ReplayReport;
    // then the event's replay shows its dead letter, ada's shows none and counts it as left out
    expect(forEvent.dlq.map((d) => d.code)).toEqual(['HRL_DECODE_FAILED']);
    expect(forEvent.dlq[0]!.partition).toBeGreaterThanOrEqual(0);
    expect(forEvent.dlqHidden).toBe(0);
    expect(forAda.dlq).toEqual([]);
    expect(forAda.dlqHidden).toBe(1);
    expect(forAda.decisions.length).toBeGreaterThan(0);
    expect(forAda.decisions.every((d) => d.recipient === 'ada')).toBe(true);
    expect(all.dlq.map((d) => d.offset)).toEqual(forEvent.dlq.map((d) => d.offset));
    const table = await herald('replay', '--stage', 'ingest', '--key', 'acme/ada');
    expect(table).toContain('1 more dead-lettered in range, not shown: they cannot be matched to --key/--event');
    expect(table).not.toContain('dead-lettered herald.events.v1');
    const eventTable = await herald('replay', '--stage', 'ingest', '--event', 'evt_broken1');
    expect(eventTable).toMatch(new RegExp(`dead-lettered herald\\.events\\.v1 partition ${forEvent.dlq[0]!.partition} offset ${forEvent.dlq[0]!.offset}: HRL_DECODE_FAILED `));
  }, 90_000);
});

describe('schemas check against the running embedded instance', () => {
  it('finds its registry through the state directory, as the other commands find its broker', async () => {
    const out = await herald('schemas', 'check');
    expect(out).toMatch(/^compatible herald\.events\.v1-value DomainEvent$/m);
    expect(out).toMatch(/^compatible herald\.outcomes\.v1-value LifecycleEvent$/m);
  });
});
