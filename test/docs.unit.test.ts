/** The README documents exactly the error codes and configuration variables that exist. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { CONFIG_KEYS } from '../config.ts';
import { ERROR_CODES } from '../errors.ts';

const readme = readFileSync('README.md', 'utf8');

describe('README', () => {
  it('lists every error code, and no code that does not exist', () => {
    const documented = new Set([...readme.matchAll(/`(HRL_[A-Z_]+)`/g)].map((m) => m[1]));
    expect([...documented].sort()).toEqual(Object.keys(ERROR_CODES).sort());
  });

  it('documents every configuration variable', () => {
    const missing = Object.values(CONFIG_KEYS).map((k) => k.env).filter((env) => !readme.includes(`\`${env}\``));
    expect(missing).toEqual([]);
  });
});

describe('README lifecycle vocabulary', () => {
  it('lists exactly the statuses (with terminal) and reason codes of schemas/lifecycle.ts', async () => {
    const { REASON_CODES, STATUSES } = await import('../schemas/lifecycle.ts');
    const statuses = [...readme.matchAll(/^\| `([A-Z_]+)` \| (yes|no) \|/gm)].map((m) => [m[1], m[2] === 'yes']);
    expect(statuses).toEqual(Object.entries(STATUSES).map(([k, v]) => [k, v.terminal]));
    const codes = [...readme.matchAll(/^\| `([a-z_]+)` \| /gm)].map((m) => m[1]);
    expect(codes).toEqual(Object.keys(REASON_CODES));
  });
});
