/** Unit tests of rules/rules.ts: loading the default rules, validation errors, durations. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { HeraldError } from '../errors.ts';
import { CHANNELS, loadRules, parseDuration, parseRules } from '../rules/rules.ts';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const defaultRules = join(root, 'rules', 'default.json');
const SOURCE = 'rules/under-test.json';

/** A minimal valid rule; tests change one thing at a time. */
function rule(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: 'comment-created',
    eventType: 'comment.created',
    category: 'collaboration',
    channels: ['webhook'],
    templates: { webhook: { en: { subject: 'New comment', body: '{{actor}} commented' } } },
    ...over,
  };
}
const doc = (...rules: Record<string, unknown>[]) => ({ version: 1, rules });

function rulesError(fn: () => unknown): HeraldError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(HeraldError);
    expect((err as HeraldError).code).toBe('HRL_RULES_INVALID');
    return err as HeraldError;
  }
  throw new Error('expected HRL_RULES_INVALID, but nothing was thrown');
}

describe('loadRules(rules/default.json)', () => {
  const set = loadRules(defaultRules);

  it('loads and remembers its source', () => {
    expect(set.rules.length).toBeGreaterThan(0);
    expect(set.source).toBe(defaultRules);
  });

  it('has a rule for comment.created with its channels, templates and dedupe settings', () => {
    // when the rules for comment.created are looked up
    const [r, ...more] = set.forEventType('comment.created');
    // then there is exactly one, fully parsed
    expect(more).toEqual([]);
    expect(r).toBeDefined();
    expect(r!.id).toBe('comment-created');
    expect(r!.category).toBe('collaboration');
    expect(r!.priority).toBe('NORMAL');
    expect(r!.channels).toEqual(['webhook', 'email', 'inapp']);
    expect(r!.templates.webhook?.en?.body).toContain('{{actor}}');
    expect(r!.templates.webhook?.de).toBeDefined();
    expect(r!.dedupe).toEqual({ keyFields: ['recipient', 'data.commentId'], windowMs: 24 * 3_600_000 });
    expect(r!.expiresInMs).toBe(7 * 86_400_000);
  });

  it.each([
    ['pull_request.review_requested', 'pr-review-requested', 'HIGH'],
    ['billing.invoice_paid', 'invoice-paid', 'NORMAL'],
    ['agent.task_completed', 'agent-task-completed', 'LOW'],
    ['security.new_login', 'security-new-login', 'CRITICAL'],
  ])('has a rule for %s', (eventType, id, priority) => {
    const rules = set.forEventType(eventType);
    expect(rules.map((r) => r.id)).toEqual([id]);
    expect(rules[0]!.priority).toBe(priority);
    expect(set.byId(id)?.eventType).toBe(eventType);
  });

  it('gives every listed channel an English template', () => {
    for (const r of set.rules) {
      for (const ch of r.channels) {
        expect(CHANNELS).toContain(ch);
        expect(r.templates[ch]?.en?.body, `${r.id}/${ch}`).toEqual(expect.any(String));
      }
    }
  });

  it('leaves expiry null when a rule sets none', () => {
    expect(set.byId('invoice-paid')?.expiresInMs).toBeNull();
  });

  it('returns no rules for an unknown event type and undefined for an unknown id', () => {
    expect(set.forEventType('no.such.event')).toEqual([]);
    expect(set.byId('no-such-rule')).toBeUndefined();
  });
});

describe('loadRules errors', () => {
  const dir = mkdtempSync(join(tmpdir(), 'herald-rules-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('names a file that cannot be read and the variable to set', () => {
    const file = join(dir, 'missing.json');
    const err = rulesError(() => loadRules(file));
    expect(err.message).toContain(file);
    expect(err.message).toContain('HERALD_RULES');
  });

  it('names a file that is not JSON', () => {
    const file = join(dir, 'broken.json');
    writeFileSync(file, '{ "version": 1, ');
    const err = rulesError(() => loadRules(file));
    expect(err.message).toContain(file);
    expect(err.message).toContain('not valid JSON');
  });

  it('names the file in schema errors', () => {
    const file = join(dir, 'bad.json');
    writeFileSync(file, JSON.stringify(doc(rule({ channels: ['sms'] }))));
    const err = rulesError(() => loadRules(file));
    expect(err.message).toContain(`${file}: /rules/0/channels/0`);
  });
});

