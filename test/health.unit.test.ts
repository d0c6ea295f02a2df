/** What /readyz says about a stage, given what happened to it, with an injected clock. */
import { describe, expect, it } from 'vitest';
import { StageHealth } from '../runtime/stage-health.ts';

function given(stallMs = 1000) {
  const clock = { now: 1_000_000 };
  return { h: new StageHealth(stallMs, () => clock.now), clock };
}

describe('stage readiness', () => {
  it('is ready when joined with every assigned partition open and nothing stalled', () => {
    const { h } = given();
    expect(h.report('joined', [0, 1], [0, 1])).toMatchObject({ ready: true, reasons: [] });
  });

  it('is not ready while the member is restarting or a partition is not open', () => {
    const { h } = given();
    expect(h.report('restarting', [0], [0]).reasons).toEqual(['consumer group member is restarting']);
    expect(h.report('joined', [0, 1, 2], [1]).reasons).toEqual(['partitions 0, 2 are assigned but their stores are not open yet']);
  });

  it('reports a restore with its progress until it is done', () => {
    const { h } = given();
    h.restoreProgress('seen', 400, 1000);
    expect(h.report('joined', [0], [0])).toMatchObject({ ready: false, reasons: ['restoring seen: 400 of 1000 records'], restoring: [{ store: 'seen', applied: 400, expected: 1000 }] });
    h.restoreDone('seen');
    expect(h.report('joined', [0], [0]).ready).toBe(true);
  });

  it('turns not ready when a batch runs longer than the stall threshold, and ready again when it ends', () => {
    const { h, clock } = given();
    h.batchStarted();
    clock.now += 999;
    expect(h.report('joined', [0], [0]).ready).toBe(true);
    clock.now += 2;
    expect(h.report('joined', [0], [0]).reasons).toEqual(['a batch has been running for 1 s']);
    h.batchDone('t', 0, 0);
    expect(h.report('joined', [0], [0]).ready).toBe(true);
  });

  it('turns not ready when batches keep failing, naming the last error code', () => {
    const { h, clock } = given();
    h.batchFailed({ code: 'HRL_PROCESSING_FAILED', message: 'Database is not open' });
    clock.now += 5000;
    h.batchFailed({ code: 'HRL_PROCESSING_FAILED', message: 'Database is not open' });
    const r = h.report('joined', [0], [0]);
    expect(r.reasons).toEqual(['batches have been failing for 5 s (last: HRL_PROCESSING_FAILED)']);
    expect(r.lastError).toMatchObject({ code: 'HRL_PROCESSING_FAILED', message: 'Database is not open' });
  });

  it('turns not ready when a partition has lag and no progress, but not when it has no lag', () => {
    const { h, clock } = given();
    h.batchDone('herald.deliveries.v1', 3, 120);
    h.batchDone('herald.deliveries.v1', 1, 0);
    clock.now += 1500;
    expect(h.report('joined', [1, 3], [1, 3]).reasons).toEqual(['herald.deliveries.v1[3] is 120 records behind with no progress for 2 s']);
  });

  it('reports records the broker dropped before they were read, as an error that stays', () => {
    const { h } = given();
    h.recordsLost('herald.outcomes.v1[2] at 2026-12-01T00:00:00.000Z');
    expect(h.report('joined', [2], [2]).reasons).toEqual(['records lost before they were read: herald.outcomes.v1[2] at 2026-12-01T00:00:00.000Z']);
  });
});
