/**
 * The bench's HTTP clients, in a process of their own (users' clients never run inside
 * Herald's process; they still share the machine's two cores). Started with a job on IPC:
 * PUT `users` users, then POST `events` events: from `clients` concurrent clients, each as
 * fast as it is answered, or at `perSecond` (an open-loop schedule: event i is sent at
 * start + i / perSecond whatever became of the ones before, up to 512 in flight, and its
 * latency counts from then). Every client retries 429 and 503 after Retry-After, as users'
 * clients do. Answers with when each event was sent (epoch ms) and the counts.
 */
import pLimit from 'p-limit';

export interface WireJob {
  url: string;
  key: string;
  events: number;
  clients: number;
  users: number;
  /** The webhook URL of each user. */
  hooks: string[];
  perSecond?: number;
  idPrefix?: string;
}
export interface ClientReport { sent: [string, number][]; waits: number; refused: number; firstPost: number; published: number }

const now = () => performance.timeOrigin + performance.now();
/** Requests the open-loop schedule keeps in flight at most. */
const MAX_IN_FLIGHT = 512;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function run(job: WireJob): Promise<ClientReport> {
  const auth = { authorization: `Bearer ${job.key}`, 'content-type': 'application/json' };
  let waits = 0;
  const request = async (method: string, path: string, body: string): Promise<number> => {
    for (;;) {
      const res = await fetch(`${job.url}${path}`, { method, headers: auth, body });
      await res.arrayBuffer();
      if (res.status !== 429 && res.status !== 503) return res.status;
      waits++;
      await sleep(Number(res.headers.get('retry-after') ?? 1) * 1000);
    }
  };
  let u = 0;
  await Promise.all(Array.from({ length: job.clients }, async () => {
    for (let i = u++; i < job.users; i = u++) {
      const status = await request('PUT', `/v1/users/user-${i}`, JSON.stringify({ webhookUrl: job.hooks[i] }));
      if (status !== 202) throw new Error(`PUT user-${i} answered ${status}`);
    }
  }));
  for (const deadline = Date.now() + 30_000; ;) {
    if ((await fetch(`${job.url}/v1/users/user-${job.users - 1}`, { headers: auth })).status === 200) break;
    if (Date.now() > deadline) throw new Error('the users table did not show the last user within 30 s');
    await sleep(100);
  }
  const sent: [string, number][] = [];
  let next = 0;
  let refused = 0;
  const firstPost = now();
  const post = async (i: number) => {
    const id = `${job.idPrefix ?? 'h'}-${i}`;
    const body = JSON.stringify({ id, type: 'comment.created', recipients: [`user-${i % job.users}`], actor: 'bench', data: { commentId: id, documentTitle: 'Doc', excerpt: 'hello' } });
    if ((await request('POST', '/v1/events', body)) !== 202) refused++;
  };
  if (job.perSecond) {
    // Open loop: event i is sent at its due time whether or not earlier ones were answered
    // (at most MAX_IN_FLIGHT at once), and its latency counts from that due time, so a slow
    // answer or a retry after 503 is measured, not hidden (coordinated omission).
    const limit = pLimit(MAX_IN_FLIGHT);
    const posts: Promise<void>[] = [];
    for (let i = 0; i < job.events; i++) {
      const due = firstPost + (i * 1000) / job.perSecond;
      const wait = due - now();
      if (wait > 0) await sleep(wait);
      sent.push([`${job.idPrefix ?? 'h'}-${i}`, due]);
      posts.push(limit(() => post(i)));
    }
    await Promise.all(posts);
  } else {
    // Closed loop: `clients` clients, each sending its next event once the last is answered.
    await Promise.all(Array.from({ length: job.clients }, async () => {
      for (let i = next++; i < job.events; i = next++) {
        sent.push([`${job.idPrefix ?? 'h'}-${i}`, now()]);
        await post(i);
      }
    }));
  }
  return { sent, waits, refused, firstPost, published: now() };
}

if (process.send) {
  process.once('message', (job: WireJob) => {
    run(job).then((report) => process.send!({ report }), (err: Error) => process.send!({ error: err.message }));
  });
  process.on('disconnect', () => process.exit(0));
}
