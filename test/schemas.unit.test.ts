/**
 * Unit tests of schemas/index.ts (loading, Avro round trips, validation errors),
 * runtime/codec.ts `domainEventFromJson`, and BACKWARD compatibility of every schema
 * against each of its committed versions.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import avro from 'avsc';
import { describe, expect, it } from 'vitest';
import { isCompatible } from '../embedded/schema-registry.ts';
import { HeraldError } from '../errors.ts';
import { domainEventFromJson } from '../runtime/codec.ts';
import { avroType, rawSchema, SCHEMA_NAMES, type SchemaName, selfContained, validate } from '../schemas/index.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const schemasDir = join(root, 'schemas');

function fixture(name: SchemaName): Record<string, unknown> {
  return JSON.parse(readFileSync(join(schemasDir, 'fixtures', `${name}.json`), 'utf8')) as Record<string, unknown>;
}

/** Runs `fn` and returns what it threw (failing the test when it does not throw). */
function thrown(fn: () => unknown): HeraldError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(HeraldError);
    return err as HeraldError;
  }
  throw new Error('expected a HeraldError, but nothing was thrown');
}

const minimalEvent = { id: 'evt-1', type: 'comment.created', tenant: 'acme' };

describe('schema files', () => {
  it('every .avsc file in schemas/ is listed in SCHEMA_NAMES and vice versa', () => {
    // given the schema directory
    const files = readdirSync(schemasDir).filter((f) => f.endsWith('.avsc')).map((f) => f.slice(0, -'.avsc'.length));
    // then it holds exactly the declared schemas
    expect([...files].sort()).toEqual([...SCHEMA_NAMES].sort());
  });

  it.each(SCHEMA_NAMES)('%s parses with avsc as a self-contained record', (name) => {
    // when the schema is compiled
    const type = avroType(name);
    // then it is the named record of the io.herald.v1 namespace
    expect(type.typeName).toBe('record');
    expect(type.name).toBe(`io.herald.v1.${name}`);
    // and its self-contained form holds no unresolved io.herald.v1 references to other files
    expect(() => avro.Type.forSchema(selfContained(name) as avro.Schema)).not.toThrow();
  });

  it('selfContained inlines referenced records (EnrichedNotification embeds the three records it names)', () => {
    // given a schema whose fields reference other schema files
    expect(JSON.stringify(rawSchema('EnrichedNotification'))).toContain('"io.herald.v1.NotificationRequest"');
    // when it is made self-contained
    const text = JSON.stringify(selfContained('EnrichedNotification'));
    // then each reference is replaced by the referenced record definition
    for (const ref of ['NotificationRequest', 'UserProfile', 'UserPreferences']) {
      expect(text).toContain(`"name":"${ref}"`);
      expect(text).not.toContain(`"io.herald.v1.${ref}"`);
    }
  });
});

describe.each(SCHEMA_NAMES)('fixture schemas/fixtures/%s.json', (name) => {
  it('round-trips through the Avro binary encoding unchanged', () => {
    // given a realistic value
    const value = fixture(name);
    const type = avroType(name);
    // when it is encoded and decoded
    const buf = type.toBuffer(value);
    const back = type.fromBuffer(buf) as unknown;
    // then the decoded value equals the original
    expect(buf.length).toBeGreaterThan(0);
    expect(JSON.parse(JSON.stringify(back))).toEqual(value);
  });

  it('passes validate() and comes back unchanged', () => {
    // given a realistic value that sets every field
    const value = fixture(name);
    // when it is validated / then it is accepted as it is
    expect(validate(name, value)).toEqual(value);
  });
});

