/**
 * Decode and encode per topic: Avro in Confluent wire format everywhere; events.v1 also
 * takes JSON validated against the same Avro schema (with `data` given as an object).
 */
import type { HeraldConfig } from '../config.ts';
import { HeraldError } from '../errors.ts';
import { type Serde, validate } from '../schemas/index.ts';
import type { DomainEvent } from '../schemas/types.ts';
import { TOPICS, type TopicKey } from '../topology.ts';

export type { DomainEvent };


/** Ids become Kafka keys and store keys: bounded, so one request cannot stall the partitioner or bloat a store. */
export const MAX_ID_LENGTH = 256;
/** Timestamps Herald takes: 2000-01-01 up to 9999-12-31 (epoch ms). */
const MIN_TIME = 946_684_800_000;
const MAX_TIME = 253_402_300_799_999;

/** A value shown in an error message: never the whole of a large one. */
export const shown = (v: unknown, max = 80): string => {
  // (JSON.stringify writes Infinity, which 1e400 parses to, as null.)
  const text = typeof v === 'number' && !Number.isFinite(v) ? String(v) : (JSON.stringify(v) ?? String(v));
  return text.length > max ? `${text.slice(0, max)}… (${text.length} characters)` : text;
};

const ISO_WITH_OFFSET = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})$/;

/** Turns the JSON form of a domain event (data as an object) into its Avro form and validates it. */
const parsedOrNull = (text: string): unknown => {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return null;
  }
};

/** How deep an event's JSON may nest (the event itself is level 0, its `data` object level 1), on every path in. */
export const MAX_NESTING = 32;

/** Whether `v` nests objects or arrays deeper than `limit` levels (iterative: a 100,000-level value is answered, not a stack overflow). */
export function nestedDeeperThan(v: unknown, limit: number): boolean {
  const stack: [unknown, number][] = [[v, 0]];
  while (stack.length) {
    const [x, d] = stack.pop()!;
    if (d > limit) return true;
    if (x && typeof x === 'object') for (const c of Object.values(x)) if (c && typeof c === 'object') stack.push([c, d + 1]);
  }
  return false;
}

/** Which top-level field of `v` nests deeper than MAX_NESTING (or `body`), as a refusal; null when none does. */
function nestingRefusal(v: unknown): HeraldError | null {
  if (!nestedDeeperThan(v, MAX_NESTING)) return null;
  const field = v && typeof v === 'object' && !Array.isArray(v) ? Object.entries(v).find(([, x]) => nestedDeeperThan(x, MAX_NESTING - 1))?.[0] : undefined;
  const name = field === undefined ? 'body' : field.toWellFormed();
  return new HeraldError('HRL_SCHEMA_VIOLATION', `${name}: nested deeper than ${MAX_NESTING} levels`, { field: name });
}

/**
 * Where the first string in `v` that is not well-formed Unicode is (a lone surrogate, such
 * as JSON's "\ud800" alone: no UTF-8 encodes it), and which code unit; null when there is none.
 */
export function illFormedText(v: unknown, path = ''): string | null {
  if (typeof v === 'string') {
    if (v.isWellFormed()) return null;
    const at = [...v].findIndex((c) => !c.isWellFormed());
    const unit = [...v][at]!.charCodeAt(0).toString(16).toUpperCase();
    return `${path || '(value)'}: expected well-formed Unicode text, got a lone surrogate (U+${unit}) at character ${at + 1}`;
  }
  if (Array.isArray(v)) {
    for (const [i, x] of v.entries()) {
      const bad = illFormedText(x, `${path}[${i}]`);
      if (bad) return bad;
    }
  } else if (v && typeof v === 'object') {
    for (const [k, x] of Object.entries(v)) {
      const at = path ? `${path}.${k.toWellFormed()}` : k.toWellFormed();
      if (!k.isWellFormed()) return `${at}: expected a well-formed Unicode field name, got a lone surrogate`;
      const bad = illFormedText(x, at);
      if (bad) return bad;
    }
  }
  return null;
}

/**
 * Why `v` cannot be an id (of a user, an audience, a tenant, an event), or null: ids are
 * keys, path segments, log fields and lines in a terminal, so they are never blank and
 * carry no control characters (NUL, line breaks, escapes) and no bidirectional controls
 * (U+202E shows "txt.exe" as "exe.txt").
 */
