/** Unit tests of topology.ts: the text picture, the topic plan and the stage wiring. */
import { describe, expect, it } from 'vitest';
import { changelogTopic, describe as describeTopology, groupId, STAGE_NAMES, STAGES, topicName, topicPlan, TOPICS, type TopicKey } from '../topology.ts';

describe('describe()', () => {
  it('matches the snapshot of the topology', () => {
    expect(describeTopology()).toMatchInlineSnapshot(`
      "stage ingest (group herald.ingest): validate, match rules, fan out to recipients, derive ids
        in:  herald.events.v1
        tables: herald.audiences.v1
        out: herald.requests.v1, herald.outcomes.v1, herald.dlq.v1
      stage enrich (group herald.enrich): join profile and preferences; drop unknown or inactive recipients
        in:  herald.requests.v1
        tables: herald.users.v1, herald.preferences.v1
        out: herald.enriched.v1, herald.outcomes.v1, herald.dlq.v1
      stage dedupe (group herald.dedupe): suppress repeats of a dedupe key inside the rule window
        in:  herald.enriched.v1
        out: herald.deduped.v1, herald.outcomes.v1, herald.dlq.v1
        store seen -> herald.dedupe.seen.changelog: dedupe key -> first notification and when it was seen
      stage throttle (group herald.throttle): per-user rate limits (defer, digest, drop), quiet hours, CRITICAL bypass
        in:  herald.deduped.v1
        out: herald.admitted.v1, herald.outcomes.v1, herald.dlq.v1
        store counters -> herald.throttle.counters.changelog: per user (and category, rule) scope -> admission times inside the longest limit window
        store held -> herald.throttle.held.changelog: deferred notifications and open digests, indexed by release time, released by a timer
      stage route (group herald.route): pick channels, render templates, drop expired
        in:  herald.admitted.v1
        out: herald.deliveries.v1, herald.outcomes.v1, herald.dlq.v1
      stage deliver (group herald.deliver): call the channel with an idempotency key (at the profile's current address, unless the user was deleted or opted out since routing); retry on a timer; dead-letter
        in:  herald.deliveries.v1, herald.deliver.retry.v1
        tables: herald.users.v1, herald.preferences.v1
        out: herald.deliver.retry.v1, herald.outcomes.v1, herald.dlq.v1
        store results -> herald.deliver.results.changelog: deliveryId -> recorded result (for HERALD_DELIVERY_RESULT_RETENTION_MS) or the last attempt of an open delivery, to skip redelivered tasks
        store retries -> herald.deliver.retries.changelog: retry tasks held until their due time (wall clock), released by a timer
      stage outcome (group herald.outcome): lifecycle projection
        in:  herald.outcomes.v1
        out: herald.dlq.v1
        store lifecycle <- replays its input: notification -> ordered lifecycle events; user -> notifications (rebuildable from outcomes.v1)
      sub-topology enrich -> dedupe -> throttle -> route: co-partitioned by tenant/recipient; fused into one task per partition unless HERALD_FUSE_STAGES=false (every topic between them is still written)"
    `);
  });

  it('uses the given prefix everywhere', () => {
    const text = describeTopology('acme-');
    expect(text).toContain('acme-events.v1');
    expect(text).not.toContain('herald.');
  });
});

