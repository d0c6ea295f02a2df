/** Personal data and secrets never reach the log output. */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../runtime/logger.ts';

function capture() {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  return { lines, stream };
}

describe('logger redaction', () => {
  it('redacts addresses, e-mails, webhook URLs and secrets at the top level and nested', () => {
    const { lines, stream } = capture();
    const log = createLogger('info', stream).child({ stage: 'deliver' });
    log.info({ email: 'ada@example.com', task: { address: 'https://hooks.example/ada', webhookUrl: 'https://x' }, user: { profile: { email: 'b@example.com' } }, saslPassword: 'pw', webhookSecret: 's3cr3t', notificationId: 'ntf_1' }, 'decision');
    const out = lines.join('');
    for (const secret of ['ada@example.com', 'hooks.example', 'https://x', 'b@example.com', 's3cr3t', '"pw"']) expect(out).not.toContain(secret);
    expect(out).toContain('ntf_1');
    expect(out).toContain('[redacted]');
  });

  it('logs an error as an object with its stack, code and cause', async () => {
    const { lines, stream } = capture();
    const log = createLogger('info', stream);
    const { HeraldError } = await import('../errors.ts');
    log.error({ err: new HeraldError('HRL_PROCESSING_FAILED', 'batch failed', { cause: new Error('disk full') }) }, 'failed');
    await new Promise((r) => setTimeout(r, 50));
    const entry = JSON.parse(lines.join('')) as { err: { type: string; message: string; stack: string; code: string; cause: { message: string } } };
    expect(entry.err).toMatchObject({ type: 'HeraldError', code: 'HRL_PROCESSING_FAILED', cause: { message: 'disk full' } });
    expect(entry.err.stack).toContain('logger.unit.test.ts');
  });
});

