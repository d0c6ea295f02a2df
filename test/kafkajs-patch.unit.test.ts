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
