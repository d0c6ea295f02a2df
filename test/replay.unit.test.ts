import type { KafkaMessage } from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { type Change, checkRange, explainOrder, mergeByTime, parsePosition, parseStages } from '../replay/replay.ts';

const m = (offset: number, timestamp: number) => ({ offset: String(offset), timestamp: String(timestamp) }) as KafkaMessage;

describe('replay options', () => {
  it('takes a stage or a range in pipeline order, and refuses deliver and outcome saying why', () => {
    expect(parseStages('dedupe')).toEqual(['dedupe']);
    expect(parseStages('ingest..route')).toEqual(['ingest', 'enrich', 'dedupe', 'throttle', 'route']);
    expect(() => parseStages('route..ingest')).toThrow(/route comes after ingest/);
    expect(() => parseStages('throttle..deliver')).toThrow(/deliver cannot be replayed/);
    expect(() => parseStages('outcome')).toThrow(/lifecycle rebuild/);
    expect(() => parseStages('dedup')).toThrow('--stage: expected a stage (ingest, enrich, dedupe, throttle, route) or a range such as ingest..route, got "dedup"');
  });

  it('reads a position as an offset or an ISO time', () => {
    expect(parsePosition('120', '--from')).toEqual({ offset: 120n });
    expect(parsePosition('2026-12-01T09:00:00Z', '--to')).toEqual({ time: Date.parse('2026-12-01T09:00:00Z') });
    expect(() => parsePosition('yesterday', '--from')).toThrow(/--from: expected an offset \(digits\) or an ISO time/);
    expect(parsePosition('2026-12-01', '--from')).toEqual({ time: Date.parse('2026-12-01T00:00:00Z') });
    // A time without a zone would be read in the CLI machine's zone: refused, saying so.
    expect(() => parsePosition('2026-12-03T16:37:49', '--from')).toThrow('--from: "2026-12-03T16:37:49" has no zone, and the records\' times are UTC: add one, e.g. 2026-12-03T16:37:49Z or 2026-12-03T16:37:49+01:00');
    expect(parsePosition('2026-12-03T16:37:49+01:00', '--from')).toEqual({ time: Date.parse('2026-12-03T15:37:49Z') });
    expect(parsePosition('2026-12-01T09:00:00.123+01:00', '--from')).toEqual({ time: Date.parse('2026-12-01T08:00:00.123Z') });
    // What Date.parse alone would have taken as dates (2001-01-01, 2001-03-05, …)
    for (const odd of ['-1', '+5', '3.5', '', 'Dec 1', '1 2 3']) expect(() => parsePosition(odd, '--from'), odd).toThrow(/--from: expected an offset \(digits\) or an ISO time/);
  });

  it('refuses a range that starts after it ends', () => {
    expect(() => checkRange({ offset: 5n }, { offset: 2n })).toThrow('--from offset 5 is not before --to offset 2: expected a range that starts before it ends (--to is exclusive)');
    expect(() => checkRange({ time: Date.parse('2026-12-02T00:00:00Z') }, { time: Date.parse('2026-12-01T00:00:00Z') })).toThrow('--from 2026-12-02T00:00:00.000Z is not before --to 2026-12-01T00:00:00.000Z');
    // An empty range (--to is exclusive) would replay nothing and report that as the answer.
    expect(() => checkRange({ offset: 5n }, { offset: 5n })).toThrow('--from offset 5 is not before --to offset 5');
    expect(() => checkRange({ offset: 2n }, { offset: 5n })).not.toThrow();
    expect(() => checkRange({ offset: 2n }, undefined)).not.toThrow();
  });
});

describe('merging partitions by time', () => {
  it('interleaves partitions in time order and keeps each partition in offset order', () => {
    const parts = new Map([
      [0, [m(0, 10), m(1, 40), m(2, 41)]],
      [1, [m(0, 20), m(1, 5), m(2, 50)]],
    ]);
    const runs = [...mergeByTime(parts)].map(([p, ms]) => `${p}:${ms.map((x) => x.offset).join(',')}`);
    // Partition 1's offset 1 (time 5) stays behind its offset 0 (time 20): offsets never reorder.
    expect(runs).toEqual(['0:0', '1:0,1', '0:1,2', '1:2']);
  });
});

describe('replay differences', () => {
  const d = (id: string, status: string, stage: 'throttle' | 'dedupe' = 'throttle') => ({ stage, notificationId: id, tenant: 'acme', recipient: 'ada', eventId: `e-${id}`, status, reasonCode: status === 'ADMITTED' ? 'within_limits' : 'limit_deferred', reason: '', timestamp: 0 });
  const changes = (): Change[] => [
    { stage: 'throttle', notificationId: 'n2', tenant: 'acme', recipient: 'ada', recorded: d('n2', 'DEFERRED'), replayed: d('n2', 'ADMITTED'), because: null },
    { stage: 'throttle', notificationId: 'n4', tenant: 'acme', recipient: 'ada', recorded: d('n4', 'ADMITTED'), replayed: d('n4', 'DEFERRED'), because: null },
  ];
  it('says two of a user\'s throttle decisions came out swapped because a range replay reads events.v1 merged by time', () => {
    const report = { changes: changes() };
    explainOrder(report, ['ingest', 'enrich', 'dedupe', 'throttle', 'route']);
    for (const c of report.changes) expect(c.because).toMatch(/^the same decisions as live, for other notifications of this user: throttle decides by the order .* \(`replay --stage throttle` reads its input as recorded\)$/);
  });
  it('leaves unexplained what is not a swap, or a replay that starts at the stage itself', () => {
    const alone = { changes: changes() };
    explainOrder(alone, ['throttle']);
    expect(alone.changes.map((c) => c.because)).toEqual([null, null]);
    const one = { changes: changes().slice(0, 1) };
    explainOrder(one, ['ingest', 'enrich', 'dedupe', 'throttle', 'route']);
    expect(one.changes[0]!.because).toBeNull();
    const notSwapped = { changes: changes().map((c) => ({ ...c, replayed: d(c.notificationId, 'THROTTLED') })) };
    explainOrder(notSwapped, ['ingest', 'enrich', 'dedupe', 'throttle', 'route']);
    expect(notSwapped.changes.map((c) => c.because)).toEqual([null, null]);
  });
});
