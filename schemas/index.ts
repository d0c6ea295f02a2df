/**
 * Herald's Avro schemas: loading (references inlined so each registered schema is
 * self-contained), local validation with field-path errors, and the Confluent wire
 * format through @kafkajs/confluent-schema-registry.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import avro from 'avsc';
import { SchemaRegistry } from '@kafkajs/confluent-schema-registry';
import { HeraldError, isTransient } from '../errors.ts';

export const SCHEMA_NAMES = [
  'DomainEvent', 'UserProfile', 'UserPreferences', 'NotificationRequest',
  'EnrichedNotification', 'DeliveryTask', 'LifecycleEvent', 'AudienceMember',
] as const;
export type SchemaName = (typeof SCHEMA_NAMES)[number];

const dir = dirname(fileURLToPath(import.meta.url));
const NS = 'io.herald.v1.';

/** The .avsc text of a schema as stored in schemas/. */
export function rawSchema(name: SchemaName): Record<string, unknown> {
  return JSON.parse(readFileSync(join(dir, `${name}.avsc`), 'utf8')) as Record<string, unknown>;
}

const inlined = new Map<SchemaName, Record<string, unknown>>();

/** Inlines named references (`io.herald.v1.X`) so a schema stands alone, as the registry expects. */
export function selfContained(name: SchemaName, loader?: (n: SchemaName) => Record<string, unknown>): Record<string, unknown> {
  if (!loader) {
    let s = inlined.get(name);
    if (!s) inlined.set(name, (s = inline(name, rawSchema)));
    return s;
  }
  return inline(name, loader);
}

function inline(name: SchemaName, loader: (n: SchemaName) => Record<string, unknown>): Record<string, unknown> {
  const defined = new Set<string>();
  const walk = (node: unknown): unknown => {
    if (typeof node === 'string' && node.startsWith(NS)) {
      const short = node.slice(NS.length) as SchemaName;
      if (defined.has(short) || !SCHEMA_NAMES.includes(short)) return node;
      return walk(loader(short));
    }
    if (Array.isArray(node)) return node.map(walk);
    if (node && typeof node === 'object') {
      const obj = node as Record<string, unknown>;
      if (obj.type === 'record' && typeof obj.name === 'string') defined.add(obj.name);
      return Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, k === 'doc' ? v : walk(v)]));
    }
    return node;
  };
  return walk(loader(name)) as Record<string, unknown>;
}

const types = new Map<SchemaName, avro.Type>();
export function avroType(name: SchemaName): avro.Type {
  let t = types.get(name);
  if (!t) {
    t = avro.Type.forSchema(selfContained(name) as avro.Schema);
    types.set(name, t);
  }
  return t;
}

/** Fills absent fields that have defaults (JSON input may omit them), recursively for records. */
function withDefaults(schema: Record<string, unknown>, value: unknown): unknown {
  if (schema.type !== 'record' || !value || typeof value !== 'object' || Array.isArray(value)) return value;
  const out: Record<string, unknown> = { ...(value as Record<string, unknown>) };
  for (const f of schema.fields as { name: string; type: unknown; default?: unknown }[]) {
    if (out[f.name] === undefined && 'default' in f) out[f.name] = structuredClone(f.default);
    else if (f.type && typeof f.type === 'object' && !Array.isArray(f.type)) out[f.name] = withDefaults(f.type as Record<string, unknown>, out[f.name]);
  }
  return out;
}

function describeType(t: avro.Type): string {
  const name = t.typeName;
  if (name === 'union:unwrapped' || name === 'union:wrapped') {
    return (t as unknown as { types: avro.Type[] }).types.map(describeType).join(' or ');
  }
  if (name === 'enum') return `one of ${(t as unknown as { symbols: string[] }).symbols.join(', ')}`;
  if (name === 'record') return `an object (${t.name ?? 'record'})`;
  if (name === 'array') return 'an array';
  if (name === 'map') return 'an object of values';
  if (name === 'long' || name === 'int') return `an integer (${name})`;
  return name === 'null' ? 'null' : `a ${name}`;
}

