/** Provisioning real clusters: topics through the admin client, schemas in the registry. */
import { runningEndpoints } from '../app/cluster.ts';
import type { HeraldConfig } from '../config.ts';
import { HeraldError } from '../errors.ts';
import { createKafka } from '../runtime/kafka.ts';
import { createLogger } from '../runtime/logger.ts';
import { Serde, selfContained } from '../schemas/index.ts';
import { topicPlan } from '../topology.ts';

function requireReal(config: HeraldConfig, what: string) {
  if (config.embedded) throw new HeraldError('HRL_CONFIG_INVALID', `KAFKA_BROKERS: expected the bootstrap servers of the cluster to ${what}; the embedded broker makes its topics itself`);
}

export async function createTopics(config: HeraldConfig): Promise<string[]> {
  requireReal(config, 'create topics on');
  const kafka = createKafka(config, config.brokers, createLogger('warn'));
  const admin = kafka.admin();
  await admin.connect();
  try {
    const existing = new Set(await admin.listTopics());
    const plan = topicPlan(config.topicPrefix, config.partitions);
    const missing = plan.filter((t) => !existing.has(t.name));
    if (missing.length) {
      await admin.createTopics({
        waitForLeaders: true,
        topics: missing.map((t) => ({
          topic: t.name,
          numPartitions: t.partitions,
          replicationFactor: config.replicationFactor,
          configEntries: t.compacted ? [{ name: 'cleanup.policy', value: 'compact' }] : [],
        })),
      });
    }
    return plan.map((t) => `${existing.has(t.name) ? 'exists ' : 'created'} ${t.name} partitions=${t.partitions}${t.compacted ? ' compacted' : ''}`);
  } finally {
    await admin.disconnect();
  }
}

/** SCHEMA_REGISTRY_URL, or the running embedded instance's registry (found through the state directory, as the other commands find its broker). */
function registryUrl(config: HeraldConfig): string {
  if (!config.embeddedRegistry) return config.schemaRegistryUrl;
  if (config.embedded) return runningEndpoints(config).registry;
  throw new HeraldError('HRL_CONFIG_INVALID', 'SCHEMA_REGISTRY_URL: expected the URL of a schema registry (KAFKA_BROKERS is set, so there is no embedded one)');
}

export async function registerSchemas(config: HeraldConfig): Promise<string[]> {
  const serde = new Serde(registryUrl(config));
  const out: string[] = [];
  for (const t of topicPlan(config.topicPrefix, config.partitions)) {
    if (!t.schema) continue;
    out.push(`registered ${t.name}-value ${t.schema} id=${await serde.register(t.name, t.schema)}`);
  }
  return out;
}

export async function checkSchemas(config: HeraldConfig): Promise<{ ok: boolean; lines: string[] }> {
  const url = registryUrl(config);
  const lines: string[] = [];
  let ok = true;
  for (const t of topicPlan(config.topicPrefix, config.partitions)) {
    if (!t.schema) continue;
    const res = await fetch(`${url}/compatibility/subjects/${encodeURIComponent(`${t.name}-value`)}/versions/latest`, {
      method: 'POST',
      headers: { 'content-type': 'application/vnd.schemaregistry.v1+json' },
      body: JSON.stringify({ schema: JSON.stringify(selfContained(t.schema)) }),
    });
    if (res.status === 404) lines.push(`new        ${t.name}-value (not registered yet)`);
    else {
      const body = (await res.json()) as { is_compatible?: boolean };
      ok &&= body.is_compatible === true;
      lines.push(`${body.is_compatible ? 'compatible' : 'BREAKING  '} ${t.name}-value ${t.schema}`);
    }
  }
  return { ok, lines };
}
