/**
 * A development stand-in for the Confluent Schema Registry: the subset of its REST API
 * that Herald, @kafkajs/confluent-schema-registry and Confluent's clients and tools use
 * (register, lookup by id and subject, versions, per-subject config, compatibility with
 * `?verbose=true`, soft and permanent deletes, `/mode`), with Confluent's error codes. State lives in memory, like the
 * embedded broker's topics. Compatibility checks use avsc's schema resolution:
 * BACKWARD = the new schema can read data written with the previous one.
 * Not for production: point SCHEMA_REGISTRY_URL at a real registry there.
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import avro from 'avsc';

const LEVELS = ['NONE', 'BACKWARD', 'BACKWARD_TRANSITIVE', 'FORWARD', 'FORWARD_TRANSITIVE', 'FULL', 'FULL_TRANSITIVE'] as const;
type Level = (typeof LEVELS)[number];
/** Confluent's content type: every JSON answer carries it (clients accept it as JSON). */
const CONTENT_TYPE = 'application/vnd.schemaregistry.v1+json';
interface Version { id: number; version: number; schema: string }

/** Why `reader` cannot read what `writer` wrote (avsc's resolution error), or null if it can. */
function cannotRead(reader: string, writer: string): string | null {
  try {
    avro.Type.forSchema(JSON.parse(reader)).createResolver(avro.Type.forSchema(JSON.parse(writer)), { ignoreNamespaces: true } as never);
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

/**
 * Why `candidate` may not follow `history` (oldest first) under `level`: one message per
 * failed check (empty when compatible), as Confluent's `?verbose=true` lists them.
 */
export function incompatibilities(level: Level, candidate: string, history: readonly (string | { schema: string; version: number })[]): string[] {
  if (level === 'NONE' || history.length === 0) return [];
  const all = history.map((h, i) => (typeof h === 'string' ? { schema: h, version: i + 1 } : h));
  const against = level.endsWith('TRANSITIVE') ? all : all.slice(-1);
  const out: string[] = [];
  for (const { schema: old, version } of against) {
    if (!level.startsWith('FORWARD')) {
      const why = cannotRead(candidate, old);
      if (why) out.push(`${level}: the new schema cannot read data written with version ${version}: ${why}`);
    }
    if (!level.startsWith('BACKWARD')) {
      const why = cannotRead(old, candidate);
      if (why) out.push(`${level}: version ${version} cannot read data written with the new schema: ${why}`);
    }
  }
  return out;
}

/** Whether `candidate` may follow `history` (oldest first) under `level`. */
export function isCompatible(level: Level, candidate: string, history: string[]): boolean {
  return incompatibilities(level, candidate, history).length === 0;
}

/** Sorts object keys at every level; arrays (field order, union branches) keep their order. */
function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]));
  return v;
}

/**
 * The form schemas are compared in, as a real registry compares parsed schemas rather than
 * their text: whitespace and the order of JSON keys do not make a new version; field order,
 * defaults, docs and logical types do.
 */
export function canonical(schema: string): string {
  try {
    return JSON.stringify(sortKeys(JSON.parse(schema)));
  } catch {
    return schema;
  }
}

export class EmbeddedSchemaRegistry {
  private readonly app: FastifyInstance;
  private readonly byId = new Map<number, string>();
  private readonly idBySchema = new Map<string, number>();
  private readonly subjects = new Map<string, Version[]>();
  /** Soft-deleted versions per subject (Confluent's DELETE without `permanent`): hidden, their ids still readable, their numbers not reused. */
  private readonly deleted = new Map<string, Version[]>();
  private readonly config = new Map<string, Level>();
  private globalLevel: Level = 'BACKWARD';
  url = '';
  private readonly file: string | null;

