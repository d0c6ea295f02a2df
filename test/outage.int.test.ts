/**
 * A broker outage in the middle of a stream: a 3-broker embedded cluster loses broker 2
 * for 3 s while events flow through all seven stages. Every event is delivered exactly
 * once, and the accounting invariant holds over the whole outcome topic.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LifecycleEvent } from '../schemas/types.ts';
import { createKafka, createProducer } from '../runtime/kafka.ts';
import { createLogger } from '../runtime/logger.ts';
import { loadConfig } from '../config.ts';
import { topicName } from '../topology.ts';
import { checkAccounting } from './support/accounting.ts';
import { api, collect, eventually, removeDir, startCluster, startTestHerald, TEST_ENV } from './support/herald.ts';
import { WebhookReceiver } from './support/webhook-receiver.ts';

let cluster: Awaited<ReturnType<typeof startCluster>>;
const hooks = new WebhookReceiver();

beforeAll(async () => {
  await hooks.start();
  cluster = await startCluster(4, 3);
});

afterAll(async () => {
  await cluster?.stop();
  await hooks.stop();
});

describe('broker outage', () => {
  it('delivers every event exactly once through a 3 s outage of one of three brokers', async () => {
    const h = await startTestHerald({ env: cluster.env });
    try {
      const users = Array.from({ length: 20 }, (_, i) => `u${i}`);
      for (const u of users) await api(h, 'PUT', `/v1/users/${u}`, { webhookUrl: `${hooks.url}/hook` });
      await eventually(async () => (await Promise.all(users.map(async (u) => (await api(h, 'GET', `/v1/users/${u}`)).status === 200))).every(Boolean));
      const outcomes = await collect(h, topicName('herald.', 'outcomes'));
      const kafka = createKafka(loadConfig({ ...TEST_ENV, KAFKA_BROKERS: cluster.env.KAFKA_BROKERS }), cluster.env.KAFKA_BROKERS, createLogger('silent'), 'outage-producer');
      const producer = createProducer(kafka);
      await producer.connect();
      const events = topicName('herald.', 'events');
      const send = (from: number, n: number) => producer.send({
        topic: events, acks: -1,
        messages: Array.from({ length: n }, (_, k) => {
          const i = from + k;
          return { key: `e${i}`, value: JSON.stringify({ id: `e${i}`, type: 'comment.created', tenant: 'acme', recipients: [users[i % users.length]], data: { commentId: `c${i}` } }) };
        }),
      });
      await send(0, 100);
      await cluster.broker.brokerDown(2);
      const during = send(100, 100);
      await new Promise((r) => setTimeout(r, 3000));
      await cluster.broker.brokerUp(2);
      await during;
      await send(200, 100);
      await producer.disconnect();

      const delivered = () => new Set(hooks.received.map((r) => (r.json as { eventId: string }).eventId));
      await eventually(() => delivered().size >= 300, 60_000);
      const decoded = async () => Promise.all(outcomes.messages.map((m) => h.serde.decode<LifecycleEvent>(m.value!)));
      const all = await eventually(async () => {
        const evs = await decoded();
        const accepted = new Set(evs.filter((e) => e.status === 'ACCEPTED').map((e) => e.notificationId));
        return accepted.size === 300 && evs.filter((e) => e.terminal).length >= 300 && evs;
      }, 30_000);
      await outcomes.stop();
      // Exactly once at the receiver: 300 webhooks, one per event.
      expect(hooks.received).toHaveLength(300);
      const accepted = new Set(all.filter((e) => e.status === 'ACCEPTED').map((e) => e.notificationId));
      expect(checkAccounting(all, accepted).violations).toEqual([]);
    } finally {
      await h.stop();
      removeDir(h.stateDir);
    }
  }, 120_000);
});
