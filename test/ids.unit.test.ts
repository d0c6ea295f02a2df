/** Unit tests of processors/ids.ts: derived ids are deterministic and collision-resistant. */
import { describe, expect, it } from 'vitest';
import { deliveryId, eventIdFromIdempotencyKey, hashKey, notificationId, traceIdFor } from '../processors/ids.ts';

const INPUT = ['acme', 'evt_01J9ZK3Q4M2V7B8C5D6E7F8G9H', 'user-42', 'comment-created'] as const;

describe('notificationId', () => {
  it('is ntf_ followed by 32 lowercase hex digits', () => {
    expect(notificationId(...INPUT)).toMatch(/^ntf_[0-9a-f]{32}$/);
  });

  it('is deterministic: the same four inputs give the same id', () => {
    // when computed twice from equal inputs
    const a = notificationId(...INPUT);
    const b = notificationId(INPUT[0], INPUT[1], INPUT[2], INPUT[3]);
    // then the ids are equal
    expect(b).toBe(a);
  });

  it.each([
    ['tenant', 0],
    ['eventId', 1],
    ['recipient', 2],
    ['ruleId', 3],
  ] as const)('differs when %s differs', (_name, index) => {
    // given the inputs with one of them changed
    const changed = [...INPUT] as [string, string, string, string];
    changed[index] = `${changed[index]}-x`;
    // then the id differs
    expect(notificationId(...changed)).not.toBe(notificationId(...INPUT));
  });

  it('does not depend on where the boundary between two inputs falls', () => {
    // ("ab", "c") and ("a", "bc") concatenate to the same text but are different inputs
    expect(notificationId('ab', 'c', 'u', 'r')).not.toBe(notificationId('a', 'bc', 'u', 'r'));
    expect(notificationId('t', 'e', 'user-4', '2rule')).not.toBe(notificationId('t', 'e', 'user-42', 'rule'));
  });

  it('does not depend on the order of the inputs', () => {
    expect(notificationId('a', 'b', 'c', 'd')).not.toBe(notificationId('b', 'a', 'c', 'd'));
  });

  it('does not collide across many distinct recipients', () => {
    const ids = new Set(Array.from({ length: 1000 }, (_, i) => notificationId('acme', 'evt-1', `user-${i}`, 'rule')));
    expect(ids.size).toBe(1000);
  });
});

describe('deliveryId', () => {
  it('is <notificationId>:<channel>', () => {
    const ntf = notificationId(...INPUT);
    expect(deliveryId(ntf, 'webhook')).toBe(`${ntf}:webhook`);
    expect(deliveryId(ntf, 'email')).toMatch(/^ntf_[0-9a-f]{32}:email$/);
  });

  it('differs per channel and per notification', () => {
    const ntf = notificationId(...INPUT);
    expect(deliveryId(ntf, 'webhook')).not.toBe(deliveryId(ntf, 'email'));
    expect(deliveryId(ntf, 'webhook')).not.toBe(deliveryId(notificationId('acme', 'evt-2', 'user-42', 'comment-created'), 'webhook'));
  });
});

describe('other derived ids', () => {
  it('traceIdFor is 32 hex digits, stable per (tenant, event id)', () => {
    expect(traceIdFor('acme', 'evt-1')).toMatch(/^[0-9a-f]{32}$/);
    expect(traceIdFor('acme', 'evt-1')).toBe(traceIdFor('acme', 'evt-1'));
    expect(traceIdFor('acme', 'evt-1')).not.toBe(traceIdFor('other', 'evt-1'));
  });

  it('eventIdFromIdempotencyKey is evt_ + 24 hex, the same key giving the same event per tenant', () => {
    expect(eventIdFromIdempotencyKey('acme', 'order-7')).toMatch(/^evt_[0-9a-f]{24}$/);
    expect(eventIdFromIdempotencyKey('acme', 'order-7')).toBe(eventIdFromIdempotencyKey('acme', 'order-7'));
    expect(eventIdFromIdempotencyKey('acme', 'order-7')).not.toBe(eventIdFromIdempotencyKey('globex', 'order-7'));
    expect(eventIdFromIdempotencyKey('acme', 'order-7')).not.toBe(eventIdFromIdempotencyKey('acme', 'order-8'));
  });

  it('hashKey is 40 hex digits and separates its parts', () => {
    expect(hashKey(['a', 'b'])).toMatch(/^[0-9a-f]{40}$/);
    expect(hashKey(['a', 'b'])).toBe(hashKey(['a', 'b']));
    expect(hashKey(['ab'])).not.toBe(hashKey(['a', 'b']));
  });

  it('uses distinct domains: a trace id is not the hash of the same parts', () => {
    expect(traceIdFor('acme', 'evt-1')).not.toBe(hashKey(['acme', 'evt-1']).slice(0, 32));
  });
});

describe('derived ids across versions', () => {
  // A replay after an upgrade must derive the ids the first run did: these are pinned to
  // the construction (SHA-256 of the parts, each followed by a NUL, in hex), computed apart.
  it('stay the same for the same inputs', async () => {
    const { decisionIdOf } = await import('../schemas/lifecycle.ts');
    expect(notificationId('acme', 'ev-1', 'ada', 'comment-created')).toBe('ntf_af76bf52154614093b7c26e3c7f2652c');
    expect(notificationId('acme', 'ev-ü', 'ädä', 'r')).toBe('ntf_61ae1a94eb59b71303bf10b067501158');
    expect(traceIdFor('acme', 'ev-1')).toBe('5d6cbca44e2be080021f3bc6c65f4908');
    expect(eventIdFromIdempotencyKey('acme', 'req-1')).toBe('evt_1f12cebbd2d15d60e10865f3');
    expect(decisionIdOf({ notificationId: 'ntf_x', stage: 'deliver', status: 'DELIVERED', deliveryId: 'ntf_x:webhook', attempt: 2 })).toBe('dec_aff6c9bc731cd5c70ed35bc2ecd11de2');
    expect(decisionIdOf({ notificationId: 'ntf_x', stage: 'ingest', status: 'ACCEPTED', deliveryId: null, attempt: null })).toBe('dec_a594bfd1c7b48e5a25686a9211e0dddf');
  });
});
