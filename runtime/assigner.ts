/**
 * Co-partitioned assignment: partition p of every input topic of a stage goes to the same
 * member, because one partition's stores serve them all (deliver reads deliveries.v1 and
 * deliver.retry.v1 into one `results` store). kafkajs' RoundRobin assigner spreads
 * topic-partitions independently and would split a store between two instances.
 */
import { AssignerProtocol, type PartitionAssigner } from 'kafkajs';

export const CoPartitionedAssigner: PartitionAssigner = coPartitionedAssigner(() => '');

/**
 * The assigner, with `memberData()` (this instance's advertised HTTP address) in the
 * member metadata every join sends, as Kafka Streams puts `application.server` there:
 * `kafka-consumer-groups --describe --members --verbose` and DescribeGroups show it.
 */
export function coPartitionedAssigner(memberData: () => string): PartitionAssigner {
  return ({ cluster }) => ({
  name: 'HeraldCoPartitioned',
  version: 1,
  async assign({ members, topics }) {
    const sorted = members.map((m) => m.memberId).sort();
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
    return { name: 'HeraldCoPartitioned', metadata: AssignerProtocol.MemberMetadata.encode({ version: 1, topics, userData: Buffer.from(memberData()) }) };
  },
  });
}
