/**
 * The bench's webhook receiver, in a process of its own (so its work is not counted in
 * Herald's event loop; it still shares the machine's two cores). Answers 204, and tells
 * its parent over IPC, every 50 ms, when each event first arrived (epoch ms) and which
 * Idempotency-Keys it saw more than once. `/hang` never answers and `/retry-after` answers
 * 429 with `Retry-After: 100000` (the noisy neighbours); neither counts as an arrival.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

const seen = new Set<string>();
let fresh: [string, number][] = [];
let repeated: string[] = [];
const server = createServer((req, res) => {
  // Noisy neighbours: an endpoint that never answers, and one that asks for a retry in ~28 hours.
  if (req.url === '/hang') return;
  if (req.url === '/retry-after') {
    req.resume();
    res.writeHead(429, { 'retry-after': '100000' }).end();
    return;
  }
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const at = performance.timeOrigin + performance.now();
    const key = String(req.headers['idempotency-key'] ?? '');
    if (seen.has(key)) repeated.push(key);
    else {
      seen.add(key);
      fresh.push([(JSON.parse(Buffer.concat(chunks).toString()) as { eventId: string }).eventId, at]);
    }
    res.writeHead(204).end();
  });
});
server.listen(0, '127.0.0.1', () => process.send!({ port: (server.address() as AddressInfo).port }));
setInterval(() => {
  if (!fresh.length && !repeated.length) return;
  process.send!({ arrivals: fresh, repeated });
  fresh = [];
  repeated = [];
}, 50);
process.on('disconnect', () => process.exit(0));
