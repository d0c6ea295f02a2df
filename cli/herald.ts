#!/usr/bin/env node
/**
 * The `herald` command line. `start` runs everything in one process on the embedded
 * default (or against KAFKA_BROKERS); `run` runs chosen stages; `topics create` and
 * `schemas register|check` provision real clusters; `describe` prints the topology.
 */
import { constants as osConstants } from 'node:os';
import { Command, Option } from 'commander';
import { CONFIG_KEYS, loadConfig } from '../config.ts';
import { HeraldError } from '../errors.ts';
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { runningHerald, startHerald } from '../app/herald.ts';
import { createLogger } from '../runtime/logger.ts';
import { STAGE_NAMES, type StageName, describe, topicName } from '../topology.ts';
import type { HeraldConfig } from '../config.ts';

const topicNameOf = (config: HeraldConfig, key: 'outcomes') => topicName(config.topicPrefix, key);
import { runDemo } from './demo.ts';
import { fetchLifecycle, formatEvent, getApi, formatLifecycle, scanLifecycle, scanLifecycles, tail } from './explain.ts';
import { runningEndpoints, withCluster } from '../app/cluster.ts';
import { checkRange, parsePosition, parseStages, REPLAYABLE, replay } from '../replay/replay.ts';
import { formatReport } from '../replay/format.ts';
import { rebuildLifecycle } from '../replay/rebuild.ts';
import { Codec } from '../runtime/codec.ts';
import { loadRules } from '../rules/rules.ts';
import { Presets, SingleBar } from 'cli-progress';
import { createKey, formatKeys, listKeys, parseScopes, revokeKey } from './keys.ts';
import { formatSecrets, listSecrets, retireSecrets, rotateSecret } from './secrets.ts';
import { parseDuration } from '../rules/rules.ts';
import { checkSchemas, createTopics, registerSchemas } from './provision.ts';

// kafkajs 2.2.4 arms a timer with a negative delay on Node 24 (Node clamps it to 1 ms, harmless):
// keep that one warning out of users' output, print every other one as Node would.
process.removeAllListeners('warning');
process.on('warning', (w) => {
  if (w.name !== 'TimeoutNegativeWarning') process.stderr.write(`(node:${process.pid}) ${w.name}: ${w.message}\n`);
});

const program = new Command('herald').description('Kafka-native notification pipeline').version('0.1.0');

/** The embedded default's development key, as kept in the state dir (or HERALD_DEV_KEY). */
function devKeyFile(config: ReturnType<typeof loadConfig>): string {
  const file = join(config.stateDir, 'dev-key');
  return config.devKey || (existsSync(file) ? readFileSync(file, 'utf8').trim() : '');
}

function fail(err: unknown): never {
  let e = err as Error & { code?: string };
  // kafkajs giving up on the brokers: say which brokers, and what to check.
  if (/^KafkaJS(NumberOfRetriesExceeded|Connection|BrokerNotFound|RequestTimeout)/.test(e?.name ?? '')) {
    const brokers = process.env.KAFKA_BROKERS ? `KAFKA_BROKERS ${process.env.KAFKA_BROKERS}` : 'the running instance\'s embedded broker';
    e = new HeraldError('HRL_BROKER_UNREACHABLE', `${brokers} could not be reached (${e.message}); check the address and that the brokers are up`);
  }
  process.stderr.write(`herald: ${e instanceof HeraldError ? `${e.code}: ` : ''}${e.message}\n`);
  process.exit(1);
}

