/**
 * kafkajs 2.2.4 schedules a queue check after every response even when nothing is pending,
 * with a negative delay: a 1 ms timer loop per broker connection that burned ~6 % of a core
 * per idle consumer and printed TimeoutNegativeWarning (kafkajs#1556, #1704, #1751).
 * patches/kafkajs+2.2.4.patch, applied by `npm install`, stops it; this keeps it applied.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';

const require = createRequire(import.meta.url);
const RequestQueue = require('kafkajs/src/network/requestQueue/index.js') as new (o: object) => {
  pending: unknown[];
  throttledUntil: number;
  throttleCheckTimeoutId: NodeJS.Timeout | null;
  scheduleCheckPendingRequests(): void;
  destroy(): void;
};
const logger = { debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined };

function queue() {
  return new RequestQueue({ maxInFlightRequests: 5, requestTimeout: 1000, enforceRequestTimeout: true, clientId: 't', broker: 'b:9092', logger, isConnected: () => true });
}

describe('kafkajs request queue (patched)', () => {
  it('schedules no check when nothing is pending and nothing throttles', () => {
    const q = queue();
    q.scheduleCheckPendingRequests();
    expect(q.throttleCheckTimeoutId).toBeNull();
  });

  it('still schedules a check while requests are pending or the broker throttles', () => {
    const pending = queue();
    pending.pending.push({});
    pending.scheduleCheckPendingRequests();
    expect(pending.throttleCheckTimeoutId).not.toBeNull();
    clearTimeout(pending.throttleCheckTimeoutId!);
    const throttled = queue();
    throttled.throttledUntil = Date.now() + 1000;
    throttled.scheduleCheckPendingRequests();
    expect(throttled.throttleCheckTimeoutId).not.toBeNull();
    clearTimeout(throttled.throttleCheckTimeoutId!);
  });
});

/**
 * kafkajs checksums every produced record batch with a byte-at-a-time JavaScript CRC32-C
 * (3–5 % of a stage process's CPU in the bench's profile). The patch uses @node-rs/crc32's
 * native one; the broker rejects a batch whose checksum is wrong, so it must agree exactly.
 */
