/**
 * Notification rules: event type -> category, priority, channels (in fallback order),
 * templates per channel and locale, dedupe key and window, expiry. Loaded from a
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

export interface Rule {
  id: string;
  eventType: string;
  category: string;
  priority: 'LOW' | 'NORMAL' | 'HIGH' | 'CRITICAL';
  channels: Channel[];
  /** channel -> locale -> template; locale "en" is the fallback. */
  templates: Partial<Record<Channel, Record<string, Template>>>;
  dedupe: { keyFields: string[]; windowMs: number };
  expiresInMs: number | null;
}

const DURATION = '^[0-9]+(ms|s|m|h|d)$';

const RULES_SCHEMA = {
  type: 'object',
  required: ['version', 'rules'],
  additionalProperties: false,
  properties: {
    version: { const: 1 },
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
          templates: {
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

  constructor(rules: readonly Rule[], source: string) {
    this.rules = rules;
    this.source = source;
    for (const r of rules) this.byEventType.set(r.eventType, [...(this.byEventType.get(r.eventType) ?? []), r]);
  }
  /** Rules for an event type, in file order (one event may match several). */
  forEventType(type: string): readonly Rule[] {
    return this.byEventType.get(type) ?? [];
  }
  byId(id: string): Rule | undefined {
    return this.rules.find((r) => r.id === id);
  }
}

interface RawRule {
  id: string; eventType: string; category: string; priority?: Rule['priority']; channels: Channel[];
  templates: Rule['templates']; dedupe?: { keyFields?: string[]; window?: string }; expiresIn?: string;
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
  const raw = (doc as { rules: RawRule[] }).rules;
  const ids = new Set<string>();
  const rules = raw.map((r, i): Rule => {
    if (ids.has(r.id)) throw new HeraldError('HRL_RULES_INVALID', `${source}: /rules/${i}/id: duplicate rule id "${r.id}"`);
    ids.add(r.id);
    for (const ch of r.channels) {
      if (!r.templates[ch]) throw new HeraldError('HRL_RULES_INVALID', `${source}: /rules/${i}/templates: expected a template for channel "${ch}"`);
    }
    return {
      id: r.id,
      eventType: r.eventType,
      category: r.category,
      priority: r.priority ?? 'NORMAL',
      channels: r.channels,
      templates: r.templates,
      dedupe: { keyFields: r.dedupe?.keyFields ?? ['recipient', 'eventType', 'data.id'], windowMs: parseDuration(r.dedupe?.window ?? '24h') },
      expiresInMs: r.expiresIn ? parseDuration(r.expiresIn) : null,
    };
  });
  return new RuleSet(rules, source);
}

export function loadRules(file: string): RuleSet {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new HeraldError('HRL_RULES_INVALID', `${file}: cannot read the rules file (${(err as Error).message}); set HERALD_RULES`, { cause: err });
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new HeraldError('HRL_RULES_INVALID', `${file}: not valid JSON (${(err as Error).message})`, { cause: err });
  }
  return parseRules(doc, file);
}
