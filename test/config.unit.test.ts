/** Unit tests of config.ts `loadConfig(env)`: defaults, validation errors, freezing. */
import { availableParallelism, hostname } from 'node:os';
import { isAbsolute, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CONFIG_KEYS, loadConfig, signsWithDefaultSecret } from '../config.ts';
import { HeraldError } from '../errors.ts';
import { TEST_ENV } from './support/herald.ts';

function configError(fn: () => unknown): HeraldError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(HeraldError);
    expect((err as HeraldError).code).toBe('HRL_CONFIG_INVALID');
    return err as HeraldError;
  }
  throw new Error('expected HRL_CONFIG_INVALID, but nothing was thrown');
}

describe('loadConfig defaults', () => {
  // given an empty environment
  const config = loadConfig({});

  it('starts the embedded broker and registry when KAFKA_BROKERS and SCHEMA_REGISTRY_URL are unset', () => {
    expect(config.brokers).toBe('');
    expect(config.embedded).toBe(true);
    expect(config.schemaRegistryUrl).toBe('');
    expect(config.embeddedRegistry).toBe(true);
  });

  it('uses the documented default of every key', () => {
    expect(config).toMatchObject({
      saslMechanism: '',
      ssl: false,
      topicPrefix: 'herald.',
      partitions: 4,
      replicationFactor: 1,
      embeddedBrokers: 1,
      stateBackend: 'rocksdb',
      httpHost: '127.0.0.1',
      httpPort: 8080,
      rulesFile: 'rules/default.json',
      webhookSecret: 'herald-dev-secret',
      logLevel: 'info',
      maxPayloadBytes: 262_144,
      deliveryTimeoutMs: 10_000,
      maxDeliveryAttempts: 5,
      retryBaseMs: 1000,
    });
  });

  it('has a value for every declared key, plus embedded and embeddedRegistry', () => {
    expect(Object.keys(config).sort()).toEqual([...Object.keys(CONFIG_KEYS), 'embedded', 'embeddedRegistry'].sort());
  });

  it('runs one process per core unless HERALD_WORKERS says otherwise (0: one per core)', () => {
    expect(config.workers).toBe(Math.min(availableParallelism(), config.partitions));
    expect(loadConfig({ HERALD_WORKERS: '1' }).workers).toBe(1);
    // Never more than the partitions: a member beyond them would hold none.
    expect(loadConfig({ HERALD_WORKERS: '0', HERALD_PARTITIONS: '1' }).workers).toBe(1);
    expect(loadConfig({ HERALD_WORKERS: '0', HERALD_PARTITIONS: '64' }).workers).toBe(availableParallelism());
    expect(loadConfig({ HERALD_WORKERS: '3' }).workers).toBe(3);
    expect(configError(() => loadConfig({ HERALD_WORKERS: '-1' })).message).toContain('HERALD_WORKERS');
  });

  it('names the instance host-pid and resolves the state directory to an absolute path', () => {
    expect(config.instanceId).toBe(`${hostname()}-${process.pid}`);
    expect(isAbsolute(config.stateDir)).toBe(true);
    expect(config.stateDir).toBe(resolve('.herald/state'));
  });

  it('is frozen', () => {
    // then the object cannot be changed
    expect(Object.isFrozen(config)).toBe(true);
    expect(() => {
      (config as unknown as Record<string, unknown>).httpPort = 1;
    }).toThrow(TypeError);
    expect(config.httpPort).toBe(8080);
  });
});