async function serve(stages: readonly StageName[], opts: { demo?: boolean; api?: boolean; workers?: string }) {
  // A flag's error names the flag, not the variable it stands in for.
  const { min, max } = CONFIG_KEYS.workers;
  if (opts.workers !== undefined && (!/^\d+$/.test(opts.workers) || Number(opts.workers) < min || Number(opts.workers) > max)) {
    fail(new HeraldError('HRL_CONFIG_INVALID', `--workers: expected an integer in [${min}, ${max}], got "${opts.workers.slice(0, 40)}"`));
  }
  // The demo shows rate limits and a digest: its rules unless HERALD_RULES says otherwise.
  const overrides = { ...(opts.demo && !process.env.HERALD_RULES ? { rulesFile: 'rules/demo.json' } : {}), ...(opts.workers !== undefined ? { workers: opts.workers } : {}) };
  const config = loadConfig(process.env, overrides);
  const log = createLogger(config.logLevel);
  const started = performance.now();
  // A signal during the start: said, then the process ends as the signal would end it
  // (nothing it started is left half-done: the restart takes up whatever was under way).
  const early = (signal: NodeJS.Signals) => {
    log.info({ signal, afterMs: Math.round(performance.now() - started) }, 'stopped during the start, before anything was processed');
    log.flush();
    process.exit(128 + (osConstants.signals[signal] ?? 15));
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(sig, early);
  // The embedded broker died (logged at fatal with what it said), during the start or after:
  // nothing can be read, written or committed any more, so no stop is attempted; exit 1 at
  // once, for the process manager to restart (the journal brings back what the broker held).
  // A stop already under way ends the same way: it could commit nothing.
  const onFailure = (err: HeraldError) => {
    log.flush();
    fail(err);
  };
  const herald = await startHerald({ config, stages, log, api: opts.api ?? true, onFailure });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, early);
  const ms = Math.round(performance.now() - started);
  // The development key on a line of its own, before the ready line (scripts read both).
  if (herald.devKey) process.stdout.write(`herald dev key ${herald.devKey}\n`);
  // One line a user (or a script) can read: where the API, the broker and the registry are.
  process.stdout.write(`herald ready ${herald.httpUrl ?? '(no http api)'} brokers=${herald.brokers} registry=${herald.registryUrl}\n`);
  log.info({ ms, stages, brokers: herald.brokers, http: herald.httpUrl }, 'herald ready');
  let stopDemo: (() => Promise<void>) | null = null;
  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) {
      log.info({ signal }, 'already stopping; another signal changes nothing (SIGKILL ends it at once, leaving in-flight work to the restart)');
      return;
    }
    stopping = true;
    const stopStarted = performance.now();
    log.info({ signal }, 'stopping: finishing in-flight batches');
    const force = setTimeout(() => {
      log.error({ signal }, 'not stopped within 30 s; exiting with in-flight work left to the restart');
      log.flush();
      process.exit(1);
    }, 30_000);
    force.unref();
    let failed = false;
    await stopDemo?.().catch((err: unknown) => log.warn({ err }, 'the demo did not stop cleanly'));
    await herald.stop().catch((err: unknown) => {
      failed = true;
      log.error({ err }, 'stop failed; what was not committed runs again after the restart');
    });
    log.info({ signal, ms: Math.round(performance.now() - stopStarted), upSeconds: Math.round((performance.now() - started) / 1000), exitCode: failed ? 1 : 0 }, 'stopped');
    log.flush();
    process.exit(failed ? 1 : 0);
  };
  process.on('SIGINT', () => void shutdown('SIGINT'));
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  // A terminal's hangup (to the whole group, as when an ssh session drops): a clean stop too.
  process.on('SIGHUP', () => void shutdown('SIGHUP'));
  // A process manager (or npm) that dies without signalling leaves Herald re-parented:
  // stop cleanly instead of running on unsupervised.
  const parent = process.ppid;
  setInterval(() => {
    // Once: a stop under way is not told again every second.
    if (process.ppid !== parent && !stopping) void shutdown('parent exited');
  }, 1000).unref();
  if (opts.demo && herald.httpUrl) {
    if (!herald.devKey) fail(new Error('--demo: needs the development key (set HERALD_DEV_KEY against real Kafka)'));
    stopDemo = await runDemo(herald.httpUrl, config.webhookSecret.split(',')[0]!.trim(), herald.devKey, (l) => process.stdout.write(`${l}\n`));
  }
}

program
  .command('start')
  .description('start every stage and the HTTP API (embedded broker unless KAFKA_BROKERS is set), in this process and, by default, one worker process per further core (--workers, HERALD_WORKERS)')
  .option('--demo', 'also publish sample events to a local webhook receiver')
  .option('--workers <n>', 'processes that run the stages, each one more member of every group (default: HERALD_WORKERS, else one per core; 1: no workers)')
  .action((o: { demo?: boolean; workers?: string }) => serve(STAGE_NAMES, o).catch(fail));

