/**
 * The bench's webhook receiver, in a process of its own (so its work is not counted in
 * Herald's event loop; it still shares the machine's two cores). Answers 204, and tells
 * its parent over IPC, every 50 ms, when each event first arrived (epoch ms) and which
 * Idempotency-Keys it saw more than once.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

const seen = new Set<string>();
let fresh: [string, number][] = [];
let repeated: string[] = [];
const server = createServer((req, res) => {
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
