/**
 * Co-partitioned assignment: partition p of every input topic of a stage goes to the same
 * member, because one partition's stores serve them all (deliver reads deliveries.v1 and
 * deliver.retry.v1 into one `results` store). kafkajs' RoundRobin assigner spreads
 * topic-partitions independently and would split a store between two instances.
 */
import { AssignerProtocol, type PartitionAssigner } from 'kafkajs';

export const CoPartitionedAssigner: PartitionAssigner = coPartitionedAssigner(() => '');

/**
 * The assigner, with this instance's advertised HTTP address and its instance id in the
 * member metadata every join sends (JSON `{"instance", "url"}`), as Kafka Streams puts its
 * process id and `application.server` there: DescribeGroups shows it.
 *
 * Partitions go to members in the order of their instance ids, not of their member ids
 * (which the broker makes up per group), so every group gives partition p to the same
 * instance: a fused sub-topology's stages (topology.ts) find their partitions together.
 */
export function coPartitionedAssigner(memberData: () => string, instance = '', o: { leaderSyncDelayMs?: number } = {}): PartitionAssigner {
  return ({ cluster }) => ({
  name: 'HeraldCoPartitioned',
  version: 1,
  async assign({ members, topics }) {
    // The embedded broker's coordinator completes a rebalance as soon as the leader's
    // SyncGroup arrives (it carries every member's assignment) and then answers a follower's
    // later SyncGroup with INVALID_REQUEST: the leader lets the followers sync first.
    if (members.length > 1 && o.leaderSyncDelayMs) await new Promise((r) => setTimeout(r, o.leaderSyncDelayMs));
    const sorted = members.map((m) => ({ id: m.memberId, key: instanceOf(m.memberMetadata) })).sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0)).map((m) => m.id);
    const assignment = new Map<string, Record<string, number[]>>(sorted.map((id) => [id, {}]));
    const partitions = new Set<number>();
    for (const topic of topics) for (const m of cluster.findTopicPartitionMetadata(topic)) partitions.add(m.partitionId);
    for (const p of [...partitions].sort((a, b) => a - b)) {
      const owner = assignment.get(sorted[p % sorted.length]!)!;
      for (const topic of topics) {
        if (cluster.findTopicPartitionMetadata(topic).some((m) => m.partitionId === p)) (owner[topic] ??= []).push(p);
      }
    }
    return sorted.map((memberId) => ({
      memberId,
      memberAssignment: AssignerProtocol.MemberAssignment.encode({ version: 1, assignment: assignment.get(memberId)!, userData: Buffer.alloc(0) }),
    }));
  },
  protocol({ topics }) {
    return { name: 'HeraldCoPartitioned', metadata: AssignerProtocol.MemberMetadata.encode({ version: 1, topics, userData: Buffer.from(JSON.stringify({ instance, url: memberData() })) }) };
  },
  });
}

/** The instance id a member sent in its metadata ('' when none or unreadable: those sort by member id). */
function instanceOf(metadata: Buffer): string {
  try {
    const data = AssignerProtocol.MemberMetadata.decode(metadata)?.userData;
    const parsed: unknown = data?.length ? JSON.parse(data.toString()) : null;
    return parsed && typeof parsed === 'object' && typeof (parsed as { instance?: unknown }).instance === 'string' ? (parsed as { instance: string }).instance : '';
  } catch {
    return '';
  }
}