export function idRefusal(v: string): string | null {
  if (v.trim() === '') return v === '' ? 'expected a non-empty id' : 'expected an id, got only white space';
  const bad = /[\p{Cc}\u202A-\u202E\u2066-\u2069\u200E\u200F\u061C]/u.exec(v);
  if (bad) {
    const code = `U+${bad[0].codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}`;
    return /\p{Cc}/u.test(bad[0]) ? `expected no control characters, got ${code} at character ${[...v.slice(0, bad.index)].length + 1}` : `expected no bidirectional control characters, got ${code} at character ${[...v.slice(0, bad.index)].length + 1}`;
  }
  return null;
}

export function domainEventFromJson(input: unknown): DomainEvent {
  // As deep as the HTTP API takes, whichever way the event came (and `data` given as JSON
  // text counts as the object it is).
  const dataText = input && typeof input === 'object' && typeof (input as { data?: unknown }).data === 'string' ? parsedOrNull((input as { data: string }).data) : null;
  const deep = nestingRefusal(input) ?? (nestedDeeperThan(dataText, MAX_NESTING - 1) ? new HeraldError('HRL_SCHEMA_VIOLATION', `data: nested deeper than ${MAX_NESTING} levels`, { field: 'data' }) : null);
  if (deep) throw deep;
  // Text that no UTF-8 can carry is refused, not altered: Avro would write each lone
  // surrogate as replacement characters while `data` kept it escaped.
  const bad = illFormedText(input) ?? (dataText !== null ? illFormedText(dataText, 'data') : null);
  if (bad) throw new HeraldError('HRL_SCHEMA_VIOLATION', bad, { field: bad.slice(0, bad.indexOf(':')) });
  if (input && typeof input === 'object' && !Array.isArray(input)) {
    const obj = { ...(input as Record<string, unknown>) };
    if (obj.data !== undefined && typeof obj.data === 'object' && obj.data !== null && !Array.isArray(obj.data)) obj.data = JSON.stringify(obj.data);
    else if (typeof obj.data === 'string') {
      // already JSON text: must be an object
      try {
        const parsed: unknown = JSON.parse(obj.data);
        if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
      } catch {
        throw new HeraldError('HRL_SCHEMA_VIOLATION', 'data: expected a JSON object (or its JSON text)', { field: 'data' });
      }
    }
    if (obj.data !== undefined && obj.data !== null && typeof obj.data !== 'string' && (typeof obj.data !== 'object' || Array.isArray(obj.data))) {
      throw new HeraldError('HRL_SCHEMA_VIOLATION', `data: expected a JSON object (or its JSON text), got ${shown(obj.data)}`, { field: 'data' });
    }
    for (const k of ['occurredAt', 'expiresAt'] as const) {
      const v = obj[k];
      const expected = `${k}: expected a time between 2000-01-01 and 9999-12-31, as epoch milliseconds or an ISO-8601 date-time with offset (e.g. 2026-01-02T03:04:05Z)`;
      if (typeof v === 'string') {
        // Only ISO-8601 with an explicit offset: a zone-less date would depend on the server's time zone.
        const t = ISO_WITH_OFFSET.test(v) ? Date.parse(v) : Number.NaN;
        // The range is said of what was sent, not of the number it became.
        if (Number.isNaN(t) || t < MIN_TIME || t > MAX_TIME) throw new HeraldError('HRL_SCHEMA_VIOLATION', `${expected}, got ${shown(v)}`, { field: k });
        obj[k] = t;
      } else if (typeof v === 'number' && (!Number.isInteger(v) || v < MIN_TIME || v > MAX_TIME)) {
        throw new HeraldError('HRL_SCHEMA_VIOLATION', `${expected}, got ${shown(v)}`, { field: k });
      } else if (v !== undefined && v !== null && typeof v !== 'number') {
        throw new HeraldError('HRL_SCHEMA_VIOLATION', `${expected}, got ${shown(v)}`, { field: k });
      }
    }
    input = obj;
  }
  const ev = validate<DomainEvent>('DomainEvent', input);
  const empty = (['id', 'type', 'tenant'] as const).find((k) => ev[k].trim() === '');
  if (empty) throw new HeraldError('HRL_SCHEMA_VIOLATION', `${empty}: expected a non-empty string`, { field: empty });
  const ids: [string, string | null][] = [['id', ev.id], ['type', ev.type], ['tenant', ev.tenant], ['audience', ev.audience], ['idempotencyKey', ev.idempotencyKey], ['actor', ev.actor], ['traceId', ev.traceId], ...ev.recipients.map((r, i): [string, string] => [`recipients[${i}]`, r])];
  const long = ids.find(([, v]) => v !== null && v.length > MAX_ID_LENGTH);
  if (long) throw new HeraldError('HRL_SCHEMA_VIOLATION', `${long[0]}: expected at most ${MAX_ID_LENGTH} characters, got ${long[1]!.length}`, { field: long[0] });
  // (An actor or trace id may be free text, but never blank-free of meaning or a control sequence.)
  for (const [field, v] of ids) {
    // (Recipients are ingest's to refuse: it records the others' notifications REJECTED.)
    if (v === null || field.startsWith('recipients[') || ((field === 'actor' || field === 'traceId') && v === '')) continue;
    const why = idRefusal(v);
    if (why) throw new HeraldError('HRL_SCHEMA_VIOLATION', `${field}: ${why}`, { field });
  }
  for (const k of ['occurredAt', 'expiresAt'] as const) {
    const t = ev[k];
    if (t !== null && (!Number.isInteger(t) || t < MIN_TIME || t > MAX_TIME)) {
      throw new HeraldError('HRL_SCHEMA_VIOLATION', `${k}: expected a time between 2000-01-01 and 9999-12-31 in epoch milliseconds, got ${t}`, { field: k });
    }
  }
  return ev;
}