describe('parseRules', () => {
  it('applies defaults: priority NORMAL, no dedupe, no expiry; a dedupe block without keyFields keys on recipient, event type and data.id for 24 h', () => {
    // given a rule that sets only the required fields
    const set = parseRules(doc(rule()), SOURCE);
    // then the defaults are filled in
    expect(set.rules).toEqual([{
      id: 'comment-created', eventType: 'comment.created', category: 'collaboration', priority: 'NORMAL',
      channels: ['webhook'], templates: { webhook: { en: { subject: 'New comment', body: '{{actor}} commented' } } },
      dedupe: null, expiresInMs: null,
      throttle: { limits: [], onExceed: 'defer', digest: null }, strategy: 'all', retry: { maxAttempts: null, maxAgeMs: null },
    }]);
    expect(set.source).toBe(SOURCE);
    expect(parseRules(doc(rule({ dedupe: {} })), SOURCE).rules[0]!.dedupe).toEqual({ keyFields: ['recipient', 'eventType', 'data.id'], windowMs: 86_400_000 });
  });

  it('keeps several rules for one event type in file order', () => {
    const set = parseRules(doc(rule({ id: 'b-second' }), rule({ id: 'a-first', channels: ['webhook'] })), SOURCE);
    expect(set.forEventType('comment.created').map((r) => r.id)).toEqual(['b-second', 'a-first']);
  });

  it('rejects an unknown channel, naming the source, the JSON path and the allowed values', () => {
    // given channel "sms"
    const err = rulesError(() => parseRules(doc(rule({ channels: ['sms'] })), SOURCE));
    // then the error points at the channel
    expect(err.message).toContain(SOURCE);
    expect(err.message).toContain('/rules/0/channels/0');
    expect(err.message).toContain('webhook, email, inapp, chat');
  });

  it('rejects a listed channel without a template', () => {
    // given a rule that lists email but has only a webhook template
    const err = rulesError(() => parseRules(doc(rule({ channels: ['webhook', 'email'] })), SOURCE));
    // then the error names the templates path and the channel
    expect(err.message).toContain(`${SOURCE}: /rules/0/templates`);
    expect(err.message).toContain('"email"');
  });

  it('rejects a template without the English fallback', () => {
    const err = rulesError(() => parseRules(doc(rule({ templates: { webhook: { de: { body: 'Hallo' } } } })), SOURCE));
    expect(err.message).toContain('/rules/0/templates/webhook');
    expect(err.message).toContain("'en'");
  });

  it('rejects a duplicate rule id at the second occurrence', () => {
    // given two rules with the same id
    const err = rulesError(() => parseRules(doc(rule(), rule({ eventType: 'other.event' })), SOURCE));
    // then the later one is named
    expect(err.message).toContain(`${SOURCE}: /rules/1/id`);
    expect(err.message).toContain('duplicate');
    expect(err.message).toContain('"comment-created"');
  });

  it('rejects a window duration like "24 hours"', () => {
    const err = rulesError(() => parseRules(doc(rule({ dedupe: { window: '24 hours' } })), SOURCE));
    expect(err.message).toContain(`${SOURCE}: /rules/0/dedupe/window`);
    expect(err.message).toContain('must match pattern');
  });

  it('rejects a bad expiresIn duration', () => {
    const err = rulesError(() => parseRules(doc(rule({ expiresIn: '1w' })), SOURCE));
    expect(err.message).toContain('/rules/0/expiresIn');
  });

  it('rejects a dedupe key field outside the allowed set', () => {
    const err = rulesError(() => parseRules(doc(rule({ dedupe: { keyFields: ['data'] } })), SOURCE));
    expect(err.message).toContain('/rules/0/dedupe/keyFields/0');
  });

  it('rejects an unknown property and names it', () => {
    const err = rulesError(() => parseRules(doc(rule({ retries: 3 })), SOURCE));
    expect(err.message).toContain('/rules/0');
    expect(err.message).toContain('"retries"');
  });

  it('rejects an unknown priority and lists the allowed ones', () => {
    const err = rulesError(() => parseRules(doc(rule({ priority: 'URGENT' })), SOURCE));
    expect(err.message).toContain('/rules/0/priority');
    expect(err.message).toContain('LOW, NORMAL, HIGH, CRITICAL');
  });

  it('rejects an empty or repeated channel list', () => {
    expect(rulesError(() => parseRules(doc(rule({ channels: [] })), SOURCE)).message).toContain('/rules/0/channels');
    expect(rulesError(() => parseRules(doc(rule({ channels: ['webhook', 'webhook'] })), SOURCE)).message).toContain('/rules/0/channels');
  });

  it('rejects a badly formed rule id', () => {
    expect(rulesError(() => parseRules(doc(rule({ id: 'Comment Created' })), SOURCE)).message).toContain('/rules/0/id');
  });

  it('rejects a missing or unsupported version, pointing at the root or /version', () => {
    expect(rulesError(() => parseRules({ rules: [] }, SOURCE)).message).toContain(`${SOURCE}: (root)`);
    expect(rulesError(() => parseRules({ version: 3, rules: [] }, SOURCE)).message).toContain(`${SOURCE}: /version`);
  });

  it('rejects a document that is not an object', () => {
    expect(rulesError(() => parseRules(null, SOURCE)).message).toContain(`${SOURCE}: (root)`);
  });

  it('turns window and expiresIn into milliseconds', () => {
    const set = parseRules(doc(rule({ dedupe: { keyFields: ['recipient', 'data.commentId'], window: '15m' }, expiresIn: '2d' })), SOURCE);
    expect(set.rules[0]!.dedupe).toEqual({ keyFields: ['recipient', 'data.commentId'], windowMs: 900_000 });
    expect(set.rules[0]!.expiresInMs).toBe(172_800_000);
  });
});