describe('validate', () => {
  it('fills absent fields that have defaults', () => {
    // when a DomainEvent gives only its required fields
    const ev = validate<Record<string, unknown>>('DomainEvent', minimalEvent);
    // then the defaults are filled in
    expect(ev).toEqual({
      ...minimalEvent, recipients: [], audience: null, data: '{}', idempotencyKey: null,
      occurredAt: null, expiresAt: null, actor: null, traceId: null,
    });
  });

  it('names a missing required field and what was expected', () => {
    // given a DomainEvent without `type`
    const err = thrown(() => validate('DomainEvent', { id: 'evt-1', tenant: 'acme' }));
    // then the error names the field and the expectation
    expect(err.code).toBe('HRL_SCHEMA_VIOLATION');
    expect(err.message).toContain('type:');
    expect(err.message).toContain('expected');
    expect(err.message).toContain('a string');
    expect(err.field).toBe('type');
  });

  it('names the array index of a bad array item', () => {
    // given recipients with a number in second place
    const err = thrown(() => validate('DomainEvent', { ...minimalEvent, recipients: ['a', 42] }));
    // then the error points at recipients[1]
    expect(err.code).toBe('HRL_SCHEMA_VIOLATION');
    expect(err.message).toContain('recipients[1]');
    expect(err.message).toContain('got 42');
    expect(err.field).toBe('recipients[1]');
  });

  it('names an unknown extra field', () => {
    // given a DomainEvent with a field the schema does not have
    const err = thrown(() => validate('DomainEvent', { ...minimalEvent, colour: 'blue' }));
    // then the error names it
    expect(err.code).toBe('HRL_SCHEMA_VIOLATION');
    expect(err.message).toContain('colour');
    expect(err.message).toContain('unknown field');
    expect(err.field).toBe('colour');
  });

  it('describes union expectations (null or a long)', () => {
    // given an occurredAt that is neither null nor a number
    const err = thrown(() => validate('DomainEvent', { ...minimalEvent, occurredAt: 'yesterday' }));
    // then the message lists the union's branches
    expect(err.message).toContain('occurredAt:');
    expect(err.message).toContain('null or an integer (long)');
  });

  it('names nested field paths of embedded records', () => {
    // given an EnrichedNotification whose request has a bad tenant
    const value = fixture('EnrichedNotification');
    const bad = { ...value, request: { ...(value.request as object), tenant: 7 } };
    // when validated
    const err = thrown(() => validate('EnrichedNotification', bad));
    // then the dotted path of the nested field is named
    expect(err.message).toContain('request.tenant:');
    expect(err.field).toBe('request.tenant');
  });

  it('lists the symbols of an enum', () => {
    // given a NotificationRequest with an unknown priority
    const err = thrown(() => validate('NotificationRequest', { ...fixture('NotificationRequest'), priority: 'URGENT' }));
    // then the allowed values are listed
    expect(err.message).toContain('priority:');
    expect(err.message).toContain('one of LOW, NORMAL, HIGH, CRITICAL');
  });

  it('rejects a value that is not an object at the root', () => {
    // when an array is validated
    const err = thrown(() => validate('DomainEvent', ['not', 'an', 'object']));
    // then the error is about the root
    expect(err.code).toBe('HRL_SCHEMA_VIOLATION');
    expect(err.message).toContain('(root): expected an object (DomainEvent)');
    expect(err.field).toBe('(root)');
  });
});

