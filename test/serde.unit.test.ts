/**
 * Serde writes the Confluent wire format itself (one buffer per value): the bytes must be
 * exactly the registry client's, for every schema, and a value that does not fit its
 * schema must say where.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EmbeddedSchemaRegistry } from '../embedded/schema-registry.ts';
import { HeraldError } from '../errors.ts';
import { SCHEMA_NAMES, type SchemaName, Serde } from '../schemas/index.ts';

const fixture = (name: SchemaName) => JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', 'schemas', 'fixtures', `${name}.json`), 'utf8')) as Record<string, unknown>;

const registry = new EmbeddedSchemaRegistry();
let serde: Serde;
const ids = new Map<SchemaName, number>();

beforeAll(async () => {
  serde = new Serde(await registry.start());
  for (const name of SCHEMA_NAMES) ids.set(name, await serde.register(`t.${name}`, name));
});
afterAll(() => registry.stop());

describe('Serde.encode', () => {
  it.each(SCHEMA_NAMES)('writes %s exactly as the registry client does, and decodes back', async (name) => {
    const value = fixture(name);
    const ours = await serde.encode(`t.${name}`, value);
    const theirs = await serde.registry.encode(ids.get(name)!, value);
    expect(ours.equals(theirs)).toBe(true);
    expect(ours[0]).toBe(0);
    expect(ours.readInt32BE(1)).toBe(ids.get(name));
    expect(JSON.parse(JSON.stringify(await serde.decode(ours)))).toEqual(value);
  });

  it('encodes a value larger than its buffer, and the ones after it, intact', async () => {
    const small = fixture('LifecycleEvent');
    const large = { ...small, content: 'x'.repeat(200_000) };
    const [a, b, c] = [await serde.encode('t.LifecycleEvent', small), await serde.encode('t.LifecycleEvent', large), await serde.encode('t.LifecycleEvent', small)];
    expect(b.equals(await serde.registry.encode(ids.get('LifecycleEvent')!, large))).toBe(true);
    expect(a.equals(c)).toBe(true);
    // Each record keeps its own bytes: encoding the next value does not change the last.
    expect((await serde.decode<{ content: string }>(b)).content).toHaveLength(200_000);
  });

  it('names the field a value gets wrong', async () => {
    const bad = { ...fixture('LifecycleEvent'), timestamp: 'yesterday' };
    const err = await serde.encode('t.LifecycleEvent', bad).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(HeraldError);
    expect((err as HeraldError).message).toMatch(/t\.LifecycleEvent value does not match its schema at timestamp/);
  });

  it('refuses a topic whose schema was never registered', async () => {
    await expect(serde.encode('t.unknown', {})).rejects.toThrow(/no schema registered for topic t\.unknown/);
  });
});

describe('Serde.decode', () => {
  it.each(SCHEMA_NAMES)('reads %s as the registry client does', async (name) => {
    const bytes = await serde.encode(`t.${name}`, fixture(name));
    expect(await serde.decode(bytes)).toEqual(await serde.registry.decode(bytes));
  });

  it('refuses a body cut short or followed by more bytes, naming which', async () => {
    const bytes = await serde.encode('t.LifecycleEvent', fixture('LifecycleEvent'));
    const cut = await serde.decode(bytes.subarray(0, bytes.length - 3)).then(() => null, (e: unknown) => e);
    expect(cut).toBeInstanceOf(HeraldError);
    expect((cut as HeraldError).code).toBe('HRL_DECODE_FAILED');
    expect((cut as HeraldError).message).toMatch(/schema id \d+\): truncated buffer: the \d+-byte body ends before the schema's fields do$/);
    expect(cut).toMatchObject({ field: 'value' });
    await expect(serde.decode(Buffer.concat([bytes, Buffer.from([1, 2])]))).rejects.toThrow(/trailing data: 2 bytes past the end of the body the schema reads/);
  });

  it('fails a decode as retriable while the registry cannot be reached (the batch waits; the record is not dead-lettered)', async () => {
    const unreachable = new Serde('http://127.0.0.1:1');
    const err = await unreachable.decode(Buffer.from([0, 0, 0, 0, 7, 2])).then(() => null, (e: unknown) => e);
    expect(err).toBeInstanceOf(HeraldError);
    expect((err as HeraldError).code).toBe('HRL_DECODE_FAILED');
    expect((err as HeraldError).retriable).toBe(true);
    expect((err as HeraldError).message).toMatch(/schema id 7\).*ECONNREFUSED/);
  });

  it('names the schema id it cannot find', async () => {
    const unknown = Buffer.from([0, 0x7f, 0, 0, 1, 2]);
    await expect(serde.decode(unknown)).rejects.toThrow(/schema id 2130706433/);
    // A schema the registry does not have is the record's fault: not retried, dead-lettered.
    await expect(serde.decode(unknown)).rejects.toMatchObject({ code: 'HRL_DECODE_FAILED', retriable: false, field: 'value', message: 'Avro decode failed (schema id 2130706433): the registry has no schema 2130706433: the record was written against another registry, or its first 5 bytes are not Confluent\'s wire format header' });
  });
});


/**
 * A producer outside Herald whose schema evolved (Confluent's clients register the writer's
 * schema and put its id in every record): the registry accepts a compatible change, so
 * Herald must read such records as its own schema, as a Confluent deserialiser with a
 * reader schema does, instead of rejecting fields it does not know.
 */
