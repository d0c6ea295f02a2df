/** The co-partitioned assigner gives partition p of every input topic to one member. */
import { AssignerProtocol } from 'kafkajs';
import { describe, expect, it, vi } from 'vitest';
import { CoPartitionedAssigner, coPartitionedAssigner, ownersByWeight } from '../runtime/assigner.ts';

const cluster = {
  findTopicPartitionMetadata: (topic: string) => Array.from({ length: topic === 'a' ? 4 : 4 }, (_, partitionId) => ({ partitionId })),
};

describe('CoPartitionedAssigner', () => {
  it('keeps partition p of both topics together across three members', async () => {
    const assigner = CoPartitionedAssigner({ cluster } as never);
    const members = ['m3', 'm1', 'm2'].map((memberId) => ({ memberId, memberMetadata: Buffer.alloc(0) }));
    const out = await assigner.assign({ members, topics: ['a', 'b'] } as never);
    const decoded = Object.fromEntries(out.map((o) => [o.memberId, AssignerProtocol.MemberAssignment.decode(o.memberAssignment)!.assignment]));
    expect(decoded).toEqual({ m1: { a: [0, 3], b: [0, 3] }, m2: { a: [1], b: [1] }, m3: { a: [2], b: [2] } });
  });

  it('lets the followers of a group of several members sync first when asked to (the embedded broker), and a lone member at once', async () => {
    vi.useFakeTimers();
    try {
      const assigner = coPartitionedAssigner(() => '', 'x', { leaderSyncDelayMs: 1000 })({ cluster } as never);
      const meta = Buffer.alloc(0);
      let done = false;
      const two = assigner.assign({ members: [{ memberId: 'm1', memberMetadata: meta }, { memberId: 'm2', memberMetadata: meta }], topics: ['a'] } as never).then((r) => ((done = true), r));
      await vi.advanceTimersByTimeAsync(900);
      expect(done).toBe(false);
      await vi.advanceTimersByTimeAsync(200);
      expect((await two).map((a) => a.memberId)).toEqual(['m1', 'm2']);
      expect(await assigner.assign({ members: [{ memberId: 'm1', memberMetadata: meta }], topics: ['a'] } as never)).toHaveLength(1);
    } finally {
      vi.useRealTimers();
    }
  });

  it('advertises the instance URL in the member metadata of every join', () => {
    let url = 'http://a:1';
    const assigner = coPartitionedAssigner(() => url)({ cluster } as never);
    const first = AssignerProtocol.MemberMetadata.decode(assigner.protocol({ topics: ['a'] }).metadata)!;
    url = 'http://a:2';
    const second = AssignerProtocol.MemberMetadata.decode(assigner.protocol({ topics: ['a'] }).metadata)!;
    expect([JSON.parse(first.userData.toString()), JSON.parse(second.userData.toString()), first.topics]).toEqual([{ instance: '', url: 'http://a:1' }, { instance: '', url: 'http://a:2' }, ['a']]);
  });

  it('orders members by instance id, so every group gives partition p to the same instance', async () => {
    // The broker names members per group: the same two instances get other member ids in each group.
    const meta = (instance: string) => AssignerProtocol.MemberMetadata.encode({ version: 1, topics: ['a'], userData: Buffer.from(JSON.stringify({ instance, url: '' })) });
    const assigner = coPartitionedAssigner(() => '', 'x')({ cluster } as never);
    const owners = async (members: { memberId: string; instance: string }[]) => {
      const out = await assigner.assign({ members: members.map((m) => ({ memberId: m.memberId, memberMetadata: meta(m.instance) })), topics: ['a'] } as never);
      const byMember = new Map(members.map((m) => [m.memberId, m.instance]));
      return Object.fromEntries(out.map((o) => [byMember.get(o.memberId)!, AssignerProtocol.MemberAssignment.decode(o.memberAssignment)!.assignment.a]));
    };
    const groupOne = await owners([{ memberId: 'a-1', instance: 'herald-2' }, { memberId: 'b-1', instance: 'herald-1' }]);
    const groupTwo = await owners([{ memberId: 'a-2', instance: 'herald-1' }, { memberId: 'b-2', instance: 'herald-2' }]);
    expect(groupOne).toEqual({ 'herald-1': [0, 2], 'herald-2': [1, 3] });
    expect(groupTwo).toEqual(groupOne);
  });

  it('gives a member that advertises a lower weight fewer partitions, the same in every group', async () => {
    const meta = (instance: string, weight?: number) => AssignerProtocol.MemberMetadata.encode({ version: 1, topics: ['a', 'b'], userData: Buffer.from(JSON.stringify({ instance, url: '', ...(weight !== undefined ? { weight } : {}) })) });
    const assigner = coPartitionedAssigner(() => '', 'x', { weighted: true })({ cluster } as never);
    const owners = async (members: { memberId: string; instance: string; weight?: number }[]) => {
      const out = await assigner.assign({ members: members.map((m) => ({ memberId: m.memberId, memberMetadata: meta(m.instance, m.weight) })), topics: ['a', 'b'] } as never);
      const byMember = new Map(members.map((m) => [m.memberId, m.instance]));
      return Object.fromEntries(out.map((o) => [byMember.get(o.memberId)!, AssignerProtocol.MemberAssignment.decode(o.memberAssignment)!.assignment]));
    };
    // The primary at half a worker's weight beside one worker: 1 of the 4 partitions, of both topics.
    const one = await owners([{ memberId: 'm-9', instance: 'h-w1' }, { memberId: 'm-1', instance: 'h', weight: 0.5 }]);
    expect(one).toEqual({ h: { a: [0], b: [0] }, 'h-w1': { a: [1, 2, 3], b: [1, 2, 3] } });
    expect(await owners([{ memberId: 'z', instance: 'h', weight: 0.5 }, { memberId: 'y', instance: 'h-w1' }])).toEqual(one);
    // Weight 0: nothing while another member runs; alone, everything.
    expect(await owners([{ memberId: 'm-1', instance: 'h', weight: 0 }, { memberId: 'm-2', instance: 'h-w1' }])).toEqual({ h: {}, 'h-w1': { a: [0, 1, 2, 3], b: [0, 1, 2, 3] } });
    expect(await owners([{ memberId: 'm-1', instance: 'h', weight: 0 }])).toEqual({ h: { a: [0, 1, 2, 3], b: [0, 1, 2, 3] } });
    // A weight that is not a non-negative number counts as 1.
    expect(await owners([{ memberId: 'm-1', instance: 'h', weight: -3 }, { memberId: 'm-2', instance: 'h-w1' }])).toEqual({ h: { a: [0, 2], b: [0, 2] }, 'h-w1': { a: [1, 3], b: [1, 3] } });
  });

  it('ignores the weights under the unweighted protocol, which members of earlier versions share', async () => {
    const meta = (instance: string, weight?: number) => AssignerProtocol.MemberMetadata.encode({ version: 1, topics: ['a'], userData: Buffer.from(JSON.stringify({ instance, url: '', ...(weight !== undefined ? { weight } : {}) })) });
    const members = [{ memberId: 'm-1', memberMetadata: meta('h', 0.5) }, { memberId: 'm-2', memberMetadata: meta('h-w1') }];
    const plain = coPartitionedAssigner(() => '', 'h', { weight: 0.5 })({ cluster } as never);
    const weighted = coPartitionedAssigner(() => '', 'h', { weight: 0.5, weighted: true })({ cluster } as never);
    expect([plain.name, weighted.name]).toEqual(['HeraldCoPartitioned', 'HeraldCoPartitionedWeighted']);
    const decode = (out: { memberId: string; memberAssignment: Buffer }[]) => Object.fromEntries(out.map((x) => [x.memberId, AssignerProtocol.MemberAssignment.decode(x.memberAssignment)!.assignment.a]));
    expect(decode(await plain.assign({ members, topics: ['a'] } as never))).toEqual({ 'm-1': [0, 2], 'm-2': [1, 3] });
    expect(decode(await weighted.assign({ members, topics: ['a'] } as never))).toEqual({ 'm-1': [0], 'm-2': [1, 2, 3] });
  });

  it('advertises its weight in the member metadata only when it is not 1', () => {
    const data = (weight?: number) => JSON.parse(AssignerProtocol.MemberMetadata.decode(coPartitionedAssigner(() => 'u', 'i', weight === undefined ? {} : { weight })({ cluster } as never).protocol({ topics: ['a'] }).metadata)!.userData.toString());
    expect([data(), data(1), data(0.5)]).toEqual([{ instance: 'i', url: 'u' }, { instance: 'i', url: 'u' }, { instance: 'i', url: 'u', weight: 0.5 }]);
  });
});

