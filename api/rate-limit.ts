/**
 * Per-tenant token buckets in front of publishing: `rate` tokens a second up to `burst`.
 * Buckets of tenants that have been quiet long enough to be full again are forgotten, so
 * memory follows the tenants active in the last `burst / rate` seconds.
 */
export class TenantRateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly rate: number;
  private readonly burst: number;
  private readonly clock: () => number;

  constructor(rate: number, burst: number, clock: () => number = () => performance.now()) {
    this.rate = rate;
    this.burst = burst;
    this.clock = clock;
  }

  /** Takes `cost` tokens: 0 when allowed, else the milliseconds until they would be there. */
  take(tenant: string, cost = 1): number {
    const now = this.clock();
    const b = this.buckets.get(tenant) ?? { tokens: this.burst, at: now };
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.rate);
    b.at = now;
    if (b.tokens >= cost) {
      b.tokens -= cost;
      this.buckets.set(tenant, b);
      if (this.buckets.size > 1000) this.sweep(now);
      return 0;
    }
    this.buckets.set(tenant, b);
    return Math.ceil(((cost - b.tokens) / this.rate) * 1000);
  }

  private sweep(now: number): void {
    for (const [t, b] of this.buckets) if (b.tokens + ((now - b.at) / 1000) * this.rate >= this.burst) this.buckets.delete(t);
  }
}
