/**
 * The import graph between folders has no cycle (type-only imports count too): the
 * runtime knows no stage, the stages know no assembly, the API knows only its ports, and
 * only deliver (through channels/) reaches the outside world.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative, sep } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = process.cwd();
const SKIP = new Set(['node_modules', 'test', 'build', '.git', 'bench']);

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) return SKIP.has(name) ? [] : files(p);
    return /\.(ts|mts|mjs)$/.test(name) && !name.endsWith('.d.ts') ? [p] : [];
  });
}

/** A top-level file is its own node; anything in a folder belongs to its top folder. */
const nodeOf = (file: string) => {
  const rel = relative(ROOT, file);
  return rel.includes(sep) ? rel.split(sep)[0]! : rel;
};

function folderGraph(): Map<string, Map<string, string>> {
  const graph = new Map<string, Map<string, string>>();
  for (const file of files(ROOT)) {
    const from = nodeOf(file);
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*)'(\.{1,2}\/[^']+)'/g)) {
      const to = nodeOf(normalize(join(dirname(file), m[1]!)));
      if (to === from) continue;
      const edges = graph.get(from) ?? new Map<string, string>();
      edges.set(to, relative(ROOT, file));
      graph.set(from, edges);
    }
  }
  return graph;
}

function cycles(graph: Map<string, Map<string, string>>): string[] {
  const found: string[] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const stack: string[] = [];
  const visit = (n: string) => {
    state.set(n, 'visiting');
    stack.push(n);
    for (const [to, via] of graph.get(n) ?? []) {
      if (state.get(to) === 'visiting') found.push(`${[...stack.slice(stack.indexOf(to)), to].join(' -> ')} (edge ${n} -> ${to} from ${via})`);
      else if (!state.has(to)) visit(to);
    }
    stack.pop();
    state.set(n, 'done');
  };
  for (const n of [...graph.keys()].sort()) if (!state.has(n)) visit(n);
  return found;
}

describe('module structure', () => {
  const graph = folderGraph();

  it('has no import cycle between folders', () => {
    expect(cycles(graph)).toEqual([]);
  });

  it('finds a cycle when there is one (the check itself works)', () => {
    const g = new Map([['a', new Map([['b', 'a/x.ts']])], ['b', new Map([['a', 'b/y.ts']])]]);
    expect(cycles(g)).toHaveLength(1);
  });

  it('keeps the runtime free of stages, the API and the assembly', () => {
    const runtimeDeps = [...(graph.get('runtime')?.keys() ?? [])];
    for (const forbidden of ['processors', 'api', 'app', 'channels', 'cli']) expect(runtimeDeps).not.toContain(forbidden);
  });

  it('keeps the pure stages free of I/O: only deliver imports channels/', () => {
    const offenders = files(join(ROOT, 'processors'))
      .filter((f) => !f.endsWith(`${sep}deliver.ts`) && !f.endsWith(`${sep}index.ts`))
      .filter((f) => /from '(\.\.\/channels\/|node:(http|https|net|fs|dgram|child_process)|kafkajs)/.test(readFileSync(f, 'utf8')))
      .map((f) => relative(ROOT, f));
    expect(offenders).toEqual([]);
  });
});