function formatPath(path: string[]): string {
  return path.map((p, i) => (/^\d+$/.test(p) ? `[${p}]` : i === 0 ? p : `.${p}`)).join('') || '(root)';
}

/**
 * Validates a value against a schema and returns it with defaults filled in.
 * Throws HRL_SCHEMA_VIOLATION naming the first bad field and what was expected.
 */
export function validate<T>(name: SchemaName, value: unknown): T {
  if (!value || typeof value !== 'object' || Array.isArray(value)) {
    throw new HeraldError('HRL_SCHEMA_VIOLATION', `(root): expected an object (${name}), got ${value === null ? 'null' : Array.isArray(value) ? 'an array' : typeof value}`, { field: '(root)' });
  }
  const type = avroType(name);
  const filled = withDefaults(selfContained(name), value);
  const problems: string[] = [];
  let firstField = '';
  type.isValid(filled, {
    errorHook(path: string[], any: unknown, t: avro.Type) {
      // Report the deepest mismatch only: the parent record is invalid because of it.
      if (t.typeName === 'record' && problems.length > 0) return;
      const field = formatPath(path);
      if (!firstField) firstField = field;
      const got = any === undefined ? 'nothing (field missing)' : JSON.stringify(any)?.slice(0, 60);
      problems.push(`${field}: expected ${describeType(t)}, got ${got}`);
    },
  });
  if (problems.length) {
    throw new HeraldError('HRL_SCHEMA_VIOLATION', problems.slice(0, 5).join('; '), { field: firstField });
  }
  const known = new Set((selfContained(name).fields as { name: string }[]).map((f) => f.name));
  const extra = Object.keys(value).filter((k) => !known.has(k));
  if (extra.length) {
    throw new HeraldError('HRL_SCHEMA_VIOLATION', `${extra[0]}: unknown field; ${name} has ${[...known].join(', ')}`, { field: extra[0] });
  }
  return filled as T;
}

/**
 * Encodes and decodes topic values in the Confluent wire format (magic byte, schema id,
 * Avro body). `register` must run once at start-up for every topic the process writes.
 */
/** Where values up to 64 KB are serialised before the copy each record keeps. */
const scratch = Buffer.allocUnsafe(64 * 1024);

/**
 * The Confluent wire format of `value`: magic byte 0, the schema id (4 bytes, big-endian),
 * the Avro body. The same bytes as the registry client's `encode`, which serialises into a
 * zero-filled buffer of its own and then concatenates three: one allocation here, not four
 * (those were ~3 % of a stage process's CPU, and garbage to collect).
 */
function wireFormat(topic: string, id: number, type: avro.Type, value: unknown): Buffer {
  const into = (buf: Buffer): number => {
    try {
      return type.encode(value, buf, 5);
    } catch (err) {
      const paths: string[] = [];
      type.isValid(value, { errorHook: (path) => paths.push(path.join('.') || '(the value)') });
      throw new HeraldError('HRL_PROCESSING_FAILED', `a ${topic} value does not match its schema${paths.length ? ` at ${paths.join(', ')}` : ''}: ${(err as Error).message}`, { cause: err });
    }
  };
  const end = into(scratch);
  let out: Buffer;
  if (end >= 0) {
    out = Buffer.allocUnsafe(end);
    scratch.copy(out, 5, 5, end);
  } else {
    // Larger than the shared buffer (avsc answers how many bytes were missing): a buffer of
    // its own, so one large value does not keep a large buffer alive.
    out = Buffer.allocUnsafe(scratch.length - end);
    into(out);
  }
  out[0] = 0;
  out.writeInt32BE(id, 1);
  return out;
}