describe('ownersByWeight', () => {
  const counts = (owners: number[], n: number) => Array.from({ length: n }, (_, i) => owners.filter((o) => o === i).length);

  it('shares partitions in proportion to the weights, every partition owned once', () => {
    expect(ownersByWeight(4, [1, 1])).toEqual([0, 1, 0, 1]);
    expect(ownersByWeight(3, [2, 2, 2])).toEqual([0, 1, 2]);
    expect(counts(ownersByWeight(4, [0.5, 1]), 2)).toEqual([1, 3]);
    expect(counts(ownersByWeight(8, [0.5, 1]), 2)).toEqual([3, 5]);
    expect(counts(ownersByWeight(8, [0.5, 1, 1]), 3)).toEqual([2, 3, 3]);
    expect(counts(ownersByWeight(12, [0.5, 1, 0.5, 1]), 4)).toEqual([2, 4, 2, 4]);
    expect(counts(ownersByWeight(2, [0, 1, 1]), 3)).toEqual([0, 1, 1]);
    expect(ownersByWeight(0, [1, 0.5])).toEqual([]);
    expect(ownersByWeight(4, [])).toEqual([]);
    expect(ownersByWeight(3, [0, 0])).toEqual([0, 1, 0]);
  });

  it('spreads a member\'s partitions instead of giving it one run', () => {
    expect(ownersByWeight(8, [1, 3])).toEqual([0, 1, 1, 1, 0, 1, 1, 1]);
    expect(ownersByWeight(9, [1, 2])).toEqual([0, 1, 1, 0, 1, 1, 0, 1, 1]);
  });
});

