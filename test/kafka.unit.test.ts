/**
 * The client label of herald_kafka_requests_total: a consumer's group, without what makes a
 * group id unique per start, so the label has few values however often readers come and go.
 */
import { describe, expect, it } from 'vitest';
import { logLevel } from 'kafkajs';
import { pinoLevel, requestClient } from '../runtime/kafka.ts';

describe('requestClient', () => {
  it('names a stage consumer by its group', () => {
    expect(requestClient('herald.deliver')).toBe('herald.deliver');
    expect(requestClient('acme.herald.outcome')).toBe('acme.herald.outcome');
  });

  it('folds table and topic readers into one value', () => {
    expect(requestClient('herald.reader.0b8f4a43-5a7e-4a8e-9a43-6f1d2c3b4a5e')).toBe('reader');
    // A group that merely mentions the words is a group of its own.
    expect(requestClient('herald.reader')).toBe('herald.reader');
    expect(requestClient('journaling')).toBe('journaling');
    // A topic prefix that names a journal does not fold the stages into it.
    expect(requestClient('journal.herald.deliver')).toBe('journal.herald.deliver');
    expect(requestClient('acme.journal.deliver')).toBe('acme.journal.deliver');
  });
});

describe('pinoLevel (kafkajs log levels in Herald\'s log)', () => {
  it('logs a heartbeat answered "rebalancing" at info, as Kafka\'s Java client does, and other broker errors at error', () => {
    expect(pinoLevel(logLevel.ERROR, 'Response Heartbeat(key: 12, version: 3)', { error: 'The group is rebalancing, so a rejoin is needed' })).toBe('info');
    expect(pinoLevel(logLevel.ERROR, 'Response Heartbeat(key: 12, version: 3)', { error: 'The coordinator is not aware of this member' })).toBe('error');
    expect(pinoLevel(logLevel.ERROR, 'Response Fetch(key: 1, version: 11)', { error: 'The group is rebalancing, so a rejoin is needed' })).toBe('error');
    expect(pinoLevel(logLevel.WARN, 'anything', {})).toBe('warn');
    // An offset commit a rebalance refuses is routine too: those batches are replayed.
    expect(pinoLevel(logLevel.ERROR, 'Response OffsetCommit(key: 8, version: 5)', { error: 'The group is rebalancing, so a rejoin is needed' })).toBe('info');
    expect(pinoLevel(logLevel.ERROR, 'Response OffsetCommit(key: 8, version: 5)', { error: 'The provided generation id is not valid' })).toBe('info');
    expect(pinoLevel(logLevel.ERROR, 'Response OffsetCommit(key: 8, version: 5)', { error: 'Not authorized to access group' })).toBe('error');
  });
});
