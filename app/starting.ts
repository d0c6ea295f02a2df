/**
 * The HTTP port while Herald starts: it is taken at once (a port in use is said before a
 * long start, not after it), and it answers as a starting instance should, so probes see
 * a process that is alive and not ready yet instead of a refused connection:
 * `/healthz` 200 (alive), `/readyz` 503 with what the start is doing (the journal replay,
 * the tables, each stage's restore progress), `/metrics` the process's metrics, and every
 * other path 503 `HRL_STARTING` with `Retry-After`. When the start is done the API takes
 * the same listening server over (`handOver`), so no connection is refused or reset.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { metricsRefusal } from '../api/metrics-auth.ts';
import { INBOX_STREAM_PATH, retryLaterStream, wantsEventStream } from '../api/sse.ts';
import { HeraldError } from '../errors.ts';

export class StartingServer {
  /** What the start is doing now, shown on /readyz. */
  phase = 'starting';
  readonly server: Server;
  /** The API's handler, once it has taken over (the same server: no request is refused or reset in the hand-over). */
  private api: ((req: IncomingMessage, res: ServerResponse) => void) | null = null;
  private pending: ((req: IncomingMessage, res: ServerResponse) => void) | null = null;
  private readonly detail: () => string[];

  private constructor(server: Server, detail: () => string[]) {
    this.server = server;
    this.detail = detail;
  }

  /** Takes `host:port` (0: a free port), or throws HRL_CONFIG_INVALID naming why it cannot. */
  static async listen(host: string, port: number, o: { registry: Registry; detail: () => string[]; metricsToken?: string }): Promise<StartingServer> {
    let self: StartingServer | null = null;
    const server = createServer((req, res) => {
      if (self?.api) return self.api(req, res);
      const path = (req.url ?? '/').split('?')[0];
      const json = (status: number, body: unknown, headers: Record<string, string> = {}) => {
        const text = JSON.stringify(body);
        res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text), ...headers }).end(text);
      };
      const reasons = () => [`starting: ${self?.phase ?? 'starting'}`, ...(self?.detail() ?? [])];
      if (path === '/healthz') return json(200, { status: 'starting' });
      if (path === '/readyz') return json(503, { ready: false, reasons: reasons() }, { 'retry-after': '1' });
      if (path === '/metrics') {
        const refused = metricsRefusal(o.metricsToken ?? '', req.headers.authorization);
        if (refused) return json(401, refused.body, { 'www-authenticate': refused.challenge });
        void o.registry.metrics().then((text) => res.writeHead(200, { 'content-type': o.registry.contentType }).end(text), () => json(500, { error: 'HRL_INTERNAL', message: 'metrics failed' }));
        return;
      }
      const message = `this instance is starting (${self?.phase ?? 'starting'}); retry shortly`;
      // An EventSource (the inbox stream) would take a 503 as the end: it is told to come back.
      if (INBOX_STREAM_PATH.test(path ?? '') && wantsEventStream(req.headers.accept)) return retryLaterStream(res, 1000, 'HRL_STARTING', message);
      json(503, { error: 'HRL_STARTING', message }, { 'retry-after': '1' });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        if (err.code !== 'EADDRINUSE' && err.code !== 'EACCES') return reject(err);
        const why = err.code === 'EADDRINUSE' ? 'is already in use (another Herald, or another server)' : 'may not be opened by this user';
        reject(new HeraldError('HRL_CONFIG_INVALID', `HERALD_HTTP_PORT: ${host}:${port} ${why}; stop what holds it, or set HERALD_HTTP_PORT to another port (0 picks a free one)`, { cause: err }));
      });
      server.listen(port, host, () => resolve());
    });
    self = new StartingServer(server, o.detail);
    return self;
  }

  /**
   * The API's server is this one (Fastify's serverFactory): once `takeOver` is called, every
   * request goes to `handler` on the same listening server, so none is refused or reset.
   */
  handOver(handler: (req: IncomingMessage, res: ServerResponse) => void): Server {
    this.pending = handler;
    return this.server;
  }

  /** Requests go to the handler given to `handOver` from now on (call it once the API is ready). */
  takeOver(): void {
    this.api = this.pending;
  }

  /** The port taken (the one asked for, or the free one 0 picked). */
  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Lets the port go (open connections are closed), so the API can take it. */
  async close(): Promise<void> {
    if (!this.server.listening) return;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
