// Builds the embedded broker launcher (embedded/mock-cluster.c) against Debian's
// librdkafka. Runs on `npm install` / `npm ci`. When librdkafka-dev is missing it is
// installed with apt-get if we are root on Debian/Ubuntu; otherwise we print the exact
// command and leave the build to be retried at start-up. Never fails the install: a
// user with KAFKA_BROKERS set does not need the embedded broker at all.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const src = join(root, 'embedded', 'mock-cluster.c');
const out = join(root, 'build', 'herald-mock-cluster');
const header = '/usr/include/librdkafka/rdkafka_mock.h';
const INSTALL_HINT = 'apt-get update && apt-get install -y librdkafka-dev gcc';

export function launcherPath() {
  return out;
}

function have(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

export function buildLauncher({ quiet = false } = {}) {
  const log = (m) => { if (!quiet) console.log(`[herald] ${m}`); };
  if (existsSync(out) && statSync(out).mtimeMs >= statSync(src).mtimeMs) return { ok: true, path: out };
  if (!existsSync(header) || !have('cc')) {
    const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
    if (isRoot && have('apt-get')) {
      log('librdkafka-dev is missing: installing it with apt-get (embedded broker)');
      const r = spawnSync('sh', ['-c', 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq librdkafka-dev gcc'], { stdio: 'inherit' });
      if (r.status !== 0) return { ok: false, reason: `apt-get failed; run: ${INSTALL_HINT}` };
    } else {
      return { ok: false, reason: `librdkafka-dev (with ${header}) and a C compiler are needed for the embedded broker. Install them with: sudo sh -c '${INSTALL_HINT}'  — or set KAFKA_BROKERS to use a real Kafka cluster.` };
    }
  }
  mkdirSync(dirname(out), { recursive: true });
  try {
    execFileSync('cc', ['-O2', '-Wall', '-pthread', '-o', out, src, '-lrdkafka'], { stdio: quiet ? 'pipe' : 'inherit' });
  } catch (e) {
    return { ok: false, reason: `compiling ${src} failed (${e.message}); check that librdkafka-dev is installed: ${INSTALL_HINT}` };
  }
  log(`built embedded broker launcher ${out}`);
  return { ok: true, path: out };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const r = buildLauncher();
  if (!r.ok) console.warn(`[herald] embedded broker not built: ${r.reason}`);
}
