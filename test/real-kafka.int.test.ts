/**
 * The same end-to-end path against real Apache Kafka (Confluent's cp-kafka in KRaft
 * mode) through testcontainers, where a Docker engine is reachable. Topics are made by
 * `herald topics create` (the admin client), as an operator would. Without Docker the
 * suite is reported as skipped, with the reason printed.
 */
import { KafkaContainer, type StartedKafkaContainer } from '@testcontainers/kafka';
import { getContainerRuntimeClient } from 'testcontainers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTopics } from '../cli/provision.ts';
import { loadConfig } from '../config.ts';
import type { NotificationView } from '../processors/outcome.ts';
import { api, eventually, removeDir, startTestHerald, TEST_ENV } from './support/herald.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';

async function dockerReason(): Promise<string | null> {
  try {
    await getContainerRuntimeClient();
    return null;
  } catch (err) {
    return (err as Error).message.split('\n')[0] ?? 'no container runtime';
  }
}

const noDocker = await dockerReason();
if (noDocker) console.warn(`[real-kafka] skipped: no Docker engine reachable (${noDocker})`);

describe.skipIf(noDocker !== null)('against real Kafka (testcontainers)', () => {
  let kafka: StartedKafkaContainer;
  let brokers: string;
  const hooks = new WebhookReceiver();

  beforeAll(async () => {
    await hooks.start();
    kafka = await new KafkaContainer('confluentinc/cp-kafka:7.7.1').withKraft().start();
    brokers = `${kafka.getHost()}:${kafka.getMappedPort(9093)}`;
    const lines = await createTopics(loadConfig({ ...TEST_ENV, KAFKA_BROKERS: brokers, HERALD_PARTITIONS: '2' }));
    expect(lines.some((l) => l.includes('herald.dedupe.seen.changelog') && l.includes('compacted'))).toBe(true);
  }, 180_000);

  afterAll(async () => {
    await kafka?.stop();
    await hooks.stop();
  });

  it('delivers a posted event and records every stage', async () => {
    const h = await startTestHerald({ env: { KAFKA_BROKERS: brokers } });
    try {
      await api(h, 'PUT', '/v1/users/ada', { webhookUrl: `${hooks.url}/ada` });
      await eventually(async () => (await api(h, 'GET', '/v1/users/ada')).status === 200, 60_000);
      const res = await api<{ notifications: { notificationId: string }[] }>(h, 'POST', '/v1/events', { type: 'comment.created', tenant: 'acme', recipients: ['ada'], data: { commentId: 'k1' } });
      const n = await eventually(async () => {
        const r = await api<NotificationView>(h, 'GET', `/v1/notifications/${res.body.notifications[0]!.notificationId}`);
        return r.status === 200 && r.body.terminal.length ? r.body : false;
      }, 60_000);
      expect(n.terminal).toEqual(['webhook:DELIVERED']);
      expect(hooks.for('/ada')).toHaveLength(1);
    } finally {
      await h.stop();
      removeDir(h.stateDir);
    }
  }, 120_000);
});