program
  .command('run')
  .description('run chosen stages (scale them independently against real Kafka)')
  .addOption(new Option('--stages <list>', 'comma-separated stages').default(STAGE_NAMES.join(',')))
  .option('--no-api', 'do not serve the HTTP API')
  .action((o: { stages: string; api: boolean }) => {
    const stages = o.stages.split(',').map((s) => s.trim()).filter(Boolean);
    const bad = stages.filter((s) => !STAGE_NAMES.includes(s as StageName));
    if (bad.length) fail(new Error(`--stages: unknown stage ${bad.join(', ')}; expected some of ${STAGE_NAMES.join(', ')}`));
    return serve(stages as StageName[], { api: o.api }).catch(fail);
  });

const topics = program.command('topics').description('manage Herald topics on a real cluster');
topics
  .command('create')
  .description('create every topic topology.ts declares (compaction for tables and changelogs)')
  .action(() => createTopics(loadConfig()).then((lines) => lines.forEach((l) => console.log(l))).catch(fail));

const schemas = program.command('schemas').description('schema registry');
schemas.command('register').description('register every topic schema under <topic>-value').action(() => registerSchemas(loadConfig()).then((l) => l.forEach((x) => console.log(x))).catch(fail));
schemas.command('check').description('check local schemas for compatibility with the registry').action(() =>
  checkSchemas(loadConfig()).then(({ lines, ok }) => {
    lines.forEach((x) => console.log(x));
    if (!ok) process.exit(1);
  }).catch(fail));

program
  .command('explain [notificationId]')
  .description("print a notification's timeline (every decision with its stage, reason and the time since the step before), or with --event every notification one event caused and why each recipient did or did not get it")
  .option('--event <eventId>', 'explain an event: its notifications, one line per recipient (per tenant: event ids are per tenant)')
  .option('--tenant <tenant>', 'with --event: only this tenant\'s event of that id')
  .option('--url <url>', 'HTTP API of a running instance (default: HERALD_URL, else the running embedded instance; against KAFKA_BROKERS without a URL, outcomes.v1 is read)')
  .option('--json', 'print JSON')
  .option('--key <key>', 'API key with the read scope for --url (default: HERALD_API_KEY, else the embedded development key)')
  .action(async (id: string | undefined, o: { event?: string; tenant?: string; url?: string; json?: boolean; key?: string }) => {
    try {
      const config = loadConfig();
      if (o.event && id !== undefined) fail(new HeraldError('HRL_CONFIG_INVALID', `explain: pass a notification id (${id}) or --event <eventId>, not both`));
      if (o.tenant !== undefined && !o.event) fail(new HeraldError('HRL_CONFIG_INVALID', 'explain --tenant: only with --event (event ids are per tenant; a notification id is not)'));
      if (o.event) {
        // --event reads outcomes.v1 itself: what would only apply to one notification's lookup is refused, not ignored.
        const unused = [id !== undefined ? `a notification id (${id})` : '', o.url ? '--url' : '', o.key ? '--key' : ''].filter(Boolean);
        if (unused.length) fail(new HeraldError('HRL_CONFIG_INVALID', `explain --event reads outcomes.v1 through the brokers (the running embedded instance's, or KAFKA_BROKERS), not an API: ${unused.join(', ')} cannot be used with it`));
        const views = await scanLifecycles(config, (e) => e.eventId === o.event && (o.tenant === undefined || e.tenant === o.tenant), skippedNotice());
        console.log(o.json ? JSON.stringify(views, null, 2) : formatEvent(o.event, views));
        // Nothing found is a failure, as for a notification id (scripts test the exit code).
        if (!views.length) {
          if (o.tenant !== undefined) console.error(`(only tenant ${o.tenant}'s decisions were looked at: --tenant)`);
          process.exit(1);
        }
        return;
      }
      if (!id) fail(new HeraldError('HRL_CONFIG_INVALID', 'explain: expected a notification id, or --event <eventId>'));
      const url = o.url ?? process.env.HERALD_URL ?? (config.embedded ? runningEndpoints(config).http : undefined);
      const view = url ? await fetchLifecycle(url, id, o.key ?? process.env.HERALD_API_KEY ?? devKeyFile(config)) : await scanLifecycle(config, id, skippedNotice());
      if (!view) fail(new Error(`no decision about ${id} on outcomes.v1`));
      console.log(o.json ? JSON.stringify(view, null, 2) : formatLifecycle(view));
    } catch (err) {
      fail(err);
    }
  });