export class Serde {
  readonly registry: SchemaRegistry;
  private readonly writers = new Map<string, { id: number; type: avro.Type }>();
  /** Avro types by schema id for decoding; null for a schema of another kind. */
  private readonly readers = new Map<number, avro.Type | null>();
  /** By writer schema id and reader schema: the type that decodes, and the resolver when they differ. */
  private readonly resolved = new Map<string, { type: avro.Type; resolver?: avro.Resolver } | Error>();

  constructor(registryUrl: string) {
    this.registry = new SchemaRegistry({ host: registryUrl }, { AVRO: {} } as never);
  }

  /**
   * Registers the schema under `<topic>-value` and remembers its id. A new subject gets
   * BACKWARD compatibility (the registry client's default); a subject someone set to another
   * level (FULL_TRANSITIVE on events.v1, as the README advises) keeps it: the client refuses
   * to register on a subject whose level is not the one it is given, so it is given that one.
   */
  async register(topic: string, name: SchemaName): Promise<number> {
    const subject = `${topic}-value`;
    const { id } = await this.registry.register(
      { type: 'AVRO' as never, schema: JSON.stringify(selfContained(name)) },
      { subject, compatibility: ((await this.subjectLevel(subject)) ?? 'BACKWARD') as never },
    );
    // The registry client's own Avro type for the id (its options, its cache).
    this.writers.set(topic, { id, type: (await this.registry.getSchema(id)) as unknown as avro.Type });
    return id;
  }

  /**
   * The subject's own compatibility level, or null when it has none (the registry's 404) or
   * it cannot be read: then the client's default is given, as before. Asked through the
   * registry client, so a URL with credentials (`https://key:secret@host`) and its auth work.
   */
  private async subjectLevel(subject: string): Promise<string | null> {
    const api = (this.registry as unknown as { api: { Subject: { config: (a: { subject: string }) => Promise<{ data: () => unknown }> } } }).api;
    try {
      const level = ((await api.Subject.config({ subject })).data() as { compatibilityLevel?: unknown }).compatibilityLevel;
      return typeof level === 'string' && level ? level.toUpperCase() : null;
    } catch {
      return null;
    }
  }

  async encode(topic: string, value: unknown): Promise<Buffer> {
    const writer = this.writers.get(topic);
    if (writer === undefined) throw new HeraldError('HRL_CONFIG_INVALID', `no schema registered for topic ${topic}`);
    return wireFormat(topic, writer.id, writer.type, value);
  }