describe('loadConfig from the environment', () => {
  it('reads real-Kafka settings and turns off the embedded broker', () => {
    // given a full real-Kafka environment
    const config = loadConfig({
      KAFKA_BROKERS: 'kafka-1:9092,kafka-2:9092',
      SCHEMA_REGISTRY_URL: 'http://registry:8081',
      KAFKA_SASL_MECHANISM: 'scram-sha-512',
      KAFKA_SASL_USERNAME: 'herald',
      KAFKA_SASL_PASSWORD: 's3cret',
      KAFKA_SSL: 'true',
      HERALD_PARTITIONS: '12',
      HERALD_INSTANCE_ID: 'herald-a',
      HERALD_WEBHOOK_SECRET: 'a-secret-of-our-own',
    });
    // then the values are typed and the embedded parts are off
    expect(config).toMatchObject({
      brokers: 'kafka-1:9092,kafka-2:9092', embedded: false,
      schemaRegistryUrl: 'http://registry:8081', embeddedRegistry: false,
      saslMechanism: 'scram-sha-512', saslUsername: 'herald', saslPassword: 's3cret',
      ssl: true, partitions: 12, instanceId: 'herald-a',
    });
  });

  it('trims whitespace around values', () => {
    expect(loadConfig({ HERALD_HTTP_PORT: ' 9090 ', HERALD_LOG_LEVEL: ' debug ' })).toMatchObject({ httpPort: 9090, logLevel: 'debug' });
  });

  it.each([['1', true], ['0', false], ['true', true], ['false', false]])('reads KAFKA_SSL=%s as %s', (raw, want) => {
    expect(loadConfig({ KAFKA_SSL: raw }).ssl).toBe(want);
  });

  it('accepts the bounds of an integer range', () => {
    expect(loadConfig({ HERALD_HTTP_PORT: '0' }).httpPort).toBe(0);
    expect(loadConfig({ HERALD_HTTP_PORT: '65535' }).httpPort).toBe(65535);
  });

  it('lets overrides win over the environment, validated the same way', () => {
    expect(loadConfig({ HERALD_HTTP_PORT: '9090' }, { httpPort: 0, stateBackend: 'memory' })).toMatchObject({ httpPort: 0, stateBackend: 'memory' });
    expect(configError(() => loadConfig({}, { httpPort: 'x' })).message).toContain('HERALD_HTTP_PORT');
  });
});

