/**
 * Stopping while the group rebalances. When one instance (or worker) stops, the members of
 * the others are told to rejoin; a member stopping in the middle of that rejoin must not
 * wait for the rebalance to complete. The embedded broker holds a JoinGroup until its
 * rebalance timer ends (the session timeout less a second), however many members have
 * rejoined: with the default 30 s, a stop that waited for it outlived a process manager's
 * grace period (and the 20 s the primary gives a worker).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Herald } from '../app/herald.ts';
import { eventually, removeDir, startCluster, startTestHerald } from './support/herald.ts';

let cluster: Awaited<ReturnType<typeof startCluster>>;
const started: (Herald & { stateDir: string })[] = [];

beforeAll(async () => {
  cluster = await startCluster(2);
}, 60_000);

afterAll(async () => {
  for (const h of started) await h.stop().catch(() => undefined);
  await cluster?.stop();
  for (const h of started) removeDir(h.stateDir);
});

const member = (h: Herald) => h.runners.get('dedupe') as unknown as { member: string; rejoining: boolean };

describe('stopping during a rebalance', () => {
  it('stops a member the broker holds in a rejoin without waiting for the rebalance to end', async () => {
    const env = { ...cluster.env, HERALD_SESSION_TIMEOUT_MS: '30000' };
    // Started together, both join the new group in the broker's initial rebalance (3 s).
    const [a, b] = await Promise.all(['a', 'b'].map((id) => startTestHerald({ stages: ['dedupe'], api: false, env: { ...env, HERALD_INSTANCE_ID: id } })));
    started.push(a!, b!);
    await eventually(() => member(a!).member === 'joined' && !member(a!).rejoining && member(b!).member === 'joined' && !member(b!).rejoining, 60_000);
    // b leaves: a hears of the rebalance at its next heartbeat (every 3 s) and rejoins.
    await b!.stop();
    const leftAt = Date.now();
    await eventually(() => member(a!).rejoining, 20_000);
    const t0 = Date.now();
    await a!.stop();
    // Waiting for the rebalance would take until the broker's timer ends, ~29 s after b left.
    expect(Date.now() - t0).toBeLessThan(10_000);
    // The join it was not waited for completes when that timer ends: it must not bring the
    // stopped member back (joined again, partitions reopened, a claim published).
    await new Promise((r) => setTimeout(r, Math.max(0, leftAt + 33_000 - Date.now())));
    expect(member(a!).member).toBe('stopped');
    expect(a!.runners.get('dedupe')!.partitions()).toEqual([]);
  }, 120_000);
});