describe("topicPlan('herald.', 4)", () => {
  const plan = topicPlan('herald.', 4);
  const byName = new Map(plan.map((t) => [t.name, t]));

  it('contains every topic exactly once, plus the changelog topics', () => {
    // then every declared topic appears once, with its prefix
    const names = plan.map((t) => t.name);
    expect(new Set(names).size).toBe(names.length);
    for (const key of Object.keys(TOPICS) as TopicKey[]) {
      expect(names.filter((n) => n === topicName('herald.', key))).toHaveLength(1);
    }
    // and the only others are the changelogs of stores that have one
    const changelogs = names.filter((n) => !(Object.keys(TOPICS) as TopicKey[]).some((k) => topicName('herald.', k) === n));
    expect(changelogs.sort()).toEqual(['herald.dedupe.seen.changelog', 'herald.deliver.results.changelog', 'herald.deliver.retries.changelog', 'herald.throttle.counters.changelog', 'herald.throttle.held.changelog']);
    expect(plan).toHaveLength(Object.keys(TOPICS).length + 5);
  });

  it('compacts the changelog topics', () => {
    expect(byName.get('herald.dedupe.seen.changelog')).toEqual({ name: 'herald.dedupe.seen.changelog', partitions: 4, compacted: true, schema: null });
    expect(byName.get('herald.deliver.results.changelog')).toEqual({ name: 'herald.deliver.results.changelog', partitions: 4, compacted: true, schema: null });
  });

  it('does not give the outcome stage a changelog (its store is rebuilt from outcomes.v1)', () => {
    expect(plan.some((t) => t.name.startsWith('herald.outcome.'))).toBe(false);
  });

  it('compacts the users and preferences tables', () => {
    expect(byName.get('herald.users.v1')).toMatchObject({ compacted: true, schema: 'UserProfile' });
    expect(byName.get('herald.preferences.v1')).toMatchObject({ compacted: true, schema: 'UserPreferences' });
  });

  it('does not compact events or the other streams', () => {
    expect(byName.get('herald.events.v1')).toMatchObject({ compacted: false, schema: 'DomainEvent' });
    const compacted = plan.filter((t) => t.compacted).map((t) => t.name).sort();
    expect(compacted).toEqual(['herald.audiences.v1', 'herald.dedupe.seen.changelog', 'herald.deliver.results.changelog', 'herald.deliver.retries.changelog', 'herald.instances.v1', 'herald.keys.v1', 'herald.preferences.v1', 'herald.signing-secrets.v1', 'herald.throttle.counters.changelog', 'herald.throttle.held.changelog', 'herald.users.v1']);
  });

  it('gives every shared topic the requested partition count, and the instance directory, keys and signing secrets one partition', () => {
    const single = new Set(['herald.instances.v1', 'herald.keys.v1', 'herald.signing-secrets.v1']);
    for (const t of plan) expect(t.partitions, t.name).toBe(single.has(t.name) ? 1 : 4);
    for (const t of topicPlan('herald.', 12)) expect(t.partitions, t.name).toBe(single.has(t.name) ? 1 : 12);
  });

  it('stores raw bytes or JSON (no schema) only in the DLQ, the instance directory, the keys, the signing secrets and changelogs', () => {
    expect(plan.filter((t) => t.schema === null).map((t) => t.name).sort())
      .toEqual(['herald.dedupe.seen.changelog', 'herald.deliver.results.changelog', 'herald.deliver.retries.changelog', 'herald.dlq.v1', 'herald.instances.v1', 'herald.keys.v1', 'herald.signing-secrets.v1', 'herald.throttle.counters.changelog', 'herald.throttle.held.changelog']);
  });
});

describe('stages', () => {
  it('are declared for every stage name, in order', () => {
    expect(Object.keys(STAGES)).toEqual([...STAGE_NAMES]);
    for (const name of STAGE_NAMES) expect(STAGES[name].name).toBe(name);
  });

  it.each(STAGE_NAMES.filter((s) => s !== 'outcome'))("%s writes to 'outcomes'", (name) => {
    expect(STAGES[name].outputs).toContain('outcomes');
  });

  it("outcome does not write to 'outcomes' (it reads them)", () => {
    expect(STAGES.outcome.outputs).not.toContain('outcomes');
    expect(STAGES.outcome.inputs).toEqual(['outcomes']);
  });

  it.each([...STAGE_NAMES])('%s can dead-letter', (name) => {
    expect(STAGES[name].outputs).toContain('dlq');
  });

  it('chains the stages through their topics', () => {
    const chain: [string, TopicKey][] = [['ingest', 'requests'], ['enrich', 'enriched'], ['dedupe', 'deduped'], ['throttle', 'admitted'], ['route', 'deliveries']];
    for (let i = 0; i < chain.length; i++) {
      const [stage, out] = chain[i]!;
      expect(STAGES[stage as keyof typeof STAGES].outputs).toContain(out);
      const next = STAGE_NAMES[STAGE_NAMES.indexOf(stage as (typeof STAGE_NAMES)[number]) + 1]!;
      expect(STAGES[next].inputs).toContain(out);
    }
    expect(STAGES.deliver.inputs).toEqual(['deliveries', 'deliverRetry']);
  });

  it('only reference tables that are compacted topics', () => {
    for (const s of Object.values(STAGES)) for (const t of s.tables) expect(TOPICS[t].compacted, `${s.name} table ${t}`).toBe(true);
  });
});

describe('names', () => {
  it('prefix topic, changelog and group names', () => {
    expect(topicName('herald.', 'deliverRetry')).toBe('herald.deliver.retry.v1');
    expect(changelogTopic('herald.', 'dedupe', 'seen')).toBe('herald.dedupe.seen.changelog');
    expect(groupId('herald.', 'route')).toBe('herald.route');
  });
});
