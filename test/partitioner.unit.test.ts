import { Partitioners } from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { KafkaDefaultPartitioner, murmur2, partitionFor } from '../runtime/partitioner.ts';

describe('the producer partitioner', () => {
  // Apache Kafka's own vectors (clients/src/test/.../UtilsTest.testMurmur2).
  it.each([
    ['21', -973932308],
    ['foobar', -790332482],
    ['a-little-bit-long-string', -985981536],
    ['a-little-bit-longer-string', -1486304829],
    ['lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8', -58897971],
    ['abc', 479470107],
  ])('hashes %s exactly as Kafka\'s Utils.murmur2', (input, expected) => {
    expect(murmur2(Buffer.from(input))).toBe(expected);
  });

  it('picks the partition the Java client picks: toPositive(murmur2) % n', () => {
    // toPositive(-790332482) = 1357151166; 1357151166 % 50 = 16
    expect(partitionFor('foobar', 50)).toBe(16);
  });

  it('agrees with kafkajs\' default partitioner on ordinary keys (moving existing data nowhere)', () => {
    const legacy = Partitioners.DefaultPartitioner();
    const ours = KafkaDefaultPartitioner();
    const partitionMetadata = Array.from({ length: 12 }, (_, partitionId) => ({ partitionId, leader: 0, partitionErrorCode: 0, replicas: [0], isr: [0] }));
    for (let i = 0; i < 500; i++) {
      const key = `acme/user-${i}-${'é'.repeat(i % 7)}`;
      expect(ours({ topic: 't', partitionMetadata, message: { key, value: null } })).toBe(legacy({ topic: 't', partitionMetadata, message: { key, value: null } }));
    }
  });

  it('keeps a partition the record names, key or not (changelog records name their task\'s partition)', () => {
    const ours = KafkaDefaultPartitioner();
    const partitionMetadata = Array.from({ length: 8 }, (_, partitionId) => ({ partitionId, leader: 0, partitionErrorCode: 0, replicas: [0], isr: [0] }));
    for (let p = 0; p < 8; p++) expect(ours({ topic: 't', partitionMetadata, message: { key: 'foobar', value: null, partition: p } })).toBe(p);
  });

  it('hashes a 4 MB key within the test timeout (kafkajs\' own hash takes minutes on 400 KB)', () => {
    const big = Buffer.alloc(4 * 1024 * 1024, 0x61);
    expect(typeof murmur2(big)).toBe('number');
    expect(partitionFor(big, 7)).toBeGreaterThanOrEqual(0);
  });
});