describe('domainEventFromJson', () => {
  it('accepts data as an object and stores it as JSON text', () => {
    // when data is given as an object
    const ev = domainEventFromJson({ ...minimalEvent, data: { commentId: 'c-1', n: 2 } });
    // then it becomes JSON text
    expect(typeof ev.data).toBe('string');
    expect(JSON.parse(ev.data)).toEqual({ commentId: 'c-1', n: 2 });
  });

  it('refuses text with a lone surrogate (no UTF-8 carries it), naming where, in data given as an object, as JSON text, or anywhere else', () => {
    const refused = (over: Record<string, unknown>) => {
      try {
        domainEventFromJson({ ...minimalEvent, ...over });
      } catch (err) {
        return err as HeraldError;
      }
      throw new Error('accepted');
    };
    // JSON.parse('"lone \\ud800 x"') is how such text arrives from a client.
    const lone = JSON.parse('"lone \\ud800 x \\udfff y \\ud83d\\ude00"') as string;
    const a = refused({ data: { text: lone } });
    expect(a).toMatchObject({ code: 'HRL_SCHEMA_VIOLATION', field: 'data.text' });
    expect(a.message).toBe('data.text: expected well-formed Unicode text, got a lone surrogate (U+D800) at character 6');
    expect(refused({ data: JSON.stringify({ items: ['ok', lone] }) })).toMatchObject({ field: 'data.items[1]' });
    expect(refused({ actor: lone })).toMatchObject({ field: 'actor' });
    // A pair (an emoji) is well formed.
    expect(JSON.parse(domainEventFromJson({ ...minimalEvent, data: { text: 'y \ud83d\ude00' } }).data)).toEqual({ text: 'y 😀' });
  });

  it('refuses data nested deeper than the HTTP API takes, naming the field, however deep (no stack overflow)', () => {
    const deep = (levels: number): unknown => {
      let v: unknown = 'leaf';
      for (let i = 0; i < levels; i++) v = { a: v };
      return v;
    };
    const refused = (over: Record<string, unknown>) => {
      try {
        domainEventFromJson({ ...minimalEvent, ...over });
      } catch (err) {
        return err as HeraldError;
      }
      throw new Error('accepted');
    };
    // The event is level 0 and data level 1: 32 nested objects in all are the most it may carry.
    expect(() => domainEventFromJson({ ...minimalEvent, data: deep(32) })).not.toThrow();
    expect(refused({ data: deep(33) })).toMatchObject({ code: 'HRL_SCHEMA_VIOLATION', field: 'data', message: 'data: nested deeper than 32 levels' });
    expect(refused({ data: deep(100_000) })).toMatchObject({ field: 'data', message: 'data: nested deeper than 32 levels' });
    // data given as JSON text counts as the object it is.
    expect(refused({ data: '['.repeat(50_000) + ']'.repeat(50_000) })).toMatchObject({ field: 'data', message: 'data: nested deeper than 32 levels' });
    expect(refused({ data: JSON.stringify({ x: deep(40) }) })).toMatchObject({ field: 'data' });
  });

  it('says what a field takes, of what was sent: data an array, times out of range, as text or numbers, or in Avro\'s JSON form', () => {
    const refused = (over: Record<string, unknown>) => {
      try {
        domainEventFromJson({ ...minimalEvent, ...over });
      } catch (err) {
        return err as HeraldError;
      }
      throw new Error('accepted');
    };
    expect(refused({ data: [1, 2, 3] })).toMatchObject({ field: 'data', message: 'data: expected a JSON object (or its JSON text), got [1,2,3]' });
    const range = 'expected a time between 2000-01-01 and 9999-12-31, as epoch milliseconds or an ISO-8601 date-time with offset (e.g. 2026-01-02T03:04:05Z)';
    expect(refused({ occurredAt: '1999-01-01T00:00:00Z' })).toMatchObject({ field: 'occurredAt', message: `occurredAt: ${range}, got "1999-01-01T00:00:00Z"` });
    expect(refused({ occurredAt: 99999999999999999 })).toMatchObject({ field: 'occurredAt', message: `occurredAt: ${range}, got 100000000000000000` });
    expect(refused({ expiresAt: JSON.parse('1e400') })).toMatchObject({ field: 'expiresAt', message: `expiresAt: ${range}, got Infinity` });
    expect(refused({ occurredAt: { long: 1764582892660 } })).toMatchObject({ field: 'occurredAt', message: `occurredAt: ${range}, got {"long":1764582892660}` });
    expect(domainEventFromJson({ ...minimalEvent, occurredAt: '2026-01-02T03:04:05Z' }).occurredAt).toBe(Date.parse('2026-01-02T03:04:05Z'));
  });

  it('accepts data as JSON text of an object', () => {
    // when data is already JSON text
    const ev = domainEventFromJson({ ...minimalEvent, data: '{"commentId":"c-1"}' });
    // then it is kept as it is
    expect(ev.data).toBe('{"commentId":"c-1"}');
  });

  it('converts ISO-8601 occurredAt and expiresAt to epoch milliseconds', () => {
    // when both dates are ISO strings with an explicit offset
    const ev = domainEventFromJson({ ...minimalEvent, occurredAt: '2025-01-02T03:04:05.678Z', expiresAt: '2025-01-09T03:04:05.678+01:00' });
    // then they are epoch milliseconds
    expect(ev.occurredAt).toBe(Date.UTC(2025, 0, 2, 3, 4, 5, 678));
    expect(ev.expiresAt).toBe(Date.UTC(2025, 0, 9, 2, 4, 5, 678));
  });

  it('keeps epoch milliseconds as they are', () => {
    // when occurredAt is a number
    const ev = domainEventFromJson({ ...minimalEvent, occurredAt: 1735787045678 });
    // then it is unchanged
    expect(ev.occurredAt).toBe(1735787045678);
  });

  it('rejects a date string that is not a date', () => {
    const err = thrown(() => domainEventFromJson({ ...minimalEvent, expiresAt: 'next tuesday-ish' }));
    expect(err.code).toBe('HRL_SCHEMA_VIOLATION');
    expect(err.message).toContain('expiresAt:');
    expect(err.field).toBe('expiresAt');
  });

  it('rejects data given as JSON text of an array', () => {
    // when data is "[1]"
    const err = thrown(() => domainEventFromJson({ ...minimalEvent, data: '[1]' }));
    // then data is named and an object is expected
    expect(err.code).toBe('HRL_SCHEMA_VIOLATION');
    expect(err.message).toContain('data:');
    expect(err.message).toContain('expected a JSON object');
    expect(err.field).toBe('data');
  });

  it('rejects data given as text that is not JSON', () => {
    const err = thrown(() => domainEventFromJson({ ...minimalEvent, data: 'hello' }));
    expect(err.field).toBe('data');
  });

  it('rejects an empty id', () => {
    // when id is empty
    const err = thrown(() => domainEventFromJson({ ...minimalEvent, id: '' }));
    // then id is named
    expect(err.code).toBe('HRL_SCHEMA_VIOLATION');
    expect(err.message).toContain('id: expected a non-empty string');
    expect(err.field).toBe('id');
  });

  it('rejects a blank type or tenant', () => {
    expect(thrown(() => domainEventFromJson({ ...minimalEvent, type: '   ' })).field).toBe('type');
    expect(thrown(() => domainEventFromJson({ ...minimalEvent, tenant: '' })).field).toBe('tenant');
  });

  it('applies schema validation after conversion (unknown field, missing field)', () => {
    expect(thrown(() => domainEventFromJson({ ...minimalEvent, data: {}, extra: 1 })).field).toBe('extra');
    expect(thrown(() => domainEventFromJson({ id: 'evt-1', type: 'x' })).message).toContain('tenant:');
  });

  it('does not modify its input', () => {
    // given an input object with data as an object
    const input = { ...minimalEvent, data: { a: 1 }, occurredAt: '2025-01-02T03:04:05.678Z' };
    const copy = structuredClone(input);
    // when converted
    domainEventFromJson(input);
    // then the caller's object is untouched
    expect(input).toEqual(copy);
  });
});

