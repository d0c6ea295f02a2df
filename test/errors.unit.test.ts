/** Which errors retry the batch and which blame the record: decided by flags and types, never messages. */
import { KafkaJSNumberOfRetriesExceeded, KafkaJSProtocolError } from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { asHeraldError, HeraldError, isTransient } from '../errors.ts';

describe('isTransient', () => {
  it('treats broker, store and network failures as transient, anywhere in the cause chain', () => {
    expect(isTransient(new KafkaJSNumberOfRetriesExceeded(new Error('x'), { retryCount: 5, retryTime: 100 }))).toBe(true);
    expect(isTransient(Object.assign(new Error('rebalance'), { name: 'KafkaJSProtocolError', type: 'REBALANCE_IN_PROGRESS', retriable: false }))).toBe(true);
    expect(isTransient(Object.assign(new Error('db'), { code: 'LEVEL_DATABASE_NOT_OPEN' }))).toBe(true);
    expect(isTransient(new Error('wrapped', { cause: Object.assign(new Error('refused'), { code: 'ECONNREFUSED' }) }))).toBe(true);
  });

  it('blames the record for errors only it can cause', () => {
    const tooLarge = new KafkaJSProtocolError({ type: 'MESSAGE_TOO_LARGE', code: 10, retriable: false, message: 'too large' } as unknown as Error);
    expect(isTransient(tooLarge)).toBe(false);
    expect(isTransient(new SyntaxError('Unexpected token'))).toBe(false);
    expect(isTransient(new HeraldError('HRL_SCHEMA_VIOLATION', 'x: expected a string'))).toBe(false);
    expect(isTransient(Object.assign(new Error('Confluent_Schema_Registry - Schema not found'), { name: 'ConfluentSchemaRegistryError' }))).toBe(false);
  });

  it('marks wrapped errors retriable accordingly', () => {
    expect(asHeraldError(Object.assign(new Error('x'), { code: 'ETIMEDOUT' })).retriable).toBe(true);
    expect(asHeraldError(new TypeError('bad')).retriable).toBe(false);
  });
});