describe('Serde.decode as Herald\'s schema (schema resolution)', () => {
  const domainEvent = JSON.parse(readFileSync(join(dirname(fileURLToPath(import.meta.url)), '..', 'schemas', 'DomainEvent.avsc'), 'utf8')) as { fields: { name: string }[] } & Record<string, unknown>;

  it('reads a record written with a compatible evolved schema as Herald\'s: new fields skipped, dropped ones defaulted', async () => {
    const evolved = {
      ...domainEvent,
      fields: [...domainEvent.fields.filter((f) => f.name !== 'actor' && f.name !== 'traceId'), { name: 'priority', type: ['null', 'string'], default: null }],
    };
    const { id } = await serde.registry.register({ type: 'AVRO' as never, schema: JSON.stringify(evolved) }, { subject: 'evolved.events-value' });
    const bytes = await serde.registry.encode(id, { id: 'e1', type: 'comment.created', tenant: 'acme', recipients: ['ada'], audience: null, data: '{"x":1}', idempotencyKey: null, occurredAt: null, expiresAt: null, priority: 'high' });
    // As written: the producer's fields.
    expect(await serde.decode(bytes)).toMatchObject({ priority: 'high' });
    // As DomainEvent: Herald's fields only, defaults for the ones the writer dropped.
    const read = await serde.decode<Record<string, unknown>>(bytes, 'DomainEvent');
    expect(read).toEqual({ id: 'e1', type: 'comment.created', tenant: 'acme', recipients: ['ada'], audience: null, data: '{"x":1}', idempotencyKey: null, occurredAt: null, expiresAt: null, actor: null, traceId: null });
  });

  it('matches records by name without namespace, as the registry\'s compatibility check does (a producer\'s com.acme.DomainEvent)', async () => {
    const theirs = { ...domainEvent, namespace: 'com.acme.events' };
    const { id } = await serde.registry.register({ type: 'AVRO' as never, schema: JSON.stringify(theirs) }, { subject: 'acme.events-value' });
    const bytes = await serde.registry.encode(id, fixture('DomainEvent'));
    expect(await serde.decode(bytes, 'DomainEvent')).toEqual(await serde.decode(await serde.encode('t.DomainEvent', fixture('DomainEvent'))));
  });

  it('says a record of another name is not a DomainEvent, ahead of the first field it lacks', async () => {
    const invoice = { type: 'record', name: 'Invoice', namespace: 'com.acme.billing', fields: [{ name: 'invoiceId', type: 'string' }, { name: 'amount', type: 'long' }] };
    const { id } = await serde.registry.register({ type: 'AVRO' as never, schema: JSON.stringify(invoice) }, { subject: 'invoices-value' });
    const err = await serde.decode(await serde.registry.encode(id, { invoiceId: 'i-1', amount: 42 }), 'DomainEvent').then(() => null, (e: unknown) => e);
    expect((err as Error).message).toContain(`schema id ${id}): its schema cannot be read as DomainEvent (the writer's schema is a record named Invoice, not DomainEvent: is it on the right topic?): id: missing from the writer's schema`);
  });

  it('reads Herald\'s own records unchanged, and refuses a writer schema that cannot be read as Herald\'s, naming both', async () => {
    const own = await serde.encode('t.DomainEvent', fixture('DomainEvent'));
    expect(await serde.decode(own, 'DomainEvent')).toEqual(await serde.decode(own));
    const incompatible = { ...domainEvent, fields: domainEvent.fields.map((f) => (f.name === 'tenant' ? { name: 'tenant', type: 'int' } : f)) };
    const { id } = await serde.registry.register({ type: 'AVRO' as never, schema: JSON.stringify(incompatible) }, { subject: 'incompatible.events-value' });
    const bytes = await serde.registry.encode(id, { ...fixture('DomainEvent'), tenant: 7 });
    const err = await serde.decode(bytes, 'DomainEvent').then(() => null, (e: unknown) => e);
    expect(err).toMatchObject({ code: 'HRL_DECODE_FAILED', retriable: false });
    expect((err as Error).message).toMatch(new RegExp(`schema id ${id}\\): its schema cannot be read as DomainEvent: tenant: the writer's int cannot be read as string`));
    expect(err).toMatchObject({ field: 'tenant' });
    // a field Herald needs that the writer's schema lacks, with no default
    const { id: without } = await serde.registry.register({ type: 'AVRO' as never, schema: JSON.stringify({ ...domainEvent, fields: domainEvent.fields.filter((f) => f.name !== 'type') }) }, { subject: 'no-type.events-value' });
    const { type: _type, ...rest } = fixture('DomainEvent') as Record<string, unknown>;
    const missing = await serde.decode(await serde.registry.encode(without, rest), 'DomainEvent').then(() => null, (e: unknown) => e);
    expect(missing).toMatchObject({ code: 'HRL_DECODE_FAILED', field: 'type', message: expect.stringContaining('type: missing from the writer\'s schema, and the reader\'s has no default for it') });
  });
});