  /**
   * Decodes a wire-format buffer; throws HRL_DECODE_FAILED with the reason. With `as`, the
   * value is read as Herald's schema `as` (Avro schema resolution, as Confluent's
   * deserialisers do with a reader schema): a producer whose schema evolved compatibly (a
   * field added, an optional one dropped) is read with the writer's schema and resolved to
   * Herald's, fields Herald does not know are skipped and absent ones take their defaults. A
   * writer schema that cannot be read as `as` fails, naming both.
   */
  async decode<T>(buf: Buffer, as?: SchemaName): Promise<T> {
    if (buf.length < 5 || buf[0] !== 0) {
      throw new HeraldError('HRL_DECODE_FAILED', `expected Confluent wire format (magic byte 0 and a 4-byte schema id), got ${buf.length} bytes starting 0x${buf.subarray(0, 1).toString('hex')}`);
    }
    try {
      // The writer's Avro type for the id, from the registry client (its cache, its options),
      // read in place after the 5-byte header. The client's own decode takes the header apart
      // into three slices and an object, and awaits its cache, for every record.
      const id = buf.readInt32BE(1);
      let reader = this.readers.get(id);
      if (reader === undefined) {
        const schema = (await this.registry.getSchema(id)) as unknown as Partial<avro.Type>;
        // A schema of another kind (JSON Schema, Protobuf) goes through the client.
        reader = typeof schema.decode === 'function' && avro.Type.isType(schema) ? (schema as avro.Type) : null;
        this.readers.set(id, reader);
      }
      if (reader === null) return (await this.registry.decode(buf)) as T;
      let decoder: { type: avro.Type; resolver?: avro.Resolver } = { type: reader };
      if (as !== undefined) {
        const key = `${id}\u0000${as}`;
        let r = this.resolved.get(key);
        if (r === undefined) {
          const wanted = avroType(as);
          // Herald's own writes (the same schema): read as written, no resolution.
          if (wanted.equals(reader)) r = { type: reader };
          else {
            try {
              // Records match by name without namespace, as Avro's compatibility rules and
              // Confluent's registry do (a producer's com.acme.DomainEvent is one).
              r = { type: wanted, resolver: wanted.createResolver(reader, { ignoreNamespaces: true } as never) };
            } catch (err) {
              const at = unreadableField(wanted, reader);
              // A record of another name is most likely another kind of record on the wrong topic: say so first.
              const writerName = reader.name?.split('.').pop();
              const other = writerName && writerName !== as ? ` (the writer's schema is a record named ${writerName}, not ${as}: is it on the right topic?)` : '';
              r = Object.assign(new Error(`its schema cannot be read as ${as}${other}: ${at ? `${at.field}: ${at.why}` : (err as Error).message}`), at ? { field: at.field } : {});
            }
          }
          this.resolved.set(key, r);
        }
        if (r instanceof Error) throw r;
        decoder = r;
      }
      const { value, offset } = decoder.type.decode(buf, 5, decoder.resolver);
      // As avsc's fromBuffer: the body must end where the buffer does. (Confluent's Java
      // deserialiser ignores bytes past the body; they mean the record was not written with
      // the schema its id names, and what was read from it would be wrong.)
      if (offset < 0) throw new Error(`truncated buffer: the ${buf.length - 5}-byte body ends before the schema's fields do`);
      if (offset < buf.length) throw new Error(`trailing data: ${buf.length - offset} bytes past the end of the body the schema reads (was it written with this schema id?)`);
      return value as T;
    } catch (err) {
      // An unreachable registry is not the record's fault: retry the batch instead of dead-lettering.
      const retriable = isTransient(err);
      const field = (err as { field?: unknown }).field;
      const id = buf.readInt32BE(1);
      // The registry client's words for a 404 ("Confluent_Schema_Registry - Schema not found").
      const why = !retriable && ((err as { status?: number }).status === 404 || /schema\b.*\bnot found/i.test((err as Error).message)) ? `the registry has no schema ${id}: the record was written against another registry, or its first 5 bytes are not Confluent's wire format header` : (err as Error).message;
      throw new HeraldError('HRL_DECODE_FAILED', `Avro decode failed (schema id ${id}): ${why}`, { cause: err, retriable, field: typeof field === 'string' ? field : 'value' });
    }
  }
}

/**
 * The first field of `reader` that a record written with `writer` cannot be read into (by
 * Avro schema resolution), with why, as a path (`data.count`): avsc's own message names the
 * two types but not where they are.
 */
export function unreadableField(reader: avro.Type, writer: avro.Type, path = ''): { field: string; why: string } | null {
  if (!(reader instanceof avro.types.RecordType) || !(writer instanceof avro.types.RecordType)) return null;
  for (const f of reader.fields) {
    const names = [f.name, ...f.aliases];
    const w = writer.fields.find((x) => names.includes(x.name));
    const field = path ? `${path}.${f.name}` : f.name;
    if (!w) {
      if (f.defaultValue() === undefined) return { field, why: `missing from the writer's schema, and the reader's has no default for it` };
      continue;
    }
    try {
      f.type.createResolver(w.type, { ignoreNamespaces: true } as never);
    } catch (err) {
      return unreadableField(f.type, w.type, field) ?? { field, why: `the writer's ${typeName(w.type)} cannot be read as ${typeName(f.type)} (${(err as Error).message})` };
    }
  }
  return null;
}

const typeName = (t: avro.Type): string => t.typeName === 'union' ? `union [${(t as unknown as { types: avro.Type[] }).types.map(typeName).join(', ')}]` : (t.name ?? t.typeName);