/** Tells on stderr of outcome records a scan skipped as undecodable (the first three, then a count). */
function skippedNotice(): (where: string, why: string) => void {
  let n = 0;
  return (where, why) => {
    n++;
    if (n <= 3) console.error(`skipped ${where}: not a lifecycle event (${why}); the outcome stage dead-letters such records`);
    else if (n === 4) console.error('skipped more undecodable outcome records');
  };
}

program
  .command('replay')
  .description('re-run a stage (or a range such as ingest..route) over its input topic in a sandbox: no writes, no channel calls, no committed offsets; with --rules, a what-if')
  .requiredOption('--stage <stage>', `a stage (${REPLAYABLE.join(', ')}) or a range such as ingest..route`)
  .option('--from <position>', 'first record: an offset (in every partition) or an ISO time; stateful stages still rebuild their stores from the start of retention')
  .option('--to <position>', 'end (exclusive): an offset or an ISO time; default: the end of the topic now')
  .option('--key <recipient>', 'only this recipient: tenant/user, or a user id')
  .option('--event <eventId>', 'only the notifications of this event')
  .option('--rules <file>', 'rules to replay with instead of the live ones: print only the decisions that would change')
  .addOption(new Option('--format <format>', 'table or json').choices(['table', 'json']).default('table'))
  .action(async (o: { stage: string; from?: string; to?: string; key?: string; event?: string; rules?: string; format: 'table' | 'json' }) => {
    try {
      const config = loadConfig();
      const stages = parseStages(o.stage);
      const from = o.from !== undefined ? parsePosition(o.from, '--from') : undefined;
      const to = o.to !== undefined ? parsePosition(o.to, '--to') : undefined;
      checkRange(from, to);
      // An empty filter would filter nothing: refused rather than replaying everything.
      for (const [flag, v] of [['--key', o.key], ['--event', o.event]] as const) {
        if (v !== undefined && v.trim() === '') throw new HeraldError('HRL_CONFIG_INVALID', `${flag}: expected ${flag === '--key' ? 'tenant/user or a user id' : 'an event id'}, got an empty value (leave ${flag} out to replay every ${flag === '--key' ? 'recipient' : 'event'})`);
      }
      await withCluster(config, 'replay', async (c) => {
        const liveRules = c.running?.rules ?? config.rulesFile;
        const rules = loadRules(o.rules ?? liveRules);
        const serde = c.serde();
        const bar = o.format === 'table' ? new SingleBar({ stream: process.stderr, format: 'replaying {bar} {value}/{total} records  {speed} records/s', hideCursor: true }, Presets.shades_classic) : null;
        const t0 = performance.now();
        let barStarted = false;
        const report = await replay(c, config, new Codec(serde, config), serde, {
          stages, rules, whatIf: o.rules !== undefined, ...(from ? { from } : {}), ...(to ? { to } : {}), ...(o.key ? { key: o.key } : {}), ...(o.event ? { event: o.event } : {}),
          onProgress: (done, total) => {
            if (!bar || total < 5000) return;
            if (!barStarted) bar.start(total, 0, { speed: 0 });
            barStarted = true;
            bar.update(done, { speed: Math.round(done / ((performance.now() - t0) / 1000)) });
          },
        });
        if (barStarted) bar!.stop();
        if (o.format === 'json') console.log(JSON.stringify({ ...report, rules: o.rules ?? liveRules, liveRules, whatIf: o.rules !== undefined }, null, 2));
        else formatReport(report, { whatIf: o.rules !== undefined, rules: o.rules ?? liveRules, liveRules }).forEach((l) => console.log(l));
      });
    } catch (err) {
      fail(err);
    }
  });

