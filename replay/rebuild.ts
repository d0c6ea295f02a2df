/**
 * `herald lifecycle rebuild`: reads outcomes.v1 from the start of retention into a fresh
 * projection (the outcome stage's own `applyLifecycle`, one store per partition, in a
 * temporary directory), then prints the projection digest, overall and per tenant. The
 * live projection of a running instance answers the same digest at
 * `GET /v1/lifecycle/digest` when nothing is missing from it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { HeraldConfig } from '../config.ts';
import { addDigests, applyLifecycle, digestHex, eachNotification, notificationHash, type ProjectionDigest } from '../processors/outcome.ts';
import { TopicReader } from '../runtime/reader.ts';
import type { Serde } from '../schemas/index.ts';
import type { LifecycleEvent } from '../schemas/types.ts';
import { KeyValueStore } from '../state/store.ts';
import { topicName } from '../topology.ts';
import type { ClusterClients } from '../app/cluster.ts';

export interface RebuildReport {
  records: number;
  undecodable: number;
  seconds: number;
  partitions: number;
  notifications: number;
  digest: string;
  tenants: Record<string, { notifications: number; digest: string }>;
}

export async function rebuildLifecycle(c: ClusterClients, config: HeraldConfig, serde: Serde, o: { onProgress?: (done: number, total: number) => void } = {}): Promise<RebuildReport> {
  const started = performance.now();
  const topic = topicName(config.topicPrefix, 'outcomes');
  const offsets = await c.admin.fetchTopicOffsets(topic);
  const until = new Map(offsets.map((x) => [x.partition, BigInt(x.high)]));
  const total = offsets.reduce((n, x) => n + Number(BigInt(x.high) - BigInt(x.low)), 0);
  const dir = mkdtempSync(join(tmpdir(), 'herald-rebuild-'));
  const stores = new Map<number, KeyValueStore>();
  let records = 0;
  let undecodable = 0;
  try {
    for (const x of offsets) stores.set(x.partition, await KeyValueStore.open({ backend: config.stateBackend, dir, stage: 'rebuild', name: 'lifecycle', partition: x.partition, changelog: null }));
    const reader = new TopicReader(c.kafka, c.admin, {
      topic, groupPrefix: `${config.topicPrefix}rebuild.`, until,
      onBatch: async ({ partition, messages }) => {
        const end = until.get(partition)!;
        const events: LifecycleEvent[] = [];
        for (const m of messages) {
          if (BigInt(m.offset) >= end) continue;
          records++;
          if (!m.value) continue;
          try {
            events.push(await serde.decode<LifecycleEvent>(m.value));
          } catch {
            undecodable++; // the live stage dead-letters these: they are in no projection
          }
        }
        const view = stores.get(partition)!.view();
        await applyLifecycle(view, events);
        await view.flush(null);
        o.onProgress?.(records, total);
      },
    });
    await reader.readToEnd();
    let all: ProjectionDigest = { notifications: 0, sum: 0n };
    const tenants = new Map<string, ProjectionDigest>();
    for (const store of stores.values()) {
      for await (const n of eachNotification(store.view())) {
        const one = { notifications: 1, sum: notificationHash(n) };
        all = addDigests(all, one);
        tenants.set(n.tenant, addDigests(tenants.get(n.tenant) ?? { notifications: 0, sum: 0n }, one));
      }
    }
    return {
      records, undecodable, seconds: (performance.now() - started) / 1000, partitions: stores.size,
      notifications: all.notifications, digest: digestHex(all),
      tenants: Object.fromEntries([...tenants].sort(([a], [b]) => a.localeCompare(b)).map(([t, d]) => [t, { notifications: d.notifications, digest: digestHex(d) }])),
    };
  } finally {
    for (const s of stores.values()) await s.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
