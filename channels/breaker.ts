/**
 * Circuit breakers per endpoint (a webhook or chat host, the SMTP server), and per webhook
 * or chat URL for its own failures (HTTP 5xx, no answer; the host opens on failures only
 * when they span two URLs or more: one URL that hangs opened the host's circuit and held
 * every other user's webhook there for 30 s): after
 * `failures` consecutive transient failures the circuit opens and tasks for the endpoint
 * wait (they are rescheduled without a call and without using an attempt); after `openMs`
 * one probe goes through (half-open): success closes the circuit, failure opens it again.
 * Shared by every deliver partition of the process, so one endpoint's outage is learned once.
 *
 * A failure counts only if no call to the endpoint succeeded since the failing call began:
 * many users' URLs share a host, and one URL that hangs or fails while the host answers the
 * others is that URL's problem (its slow lane and its retries handle it), not an outage of
 * the host. Timeouts of hanging calls all settle at once, back to back; counted, they opened
 * the circuit for every user of the host for HERALD_BREAKER_OPEN_MS.
 *
 * Webhook and chat circuits are each tenant's own (`<tenant>|webhook:<host>`): receivers
 * such as Zapier or a shared gateway serve many tenants from one host, and one tenant's
 * failing URLs there must not hold another tenant's deliveries, nor show it their failures.
 * The SMTP server is Herald's own, one circuit for all.
 */
import { createHash } from 'node:crypto';

export type CircuitState = 'closed' | 'open' | 'half-open';

interface Circuit {
  state: CircuitState;
  failures: number;
  openedAt: number;
  probing: boolean;
  /** The URLs whose failures make up the consecutive failures, with how many each (webhook and chat hosts); and whether a failure came without one (the SMTP server). */
  sources: Map<string, number>;
  unanswered: boolean;
}

export type Admission = { call: true; probe: boolean } | { call: false; openSince: number; retryInMs: number };

export class CircuitBreakers {
  private readonly circuits = new Map<string, Circuit>();
  /** Per endpoint (without the tenant), when a call to it last succeeded (wall clock). */
  private readonly lastAnswer = new Map<string, number>();
  /** `probeMs`: how long a half-open circuit's probe may take (a call's timeout); tasks wait that long for it, not a second at a time. */
  private readonly o: { failures: number; openMs: number; probeMs?: number; onChange?: (endpoint: string, from: CircuitState, to: CircuitState, failures: number) => void };

  constructor(o: CircuitBreakers['o']) {
    this.o = o;
  }

  private set(endpoint: string, c: Circuit, to: CircuitState): void {
    const from = c.state;
    c.state = to;
    if (from !== to) this.o.onChange?.(endpoint, from, to, c.failures);
  }

  /** May a task call `endpoint` at `now` (wall clock)? */
  admit(endpoint: string, now: number): Admission {
    const c = this.circuits.get(endpoint);
    if (!c || c.state === 'closed') return { call: true, probe: false };
    if (c.state === 'open' && now - c.openedAt >= this.o.openMs) this.set(endpoint, c, 'half-open');
    if (c.state === 'half-open' && !c.probing) {
      c.probing = true;
      return { call: true, probe: true };
    }
    // Open: until the open period ends. Half-open with its probe under way: as long as the
    // probe may take (each wait is a decision on outcomes.v1; a second at a time wrote one a
    // second per waiting task while a probe hung).
    const wait = c.state === 'half-open' ? Math.max(this.o.probeMs ?? 1000, 1000) : c.openedAt + this.o.openMs - now;
    return { call: false, openSince: c.openedAt, retryInMs: Math.max(wait, Math.min(1000, this.o.openMs)) };
  }

