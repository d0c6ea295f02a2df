/**
 * Notification rules: event type -> category, priority, channels (in fallback order),
 * templates per channel and locale, dedupe key and window, expiry, and (version 2) rate
 * limits with what happens above them (defer, digest, drop). Loaded from a
 * versioned JSON file and validated at start-up; errors name the file, the path and
 * the expectation.
 */
import { readFileSync } from 'node:fs';
import { Ajv } from 'ajv';
import { HeraldError } from '../errors.ts';

export const CHANNELS = ['webhook', 'email', 'inapp', 'chat'] as const;
export type Channel = (typeof CHANNELS)[number];

export interface Template {
  subject?: string;
  body: string;
}

export const LIMIT_SCOPES = ['user', 'category', 'rule'] as const;
export type LimitScope = (typeof LIMIT_SCOPES)[number];

/** At most `max` notifications per `perMs` (sliding, in stream time) for one user, within `scope`. */
export interface Limit {
  scope: LimitScope;
  max: number;
  perMs: number;
  /** As written in the rules file, for reasons ("10 per 1h"). */
  text: string;
}

export interface DigestSpec {
  windowMs: number;
  /** Fields that name the digest a notification joins (as dedupe key fields). */
  keyFields: string[];
  maxItems: number;
  /** channel -> locale -> template; the view has `count` and `items` (each item's data, actor and ids). */
  templates: Partial<Record<Channel, Record<string, Template>>>;
}

export interface Throttle {
  /** The rule's own limits; the file's top-level limits apply too (RuleSet.limitsFor). */
  limits: Limit[];
  onExceed: 'defer' | 'digest' | 'drop';
  digest: DigestSpec | null;
}

export interface Rule {
  id: string;
  eventType: string;
  category: string;
  priority: 'LOW' | 'NORMAL' | 'HIGH' | 'CRITICAL';
  channels: Channel[];
  /** channel -> locale -> template; locale "en" is the fallback. */
  templates: Partial<Record<Channel, Record<string, Template>>>;
  /** null: the rule dedupes nothing but repeats of an event's idempotencyKey (for 24 h). */
  dedupe: { keyFields: string[]; windowMs: number } | null;
  expiresInMs: number | null;
  throttle: Throttle;
  /** `all` sends on every reachable channel; `first` tries them in order and falls back on a permanent failure. */
  strategy: 'all' | 'first';
  /** Delivery attempts and how long to keep retrying; null = the configured defaults. */
  retry: { maxAttempts: number | null; maxAgeMs: number | null };
}

const DURATION = '^[0-9]+(ms|s|m|h|d)$';

const TEMPLATES_SCHEMA = {
  type: 'object',
  propertyNames: { enum: [...CHANNELS] },
  additionalProperties: {
    type: 'object',
    required: ['en'],
    additionalProperties: {
      type: 'object',
      required: ['body'],
      additionalProperties: false,
      properties: { subject: { type: 'string' }, body: { type: 'string' } },
    },
  },
} as const;

const LIMITS_SCHEMA = {
  type: 'array',
  items: {
    type: 'object',
    required: ['scope', 'max', 'per'],
    additionalProperties: false,
    properties: { scope: { enum: [...LIMIT_SCOPES] }, max: { type: 'integer', minimum: 1, maximum: 100000 }, per: { type: 'string', pattern: '^[0-9]+(ms|s|m|h|d)$' } },
  },
} as const;

