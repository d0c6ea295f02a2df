/**
 * Co-partitioned assignment: partition p of every input topic of a stage goes to the same
 * member, because one partition's stores serve them all (deliver reads deliveries.v1 and
 * deliver.retry.v1 into one `results` store). kafkajs' RoundRobin assigner spreads
 * topic-partitions independently and would split a store between two instances.
 */
import { AssignerProtocol, type PartitionAssigner } from 'kafkajs';

/**
 * The protocol that shares partitions by the members' weights. A member offers it first and
 * the unweighted one (the name earlier versions know) second: the group coordinator picks
 * one every member supports, so during a rolling upgrade every group falls back to the
 * unweighted one together, and partition p still goes to the same process in every group.
 */
export const WEIGHTED = 'HeraldCoPartitionedWeighted';
const UNWEIGHTED = 'HeraldCoPartitioned';

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
export function coPartitionedAssigner(memberData: () => string, instance = '', o: { leaderSyncDelayMs?: number; weight?: number; weighted?: boolean } = {}): PartitionAssigner {
  const name = o.weighted ? WEIGHTED : UNWEIGHTED;
  return ({ cluster }) => ({
  name,
  version: 1,
  async assign({ members, topics }) {
    // The embedded broker's coordinator completes a rebalance as soon as the leader's
    // SyncGroup arrives (it carries every member's assignment) and then answers a follower's
    // later SyncGroup with INVALID_REQUEST: the leader lets the followers sync first.
    if (members.length > 1 && o.leaderSyncDelayMs) await new Promise((r) => setTimeout(r, o.leaderSyncDelayMs));
    const ordered = members.map((m) => ({ id: m.memberId, ...metadataOf(m.memberMetadata) })).sort((a, b) => (a.instance < b.instance ? -1 : a.instance > b.instance ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const sorted = ordered.map((m) => m.id);
    const assignment = new Map<string, Record<string, number[]>>(sorted.map((id) => [id, {}]));
    const partitions = new Set<number>();
    for (const topic of topics) for (const m of cluster.findTopicPartitionMetadata(topic)) partitions.add(m.partitionId);
    const list = [...partitions].sort((a, b) => a - b);
    const owners = ownersByWeight(list.length, ordered.map((m) => (o.weighted ? m.weight : 1)));
    for (const [i, p] of list.entries()) {
      const owner = assignment.get(sorted[owners[i]!]!)!;
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
    return { name, metadata: AssignerProtocol.MemberMetadata.encode({ version: 1, topics, userData: Buffer.from(JSON.stringify({ instance, url: memberData(), ...(o.weight !== undefined && o.weight !== 1 ? { weight: o.weight } : {}) })) }) };
  },
  });
}

/**
 * The member (by position in `weights`) that owns each of `count` partitions. Equal weights
 * (every member of a plain multi-instance group) give partition p to member p mod n. Unequal
 * ones give each member a share of the partitions in proportion to its weight (largest
 * remainder, ties to the earlier member), spread: each partition goes to the member with
 * the largest part of its share still to get. With workers, the primary (which also runs
 * the HTTP API) may advertise a lower weight
 * (`HERALD_PRIMARY_SHARE`), and so holds fewer partitions.
 */
export function ownersByWeight(count: number, weights: number[]): number[] {
  const n = weights.length;
  const total = weights.reduce((a, w) => a + w, 0);
  if (n === 0) return [];
  if (total <= 0 || weights.every((w) => w === weights[0])) return Array.from({ length: count }, (_, p) => p % n);
  const exact = weights.map((w) => (count * w) / total);
  const quota = exact.map(Math.floor);
  const byRemainder = exact.map((x, i) => ({ i, r: x - Math.floor(x) })).sort((a, b) => b.r - a.r || a.i - b.i);
  for (let left = count - quota.reduce((a, q) => a + q, 0), k = 0; left > 0; left--, k++) quota[byRemainder[k % n]!.i]!++;
  const given = new Array<number>(n).fill(0);
  const owners: number[] = [];
  for (let p = 0; p < count; p++) {
    let best = -1;
    // The member with the largest part of its share still to get (compared cross-multiplied).
    for (let i = 0; i < n; i++) if (given[i]! < quota[i]! && (best < 0 || (quota[i]! - given[i]!) * quota[best]! > (quota[best]! - given[best]!) * quota[i]!)) best = i;
    given[best]!++;
    owners.push(best);
  }
  return owners;
}

/** What a member sent in its metadata: its instance id ('' when none or unreadable: those sort by member id) and its weight (1 unless it says otherwise). */
function metadataOf(metadata: Buffer): { instance: string; weight: number } {
  try {
    const data = AssignerProtocol.MemberMetadata.decode(metadata)?.userData;
    const parsed: unknown = data?.length ? JSON.parse(data.toString()) : null;
    const o = parsed && typeof parsed === 'object' ? (parsed as { instance?: unknown; weight?: unknown }) : {};
    const weight = typeof o.weight === 'number' && Number.isFinite(o.weight) && o.weight >= 0 ? o.weight : 1;
    return { instance: typeof o.instance === 'string' ? o.instance : '', weight };
  } catch {
    return { instance: '', weight: 1 };
  }
}
