/**
 * The compression codecs a Kafka consumer meets: kafkajs reads gzip by itself and refuses
 * snappy, lz4 and zstd batches ("not implemented"), which librdkafka's, Java's and
 * Confluent's producers commonly write. A refused batch failed its whole fetch: the stage's
 * member restarted every 30 s and, with stages sharing a fetch, its neighbours with it.
 * Registered once per process (kafkajs keeps codecs process-wide). Herald itself produces
 * uncompressed batches; these matter for reading what others wrote.
 *
 * - snappy: kafkajs-snappy (with the xerial framing Java's producer writes);
 * - lz4: the LZ4 frame format (KIP-57), through lz4-napi;
 * - zstd: Node's own zlib (zstdCompressSync / zstdDecompressSync).
 */
import { zstdCompressSync, zstdDecompressSync } from 'node:zlib';
// CommonJS modules whose exports Node's ESM loader cannot name: through their default export.
import kafkajs from 'kafkajs';
import SnappyCodec from 'kafkajs-snappy';
import lz4napi from 'lz4-napi';

const { CompressionCodecs, CompressionTypes } = kafkajs;
const { compressFrameSync, decompressFrameSync } = lz4napi;

/** kafkajs's codec shape: `compress` gets an encoder holding the batch's bytes. */
type Codec = { compress(encoder: { buffer: Buffer }): Promise<Buffer>; decompress(buffer: Buffer): Promise<Buffer> };

const lz4: Codec = {
  compress: async (encoder) => compressFrameSync(encoder.buffer),
  decompress: async (buffer) => decompressFrameSync(buffer),
};

const zstd: Codec = {
  compress: async (encoder) => zstdCompressSync(encoder.buffer),
  decompress: async (buffer) => zstdDecompressSync(buffer),
};

let registered = false;

/** Makes every codec Kafka defines readable (and writable) by this process's kafkajs clients. */
export function registerCodecs(): void {
  if (registered) return;
  registered = true;
  const codecs = CompressionCodecs as unknown as Record<number, () => Codec>;
  codecs[CompressionTypes.Snappy] = SnappyCodec as unknown as () => Codec;
  codecs[CompressionTypes.LZ4] = () => lz4;
  codecs[CompressionTypes.ZSTD] = () => zstd;
}