const RULES_SCHEMA = {
  type: 'object',
  required: ['version', 'rules'],
  additionalProperties: false,
  properties: {
    version: { enum: [1, 2] },
    limits: LIMITS_SCHEMA,
    rules: {
      type: 'array',
      items: {
        type: 'object',
        required: ['id', 'eventType', 'category', 'channels', 'templates'],
        additionalProperties: false,
        properties: {
          id: { type: 'string', pattern: '^[a-z0-9][a-z0-9._-]*$' },
          eventType: { type: 'string', minLength: 1 },
          category: { type: 'string', minLength: 1 },
          priority: { enum: ['LOW', 'NORMAL', 'HIGH', 'CRITICAL'] },
          channels: { type: 'array', minItems: 1, uniqueItems: true, items: { enum: [...CHANNELS] } },
          templates: TEMPLATES_SCHEMA,
          throttle: {
            type: 'object',
            additionalProperties: false,
            properties: {
              limits: LIMITS_SCHEMA,
              onExceed: { enum: ['defer', 'digest', 'drop'] },
              digest: {
                type: 'object',
                required: ['window', 'templates'],
                additionalProperties: false,
                properties: {
                  window: { type: 'string', pattern: DURATION },
                  key: { type: 'array', minItems: 1, items: { type: 'string', pattern: '^(recipient|eventType|tenant|actor|data(\\.[A-Za-z0-9_]+)+)$' } },
                  maxItems: { type: 'integer', minimum: 2, maximum: 1000 },
                  templates: TEMPLATES_SCHEMA,
                },
              },
            },
          },
          dedupe: {
            type: 'object',
            additionalProperties: false,
            properties: {
              keyFields: { type: 'array', minItems: 1, items: { type: 'string', pattern: '^(recipient|eventType|tenant|actor|data(\\.[A-Za-z0-9_]+)+)$' } },
              window: { type: 'string', pattern: DURATION },
            },
          },
          expiresIn: { type: 'string', pattern: DURATION },
          strategy: { enum: ['all', 'first'] },
          retry: {
            type: 'object',
            additionalProperties: false,
            properties: { maxAttempts: { type: 'integer', minimum: 1, maximum: 50 }, maxAge: { type: 'string', pattern: DURATION } },
          },
        },
      },
    },
  },
} as const;

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
export function parseDuration(s: string): number {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(s);
  if (!m) throw new HeraldError('HRL_RULES_INVALID', `"${s}": expected a duration like 30s, 15m, 24h`);
  return Number(m[1]) * (UNIT_MS[m[2]!] ?? 1);
}

export class RuleSet {
  private readonly byEventType = new Map<string, Rule[]>();
  readonly rules: readonly Rule[];
  readonly source: string;
  /** Top-level limits: every rule's notifications count against them. */
  readonly limits: readonly Limit[];

  constructor(rules: readonly Rule[], source: string, limits: readonly Limit[] = []) {
    this.rules = rules;
    this.source = source;
    this.limits = limits;
    for (const r of rules) this.byEventType.set(r.eventType, [...(this.byEventType.get(r.eventType) ?? []), r]);
  }
  /** Rules for an event type, in file order (one event may match several). */
  forEventType(type: string): readonly Rule[] {
    return this.byEventType.get(type) ?? [];
  }
  byId(id: string): Rule | undefined {
    return this.rules.find((r) => r.id === id);
  }
  /** Every limit a notification of `rule` counts against: the file's, then the rule's. */
  limitsFor(rule: Rule): Limit[] {
    return [...this.limits, ...rule.throttle.limits];
  }
  /** The longest window of any limit: how long admission times must be remembered. */
  get longestWindowMs(): number {
    return Math.max(0, ...this.limits.map((l) => l.perMs), ...this.rules.flatMap((r) => r.throttle.limits.map((l) => l.perMs)));
  }
}

function parseLimits(raw: { scope: LimitScope; max: number; per: string }[] | undefined): Limit[] {
  return (raw ?? []).map((l) => ({ scope: l.scope, max: l.max, perMs: parseDuration(l.per), text: `${l.max} per ${l.per}` }));
}

interface RawRule {
  id: string; eventType: string; category: string; priority?: Rule['priority']; channels: Channel[];
  templates: Rule['templates']; dedupe?: { keyFields?: string[]; window?: string }; expiresIn?: string;
  strategy?: Rule['strategy']; retry?: { maxAttempts?: number; maxAge?: string };
  throttle?: { limits?: { scope: LimitScope; max: number; per: string }[]; onExceed?: Throttle['onExceed']; digest?: { window: string; key?: string[]; maxItems?: number; templates: DigestSpec['templates'] } };
}