  /** With `file`, the registry's schemas, ids and settings are kept there and survive restarts. */
  constructor(file: string | null = null) {
    this.file = file;
    if (file && existsSync(file)) {
      const saved = JSON.parse(readFileSync(file, 'utf8')) as { schemas: [number, string][]; subjects: [string, Version[]][]; deleted?: [string, Version[]][]; config: [string, Level][]; globalLevel: Level };
      for (const [id, schema] of saved.schemas) {
        this.byId.set(id, schema);
        this.idBySchema.set(canonical(schema), id);
      }
      for (const [s, versions] of saved.subjects) this.subjects.set(s, versions);
      for (const [s, versions] of saved.deleted ?? []) this.deleted.set(s, versions);
      for (const [s, level] of saved.config) this.config.set(s, level);
      this.globalLevel = saved.globalLevel;
    }
    this.app = Fastify({ logger: false });
    // JSON, and application/octet-stream, which Confluent's registry also takes (some clients send it).
    this.app.addContentTypeParser(/^application\/(.*json|octet-stream)$/, { parseAs: 'string' }, (_req, body, done) => {
      try {
        done(null, body === '' ? {} : JSON.parse(body as string));
      } catch (err) {
        done(Object.assign(new Error(`Unexpected character in the request body: ${(err as Error).message}`), { statusCode: 400 }), undefined);
      }
    });
    // Confluent's shape for a path it does not serve, not Fastify's.
    this.app.setNotFoundHandler((_req, reply) => reply.code(404).send({ error_code: 404, message: 'HTTP 404 Not Found' }));
    // A body it cannot read (malformed JSON, a content type it does not take) in Confluent's
    // shape too: {error_code, message}, the HTTP status as the code.
    this.app.removeContentTypeParser('text/plain');
    this.app.setErrorHandler((err: Error & { statusCode?: number }, _req, reply) => {
      const status = err.statusCode && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 500;
      const message = status === 415 ? 'HTTP 415 Unsupported Media Type' : status === 500 ? 'Internal Server Error' : err.message;
      return reply.code(status).send({ error_code: status === 500 ? 50001 : status, message });
    });
    this.app.addHook('onSend', async (_req, reply, payload) => {
      if (String(reply.getHeader('content-type') ?? '').startsWith('application/json')) reply.header('content-type', CONTENT_TYPE);
      return payload;
    });
    this.routes();
  }

  /** Writes the state atomically (a crash leaves the previous file). */
  private save(): void {
    if (!this.file) return;
    const tmp = `${this.file}.tmp`;
    writeFileSync(tmp, JSON.stringify({ schemas: [...this.byId], subjects: [...this.subjects], deleted: [...this.deleted], config: [...this.config], globalLevel: this.globalLevel }));
    renameSync(tmp, this.file);
  }

  private notFound(reply: FastifyReply, code: number, message: string) {
    return reply.code(404).send({ error_code: code, message });
  }

  /** Confluent's answers for a missing subject (40401), a missing version (40402) and a malformed version (42202). */
  private missing(reply: FastifyReply, subject: string, v: string) {
    if (v !== 'latest' && v !== '-1' && !/^[1-9]\d*$/.test(v)) {
      return reply.code(422).send({ error_code: 42202, message: 'The specified version is not a valid version id. Allowed values are between [1, 2^31-1] and the string "latest"' });
    }
    if (!this.subjects.has(subject)) return this.notFound(reply, 40401, `Subject '${subject}' not found.`);
    if (!this.version(subject, v)) return this.notFound(reply, 40402, `Version ${v} not found.`);
    return null;
  }

  /** Confluent's answer for a schema that does not parse (42201). */
  private invalid(reply: FastifyReply, schema: unknown) {
    try {
      avro.Type.forSchema(JSON.parse(String(schema)));
      return null;
    } catch (err) {
      return reply.code(422).send({ error_code: 42201, message: `Invalid schema: ${(err as Error).message}` });
    }
  }

  private version(subject: string, v: string): Version | undefined {
    const list = this.subjects.get(subject) ?? [];
    return v === 'latest' || v === '-1' ? list.at(-1) : list.find((x) => x.version === Number(v));
  }

