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