describe('loadConfig errors', () => {
  it('rejects HERALD_HTTP_PORT=abc naming the variable, the range and the value', () => {
    const err = configError(() => loadConfig({ HERALD_HTTP_PORT: 'abc' }));
    expect(err.message).toContain('HERALD_HTTP_PORT');
    expect(err.message).toContain('[0, 65535]');
    expect(err.message).toContain('"abc"');
  });

  it.each([
    ['HERALD_HTTP_PORT', '70000'],
    ['HERALD_HTTP_PORT', '-1'],
    ['HERALD_PARTITIONS', '0'],
    ['HERALD_PARTITIONS', '2.5'],
    ['HERALD_MAX_PAYLOAD_BYTES', '100'],
    ['HERALD_DELIVERY_TIMEOUT_MS', '1e4'],
  ])('rejects %s=%s', (name, value) => {
    expect(configError(() => loadConfig({ [name]: value })).message).toContain(name);
  });

  it('lists the allowed values of an enum', () => {
    // given an unknown log level
    const err = configError(() => loadConfig({ HERALD_LOG_LEVEL: 'verbose' }));
    // then every allowed level is listed
    expect(err.message).toContain('HERALD_LOG_LEVEL');
    for (const level of ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']) expect(err.message).toContain(`"${level}"`);
    expect(err.message).toContain('"verbose"');
  });

  it('lists the allowed state backends', () => {
    const err = configError(() => loadConfig({ HERALD_STATE_BACKEND: 'redis' }));
    expect(err.message).toContain('HERALD_STATE_BACKEND');
    expect(err.message).toContain('"rocksdb", "level", "memory"');
  });

  it('takes a metrics token a bearer credential can carry, and refuses one with spaces', () => {
    expect(loadConfig({ HERALD_METRICS_TOKEN: 'abc-DEF_0.9~+/==' }).metricsToken).toBe('abc-DEF_0.9~+/==');
    expect(configError(() => loadConfig({ HERALD_METRICS_TOKEN: 'two words' })).message).toMatch(/^HERALD_METRICS_TOKEN: expected letters, digits/);
  });

  it('rejects a boolean that is not true/false/1/0', () => {
    const err = configError(() => loadConfig({ KAFKA_SSL: 'yes' }));
    expect(err.message).toContain('KAFKA_SSL');
    expect(err.message).toContain('true or false');
  });

  it('refuses the development signing secret where webhooks go to real receivers only: read-only commands need none', async () => {
    // given real brokers and the public development signing secret
    const config = loadConfig({ KAFKA_BROKERS: 'kafka-1:9092' });
    // then a start that delivers is refused, naming the variable, before it reaches a broker
    const { startHerald } = await import('../app/herald.ts');
    await expect(startHerald({ config, stages: ['deliver'], api: false })).rejects.toMatchObject({ code: 'HRL_CONFIG_INVALID', message: expect.stringMatching(/^HERALD_WEBHOOK_SECRET: the default development secret cannot sign webhooks against a real cluster/) });
    // and an empty secret (or an empty part of `new,old`) is refused too, embedded or not
    for (const secret of ['', 'mine-0123456789,', ' , old']) {
      await expect(startHerald({ config: loadConfig({ HERALD_WEBHOOK_SECRET: secret }), stages: ['deliver'], api: false })).rejects.toMatchObject({ code: 'HRL_CONFIG_INVALID', message: expect.stringMatching(/^HERALD_WEBHOOK_SECRET: expected a secret \(or `new,old` while rotating\), got an empty (value|part)/) });
    }
    // and a command that signs nothing runs: `describe` prints the topology
    const { execFileSync } = await import('node:child_process');
    const out = execFileSync(process.execPath, ['cli/herald.ts', 'describe'], { env: { ...process.env, KAFKA_BROKERS: 'kafka-1:9092', HERALD_WEBHOOK_SECRET: 'herald-dev-secret' }, encoding: 'utf8' });
    expect(out).toContain('herald.events.v1');
  });

  it('rejects a SASL mechanism without brokers (the embedded broker takes no SASL)', () => {
    // given SASL settings but no KAFKA_BROKERS
    const err = configError(() => loadConfig({ KAFKA_SASL_MECHANISM: 'plain', KAFKA_SASL_USERNAME: 'herald' }));
    // then the error names the mechanism and asks for brokers
    expect(err.message).toContain('KAFKA_SASL_MECHANISM');
    expect(err.message).toContain('KAFKA_BROKERS');
  });

  it('rejects a SASL mechanism without a user name', () => {
    const err = configError(() => loadConfig({ ...TEST_ENV, KAFKA_BROKERS: 'kafka:9092', KAFKA_SASL_MECHANISM: 'plain' }));
    expect(err.message).toContain('KAFKA_SASL_USERNAME');
  });

  it('rejects an unknown SASL mechanism, listing the supported ones', () => {
    const err = configError(() => loadConfig({ ...TEST_ENV, KAFKA_BROKERS: 'kafka:9092', KAFKA_SASL_MECHANISM: 'gssapi', KAFKA_SASL_USERNAME: 'u' }));
    expect(err.message).toContain('KAFKA_SASL_MECHANISM');
    expect(err.message).toContain('"scram-sha-256"');
  });
});

describe('HERALD_SMTP_URL', () => {
  it('takes smtp:// and smtps:// URLs, with or without credentials', () => {
    expect(loadConfig({ HERALD_SMTP_URL: 'smtps://mailer:pw@smtp.example.com:465' }).smtpUrl).toBe('smtps://mailer:pw@smtp.example.com:465');
    expect(loadConfig({ HERALD_SMTP_URL: 'smtp://127.0.0.1:2525' }).smtpUrl).toBe('smtp://127.0.0.1:2525');
  });

  it('refuses anything else at start-up, naming what is wrong and never the value (it may hold a password)', () => {
    for (const bad of ['mailuser:s3cretpw@127.0.0.1:2525', 'notaurl', 'https://user:s3cretpw@smtp.example.com']) {
      const err = configError(() => loadConfig({ HERALD_SMTP_URL: bad }));
      expect(err.message).toMatch(/^HERALD_SMTP_URL: expected smtp:\/\/\[user:password@\]host\[:port\] or smtps:\/\//);
      expect(err.message).not.toContain('s3cretpw');
      expect(err.message).not.toContain(bad);
    }
    expect(configError(() => loadConfig({ HERALD_SMTP_URL: 'https://user:s3cretpw@smtp.example.com' })).message).toContain('its scheme is "https"');
  });
});

describe('the public development webhook secret', () => {
  it('is found alone and inside a `new,old` rotation list, where it still signs', () => {
    expect(signsWithDefaultSecret('herald-dev-secret')).toBe(true);
    expect(signsWithDefaultSecret('mine-0123456789, herald-dev-secret')).toBe(true);
    expect(signsWithDefaultSecret('mine-0123456789,older-secret')).toBe(false);
    expect(signsWithDefaultSecret('herald-dev-secret-not')).toBe(false);
  });
});
