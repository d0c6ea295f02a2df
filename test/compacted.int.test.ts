/**
 * The compacted topics Herald follows (API keys, signing secrets, instances) on the embedded
 * broker: a record that cannot be read is skipped and logged by its offset, never quoted,
 * since JSON.parse's message quotes the text and these topics hold key hashes and secrets.
 */
import { afterAll, describe, expect, it } from 'vitest';
import kafkajs from 'kafkajs';
import { CompactedTopic } from '../app/compacted.ts';
import { EmbeddedBroker } from '../embedded/broker.ts';
import { createLogger } from '../runtime/logger.ts';

const { Kafka, logLevel } = kafkajs;
let broker: EmbeddedBroker | null = null;
afterAll(async () => {
  await broker?.stop();
});

describe('a compacted topic Herald follows', () => {
  it('skips a record it cannot read, logging where it is and not what it says', async () => {
    broker = await EmbeddedBroker.start();
    await broker.createTopic('t.secrets', 1);
    const kafka = new Kafka({ clientId: 'test', brokers: broker.bootstraps.split(','), logLevel: logLevel.NOTHING });
    const producer = kafka.producer();
    const admin = kafka.admin();
    await Promise.all([producer.connect(), admin.connect()]);
    await producer.send({ topic: 't.secrets', acks: -1, messages: [{ key: 'acme', value: 'whsec_TOPSECRET not json' }, { key: 'globex', value: JSON.stringify({ secret: 'fine' }) }] });
    const lines: string[] = [];
    const topic = new CompactedTopic<{ secret: string }>({ kafka, admin, topic: 't.secrets', groupPrefix: 'test.', log: createLogger('info', { write: (l: string) => void lines.push(l) }), parse: (_id, v) => v as { secret: string } });
    try {
      await topic.start();
      await topic.waitFor('globex');
      expect(topic.get('acme')).toBeUndefined();
      const skipped = lines.find((l) => l.includes('unreadable record skipped'))!;
      expect(JSON.parse(skipped)).toMatchObject({ topic: 't.secrets', offset: '0', error: 'SyntaxError' });
      expect(lines.join('')).not.toContain('TOPSECRET');
    } finally {
      await topic.stop();
      await Promise.all([producer.disconnect(), admin.disconnect()]);
    }
  }, 60_000);
});
