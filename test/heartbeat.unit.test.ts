/**
 * Waiting inside a batch: the group hears a heartbeat every second of a long wait, a
 * shutdown ends the wait, and a wait that is over leaves no timer behind.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { heartbeating } from '../runtime/heartbeat.ts';

describe('heartbeating', () => {
  beforeEach(() => void vi.useFakeTimers());
  afterEach(() => void vi.useRealTimers());

  it('returns a quick result without a heartbeat and without a pending timer', async () => {
    const heartbeat = vi.fn(async () => undefined);
    await expect(heartbeating(Promise.resolve(7), heartbeat, () => false)).resolves.toBe(7);
    expect(heartbeat).not.toHaveBeenCalled();
    expect(vi.getTimerCount()).toBe(0);
  });

  it('heartbeats once a second while the wait lasts, then returns its result', async () => {
    const heartbeat = vi.fn(async () => undefined);
    let finish!: (v: string) => void;
    const waiting = heartbeating(new Promise<string>((r) => (finish = r)), heartbeat, () => false);
    await vi.advanceTimersByTimeAsync(3500);
    expect(heartbeat).toHaveBeenCalledTimes(3);
    finish('done');
    await expect(waiting).resolves.toBe('done');
    expect(vi.getTimerCount()).toBe(0);
  });

  it('passes a rejection on, and ends a wait with HRL_SHUTTING_DOWN once the stage stops', async () => {
    await expect(heartbeating(Promise.reject(new Error('boom')), async () => undefined, () => false)).rejects.toThrow('boom');
    let stopping = false;
    const waiting = heartbeating(new Promise(() => undefined), async () => undefined, () => stopping);
    const outcome = expect(waiting).rejects.toMatchObject({ code: 'HRL_SHUTTING_DOWN' });
    stopping = true;
    await vi.advanceTimersByTimeAsync(1000);
    await outcome;
  });
});