  /**
   * The outcome of a call admitted by `admit`, made at `startedAt`: `failed` for transient
   * failures (network, 5xx, timeouts). A failure does not count while the endpoint has
   * answered another call since `startedAt` (a probe's always counts).
   */
  record(endpoint: string, failed: boolean, probe: boolean, now: number, startedAt = now, source?: string): void {
    if (!failed) this.answered(endpoint, now);
    else if (!probe && (this.lastAnswer.get(circuitName(endpoint)) ?? Number.NEGATIVE_INFINITY) >= startedAt) return;
    let c = this.circuits.get(endpoint);
    if (!c) {
      if (!failed) return;
      c = { state: 'closed', failures: 0, openedAt: 0, probing: false, sources: new Map(), unanswered: false };
      this.circuits.set(endpoint, c);
    }
    if (probe) c.probing = false;
    if (!failed) {
      c.failures = 0;
      this.set(endpoint, c, 'closed');
      this.circuits.delete(endpoint);
      return;
    }
    c.failures++;
    if (source === undefined) c.unanswered = true;
    else if (c.sources.has(source) || c.sources.size < 16) c.sources.set(source, (c.sources.get(source) ?? 0) + 1);
    // Failures of one URL alone are that URL's (its own circuit): a host opens only when they
    // span URLs, and no URL counts for more than half the threshold (one that hung five times,
    // then one failure of another, would open it). `source` is the URL (webhook, chat); the
    // SMTP server has none, and every failure of it counts.
    const cap = Math.ceil(this.o.failures / 2);
    const counted = c.unanswered ? c.failures : c.sources.size < 2 ? 0 : [...c.sources.values()].reduce((n, k) => n + Math.min(k, cap), 0);
    if (probe || (c.state === 'closed' && counted >= this.o.failures)) {
      c.openedAt = now;
      this.set(endpoint, c, 'open');
    }
  }

  /** A call to `endpoint` succeeded at `now` (`record` notes it too; a batch notes its successes before it settles its failures). */
  answered(endpoint: string, now: number): void {
    // Whoever's call it answered, the host is up (tenants' circuits share this, and only this).
    const host = circuitName(endpoint);
    this.lastAnswer.delete(host);
    this.lastAnswer.set(host, now);
    // Kept for the endpoints answered in the last ten minutes (insertion order is oldest first).
    if (this.lastAnswer.size > 10_000) {
      for (const [e, at] of this.lastAnswer) {
        if (at >= now - 600_000) break;
        this.lastAnswer.delete(e);
      }
    }
  }

  state(endpoint: string): CircuitState {
    return this.circuits.get(endpoint)?.state ?? 'closed';
  }

  /** The worst state among the tenants' circuits named `name` (what the metric shows, without the tenant). */
  worst(name: string): CircuitState {
    let worst: CircuitState = 'closed';
    for (const [key, c] of this.circuits) {
      if (key !== name && !key.endsWith(`|${name}`)) continue;
      if (c.state === 'open') return 'open';
      if (c.state === 'half-open') worst = 'half-open';
    }
    return worst;
  }
}

/** A circuit's name without its tenant: what logs and the metric label carry. */
export function circuitName(circuit: string): string {
  return circuit.slice(circuit.indexOf('|') + 1);
}

/** The host's circuit for a task of `tenant` (null for inapp): the tenant's own for webhook and chat, the one SMTP server's for email. */
export function hostCircuitOf(tenant: string, channel: string, address: string): string | null {
  const endpoint = endpointOf(channel, address);
  return endpoint === null || endpoint === 'email' ? endpoint : `${tenant}|${endpoint}`;
}

/** The URL's own circuit for a task of `tenant` (see urlCircuitOf). */
export function tenantUrlCircuitOf(tenant: string, channel: string, address: string): string | null {
  const circuit = urlCircuitOf(channel, address);
  return circuit === null ? null : `${tenant}|${circuit}`;
}

/**
 * The circuit of one webhook or chat URL (null for other channels): a URL that answers with
 * an HTTP error is that URL's problem, and its own circuit opens, while the host (which
 * answered) stays closed for every other URL on it. Named by the host and a hash of the URL,
 * never the URL itself: its path or query may carry a token, and the name reaches logs and
 * metric labels.
 */
export function urlCircuitOf(channel: string, address: string): string | null {
  if (channel !== 'webhook' && channel !== 'chat') return null;
  try {
    return `${channel}:${new URL(address).host}#${createHash('sha256').update(address).digest('hex').slice(0, 10)}`;
  } catch {
    return null;
  }
}

/** The endpoint a task calls: the host of a webhook or chat URL, the one SMTP server for email. */
export function endpointOf(channel: string, address: string): string | null {
  if (channel === 'inapp') return null;
  if (channel === 'email') return 'email';
  try {
    return `${channel}:${new URL(address).host}`;
  } catch {
    return null;
  }
}
