/**
 * kafkajs 2.2.4 schedules a queue check after every response even when nothing is pending,
 * with a negative delay: a 1 ms timer loop per broker connection that burned ~6 % of a core
 * per idle consumer and printed TimeoutNegativeWarning (kafkajs#1556, #1704, #1751).
 * patches/kafkajs+2.2.4.patch, applied by `npm install`, stops it; this keeps it applied.
 */
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