const lifecycle = program.command('lifecycle').description('the lifecycle projection (outcome stage)');
lifecycle
  .command('rebuild')
  .description('read outcomes.v1 from the start into a fresh projection and print its digest, overall and per tenant')
  .option('--json', 'print JSON')
  .action(async (o: { json?: boolean }) => {
    try {
      const config = loadConfig();
      await withCluster(config, 'rebuild', async (c) => {
        const bar = o.json ? null : new SingleBar({ stream: process.stderr, format: 'rebuilding {bar} {value}/{total} records  {speed} records/s', hideCursor: true }, Presets.shades_classic);
        const t0 = performance.now();
        let barStarted = false;
        const r = await rebuildLifecycle(c, config, c.serde(), {
          onProgress: (done, total) => {
            if (!bar || total < 5000) return;
            if (!barStarted) bar.start(total, 0, { speed: 0 });
            barStarted = true;
            bar.update(done, { speed: Math.round(done / ((performance.now() - t0) / 1000)) });
          },
        });
        if (barStarted) bar!.stop();
        if (o.json) console.log(JSON.stringify(r, null, 2));
        else {
          console.log(`rebuilt the lifecycle projection from ${topicNameOf(config, 'outcomes')}: ${r.records.toLocaleString('en-US')} records in ${r.seconds.toFixed(1)} s (${Math.round(r.records / Math.max(r.seconds, 0.001)).toLocaleString('en-US')} records/s), ${r.notifications.toLocaleString('en-US')} notifications over ${r.partitions} partitions${r.undecodable ? `; ${r.undecodable} undecodable records skipped` : ''}`);
          console.log(`digest ${r.digest}`);
          for (const [tenant, d] of Object.entries(r.tenants)) console.log(`  tenant ${tenant}: ${d.digest} (${d.notifications.toLocaleString('en-US')} notifications)`);
        }
      });
    } catch (err) {
      fail(err);
    }
  });
lifecycle
  .command('digest')
  .description("ask a running instance for the digest of its live projection (your key's tenant); compare with `lifecycle rebuild`")
  .option('--url <url>', 'HTTP API of a running instance (default: HERALD_URL, else the running embedded instance)')
  .addOption(new Option('--from <url>', 'the former name of --url').hideHelp())
  .option('--key <key>', 'API key with the admin scope (default: HERALD_API_KEY, else the embedded development key)')
  .option('--json', 'print JSON')
  .action(async (o: { url?: string; from?: string; key?: string; json?: boolean }) => {
    try {
      const config = loadConfig();
      const url = (o.url ?? o.from ?? process.env.HERALD_URL ?? runningEndpoints(config).http).replace(/\/$/, '');
      const body = await getApi<{ tenant: string; notifications: number; digest: string; partitions: number[] }>(url, '/v1/lifecycle/digest', o.key ?? process.env.HERALD_API_KEY ?? devKeyFile(config));
      console.log(o.json ? JSON.stringify(body) : `tenant ${body.tenant}: ${body.digest} (${body.notifications.toLocaleString('en-US')} notifications, partitions ${body.partitions.join(', ')})`);
    } catch (err) {
      fail(err);
    }
  });

program
  .command('tail')
  .description('follow outcomes.v1 and print each decision as it is made (the running embedded instance\'s, or KAFKA_BROKERS and SCHEMA_REGISTRY_URL)')
  .option('--from-beginning', 'print the whole topic first')
  .option('--json', 'print each decision as one JSON object a line (topic, partition, offset and the lifecycle event)')
  .action(async (o: { fromBeginning?: boolean; json?: boolean }) => {
    const ac = new AbortController();
    // The first signal ends it cleanly; a second one at once.
    const stop = () => (ac.signal.aborted ? process.exit(130) : ac.abort());
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
    await tail(loadConfig(), { fromBeginning: Boolean(o.fromBeginning), json: Boolean(o.json), print: (l) => console.log(l), warn: (l) => console.error(l), signal: ac.signal }).catch(fail);
    process.exit(0);
  });