// ---------------------------------------------------------------------------------------
// BACKWARD compatibility: the current schema must read data written with every
// committed version of it.

function git(args: string[]): string {
  return execFileSync('git', args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function gitAvailable(): boolean {
  try {
    return git(['rev-parse', '--is-inside-work-tree']).trim() === 'true';
  } catch {
    return false;
  }
}

interface Baseline {
  label: string;
  load: (n: SchemaName) => Record<string, unknown>;
}

/** The schema files a schema's self-contained form is built from: itself and what it references, transitively. */
function schemaFiles(name: SchemaName): SchemaName[] {
  const seen = new Set<SchemaName>([name]);
  for (const n of seen) {
    for (const m of JSON.stringify(rawSchema(n)).matchAll(/"io\.herald\.v1\.(\w+)"/g)) {
      const ref = m[1] as SchemaName;
      if (SCHEMA_NAMES.includes(ref)) seen.add(ref);
    }
  }
  return [...seen];
}

function existsAt(sha: string, name: SchemaName): boolean {
  try {
    git(['cat-file', '-e', `${sha}:./schemas/${name}.avsc`]);
    return true;
  } catch {
    return false;
  }
}

/**
 * Earlier versions of a schema to check against, newest first; never empty. A version is
 * the schema at each commit that changed its file or a file it references (which changes
 * its self-contained form); the newest is HEAD's.
 */
function baselines(name: SchemaName, hasGit: boolean): Baseline[] {
  const fromDisk: Baseline = {
    label: 'the file on disk (git unavailable or file not committed; equals HEAD in a clean tree)',
    load: (n) => JSON.parse(readFileSync(join(schemasDir, `${n}.avsc`), 'utf8')) as Record<string, unknown>,
  };
  if (!hasGit) return [fromDisk];
  const paths = schemaFiles(name).map((n) => `schemas/${n}.avsc`);
  const shas = git(['log', '--format=%H', '--', ...paths]).split('\n').map((s) => s.trim()).filter(Boolean)
    .filter((sha) => existsAt(sha, name));
  if (shas.length === 0) return [fromDisk];
  return shas.map((sha, i) => ({
    label: `commit ${sha.slice(0, 12)}${i === 0 ? ' (HEAD version)' : ''}`,
    load: (n) => JSON.parse(git(['show', `${sha}:./schemas/${n}.avsc`])) as Record<string, unknown>,
  }));
}

describe('BACKWARD compatibility with committed versions', () => {
  const hasGit = gitAvailable();

  it('has git history to check against when run from a clone', () => {
    // A repository checkout without working git would silently weaken the check below.
    if (existsSync(join(root, '.git'))) expect(hasGit).toBe(true);
  });

  for (const name of SCHEMA_NAMES) {
    const versions = baselines(name, hasGit);
    it(`${name}: is compared with at least one committed (or on-disk) version`, () => {
      expect(versions.length).toBeGreaterThanOrEqual(1);
    });
    for (const v of versions) {
      it(`${name}: the current schema reads data written with ${v.label}`, () => {
        // given the current schema and an earlier version, each with its references inlined
        const current = avro.Type.forSchema(selfContained(name) as avro.Schema);
        const old = avro.Type.forSchema(selfContained(name, v.load) as avro.Schema);
        // then the current schema can resolve the old one
        expect(() => current.createResolver(old)).not.toThrow();
        // and a record written with the old version decodes with the current one
        const written = old.random();
        const read = current.fromBuffer(old.toBuffer(written), current.createResolver(old)) as Record<string, unknown>;
        expect(current.isValid(read)).toBe(true);
        // and the registry's check agrees
        expect(isCompatible('BACKWARD', JSON.stringify(selfContained(name)), [JSON.stringify(selfContained(name, v.load))])).toBe(true);
      });
    }
  }
});

describe('the compatibility check can fail', () => {
  it('a DomainEvent that gained a field without a default would not read the committed versions', () => {
    // given a hypothetical next DomainEvent with an added required field, loaded through selfContained's loader
    const hasGit = gitAvailable();
    const next = selfContained('DomainEvent', (n) => {
      const s = rawSchema(n);
      return n === 'DomainEvent' ? { ...s, fields: [...(s.fields as object[]), { name: 'severity', type: 'int' }] } : s;
    });
    // then it is incompatible with each earlier version
    for (const v of baselines('DomainEvent', hasGit)) {
      const old = avro.Type.forSchema(selfContained('DomainEvent', v.load) as avro.Schema);
      expect(() => avro.Type.forSchema(next as avro.Schema).createResolver(old)).toThrow();
      expect(isCompatible('BACKWARD', JSON.stringify(next), [JSON.stringify(selfContained('DomainEvent', v.load))])).toBe(false);
    }
  });

  const v1 = {
    type: 'record', name: 'Thing', namespace: 'io.herald.test',
    fields: [{ name: 'id', type: 'string' }],
  };
  const withoutDefault = { ...v1, fields: [...v1.fields, { name: 'colour', type: 'string' }] };
  const withDefault = { ...v1, fields: [...v1.fields, { name: 'colour', type: 'string', default: 'blue' }] };

  it('adding a field without a default makes createResolver throw', () => {
    // given a new schema that adds a required field
    const reader = avro.Type.forSchema(withoutDefault as avro.Schema);
    const writer = avro.Type.forSchema(v1 as avro.Schema);
    // then it cannot read old data
    expect(() => reader.createResolver(writer)).toThrow();
    expect(isCompatible('BACKWARD', JSON.stringify(withoutDefault), [JSON.stringify(v1)])).toBe(false);
  });

  it('adding a field with a default is BACKWARD compatible', () => {
    // given a new schema that adds a field with a default
    const reader = avro.Type.forSchema(withDefault as avro.Schema);
    const writer = avro.Type.forSchema(v1 as avro.Schema);
    // then it reads old data, filling the default
    const resolver = reader.createResolver(writer);
    const value = reader.fromBuffer(writer.toBuffer({ id: 'x' }), resolver) as Record<string, unknown>;
    expect(value).toMatchObject({ id: 'x', colour: 'blue' });
    expect(isCompatible('BACKWARD', JSON.stringify(withDefault), [JSON.stringify(v1)])).toBe(true);
  });

  it('removing a field without a default is caught when checking the other way round', () => {
    // FORWARD: old readers must read new data; dropping a default-less field breaks them.
    expect(isCompatible('FORWARD', JSON.stringify(v1), [JSON.stringify(withoutDefault)])).toBe(false);
    expect(isCompatible('BACKWARD', JSON.stringify(v1), [JSON.stringify(withoutDefault)])).toBe(true);
  });
});

describe('domainEventFromJson date-times', () => {
  it('rejects a date-time without an offset, which would depend on the server time zone', () => {
    expect(() => domainEventFromJson({ id: 'e', type: 't', tenant: 'a', occurredAt: '2025-01-02T03:04:05' })).toThrow(/occurredAt: expected .*ISO-8601 date-time with offset/);
    expect(() => domainEventFromJson({ id: 'e', type: 't', tenant: 'a', expiresAt: '01/02/2025' })).toThrow(/expiresAt/);
    expect(domainEventFromJson({ id: 'e', type: 't', tenant: 'a', occurredAt: '2025-01-02T03:04:05+01:00' }).occurredAt).toBe(Date.UTC(2025, 0, 2, 2, 4, 5));
  });

  it('says null, not object, for a null event', () => {
    expect(() => validate('DomainEvent', null)).toThrow('got null');
  });
});
