/**
 * pino, JSON, with personal data and secrets redacted before anything is written.
 * One child logger per stage (`logger.child({ stage })`).
 */
import pino, { type Logger } from 'pino';

export const REDACT_PATHS = [
  'email', '*.email', '*.*.email', 'phone', '*.phone', '*.*.phone',
  'address', '*.address', 'webhookUrl', '*.webhookUrl', '*.*.webhookUrl', 'chatWebhookUrl', '*.chatWebhookUrl',
  'password', '*.password', 'secret', '*.secret', 'token', '*.token',
  'headers.authorization', '*.headers.authorization', 'saslPassword', 'webhookSecret', '*.saslPassword', '*.webhookSecret', 'metricsToken', '*.metricsToken',
];

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { app: 'herald' },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      // Errors are logged as objects: type, message, stack, code, and the cause chain.
      serializers: { err: pino.stdSerializers.errWithCause },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination ?? pino.destination({ dest: 2, sync: false }),
  );
}

export type { Logger };
