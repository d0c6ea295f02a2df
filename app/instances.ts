/**
 * Which instance holds which partition of each stage, and where its HTTP API answers
 * (Kafka Streams' `StreamsMetadata`). kafkajs hands a member only its own assignment, and
 * the embedded broker has no DescribeGroups, so every instance publishes its claim after
 * each rebalance to the compacted, single-partition topic instances.v1, keyed
 * `<stage>/<instance id>` (a tombstone on clean stop), and follows that topic. A partition
 * belongs to the latest claim that names it: single-partition offsets order the claims,
 * so a survivor's claim supersedes a dead instance's without any clock.
 */
import type { Admin, Kafka, Producer } from 'kafkajs';
import type { HeraldConfig } from '../config.ts';
import type { Logger } from '../runtime/logger.ts';
import { CompactedTopic } from './compacted.ts';
import type { InstanceClaim } from '../schemas/types.ts';
import { type StageName, topicName } from '../topology.ts';

interface Known { claim: InstanceClaim; offset: bigint }

export class InstanceDirectory {
  private readonly own = new Map<StageName, { partitions: number[]; memberId: string }>();
  private url: string | null = null;
  private publishing: Promise<void> = Promise.resolve();
  private readonly topic: string;
  private readonly claims: CompactedTopic<Known>;
  private readonly producer: Producer;
  private readonly config: HeraldConfig;
  private readonly log: Logger;

  constructor(kafka: Kafka, admin: Admin, producer: Producer, config: HeraldConfig, log: Logger) {
    this.producer = producer;
    this.config = config;
    this.log = log;
    this.topic = topicName(config.topicPrefix, 'instances');
    this.claims = new CompactedTopic<Known>({ kafka, admin, topic: this.topic, groupPrefix: config.topicPrefix, log, parse: (_key, claim, offset) => ({ claim: claim as InstanceClaim, offset }) });
  }

  get instanceId(): string {
    return this.config.instanceId;
  }

  /** Follows instances.v1; resolves when the claims published so far are read. */
  start(): Promise<void> {
    return this.claims.start();
  }

  /** This instance's HTTP address is known (after listen): publish the claims made before it was. */
  setUrl(url: string): void {
    this.url = url;
    for (const stage of this.own.keys()) this.publish(stage);
  }

  /** The runner of `stage` holds `partitions` after a rebalance. */
  assigned(stage: StageName, partitions: number[], memberId: string): void {
    this.own.set(stage, { partitions, memberId });
    if (this.url) this.publish(stage);
  }

  private publish(stage: StageName): void {
    const own = this.own.get(stage);
    const url = this.url;
    if (!own || !url) return;
    const claim: InstanceClaim = { instanceId: this.instanceId, stage, url, partitions: own.partitions, memberId: own.memberId, at: Date.now() };
    this.publishing = this.publishing.then(() => this.producer.send({ topic: this.topic, acks: -1, messages: [{ key: `${stage}/${this.instanceId}`, value: JSON.stringify(claim) }] }))
      .then(() => undefined)
      .catch((err: unknown) => this.log.warn({ err, stage }, 'publishing the instance claim failed; queries may be routed to the previous owner until the next rebalance'));
  }

  /** The instance whose latest claim names `partition` of `stage`, if any. */
  owner(stage: StageName, partition: number): InstanceClaim | undefined {
    let best: Known | undefined;
    for (const k of this.claims.values()) {
      if (k.claim.stage === stage && k.claim.partitions.includes(partition) && (!best || k.offset > best.offset)) best = k;
    }
    return best?.claim;
  }

  /** Withdraws this instance's claims (tombstones) and stops following. */
  async stop(): Promise<void> {
    await this.publishing;
    if (this.own.size) {
      await this.producer.send({ topic: this.topic, acks: -1, messages: [...this.own.keys()].map((stage) => ({ key: `${stage}/${this.instanceId}`, value: null })) })
        .catch((err: unknown) => this.log.warn({ err }, 'withdrawing the instance claims failed'));
    }
    await this.claims.stop();
  }
}