describe('kafkajs record batch checksum (patched)', () => {
  const checksum = require('kafkajs/src/protocol/recordBatch/crc32C/index.js') as (b: Buffer) => number;
  const javascript = require('kafkajs/src/protocol/recordBatch/crc32C/crc32C.js') as (b: Buffer) => number;

  it('is the CRC32-C (Castagnoli) of the bytes, unsigned', () => {
    expect(checksum(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(checksum(Buffer.alloc(0))).toBe(0);
    expect(checksum(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
  });

  it('agrees with kafkajs\' own implementation on random batches of every size', () => {
    for (let size = 0; size < 5000; size += 37) {
      const b = Buffer.alloc(size);
      for (let i = 0; i < size; i++) b[i] = (i * 131 + size * 7) & 0xff;
      expect(checksum(b)).toBe(javascript(b));
    }
  });

  it('uses the native implementation', () => {
    const { crc32c } = require('@node-rs/crc32') as { crc32c: (b: Buffer) => number };
    expect(typeof crc32c).toBe('function');
    const src = readFileSync(require.resolve('kafkajs/src/protocol/recordBatch/crc32C/index.js'), 'utf8');
    expect(src).toContain("require('@node-rs/crc32')");
  });
});

/**
 * kafkajs made a zero-filled 512-byte Buffer per record it encoded, a Buffer per varint, and
 * grouped a send's messages by partition by copying the partition's list for every message
 * (quadratic). The patch encodes into unfilled buffers (only the bytes written are read),
 * writes varints in place and groups in place; what goes on the wire must not change.
 */
describe('kafkajs encoding (patched)', () => {
  type Long = { toString(): string };
  const Encoder = require('kafkajs/src/protocol/encoder.js') as new () => { writeVarInt(v: number): unknown; writeVarLong(v: unknown): unknown; writeInt8(v: number): unknown; buffer: Buffer };
  const Decoder = require('kafkajs/src/protocol/decoder.js') as new (b: Buffer) => { readVarInt(): number; readVarLong(): Long; readInt8(): number };
  const LongType = require('kafkajs/src/utils/long.js') as { fromString(s: string): unknown };
  const Record = require('kafkajs/src/protocol/recordBatch/record/v0/index.js') as (r: object) => unknown;
  const { RecordBatch } = require('kafkajs/src/protocol/recordBatch/v0/index.js') as { RecordBatch: (b: object) => Promise<{ buffer: Buffer }> };
  const decodeBatch = require('kafkajs/src/protocol/recordBatch/v0/decoder.js') as (d: unknown) => Promise<{ records: { key: Buffer | null; value: Buffer | null; headers: Record<string, Buffer>; offset: string }[] }>;
  const group = require('kafkajs/src/producer/groupMessagesPerPartition.js') as (o: object) => Record<string, { n: number }[]>;

  it('writes varints and varlongs as the protocol reads them back, at every width', () => {
    const ints = [0, 1, -1, 63, -64, 64, 127, 128, -129, 8191, 8192, 1 << 20, 2 ** 31 - 1, -(2 ** 31)];
    const longs = ['0', '-1', '1700000000000', '-1700000000000', '9223372036854775807', '-9223372036854775808'];
    const e = new Encoder();
    for (const v of ints) e.writeVarInt(v);
    for (const v of longs) e.writeVarLong(LongType.fromString(v));
    e.writeInt8(42);
    const d = new Decoder(e.buffer);
    expect(ints.map(() => d.readVarInt())).toEqual(ints);
    expect(longs.map(() => d.readVarLong().toString())).toEqual(longs);
    expect(d.readInt8()).toBe(42);
  });

  it('writes a Number varlong (a timestamp delta) byte for byte as the Long path does, and reads it back as a Number up to seven bytes', () => {
    const Enc = Encoder as unknown as { sizeOfVarLong(v: unknown): number };
    const values = [0, 1, -1, 63, -64, 64, -65, 127, 128, 2 ** 31, -(2 ** 31), 1767225600000, -1767225600000, 2 ** 48 - 1, -(2 ** 48), 2 ** 48, 2 ** 49, -(2 ** 49), 2 ** 52 - 1, -(2 ** 52 - 1)];
    for (const v of values) {
      const viaNumber = new Encoder();
      viaNumber.writeVarLong(v);
      const viaLong = new Encoder();
      viaLong.writeVarLong(LongType.fromString(String(v)));
      expect(viaNumber.buffer.equals(viaLong.buffer), `varlong ${v}`).toBe(true);
      expect(Enc.sizeOfVarLong(v)).toBe(viaNumber.buffer.length);
      expect(Enc.sizeOfVarLong(LongType.fromString(String(v)))).toBe(viaNumber.buffer.length);
      const d = new Decoder(viaNumber.buffer) as unknown as { readVarLongNumber(): number | Long; offset: number };
      const n = d.readVarLongNumber();
      // Seven bytes hold 49 bits: what is longer comes back as a Long, with the same value.
      expect(typeof n).toBe(viaNumber.buffer.length <= 7 ? 'number' : 'object');
      expect(String(n)).toBe(String(v));
      expect(d.offset).toBe(viaNumber.buffer.length);
      expect(new Decoder(viaNumber.buffer).readVarLong().toString()).toBe(String(v));
    }
  });

  it('decodes offsets and timestamps past 2^53 exactly, and headers as own properties (repeats as arrays, "__proto__" and "toString" too)', async () => {
    const records = [
      Record({ offsetDelta: 0, timestampDelta: 0, key: null, value: Buffer.from('a'), headers: { trace: Buffer.from('t'), toString: Buffer.from('s'), __proto__x: Buffer.from('p') } }),
      Record({ offsetDelta: 1, timestampDelta: 7, key: null, value: Buffer.from('b'), headers: { h: [Buffer.from('1'), Buffer.from('2'), Buffer.from('3')] } }),
    ];
    const batch = await RecordBatch({ records, firstOffset: '9007199254740990', firstTimestamp: 9007199254740990, maxTimestamp: 9007199254740997 });
    // The encoder writes firstOffset as given; decode with the batch as a broker returns it.
    const decoded = await decodeBatch(new Decoder(batch.buffer)) as unknown as { records: { offset: string; timestamp: string; headers: Record<string, Buffer | Buffer[]> }[] };
    expect(decoded.records.map((r) => [r.offset, r.timestamp])).toEqual([['9007199254740990', '9007199254740990'], ['9007199254740991', '9007199254740997']]);
    const [first, second] = decoded.records;
    expect(Object.keys(first!.headers)).toEqual(['trace', 'toString', '__proto__x']);
    expect(String(first!.headers.toString)).toBe('s');
    expect((second!.headers.h as Buffer[]).map(String)).toEqual(['1', '2', '3']);
    // A header named "__proto__" is a header, not the object's prototype.
    const Header = require('kafkajs/src/protocol/recordBatch/record/v0/decoder.js') as (d: unknown, c: object) => { headers: Record<string, unknown> };
    const e = new Encoder() as unknown as { writeInt8(v: number): typeof e; writeVarLong(v: number): typeof e; writeVarInt(v: number): typeof e; writeVarIntBytes(b: Buffer | null): typeof e; writeVarIntString(s: string): typeof e; buffer: Buffer };
    e.writeInt8(0).writeVarLong(0).writeVarInt(0).writeVarIntBytes(null).writeVarIntBytes(Buffer.from('v')).writeVarInt(1).writeVarIntString('__proto__').writeVarIntBytes(Buffer.from('x'));
    const r = Header(new Decoder(e.buffer), { firstOffset: '0', firstTimestamp: '0' });
    expect(Object.getPrototypeOf(r.headers)).toBe(Object.prototype);
    expect(Object.keys(r.headers)).toEqual(['__proto__']);
    expect(String(Object.getOwnPropertyDescriptor(r.headers, '__proto__')!.value)).toBe('x');
  });

  it('encodes a record batch that decodes to the same keys, values and headers, and a checksum that verifies', async () => {
    const records = Array.from({ length: 300 }, (_, i) => Record({
      offsetDelta: i,
      timestampDelta: i * 3,
      key: i % 7 === 0 ? null : Buffer.from(`key-${i}`),
      value: Buffer.from('v'.repeat(i * 5)),
      headers: i % 2 ? { trace: Buffer.from(`t${i}`), 'x-empty': Buffer.alloc(0) } : {},
    }));
    const batch = await RecordBatch({ records, firstTimestamp: 1767225600000, maxTimestamp: 1767225600900 });
    const decoded = await decodeBatch(new Decoder(batch.buffer));
    expect(decoded.records).toHaveLength(300);
    decoded.records.forEach((r, i) => {
      expect(r.key?.toString() ?? null).toBe(i % 7 === 0 ? null : `key-${i}`);
      expect(r.value?.toString()).toBe('v'.repeat(i * 5));
      expect(Object.fromEntries(Object.entries(r.headers).map(([k, v]) => [k, v.toString()]))).toEqual(i % 2 ? { trace: `t${i}`, 'x-empty': '' } : {});
      expect(r.offset).toBe(String(i));
    });
    // The stored CRC covers the bytes after it (attributes onwards): offset 8 + length 4 + epoch 4 + magic 1 = 17.
    const checksum = require('kafkajs/src/protocol/recordBatch/crc32C/index.js') as (b: Buffer) => number;
    expect(batch.buffer.readUInt32BE(17)).toBe(checksum(batch.buffer.subarray(21)));
  });

  it('groups a send\'s messages by the partitioner\'s choice, keeping their order', () => {
    const messages = Array.from({ length: 20_000 }, (_, n) => ({ n }));
    const byPartition = group({ topic: 't', partitionMetadata: [{ partitionId: 0 }, { partitionId: 1 }, { partitionId: 2 }], messages, partitioner: ({ message }: { message: { n: number } }) => message.n % 3 });
    expect(Object.keys(byPartition).sort()).toEqual(['0', '1', '2']);
    for (const p of [0, 1, 2]) expect(byPartition[p]!.map((m) => m.n)).toEqual(messages.filter((m) => m.n % 3 === p).map((m) => m.n));
    expect(group({ topic: 't', partitionMetadata: [], messages, partitioner: () => 0 })).toEqual({});
  });
});
