/**
 * Server-sent events when the stream cannot be served right now (the instance starts or
 * stops, the user's partition has no owner yet). EventSource gives up for good on any
 * answer but 200 (the HTML standard: "fail the connection"), so a 503 would end a browser's
 * inbox until the page reloads. A client that asks for `text/event-stream` gets 200 with a
 * `retry:` delay and an `unavailable` event saying why, then the end of the stream: it
 * reconnects after the delay, with its Last-Event-ID. Other clients get the JSON 503.
 */
import type { ServerResponse } from 'node:http';

/** The route of the inbox stream, as a path test (before routing: the starting server has none). */
export const INBOX_STREAM_PATH = /^\/v1\/users\/[^/]+\/inbox\/stream$/;

/**
 * Whether a request to the stream may be answered as a stream: it asks for
 * text/event-stream, or does not ask for JSON (a proxy in front of a browser may not pass the
 * browser's Accept on, and the stream answers as a stream whatever Accept says).
 */
export const wantsEventStream = (accept: string | string[] | undefined): boolean => /\btext\/event-stream\b/i.test(String(accept ?? '')) || !/\bjson\b/i.test(String(accept ?? ''));

/** Answers an event-stream request with "come back in `retryMs`", naming the error. */
export function retryLaterStream(res: ServerResponse, retryMs: number, error: string, message: string): void {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache, no-transform', 'x-accel-buffering': 'no', connection: 'close' });
  res.end(`retry: ${retryMs}\nevent: unavailable\ndata: ${JSON.stringify({ error, message })}\n\n`);
}
