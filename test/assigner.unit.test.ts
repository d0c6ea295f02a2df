/** The co-partitioned assigner gives partition p of every input topic to one member. */
import { AssignerProtocol } from 'kafkajs';
import { describe, expect, it } from 'vitest';
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

  it('advertises the instance URL in the member metadata of every join', () => {
    let url = 'http://a:1';
    const assigner = coPartitionedAssigner(() => url)({ cluster } as never);
    const first = AssignerProtocol.MemberMetadata.decode(assigner.protocol({ topics: ['a'] }).metadata)!;
    url = 'http://a:2';
    const second = AssignerProtocol.MemberMetadata.decode(assigner.protocol({ topics: ['a'] }).metadata)!;
    expect([first.userData.toString(), second.userData.toString(), first.topics]).toEqual(['http://a:1', 'http://a:2', ['a']]);
  });
});