describe('parseDuration', () => {
  it.each([
    ['250ms', 250],
    ['30s', 30_000],
    ['15m', 900_000],
    ['24h', 86_400_000],
    ['7d', 604_800_000],
    ['0s', 0],
  ])('%s is %i ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each(['24 hours', '1w', '', '-5s', '1.5h', 'h', '10'])('rejects %j naming the text', (text) => {
    const err = rulesError(() => parseDuration(text));
    expect(err.message).toContain(`"${text}"`);
    expect(err.message).toContain('expected a duration');
  });
});

describe('rules errors name the offending key and constant', () => {
  const base = { id: 'a', eventType: 'x', category: 'c', channels: ['webhook'], templates: { webhook: { en: { body: 'b' } } } };
  it('names an unknown template channel', () => {
    expect(() => parseRules({ version: 1, rules: [{ ...base, templates: { ...base.templates, sms: { en: { body: 'x' } } } }] }, 'f.json')).toThrow('f.json: /rules/0/templates: "sms"');
  });
  it('names the expected versions', () => {
    expect(() => parseRules({ version: 3, rules: [] }, 'f.json')).toThrow('/version: must be equal to one of the allowed values (1, 2)');
  });
});

describe('rules version 2: limits and throttle', () => {
  const v2 = (over: Record<string, unknown> = {}, top: Record<string, unknown> = {}) => ({ version: 2, ...top, rules: [{ id: 'r', eventType: 'x', category: 'c', channels: ['webhook'], templates: { webhook: { en: { body: 'b' } } }, ...over }] });

  it('reads top-level and per-rule limits, in the order they apply', () => {
    const set = parseRules(v2({ throttle: { limits: [{ scope: 'category', max: 3, per: '10m' }], onExceed: 'drop' } }, { limits: [{ scope: 'user', max: 50, per: '1d' }] }), 'f.json');
    expect(set.limitsFor(set.rules[0]!).map((l) => [l.scope, l.max, l.perMs, l.text])).toEqual([['user', 50, 86_400_000, '50 per 1d'], ['category', 3, 600_000, '3 per 10m']]);
    expect(set.rules[0]!.throttle.onExceed).toBe('drop');
    expect(set.longestWindowMs).toBe(86_400_000);
  });

  it('refuses drop for HIGH and CRITICAL rules, naming the path', () => {
    for (const priority of ['HIGH', 'CRITICAL']) {
      expect(() => parseRules(v2({ priority, throttle: { onExceed: 'drop' } }), 'f.json')).toThrow(`f.json: /rules/0/throttle/onExceed: "drop" is refused for ${priority} rules`);
    }
  });

  it('needs version 2 for limits, and a digest with a template per channel for onExceed digest', () => {
    expect(() => parseRules({ ...v2({ throttle: { onExceed: 'drop' } }), version: 1 }, 'f.json')).toThrow('f.json: /rules/0/throttle: limits and throttle need "version": 2');
    expect(() => parseRules(v2({ throttle: { onExceed: 'digest' } }), 'f.json')).toThrow('/rules/0/throttle/digest: expected a digest');
    expect(() => parseRules(v2({ throttle: { digest: { window: '30m', templates: { email: { en: { body: 'x' } } } } } }), 'f.json')).toThrow('/rules/0/throttle/digest/templates: expected a template for channel "webhook"');
    const ok = parseRules(v2({ throttle: { digest: { window: '30m', key: ['recipient', 'data.documentId'], templates: { webhook: { en: { body: '{{count}}' } } } } } }), 'f.json');
    expect(ok.rules[0]!.throttle).toMatchObject({ onExceed: 'digest', digest: { windowMs: 1_800_000, keyFields: ['recipient', 'data.documentId'], maxItems: 50 } });
  });
});
