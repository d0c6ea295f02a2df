/**
 * Kafka's default partitioner for keyed records, byte-compatible with the Java client
 * (`Utils.murmur2` over the key's UTF-8 bytes, `toPositive(hash) % partitions`), so Herald,
 * kcat and Confluent's clients agree on where a recipient's records live. Linear in the
 * key length: kafkajs' own implementation grows far worse than linearly and a long key
 * would block the event loop. Records without a key fall back to kafkajs' choice.
 */
import { type ICustomPartitioner, Partitioners } from 'kafkajs';

const M = 0x5bd1e995;
const SEED = 0x9747b28c;

/** Kafka's murmur2: a signed 32-bit hash, as `org.apache.kafka.common.utils.Utils.murmur2` returns. */
export function murmur2(data: Uint8Array): number {
  const length = data.length;
  let h = (SEED ^ length) | 0;
  const whole = length & ~3;
  for (let i = 0; i < whole; i += 4) {
    let k = data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24);
    k = Math.imul(k, M);
    k ^= k >>> 24;
    k = Math.imul(k, M);
    h = Math.imul(h, M) ^ k;
  }
  const tail = length & 3;
  if (tail === 3) h ^= data[whole + 2]! << 16;
  if (tail >= 2) h ^= data[whole + 1]! << 8;
  if (tail >= 1) {
    h ^= data[whole]!;
    h = Math.imul(h, M);
  }
  h ^= h >>> 13;
  h = Math.imul(h, M);
  h ^= h >>> 15;
  return h | 0;
}

/** The partition of `key` among `partitions`, as the Java client's default partitioner picks it. */
export function partitionFor(key: string | Uint8Array, partitions: number): number {
  const bytes = typeof key === 'string' ? Buffer.from(key, 'utf8') : key;
  return (murmur2(bytes) & 0x7fffffff) % partitions;
}

/** A kafkajs `createPartitioner`: the record's own partition if it names one, else `partitionFor` its key. */
export const KafkaDefaultPartitioner: ICustomPartitioner = () => {
  const fallback = Partitioners.DefaultPartitioner();
  return (args) => {
    const { key, partition } = args.message;
    // An explicit partition wins (changelog records name their task's partition).
    if (partition !== null && partition !== undefined) return partition;
    if (key === null || key === undefined) return fallback(args);
    return partitionFor(typeof key === 'string' ? key : key, args.partitionMetadata.length);
  };
};