/** Parses and validates a rules document; `source` names the file in errors. */
export function parseRules(doc: unknown, source: string): RuleSet {
  const ajv = new Ajv({ allErrors: false, strict: false });
  const check = ajv.compile(RULES_SCHEMA);
  if (!check(doc)) {
    const e = check.errors![0]!;
    const path = e.instancePath || '(root)';
    const extra = e.params && 'additionalProperty' in e.params ? ` "${String(e.params.additionalProperty)}"` : '';
    const allowed = e.params && 'allowedValues' in e.params ? ` (${(e.params.allowedValues as unknown[]).join(', ')})` : '';
    const constant = e.params && 'allowedValue' in e.params ? ` ${JSON.stringify(e.params.allowedValue)}` : '';
    // For a bad key (propertyNames), ajv reports the key in a second error.
    const badKey = check.errors!.find((x) => x.params && 'propertyName' in x.params);
    const key = badKey ? ` "${String(badKey.params.propertyName)}"` : '';
    throw new HeraldError('HRL_RULES_INVALID', `${source}: ${path}:${key} ${e.message}${extra}${allowed}${constant}`);
  }
  const { rules: raw, version, limits: fileLimits } = doc as { rules: RawRule[]; version: 1 | 2; limits?: { scope: LimitScope; max: number; per: string }[] };
  if (version === 1) {
    const v2 = fileLimits ? '/limits' : raw.findIndex((r) => r.throttle) >= 0 ? `/rules/${raw.findIndex((r) => r.throttle)}/throttle` : null;
    if (v2) throw new HeraldError('HRL_RULES_INVALID', `${source}: ${v2}: limits and throttle need "version": 2`);
  }
  const ids = new Set<string>();
  const rules = raw.map((r, i): Rule => {
    if (ids.has(r.id)) throw new HeraldError('HRL_RULES_INVALID', `${source}: /rules/${i}/id: duplicate rule id "${r.id}"`);
    ids.add(r.id);
    for (const ch of r.channels) {
      if (!r.templates[ch]) throw new HeraldError('HRL_RULES_INVALID', `${source}: /rules/${i}/templates: expected a template for channel "${ch}"`);
    }
    const priority = r.priority ?? 'NORMAL';
    const onExceed = r.throttle?.onExceed ?? (r.throttle?.digest ? 'digest' : 'defer');
    if (onExceed === 'drop' && (priority === 'HIGH' || priority === 'CRITICAL')) {
      throw new HeraldError('HRL_RULES_INVALID', `${source}: /rules/${i}/throttle/onExceed: "drop" is refused for ${priority} rules (they must never be silently lost); use "defer" or "digest"`);
    }
    const d = r.throttle?.digest;
    if (onExceed === 'digest' && !d) throw new HeraldError('HRL_RULES_INVALID', `${source}: /rules/${i}/throttle/digest: expected a digest (window, templates) because onExceed is "digest"`);
    if (d) {
      for (const ch of r.channels) {
        if (!d.templates[ch]) throw new HeraldError('HRL_RULES_INVALID', `${source}: /rules/${i}/throttle/digest/templates: expected a template for channel "${ch}"`);
      }
    }
    return {
      id: r.id,
      eventType: r.eventType,
      category: r.category,
      priority,
      channels: r.channels,
      templates: r.templates,
      dedupe: r.dedupe ? { keyFields: r.dedupe.keyFields ?? ['recipient', 'eventType', 'data.id'], windowMs: parseDuration(r.dedupe.window ?? '24h') } : null,
      expiresInMs: r.expiresIn ? parseDuration(r.expiresIn) : null,
      strategy: r.strategy ?? 'all',
      retry: { maxAttempts: r.retry?.maxAttempts ?? null, maxAgeMs: r.retry?.maxAge ? parseDuration(r.retry.maxAge) : null },
      throttle: {
        limits: parseLimits(r.throttle?.limits),
        onExceed,
        digest: d ? { windowMs: parseDuration(d.window), keyFields: d.key ?? ['recipient', 'eventType'], maxItems: d.maxItems ?? 50, templates: d.templates } : null,
      },
    };
  });
  return new RuleSet(rules, source, parseLimits(fileLimits));
}

export function loadRules(file: string): RuleSet {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new HeraldError('HRL_RULES_INVALID', `${file}: cannot read the rules file (${(err as Error).message}); point HERALD_RULES (or --rules) at a rules file such as rules/default.json`, { cause: err });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new HeraldError('HRL_RULES_INVALID', `${file}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  return parseRules(doc, file);
}