/** What Herald writes into a state directory (and `reset` may delete). */
const STATE_ENTRIES = new Set(['CLUSTER_ID', 'herald.pid', 'dev-key', 'journal', 'registry.json', 'endpoints.json', 'rocksdb', 'leveldb', 'workers']);

program
  .command('reset')
  .description('delete what HERALD_STATE_DIR holds (stores, and the embedded broker\'s journal and schemas), keeping the directory itself and the dev key: start over on purpose; refuses a directory holding anything Herald did not write')
  .option('--dry-run', 'print what would be deleted, and delete nothing (also while Herald runs)')
  .option('--new-dev-key', 'delete the dev key too: the next start makes a new one, and a saved one stops working')
  .action((o: { dryRun?: boolean; newDevKey?: boolean }) => {
    try {
      const { stateDir } = loadConfig();
      if (!existsSync(stateDir)) {
        console.log(`HERALD_STATE_DIR ${stateDir} does not exist: nothing to delete`);
        return;
      }
      if (!statSync(stateDir).isDirectory()) fail(new HeraldError('HRL_STATE_DIR_UNUSABLE', `HERALD_STATE_DIR ${stateDir} is not a directory: not deleted`));
      const running = runningHerald(stateDir);
      if (running && !o.dryRun) fail(new HeraldError('HRL_STATE_DIR_UNUSABLE', `HERALD_STATE_DIR ${stateDir}: Herald (pid ${running}) is running on it; stop it first`));
      const entries = readdirSync(stateDir);
      const foreign = entries.filter((e) => !STATE_ENTRIES.has(e) && !/^registry\.json\.|^endpoints\.json\./.test(e));
      if (foreign.length) {
        const shown = foreign.slice(0, 5).join(', ') + (foreign.length > 5 ? `, and ${foreign.length - 5} more` : '');
        fail(new HeraldError('HRL_STATE_DIR_UNUSABLE', `HERALD_STATE_DIR ${stateDir} holds what Herald did not write (${shown}): nothing was deleted. Point HERALD_STATE_DIR at Herald's state directory (the default is .herald/state)`));
      }
      // The dev key is a credential people save (README, scripts): kept unless asked.
      const doomed = entries.filter((e) => o.newDevKey || e !== 'dev-key').sort();
      const kept = entries.length > doomed.length ? '; the dev key is kept (--new-dev-key deletes it too)' : '';
      if (o.dryRun) {
        const note = running ? ` (Herald, pid ${running}, is running on it: stop it before a reset)` : '';
        console.log(doomed.length ? `would delete in ${stateDir}: ${doomed.join(', ')}${kept}${note}` : `${stateDir} holds nothing to delete${kept}${note}`);
        return;
      }
      // What is inside goes, the directory stays: it may be a volume's mount point (which
      // cannot be removed), and its owner and mode were the operator's choice.
      for (const e of doomed) rmSync(join(stateDir, e), { recursive: true, force: true });
      console.log(`deleted ${doomed.length ? doomed.join(', ') : 'nothing'} in ${stateDir}: the next start begins with an empty broker, registry and stores${kept}`);
    } catch (err) {
      fail(err);
    }
  });

const keys = program.command('keys').description('API keys per tenant (stored hashed on keys.v1)');
keys
  .command('create')
  .description('create an API key; prints it once (only its hash is stored)')
  .requiredOption('--tenant <tenant>', 'the tenant the key acts for')
  .addOption(new Option('--scope <scopes>', 'comma-separated: publish, read, admin (admin includes the others)').default('admin'))
  .option('--label <text>', 'a note shown by `keys list`')
  .option('--json', 'print the key and its record as JSON')
  .action(async (o: { tenant: string; scope: string; label?: string; json?: boolean }) => {
    try {
      const { key, record } = await createKey(loadConfig(), { tenant: o.tenant, scopes: parseScopes(o.scope), ...(o.label ? { label: o.label } : {}) });
      if (o.json) console.log(JSON.stringify({ key, keyId: record.keyId, tenant: record.tenant, scopes: record.scopes }));
      else {
        console.log(key);
        process.stderr.write(`created ${record.keyId} for tenant ${record.tenant} (scopes ${record.scopes.join(', ')}); the key is shown only now: keep it\n`);
      }
    } catch (err) {
      fail(err);
    }
  });
