/** The co-partitioned assigner gives partition p of every input topic to one member. */
import { AssignerProtocol } from 'kafkajs';
import { describe, expect, it, vi } from 'vitest';
import { CoPartitionedAssigner, coPartitionedAssigner } from '../runtime/assigner.ts';

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
});
