/** A real HTTP webhook receiver for tests: records every request and answers from a script. */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Received { path: string; headers: IncomingHttpHeaders; body: string; json: Record<string, unknown> }

export class WebhookReceiver {
  readonly received: Received[] = [];
  /** Status codes (or status and headers, 'hang': never answer, or a 204 after a delay) per path, before falling back to 204. */
  readonly script = new Map<string, (number | [number, Record<string, string>] | 'hang' | { delayMs: number })[]>();
  /** Requests answered (their response finished). */
  answered = 0;
  /** Requests left hanging (answered by nobody until `stop`). */
  hanging = 0;
  /** Arrival time of each request, ms. */
  readonly times: number[] = [];
  private server: Server | null = null;
  url = '';

  async start(host = '127.0.0.1'): Promise<this> {
    this.server = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        const path = req.url ?? '/';
        this.received.push({ path, headers: req.headers, body, json: JSON.parse(body || '{}') as Record<string, unknown> });
        this.times.push(Date.now());
        const next = this.script.get(path)?.shift() ?? 204;
        if (next === 'hang') {
          this.hanging++;
          res.on('close', () => this.hanging--);
          return;
        }
        if (typeof next === 'object' && !Array.isArray(next)) {
          setTimeout(() => res.writeHead(204).end(() => this.answered++), next.delayMs);
          return;
        }
        const [status, headers] = Array.isArray(next) ? next : [next, {}];
        res.writeHead(status, headers).end(() => this.answered++);
      });
    });
    await new Promise<void>((r) => this.server!.listen(0, host, r));
    this.url = `http://${host}:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  for(path: string): Received[] {
    return this.received.filter((r) => r.path === path);
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}
