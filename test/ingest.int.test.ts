/**
 * ingest at depth on the embedded broker: every rejection path ends in dlq.v1 with a
 * specific reason and, where an id can be derived, a REJECTED outcome; a 10,000-member
 * audience fans out to one request per member.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { KafkaMessage } from 'kafkajs';
import { notificationId } from '../processors/ids.ts';
import type { LifecycleEvent, NotificationRequest } from '../schemas/types.ts';
import type { Herald } from '../app/herald.ts';
import { topicName } from '../topology.ts';
import { Serde } from '../schemas/index.ts';
import { api, collect, eventually, removeDir, startTestHerald } from './support/herald.ts';

let h: Herald & { stateDir: string };
let dlq: Awaited<ReturnType<typeof collect>>;
let outcomes: Awaited<ReturnType<typeof collect>>;
let requests: Awaited<ReturnType<typeof collect>>;
const T = (k: 'events' | 'dlq' | 'outcomes' | 'requests') => topicName('herald.', k);

beforeAll(async () => {
  h = await startTestHerald({ stages: ['ingest'], env: { HERALD_MAX_PAYLOAD_BYTES: '2048' } });
  [dlq, outcomes, requests] = await Promise.all([collect(h, T('dlq')), collect(h, T('outcomes')), collect(h, T('requests'))]);
});

afterAll(async () => {
  await Promise.all([dlq?.stop(), outcomes?.stop(), requests?.stop()]);
  await h?.stop();
  if (h) removeDir(h.stateDir);
});

const header = (m: KafkaMessage, k: string) => m.headers?.[k]?.toString();
const decodeAll = async <T>(ms: KafkaMessage[]) => Promise.all(ms.map((m) => h.serde.decode<T>(m.value!)));

describe('ingest rejections', () => {
  const cases: { name: string; value: Buffer | string; code: string; field?: string; reason: RegExp; rejected: string | null }[] = [
    { name: 'undecodable bytes', value: Buffer.from([0xde, 0xad, 0xbe, 0xef]), code: 'HRL_DECODE_FAILED', field: 'value', reason: /expected JSON \(an object\) or Avro in Confluent wire format .* got 4 bytes starting 0xdeadbeef: unknown magic byte/, rejected: null },
    { name: 'a wrong magic byte', value: Buffer.from([1, 0, 0, 0, 1, 2, 3]), code: 'HRL_DECODE_FAILED', field: 'value', reason: /got 7 bytes starting 0x01000000: unknown magic byte/, rejected: null },
    { name: 'JSON that is not UTF-8', value: Buffer.from('{"id":"u8","tenant":"acme","type":"comment.created","recipients":["ada"],"actor":"li\xffnus"}', 'latin1'), code: 'HRL_DECODE_FAILED', field: 'value', reason: /JSON must be UTF-8 \(RFC 8259\), and byte 84 \(0xff\) is not valid UTF-8/, rejected: null },
    { name: 'Avro with an unknown schema id', value: Buffer.from([0, 0, 0, 0x7f, 0x7f, 1, 2]), code: 'HRL_DECODE_FAILED', field: 'value', reason: /schema id 32639\): the registry has no schema 32639/, rejected: null },
    { name: 'a schema violation', value: JSON.stringify({ id: 'sv', tenant: 'acme', type: 'comment.created', recipients: ['ada'], occurredAt: 'yesterday' }), code: 'HRL_SCHEMA_VIOLATION', field: 'occurredAt', reason: /occurredAt: expected/, rejected: 'schema_violation' },
    { name: 'a missing field', value: JSON.stringify({ id: 'mf', tenant: 'acme', recipients: ['ada'] }), code: 'HRL_SCHEMA_VIOLATION', field: 'type', reason: /type: expected a string, got nothing/, rejected: 'schema_violation' },
    { name: 'an unknown event type', value: JSON.stringify({ id: 'ut', tenant: 'acme', type: 'no.such.type', recipients: ['ada'] }), code: 'HRL_UNKNOWN_EVENT_TYPE', field: 'type', reason: /no rule matches event type "no.such.type"/, rejected: 'unknown_event_type' },
    { name: 'no recipients', value: JSON.stringify({ id: 'nr', tenant: 'acme', type: 'comment.created' }), code: 'HRL_NO_RECIPIENTS', field: 'recipients', reason: /expected at least one recipient/, rejected: 'no_recipients' },
    { name: 'a blank recipient', value: JSON.stringify({ id: 'br', tenant: 'acme', type: 'comment.created', recipients: ['ada', ' '] }), code: 'HRL_NO_RECIPIENTS', field: 'recipients[1]', reason: /recipients\[1\]: expected a non-empty user id/, rejected: 'invalid_recipient' },
    { name: 'a recipient with a line break', value: JSON.stringify({ id: 'lb', tenant: 'acme', type: 'comment.created', recipients: ['ada', 'eve\nINFO forged log line'] }), code: 'HRL_NO_RECIPIENTS', field: 'recipients[1]', reason: /recipients\[1\]: expected no control characters, got U\+000A at character 4/, rejected: 'invalid_recipient' },
    { name: 'an actor with a terminal escape', value: JSON.stringify({ id: 'te', tenant: 'acme', type: 'comment.created', recipients: ['ada'], actor: 'x\u001b[2J' }), code: 'HRL_SCHEMA_VIOLATION', field: 'actor', reason: /actor: expected no control characters, got U\+001B/, rejected: 'schema_violation' },
    { name: 'an empty audience', value: JSON.stringify({ id: 'ea', tenant: 'acme', type: 'comment.created', audience: 'nobody-here' }), code: 'HRL_NO_RECIPIENTS', field: 'audience', reason: /audience "nobody-here" of tenant "acme" has no members/, rejected: 'empty_audience' },
    { name: 'a lone surrogate in a recipient', value: '{"id":"ls","tenant":"acme","type":"comment.created","recipients":["ada\\ud800"]}', code: 'HRL_SCHEMA_VIOLATION', field: 'recipients[0]', reason: /recipients\[0\]: expected well-formed Unicode text, got a lone surrogate \(U\+D800\) at character 4/, rejected: 'schema_violation' },
    { name: 'a lone surrogate in the tenant', value: '{"id":"lt","tenant":"ac\\ud800me","type":"comment.created","recipients":["ada"]}', code: 'HRL_SCHEMA_VIOLATION', field: 'tenant', reason: /tenant: expected well-formed Unicode text/, rejected: null },
    { name: 'data nested too deep', value: `{"id":"nd","tenant":"acme","type":"comment.created","recipients":["ada"],"data":${'['.repeat(900)}${']'.repeat(900)}}`, code: 'HRL_SCHEMA_VIOLATION', field: 'data', reason: /^data: nested deeper than 32 levels$/, rejected: 'schema_violation' },
    { name: 'an oversized payload', value: JSON.stringify({ id: 'big', tenant: 'acme', type: 'comment.created', recipients: ['ada'], data: { blob: 'x'.repeat(4000) } }), code: 'HRL_PAYLOAD_TOO_LARGE', field: 'value', reason: /^value: the record is \d+ bytes; the limit is 2048/, rejected: 'payload_too_large' },
  ];

  it('dead-letters each bad record with code, field and reason, records REJECTED where it can, and processes the good neighbour', async () => {
    const good = { id: 'good-neighbour', tenant: 'acme', type: 'comment.created', recipients: ['ada'], data: { commentId: 'g' } };
    await h.producer.send({ topic: T('events'), acks: -1, messages: [...cases.map((c) => ({ key: 'same-key', value: c.value })), { key: 'same-key', value: JSON.stringify(good) }] });
    const found = await eventually(() => dlq.messages.length >= cases.length && dlq.messages);
    // Decode failures are dead-lettered ahead of processing failures of the same batch: order by source offset.
    const dead = [...found].sort((a, b) => Number(header(a, 'herald.source.offset')) - Number(header(b, 'herald.source.offset')));
    expect(dead.map((m) => header(m, 'herald.error.code'))).toEqual(cases.map((c) => c.code));
    cases.forEach((c, i) => {
      const m = dead[i]!;
      expect(header(m, 'herald.error.reason'), c.name).toMatch(c.reason);
      expect(header(m, 'herald.error.field'), c.name).toBe(c.field);
      expect(header(m, 'herald.source.topic')).toBe(T('events'));
      expect(m.value, `${c.name}: original bytes`).toEqual(Buffer.isBuffer(c.value) ? c.value : Buffer.from(c.value));
    });
    const req = await eventually(async () => (await decodeAll<NotificationRequest>(requests.messages)).find((r) => r.eventId === 'good-neighbour'));
    expect(req.recipient).toBe('ada');

    const events = await eventually(async () => {
      const all = await decodeAll<LifecycleEvent>(outcomes.messages);
      return all.filter((e) => e.status === 'REJECTED').length >= cases.filter((c) => c.rejected).length && all;
    });
    for (const c of cases.filter((x) => x.rejected)) {
      const id = JSON.parse(c.value.toString()).id as string;
      const rejected = events.filter((e) => e.eventId === id && e.status === 'REJECTED');
      expect(rejected.length, c.name).toBeGreaterThan(0);
      expect(rejected[0]).toMatchObject({ reasonCode: c.rejected, terminal: true, stage: 'ingest', tenant: 'acme' });
    }
    const schemaViolation = events.find((e) => e.eventId === 'sv')!;
    expect(schemaViolation).toMatchObject({ recipient: 'ada', notificationId: notificationId('acme', 'sv', 'ada', '') });
  });

  it('dead-letters the original record: its key\'s bytes (null stays null) and its headers beside Herald\'s', async () => {
    const before = dlq.messages.length;
    const oddKey = Buffer.from([0x6b, 0xff, 0xfe]);
    await h.producer.send({ topic: T('events'), acks: -1, messages: [
      { key: null, value: 'not json', headers: { trace: 'abc', 'herald.error.code': 'forged' } },
      { key: oddKey, value: '{bad', headers: { trace: Buffer.from([0xff]) } },
      // sent back from dlq.v1: its old error headers must not mix with the new ones (this error names the value, not the stale field)
      { key: 'resent', value: Buffer.from([0, 0, 0, 0x7f, 0x7f, 1]), headers: { 'herald.error.field': 'stale', 'herald.source.offset': '999', baggage: 'b' } },
    ] });
    const dead = await eventually(() => dlq.messages.length >= before + 3 && dlq.messages.slice(before));
    const resent = dead.find((m) => m.key?.toString() === 'resent')!;
    expect(header(resent, 'herald.error.field')).toBe('value');
    expect(header(resent, 'herald.source.offset')).not.toBe('999');
    expect(header(resent, 'baggage')).toBe('b');
    const nullKeyed = dead.find((m) => header(m, 'trace') === 'abc')!;
    expect(nullKeyed.key).toBeNull();
    expect(header(nullKeyed, 'herald.error.code')).toBe('HRL_DECODE_FAILED');
    const odd = dead.find((m) => m.key !== null && m.key.equals(oddKey))!;
    expect(odd.headers?.trace).toEqual(Buffer.from([0xff]));
    expect(header(odd, 'herald.error.reason')).toMatch(/not valid JSON/);
  });

  it('processes an outside record that carries the journal\'s placeholder header: only a record with neither key nor value is a placeholder', async () => {
    const ev = { id: 'gap-header', tenant: 'acme', type: 'comment.created', recipients: ['ada'], data: { commentId: 'gh' } };
    await h.producer.send({ topic: T('events'), acks: -1, messages: [{ key: 'gap-header', value: JSON.stringify(ev), headers: { 'herald.journal.gap': '1' } }] });
    const req = await eventually(async () => (await decodeAll<NotificationRequest>(requests.messages)).find((r) => r.eventId === 'gap-header'));
    expect(req.recipient).toBe('ada');
  });

  it('reads batches compressed with snappy, lz4 and zstd, as librdkafka, Java and Confluent producers write them, and gzip', async () => {
    const { CompressionTypes } = await import('kafkajs');
    const codecs = { snappy: CompressionTypes.Snappy, lz4: CompressionTypes.LZ4, zstd: CompressionTypes.ZSTD, gzip: CompressionTypes.GZIP };
    for (const [name, compression] of Object.entries(codecs)) {
      // Several records a batch, repetitive enough that each codec really compresses them.
      const messages = Array.from({ length: 5 }, (_, i) => ({ key: `${name}-${i}`, value: JSON.stringify({ id: `${name}-${i}`, tenant: 'acme', type: 'comment.created', recipients: ['ada'], data: { commentId: `${name}-${i}`, excerpt: 'the same words again and again '.repeat(20) } }) }));
      await h.producer.send({ topic: T('events'), acks: -1, compression, messages });
    }
    const ids = Object.keys(codecs).flatMap((name) => Array.from({ length: 5 }, (_, i) => `${name}-${i}`));
    const seen = await eventually(async () => {
      const got = new Set((await decodeAll<NotificationRequest>(requests.messages)).map((r) => r.eventId));
      return ids.every((id) => got.has(id)) && got;
    }, 30_000);
    expect(ids.filter((id) => !seen.has(id))).toEqual([]);
    // and ingest's member never restarted over them
    const restarts = (await h.metrics.records.get()).values.find((v) => v.labels.stage === 'ingest' && v.labels.result === 'consumer_restart')?.value ?? 0;
    expect(restarts).toBe(0);
  });
});

describe('Avro from producers whose schema evolved', () => {
  it('reads an event written with a compatible evolved DomainEvent as Herald\'s schema, and dead-letters one whose schema it cannot read, naming why', async () => {
    // As a Confluent producer with auto-registration does: its schema, under the topic's subject.
    const base = JSON.parse((await import('node:fs')).readFileSync(new URL('../schemas/DomainEvent.avsc', import.meta.url), 'utf8')) as { fields: { name: string }[] };
    const evolved = { ...base, fields: [...base.fields.filter((f) => f.name !== 'traceId'), { name: 'priority', type: ['null', 'string'], default: null }] };
    const { id } = await h.serde.registry.register({ type: 'AVRO' as never, schema: JSON.stringify(evolved) }, { subject: `${T('events')}-value` });
    const incompatible = { ...base, fields: base.fields.map((f) => (f.name === 'recipients' ? { name: 'recipients', type: 'string' } : f)) };
    const { id: badId } = await h.serde.registry.register({ type: 'AVRO' as never, schema: JSON.stringify(incompatible) }, { subject: 'another-topic-value' });
    const event = { id: 'evolved-1', type: 'comment.created', tenant: 'acme', recipients: ['ada'], audience: null, data: '{"commentId":"ev"}', idempotencyKey: null, occurredAt: null, expiresAt: null, actor: 'linus', priority: 'high' };
    const dlqBefore = dlq.messages.length;
    await h.producer.send({ topic: T('events'), acks: -1, messages: [
      { key: 'evolved-1', value: await h.serde.registry.encode(id, event) },
      { key: 'evolved-2', value: await h.serde.registry.encode(badId, { ...event, id: 'evolved-2', recipients: 'ada' }) },
    ] });
    const req = await eventually(async () => (await decodeAll<NotificationRequest>(requests.messages)).find((r) => r.eventId === 'evolved-1'));
    expect(req).toMatchObject({ recipient: 'ada', tenant: 'acme' });
    const dead = await eventually(() => dlq.messages.slice(dlqBefore).find((m) => m.key?.toString() === 'evolved-2'));
    expect(header(dead, 'herald.error.code')).toBe('HRL_DECODE_FAILED');
    expect(header(dead, 'herald.error.reason')).toMatch(new RegExp(`schema id ${badId}\\): its schema cannot be read as DomainEvent: recipients: the writer's string cannot be read as array`));
    expect(header(dead, 'herald.error.field')).toBe('recipients');
    expect(dlq.messages.slice(dlqBefore).some((m) => m.key?.toString() === 'evolved-1')).toBe(false);
  });

  it('registers on a subject set to FULL_TRANSITIVE (as the README advises), where the registry refuses a producer\'s schema that drops a required field', async () => {
    const subject = `${T('events')}-value`;
    const headers = { 'content-type': 'application/vnd.schemaregistry.v1+json' };
    expect((await fetch(`${h.registryUrl}/config/${subject}`, { method: 'PUT', headers, body: JSON.stringify({ compatibility: 'FULL_TRANSITIVE' }) })).status).toBe(200);
    try {
      // What a start does: the registry client is given the subject's own level, not its default.
      const serde = new Serde(h.registryUrl);
      expect(await serde.register(T('events'), 'DomainEvent')).toBeGreaterThan(0);
      const base = JSON.parse((await import('node:fs')).readFileSync(new URL('../schemas/DomainEvent.avsc', import.meta.url), 'utf8')) as { fields: { name: string }[] };
      const withoutTenant = { ...base, fields: base.fields.filter((f) => f.name !== 'tenant') };
      const res = await fetch(`${h.registryUrl}/subjects/${subject}/versions`, { method: 'POST', headers, body: JSON.stringify({ schema: JSON.stringify(withoutTenant) }) });
      expect(res.status).toBe(409);
      expect(((await res.json()) as { error_code: number }).error_code).toBe(409);
    } finally {
      await fetch(`${h.registryUrl}/config/${subject}`, { method: 'PUT', headers, body: JSON.stringify({ compatibility: 'BACKWARD' }) });
    }
  });
});

describe('audiences', () => {
  it('fans a 10,000-member audience out to one request per member', async () => {
    const members = Array.from({ length: 10_000 }, (_, i) => `member-${i}`);
    const put = await api(h, 'PUT', '/v1/audiences/workspace-1/members', { add: members });
    expect(put.status).toBe(202);
    await api(h, 'PUT', '/v1/audiences/workspace-1/members', { remove: ['member-0'] });
    await eventually(async () => {
      const r = await api<{ members: string[] }>(h, 'GET', '/v1/audiences/workspace-1/members?limit=100000');
      return r.body.members.length === 9_999 && !r.body.members.includes('member-0');
    }, 30_000);
    // Read a page at a time: every member once, in order, and the last page says so.
    const paged: string[] = [];
    let after: string | null = null;
    let pages = 0;
    do {
      const page: { body: { members: string[]; next: string | null } } = await api<{ members: string[]; next: string | null }>(h, 'GET', `/v1/audiences/workspace-1/members?limit=1000${after ? `&after=${encodeURIComponent(after)}` : ''}`);
      paged.push(...page.body.members);
      after = page.body.next;
      pages++;
    } while (after !== null && pages < 20);
    expect(pages).toBe(10);
    expect(paged).toHaveLength(9_999);
    expect(new Set(paged).size).toBe(9_999);
    expect(paged).toEqual([...paged].sort());
    const res = await api<{ eventId: string; audience: string }>(h, 'POST', '/v1/events', { id: 'fanout', type: 'agent.task_completed', tenant: 'acme', audience: 'workspace-1', data: { taskId: 't', summary: 's' } });
    expect(res.status).toBe(202);
    expect(res.body.audience).toBe('workspace-1');
    const fanned = await eventually(async () => {
      const rs = (await decodeAll<NotificationRequest>(requests.messages)).filter((r) => r.eventId === 'fanout');
      return rs.length >= 9_999 && rs;
    }, 60_000);
    expect(fanned).toHaveLength(9_999);
    expect(new Set(fanned.map((r) => r.recipient)).size).toBe(9_999);
    expect(fanned.some((r) => r.recipient === 'member-0')).toBe(false);
    // Keyed by tenant and recipient: each request sits in its recipient's partition.
    const keys = requests.messages.filter((m) => m.key?.toString().startsWith('acme/member-'));
    expect(keys.length).toBe(9_999);
  });
});

describe('fuzzed input', () => {
  it('dead-letters every malformed record with a reason and never stops the partition', async () => {
    // A seeded generator, so a failure reproduces.
    let seed = 0x5eed;
    const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    const pick = <T>(xs: T[]) => xs[Math.floor(rand() * xs.length)]!;
    const randomValue = (depth = 0): unknown => pick<() => unknown>([
      () => null, () => rand() * 1e6, () => 'x'.repeat(Math.floor(rand() * 20)), () => rand() > 0.5,
      () => (depth > 2 ? [] : Array.from({ length: Math.floor(rand() * 3) }, () => randomValue(depth + 1))),
      () => (depth > 2 ? {} : { a: randomValue(depth + 1) }),
    ])();
    const bad: Buffer[] = [];
    for (let i = 0; i < 150; i++) {
      const kind = i % 5;
      if (kind === 0) bad.push(Buffer.from(Array.from({ length: 1 + Math.floor(rand() * 40) }, () => Math.floor(rand() * 256)).map((b, j) => (j === 0 && b === 0x7b ? 0x7c : b))));
      else if (kind === 1) bad.push(Buffer.from([0, 0, 0, 0, 1, ...Array.from({ length: Math.floor(rand() * 30) }, () => Math.floor(rand() * 256))]));
      else if (kind === 2) bad.push(Buffer.from(JSON.stringify(randomValue())));
      else if (kind === 3) bad.push(Buffer.from(JSON.stringify({ id: `fz${i}`, tenant: 'acme', type: 'comment.created', recipients: [pick<unknown>([null, 5, true, {}, [1]])], data: randomValue() })));
      else bad.push(Buffer.from(JSON.stringify({ id: `fz${i}`, tenant: pick<unknown>([null, 7, true, { a: 1 }, []]), type: pick(['comment.created', 7, null]), recipients: ['ada'] })));
    }
    const good = Array.from({ length: 50 }, (_, i) => Buffer.from(JSON.stringify({ id: `fuzz-good-${i}`, tenant: 'acme', type: 'comment.created', recipients: [`fz-user-${i}`], data: { commentId: `g${i}` } })));
    const messages = [...bad.map((value) => ({ value, good: false })), ...good.map((value) => ({ value, good: true }))].sort(() => rand() - 0.5);
    const dlqBefore = dlq.messages.length;
    await h.producer.send({ topic: T('events'), acks: -1, messages: messages.map((m, i) => ({ key: `fz-${i % 7}`, value: m.value })) });
    const reqs = await eventually(async () => {
      const rs = (await decodeAll<NotificationRequest>(requests.messages)).filter((r) => r.eventId.startsWith('fuzz-good-'));
      return rs.length >= 50 && rs;
    }, 30_000);
    expect(new Set(reqs.map((r) => r.eventId)).size).toBe(50);
    const dead = await eventually(() => dlq.messages.length - dlqBefore >= bad.length && dlq.messages.slice(dlqBefore), 30_000).catch((err: Error) => {
      const got = new Set(dlq.messages.slice(dlqBefore).map((m) => m.value!.toString('hex')));
      const missing = bad.filter((b) => !got.has(b.toString('hex'))).map((b) => b.toString('utf8').slice(0, 200));
      throw new Error(`${err.message}: not dead-lettered: ${JSON.stringify(missing)}`);
    });
    expect(dead).toHaveLength(bad.length);
    for (const m of dead) {
      expect(header(m, 'herald.error.code')).toMatch(/^HRL_(DECODE_FAILED|SCHEMA_VIOLATION|UNKNOWN_EVENT_TYPE|NO_RECIPIENTS|PAYLOAD_TOO_LARGE)$/);
      expect(header(m, 'herald.error.reason')!.length).toBeGreaterThan(5);
    }
  });
});