  private routes() {
    const app = this.app;
    app.get<{ Querystring: { deleted?: string; subjectPrefix?: string } }>('/subjects', async (req) => {
      const all = req.query.deleted === 'true' ? [...new Set([...this.subjects.keys(), ...this.deleted.keys()])] : [...this.subjects.keys()];
      return all.filter((s) => !req.query.subjectPrefix || s.startsWith(req.query.subjectPrefix));
    });
    app.get('/schemas/types', async () => ['AVRO']);
    app.get<{ Params: { id: string } }>('/schemas/ids/:id', async (req, reply) => {
      const schema = this.byId.get(Number(req.params.id));
      return schema ? { schema } : this.notFound(reply, 40403, 'Schema not found');
    });
    app.get('/config', async () => ({ compatibilityLevel: this.globalLevel }));
    app.put<{ Body: { compatibility?: Level } }>('/config', async (req, reply) => {
      if (!isLevel(req.body?.compatibility)) return invalidLevel(reply);
      this.globalLevel = req.body.compatibility;
      this.save();
      return { compatibility: this.globalLevel };
    });
    app.get<{ Params: { subject: string }; Querystring: { defaultToGlobal?: string } }>('/config/:subject', async (req, reply) => {
      const level = this.config.get(req.params.subject) ?? (req.query.defaultToGlobal === 'true' ? this.globalLevel : undefined);
      return level ? { compatibilityLevel: level } : this.notFound(reply, 40408, 'Subject does not have subject-level compatibility configured');
    });
    app.put<{ Params: { subject: string }; Body: { compatibility: Level } }>('/config/:subject', async (req, reply) => {
      if (!isLevel(req.body?.compatibility)) return invalidLevel(reply);
      this.config.set(req.params.subject, req.body.compatibility);
      this.save();
      return { compatibility: req.body.compatibility };
    });
    app.get<{ Params: { subject: string }; Querystring: { deleted?: string } }>('/subjects/:subject/versions', async (req, reply) => {
      const list = this.subjects.get(req.params.subject);
      // ?deleted=true: the soft-deleted versions too, as Confluent's registry lists them.
      const gone = req.query.deleted === 'true' ? (this.deleted.get(req.params.subject) ?? []) : [];
      if (!list && !gone.length) return this.notFound(reply, 40401, `Subject '${req.params.subject}' not found.`);
      return [...(list ?? []), ...gone].map((v) => v.version).sort((a, b) => a - b);
    });
    app.get<{ Params: { subject: string; version: string }; Querystring: { deleted?: string } }>('/subjects/:subject/versions/:version', async (req, reply) => {
      // ?deleted=true: a soft-deleted version too, as Confluent's registry answers it.
      const gone = req.query.deleted === 'true' ? (this.deleted.get(req.params.subject) ?? []).find((v) => v.version === Number(req.params.version)) : undefined;
      if (gone) return { subject: req.params.subject, ...gone };
      const missing = this.missing(reply, req.params.subject, req.params.version);
      if (missing) return missing;
      return { subject: req.params.subject, ...this.version(req.params.subject, req.params.version)! };
    });
    app.get<{ Params: { subject: string; version: string } }>('/subjects/:subject/versions/:version/schema', async (req, reply) => {
      const missing = this.missing(reply, req.params.subject, req.params.version);
      if (missing) return missing;
      return reply.type('application/vnd.schemaregistry.v1+json').send(this.version(req.params.subject, req.params.version)!.schema);
    });
    app.post<{ Params: { subject: string }; Body: { schema: string } }>('/subjects/:subject', async (req, reply) => {
      const want = canonical(req.body.schema);
      const list = this.subjects.get(req.params.subject);
      if (!list) return this.notFound(reply, 40401, `Subject '${req.params.subject}' not found.`);
      const v = list.find((x) => canonical(x.schema) === want);
      return v ? { subject: req.params.subject, ...v } : this.notFound(reply, 40403, 'Schema not found');
    });
    app.post<{ Params: { subject: string }; Body: { schema: string; schemaType?: string } }>('/subjects/:subject/versions', async (req, reply) => {
      const { subject } = req.params;
      if (req.body.schemaType && req.body.schemaType !== 'AVRO') {
        return reply.code(422).send({ error_code: 42201, message: 'Only AVRO schemas are supported by the embedded registry' });
      }
      try {
        avro.Type.forSchema(JSON.parse(req.body.schema));
      } catch (err) {
        return reply.code(422).send({ error_code: 42201, message: `Invalid schema: ${(err as Error).message}` });
      }
      const schema = canonical(req.body.schema);
      // Kept as registered (compact, its keys in their order), as Confluent's registry answers it; compared canonically.
      const registered = JSON.stringify(JSON.parse(req.body.schema));
      const list = this.subjects.get(subject) ?? [];
      // The same schema again (even with its keys reordered) is the same version, not a new one.
      const existing = list.find((x) => canonical(x.schema) === schema);
      if (existing) return { id: existing.id };
      const level = this.config.get(subject) ?? this.globalLevel;
      if (!isCompatible(level, schema, list.map((x) => x.schema))) {
        return reply.code(409).send({ error_code: 409, message: `Schema being registered is incompatible with an earlier schema for subject "${subject}" (${level})` });
      }
      let id = this.idBySchema.get(schema);
      if (id === undefined) {
        id = this.byId.size + 1;
        this.byId.set(id, registered);
        this.idBySchema.set(schema, id);
      }
      const last = Math.max(list.at(-1)?.version ?? 0, ...(this.deleted.get(subject) ?? []).map((d) => d.version));
      list.push({ id, version: last + 1, schema: this.byId.get(id)! });
      this.subjects.set(subject, list);
      this.save();
      return { id };
    });
    app.post<{ Params: { subject: string; version: string }; Body: { schema: string }; Querystring: { verbose?: string } }>(
      '/compatibility/subjects/:subject/versions/:version',
      async (req, reply) => {
        const missing = this.missing(reply, req.params.subject, req.params.version);
        if (missing) return missing;
        const invalid = this.invalid(reply, req.body?.schema);
        if (invalid) return invalid;
        const list = this.subjects.get(req.params.subject)!;
        const level = this.config.get(req.params.subject) ?? this.globalLevel;
        const v = this.version(req.params.subject, req.params.version)!;
        const history = level.endsWith('TRANSITIVE') ? list : [v];
        return this.compatibility(level, canonical(req.body.schema), history, req.query);
      },
    );
    // As registering would check it (Confluent Platform 7+).
    app.post<{ Params: { subject: string }; Body: { schema: string }; Querystring: { verbose?: string } }>('/compatibility/subjects/:subject/versions', async (req, reply) => {
      const invalid = this.invalid(reply, req.body?.schema);
      if (invalid) return invalid;
      const list = this.subjects.get(req.params.subject) ?? [];
      const level = this.config.get(req.params.subject) ?? this.globalLevel;
      // The same check registering would make, under the subject's level.
      return this.compatibility(level, canonical(req.body.schema), list, req.query);
    });
    app.get('/mode', async () => ({ mode: 'READWRITE' }));
    app.get<{ Params: { id: string } }>('/schemas/ids/:id/schema', async (req, reply) => {
      const schema = this.byId.get(Number(req.params.id));
      return schema ? reply.type('application/vnd.schemaregistry.v1+json').send(schema) : this.notFound(reply, 40403, 'Schema not found');
    });
    app.get<{ Params: { id: string } }>('/schemas/ids/:id/subjects', async (req, reply) => {
      const id = Number(req.params.id);
      if (!this.byId.has(id)) return this.notFound(reply, 40403, 'Schema not found');
      return [...this.subjects].filter(([, list]) => list.some((v) => v.id === id)).map(([subject]) => subject);
    });
    app.get<{ Params: { id: string } }>('/schemas/ids/:id/versions', async (req, reply) => {
      const id = Number(req.params.id);
      if (!this.byId.has(id)) return this.notFound(reply, 40403, 'Schema not found');
      return [...this.subjects].flatMap(([subject, list]) => list.filter((v) => v.id === id).map((v) => ({ subject, version: v.version })));
    });
    // Confluent's deletes: soft by default (hidden; the ids stay readable, since records
    // carry them), `?permanent=true` after a soft delete removes the versions for good.
    app.delete<{ Params: { subject: string }; Querystring: { permanent?: string } }>('/subjects/:subject', async (req, reply) => {
      const { subject } = req.params;
      if (req.query.permanent === 'true') {
        if (this.subjects.has(subject)) return this.notFound(reply, 40405, `Subject '${subject}' was not deleted first before being permanently deleted`);
        const gone = this.deleted.get(subject);
        if (!gone) return this.notFound(reply, 40401, `Subject '${subject}' not found.`);
        this.deleted.delete(subject);
        this.config.delete(subject);
        this.save();
        return gone.map((v) => v.version).sort((a, b) => a - b);
      }
      const list = this.subjects.get(subject);
      if (!list) return this.deleted.has(subject) ? this.notFound(reply, 40404, `Subject '${subject}' was soft deleted.Set permanent=true to delete permanently`) : this.notFound(reply, 40401, `Subject '${subject}' not found.`);
      this.subjects.delete(subject);
      this.deleted.set(subject, [...(this.deleted.get(subject) ?? []), ...list]);
      this.save();
      return list.map((v) => v.version);
    });
    app.delete<{ Params: { subject: string; version: string }; Querystring: { permanent?: string } }>('/subjects/:subject/versions/:version', async (req, reply) => {
      const { subject, version } = req.params;
      if (req.query.permanent === 'true') {
        const gone = (this.deleted.get(subject) ?? []).find((v) => v.version === Number(version));
        if (!gone) {
          const live = this.version(subject, version);
          return live ? this.notFound(reply, 40407, `Subject '${subject}' Version ${version} was not deleted first before being permanently deleted`) : (this.missing(reply, subject, version) ?? this.notFound(reply, 40402, `Version ${version} not found.`));
        }
        this.deleted.set(subject, this.deleted.get(subject)!.filter((v) => v !== gone));
        this.save();
        return gone.version;
      }
      const missing = this.missing(reply, subject, version);
      if (missing) return missing;
      const v = this.version(subject, version)!;
      const rest = this.subjects.get(subject)!.filter((x) => x !== v);
      if (rest.length) this.subjects.set(subject, rest);
      else this.subjects.delete(subject);
      this.deleted.set(subject, [...(this.deleted.get(subject) ?? []), v]);
      this.save();
      return v.version;
    });
    app.delete<{ Params: { subject: string } }>('/config/:subject', async (req, reply) => {
      const level = this.config.get(req.params.subject);
      if (!level) return this.notFound(reply, 40408, 'Subject does not have subject-level compatibility configured');
      this.config.delete(req.params.subject);
      this.save();
      return { compatibilityLevel: level };
    });
  }

  /** A compatibility check's answer; with `?verbose=true`, why not (Confluent's `messages`). */
  private compatibility(level: Level, candidate: string, history: readonly Version[], query: { verbose?: string }): { is_compatible: boolean; messages?: string[] } {
    const why = incompatibilities(level, candidate, history);
    return query.verbose === 'true' ? { is_compatible: why.length === 0, messages: why } : { is_compatible: why.length === 0 };
  }

  async start(port = 0, host = '127.0.0.1'): Promise<string> {
    const address = await this.app.listen({ port, host });
    this.url = address;
    return address;
  }

  async stop(): Promise<void> {
    await this.app.close();
  }
}

const isLevel = (v: unknown): v is Level => typeof v === 'string' && (LEVELS as readonly string[]).includes(v);

/** Confluent's answer to a compatibility level it does not know (42203). */
function invalidLevel(reply: FastifyReply) {
  return reply.code(422).send({ error_code: 42203, message: `Invalid compatibility level. Valid values are ${LEVELS.join(', ')}` });
}
