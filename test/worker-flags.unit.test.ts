/** A worker's Node flags: the primary's, with the heap sized by HERALD_HEAP_MB. */
import { describe, expect, it } from 'vitest';
import { SEMI_SPACE_MB, workerExecArgv } from '../app/workers.ts';

describe('workerExecArgv', () => {
  it('keeps the primary\'s other flags and replaces its heap sizes with HERALD_HEAP_MB\'s', () => {
    expect(workerExecArgv(['--max-old-space-size=4096', '--enable-source-maps', '--max-semi-space-size=64', '--cpu-prof'], 300))
      .toEqual(['--enable-source-maps', '--cpu-prof', '--max-old-space-size=300', `--max-semi-space-size=${SEMI_SPACE_MB}`]);
  });

  it('sizes the heap of a worker whose primary was started without heap flags', () => {
    expect(workerExecArgv([], 256)).toEqual(['--max-old-space-size=256', `--max-semi-space-size=${SEMI_SPACE_MB}`]);
  });

  it('leaves flags that only start like a heap flag alone', () => {
    expect(workerExecArgv(['--max-old-space-size-percentage=50'], 256)).toEqual(['--max-old-space-size-percentage=50', '--max-old-space-size=256', `--max-semi-space-size=${SEMI_SPACE_MB}`]);
  });
});
