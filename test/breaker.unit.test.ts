/**
 * The circuit breakers on their own: when tasks may call an endpoint, and how long the ones
 * held back wait (each wait is a RETRY_SCHEDULED decision on outcomes.v1).
 */
import { describe, expect, it } from 'vitest';
import { CircuitBreakers, circuitName, hostCircuitOf } from '../channels/breaker.ts';

describe('circuit breakers', () => {
  it('holds tasks until the open period ends, then while the probe runs for as long as a probe may take, not a second at a time', () => {
    const b = new CircuitBreakers({ failures: 2, openMs: 30_000, probeMs: 10_000 });
    const t0 = 1_000_000;
    for (let i = 0; i < 2; i++) b.record('email', true, false, t0);
    expect(b.state('email')).toBe('open');
    expect(b.admit('email', t0 + 5_000)).toEqual({ call: false, openSince: t0, retryInMs: 25_000 });
    // the open period is over: one probe goes, the others wait the probe's timeout
    expect(b.admit('email', t0 + 30_000)).toEqual({ call: true, probe: true });
    expect(b.admit('email', t0 + 30_001)).toMatchObject({ call: false, retryInMs: 10_000 });
    // the probe answers: closed for everyone
    b.record('email', false, true, t0 + 31_000);
    expect(b.admit('email', t0 + 31_001)).toEqual({ call: true, probe: false });
  });

  it('keeps each tenant\'s circuit of a host its own, while any tenant\'s answer tells that the host is up', () => {
    const b = new CircuitBreakers({ failures: 2, openMs: 30_000 });
    const globex = hostCircuitOf('globex', 'webhook', 'https://hooks.example/g/1');
    const acme = hostCircuitOf('acme', 'webhook', 'https://hooks.example/a/1');
    expect([globex, acme]).toEqual(['globex|webhook:hooks.example', 'acme|webhook:hooks.example']);
    expect(hostCircuitOf('acme', 'email', 'ada@example.com')).toBe('email'); // the SMTP server is one for all
    const t0 = 1_000_000;
    b.record(globex!, true, false, t0);
    b.record(globex!, true, false, t0 + 1);
    expect(b.state(globex!)).toBe('open');
    expect(b.state(acme!)).toBe('closed');
    expect(b.worst(circuitName(globex!))).toBe('open'); // the metric: the host's worst, without tenants
    // acme's call answered while another of globex's was under way: that failure is not the host's
    b.answered(acme!, t0 + 10);
    b.record(acme!, true, false, t0 + 20, t0 + 5);
    b.record(acme!, true, false, t0 + 21, t0 + 5);
    expect(b.state(acme!)).toBe('closed');
  });

  it('opens a host only on failures that span its URLs, no URL counting for more than half the threshold', () => {
    const b = new CircuitBreakers({ failures: 5, openMs: 30_000 });
    const host = 'acme|webhook:hooks.example';
    const t0 = 1_000_000;
    // One URL hanging five times, alone: its own circuit's business.
    for (let i = 0; i < 5; i++) b.record(host, true, false, t0 + i, t0 + i, 'acme|webhook:hooks.example#a');
    expect(b.state(host)).toBe('closed');
    // One failure of another URL does not make it an outage of the host (3 of a's count, 1 of b's).
    b.record(host, true, false, t0 + 10, t0 + 10, 'acme|webhook:hooks.example#b');
    expect(b.state(host)).toBe('closed');
    // A second one does: 3 + 2.
    b.record(host, true, false, t0 + 11, t0 + 11, 'acme|webhook:hooks.example#b');
    expect(b.state(host)).toBe('open');
  });

  it('opens the SMTP server\'s one circuit on its failures, whichever messages they were', () => {
    const b = new CircuitBreakers({ failures: 3, openMs: 30_000 });
    for (let i = 0; i < 3; i++) b.record('email', true, false, 1_000 + i);
    expect(b.state('email')).toBe('open');
  });
});