keys
  .command('list')
  .description('list keys (ids, tenants, scopes, status; never the secrets)')
  .option('--tenant <tenant>', 'only this tenant\'s keys')
  .option('--json', 'print JSON')
  .action(async (o: { tenant?: string; json?: boolean }) => {
    try {
      const records = (await listKeys(loadConfig(), o.tenant)).map(({ hash: _hash, ...r }) => r);
      if (o.json) console.log(JSON.stringify(records, null, 2));
      else formatKeys(records).forEach((l) => console.log(l));
    } catch (err) {
      fail(err);
    }
  });
keys
  .command('revoke <keyId>')
  .description('revoke a key on every instance (it answers 401 from then on)')
  .action(async (keyId: string) => {
    try {
      const r = await revokeKey(loadConfig(), keyId);
      console.log(`revoked ${r.keyId} of tenant ${r.tenant} at ${new Date(r.revokedAt!).toISOString()}`);
    } catch (err) {
      fail(err);
    }
  });

const secrets = program.command('secrets').description('webhook signing secrets per tenant (signing-secrets.v1)');
secrets
  .command('rotate')
  .description('make a new current signing secret for a tenant and print it once; the previous one keeps signing for the grace period')
  .requiredOption('--tenant <tenant>', 'the tenant whose webhooks and chat messages are signed')
  .option('--grace <duration>', 'how long the previous secret keeps signing (both signatures are sent meanwhile)', '24h')
  .option('--json', 'print the secret and its id as JSON')
  .action(async (o: { tenant: string; grace: string; json?: boolean }) => {
    try {
      let graceMs: number;
      try {
        graceMs = parseDuration(o.grace);
      } catch {
        return fail(new HeraldError('HRL_BAD_REQUEST', `--grace: expected a duration such as 24h, 30m or 0s, got "${o.grace.slice(0, 40)}"`));
      }
      const made = await rotateSecret(loadConfig(), o.tenant, graceMs);
      if (o.json) console.log(JSON.stringify({ tenant: o.tenant, id: made.id, secret: made.secret }));
      else {
        console.log(made.secret);
        // Each rotated-out secret with its own expiry: a shorter grace shortens the older ones too.
        const until = (ms: number) => new Date(ms).toISOString();
        const previous = [
          ...made.record.secrets.slice(1).map((s) => `${s.id} until ${until(s.expiresAt ?? 0)}`),
          ...(made.record.deploymentSecretUntil ? [`HERALD_WEBHOOK_SECRET until ${until(made.record.deploymentSecretUntil)}`] : []),
        ];
        process.stderr.write(`${made.id} is now tenant ${o.tenant}'s signing secret; it is shown only now: give it to the tenant's receivers${previous.length ? `. Still signing: ${previous.join(', ')} (\`npm run herald -- secrets retire --tenant ${o.tenant}\` ends that now)` : ''}\n`);
      }
    } catch (err) {
      fail(err);
    }
  });
secrets
  .command('retire')
  .description('stop signing with every secret of a tenant but the current one')
  .requiredOption('--tenant <tenant>', 'the tenant')
  .action(async (o: { tenant: string }) => {
    try {
      const r = await retireSecrets(loadConfig(), o.tenant);
      console.log(`tenant ${o.tenant}: only ${r.secrets[0]!.id} signs from now on`);
    } catch (err) {
      fail(err);
    }
  });
secrets
  .command('list')
  .description('list signing secrets by id, with status and expiry (never the secrets)')
  .option('--tenant <tenant>', 'only this tenant')
  .action(async (o: { tenant?: string }) => {
    try {
      formatSecrets(await listSecrets(loadConfig(), o.tenant)).forEach((l) => console.log(l));
    } catch (err) {
      fail(err);
    }
  });

program.command('describe').description('print the topology').action(() => console.log(describe(loadConfig().topicPrefix)));

// Whatever a command did not catch itself (a configuration error before its own handling) ends as one line, not a stack trace.
await program.parseAsync(process.argv).catch(fail);