export class Codec {
  private readonly serde: Serde;
  private readonly config: HeraldConfig;

  constructor(serde: Serde, config: HeraldConfig) {
    this.serde = serde;
    this.config = config;
  }

  async decode(topicKey: TopicKey, buf: Buffer | null): Promise<unknown> {
    // Stage inputs are streams of records, never tables: a tombstone is bad input.
    if (buf === null) throw new HeraldError('HRL_TOMBSTONE', `value: expected a ${TOPICS[topicKey].schema ?? 'record'}, got a tombstone (null value); ${TOPICS[topicKey].name} is a stream, not a table`, { field: 'value' });
    if (topicKey === 'events') {
      if (buf.length > this.config.maxPayloadBytes) {
        throw new HeraldError('HRL_PAYLOAD_TOO_LARGE', `value: the record is ${buf.length} bytes; the limit is ${this.config.maxPayloadBytes} (HERALD_MAX_PAYLOAD_BYTES)`, { field: 'value' });
      }
      if (buf[0] === 0) return domainEventFromJson(await this.serde.decode(buf, 'DomainEvent'));
      return domainEventFromJson(parseJson(buf));
    }
    const schema = TOPICS[topicKey].schema;
    if (schema === null) return buf;
    return this.serde.decode(buf, schema);
  }

  async encode(topicKey: TopicKey, topic: string, value: unknown): Promise<Buffer | null> {
    if (value === null) return null;
    if (TOPICS[topicKey].schema === null) return Buffer.isBuffer(value) ? value : Buffer.from(JSON.stringify(value));
    return this.serde.encode(topic, value);
  }
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });
/** Bytes that can begin a JSON text (after optional whitespace). */
const JSON_START = new Set([...'{["-0123456789tfn \t\r\n'].map((c) => c.charCodeAt(0)));

/**
 * An events.v1 value that is not Avro: JSON, which is UTF-8 (RFC 8259 §8.1), so invalid
 * bytes are refused rather than replaced; a value that is neither says what it starts with
 * (in hex: a control byte is never copied into the error header).
 */
export function parseJson(buf: Buffer): unknown {
  if (!JSON_START.has(buf[0]!)) {
    throw new HeraldError('HRL_DECODE_FAILED', `value: expected JSON (an object) or Avro in Confluent wire format (magic byte 0x00 and a 4-byte schema id), got ${buf.length} bytes starting 0x${buf.subarray(0, 4).toString('hex')}: unknown magic byte`, { field: 'value' });
  }
  let text: string;
  try {
    text = UTF8.decode(buf);
  } catch {
    const at = firstInvalidUtf8(buf);
    throw new HeraldError('HRL_DECODE_FAILED', `value: JSON must be UTF-8 (RFC 8259), and byte ${at} (0x${buf.subarray(at, at + 1).toString('hex')}) is not valid UTF-8 there`, { field: 'value' });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    // eslint-disable-next-line no-control-regex
    throw new HeraldError('HRL_DECODE_FAILED', `value: not valid JSON: ${(err as Error).message.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)}`, { field: 'value' });
  }
}

/** The offset of the first byte that makes `buf` invalid UTF-8. */
export function firstInvalidUtf8(buf: Buffer): number {
  let lo = 0;
  let hi = buf.length;
  // The longest valid prefix, by halving (a prefix cut inside a character is invalid too, so allow 3 bytes of slack).
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    let ok = false;
    for (let cut = mid; cut <= Math.min(buf.length, mid + 3) && !ok; cut++) {
      try { UTF8.decode(buf.subarray(0, cut)); ok = true; } catch { /* not yet */ }
    }
    if (ok) lo = mid; else hi = mid - 1;
  }
  return lo;
}
