/**
 * prom-client metrics, named herald_<area>_<what>_<unit>. One registry per process
 * (served at /metrics); tests make their own.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { getHeapStatistics } from 'node:v8';
import { storeMemory } from '../state/store.ts';
import { fetchSharing, kafkaRequests } from './kafka.ts';

export class Metrics {
  readonly registry: Registry;
  readonly records: Counter<'stage' | 'result'>;
  readonly batchDuration: Histogram<'stage'>;
  readonly recordLatency: Histogram<'stage'>;
  readonly lag: Gauge<'stage' | 'topic' | 'partition'>;
  readonly groupJoins: Counter<'stage'>;
  readonly restored: Counter<'stage' | 'store'>;
  readonly restoreDuration: Histogram<'stage' | 'store'>;
  readonly tableRecords: Counter<'table'>;
  readonly tableSkipped: Counter<'table' | 'code'>;
  readonly tableCatchUps: Counter<'table' | 'result'>;
  readonly deliveries: Counter<'channel' | 'result'>;
  readonly deliveryLatency: Histogram<'channel'>;
  readonly throttleDecisions: Counter<'decision'>;
  readonly circuitState: Gauge<'endpoint'>;
  readonly slowLanes: Gauge;
  readonly fusedQueued: Gauge<'stage'>;
  readonly fusedReadBack: Counter<'stage' | 'reason'>;
  readonly digestSize: Histogram;
  readonly throttleHeld: Gauge<'partition'>;
  readonly httpRequests: Counter<'method' | 'route' | 'status'>;
  readonly httpDuration: Histogram<'method' | 'route'>;

  /**
   * `defaults`: the standard Node.js process metrics (process_cpu_seconds_total,
   * process_start_time_seconds, nodejs_heap_size_used_bytes, …, under their usual names so
   * stock dashboards match), labelled `process` ("primary", "worker-1", …): with workers
   * each process keeps its own series, never a sum of two processes' file limits.
   */
  constructor(opts: { defaults?: boolean; process?: string } = {}) {
    const r = (this.registry = new Registry());
    if (opts.defaults) collectDefaultMetrics({ register: r, labels: { process: opts.process ?? 'primary' } });
    this.records = new Counter({ name: 'herald_stage_records_total', help: 'Records handled per stage, by result (in, out, outcome, dlq).', labelNames: ['stage', 'result'], registers: [r] });
    this.batchDuration = new Histogram({ name: 'herald_stage_batch_duration_seconds', help: 'Time to process, produce and commit one consumed batch.', labelNames: ['stage'], buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5], registers: [r] });
    this.recordLatency = new Histogram({ name: 'herald_stage_record_e2e_latency_seconds', help: 'Wall-clock time when a stage has handled a record minus the record\'s timestamp (Kafka Streams\' record-e2e-latency): stream time flows downstream, so at each stage it is the time since the event was published.', labelNames: ['stage'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300], registers: [r] });
    this.lag = new Gauge({ name: 'herald_stage_consumer_lag_records', help: 'Records between the last consumed offset and the high watermark.', labelNames: ['stage', 'topic', 'partition'], registers: [r] });
    this.groupJoins = new Counter({ name: 'herald_stage_group_joins_total', help: 'Rebalances this stage\'s member took part in (each ends with a join; a steady group adds none).', labelNames: ['stage'], registers: [r] });
    new Gauge({
      name: 'herald_store_memory_bytes', help: 'RocksDB memory of this process\'s stores (one database per state directory): memtables, table readers (index and filter blocks outside the block cache), block cache, pinned in the block cache.', labelNames: ['kind'], registers: [r],
      collect() {
        for (const [kind, bytes] of Object.entries(storeMemory())) this.set({ kind }, bytes);
      },
    });
    if (opts.defaults) {
      new Gauge({
        name: 'herald_process_heap_limit_bytes', help: 'V8 heap limit of the process: HERALD_HEAP_MB and the young generation (with workers, the smallest of the processes\' limits).', aggregator: 'min', registers: [r],
        collect() {
          this.set(getHeapStatistics().heap_size_limit);
        },
      });
    }
    // Counted by the kafkajs clients of the process (runtime/kafka.ts); each registry adds what is new since it last looked.
    const reported = new Map<string, number>();
    new Counter({
      name: 'herald_kafka_requests_total', help: 'Requests this process\'s Kafka clients completed with the brokers (answered, or sent where no answer is expected), by client (a consumer group, `reader` for table and topic readers, `producer`, `admin`; the embedded broker\'s journal writer is not a kafkajs client and not counted) and API (Fetch, Produce, OffsetCommit, ListOffsets, ...).', labelNames: ['client', 'api'], registers: [r],
      collect() {
        for (const [client, byApi] of kafkaRequests()) {
          for (const [api, n] of byApi) {
            const key = `${client}\u0000${api}`;
            const delta = n - (reported.get(key) ?? 0);
            if (delta > 0) this.inc({ client, api }, delta);
            reported.set(key, n);
          }
        }
      },
    });
    const sharedReported = { fetches: 0, requests: 0, split: 0 };
    new Counter({
      name: 'herald_kafka_fetch_sharing_total', help: 'HERALD_SHARE_FETCHES: fetches this process\'s consumers sent (`fetches`), the Fetch requests that carried them to the brokers (`requests`; fewer when consumers shared them), and shared requests that failed and were sent again separately (`split`).', labelNames: ['kind'], registers: [r],
      collect() {
        const now = fetchSharing();
        for (const kind of ['fetches', 'requests', 'split'] as const) {
          const delta = now[kind] - sharedReported[kind];
          if (delta > 0) this.inc({ kind }, delta);
          sharedReported[kind] = now[kind];
        }
      },
    });
    this.restored = new Counter({ name: 'herald_state_restore_records_total', help: 'Changelog records applied while restoring stores.', labelNames: ['stage', 'store'], registers: [r] });
    this.restoreDuration = new Histogram({ name: 'herald_state_restore_duration_seconds', help: 'Time to restore one store partition from its changelog.', labelNames: ['stage', 'store'], buckets: [0.01, 0.1, 0.5, 1, 5, 15, 60, 300], registers: [r] });
    this.tableRecords = new Counter({ name: 'herald_table_records_total', help: 'Records applied to global tables.', labelNames: ['table'], registers: [r] });
    this.tableCatchUps = new Counter({ name: 'herald_table_catch_ups_total', help: 'Lookups that found no row and waited for a global table to read up to its end offsets first (a row written just before the record), by table and result: caught_up or timed_out.', labelNames: ['table', 'result'], registers: [r] });
    this.tableSkipped = new Counter({ name: 'herald_table_records_skipped_total', help: 'Records of global tables skipped because their value is neither Avro nor JSON that fits the table\'s schema (logged with offset and reason), by table and error code.', labelNames: ['table', 'code'], registers: [r] });
    this.deliveries = new Counter({ name: 'herald_deliver_attempts_total', help: 'Channel calls by channel and result.', labelNames: ['channel', 'result'], registers: [r] });
    this.fusedQueued = new Gauge({ name: 'herald_fused_queued_batches', help: 'Fused stages: batches handed over by the stage before and not handled yet.', labelNames: ['stage'], registers: [r] });
    this.fusedReadBack = new Counter({ name: 'herald_fused_read_back_records_total', help: 'Fused stages: records read from the broker instead of handed over, by reason (backlog: written before the stage took the partition; gap: missing between hand-overs; check: written by another producer, nothing handed over since).', labelNames: ['stage', 'reason'], registers: [r] });
    this.slowLanes = new Gauge({ name: 'herald_deliver_slow_lanes', help: 'Webhook and chat URLs whose calls run one at a time in a lane of their own (a call outlived the batch wait), outside their host\'s slots.', registers: [r] });
    this.circuitState = new Gauge({ aggregator: 'max', name: 'herald_circuit_state', help: 'Circuit of each endpoint that has failed: 0 closed, 1 open, 2 half-open.', labelNames: ['endpoint'], registers: [r] });
    this.throttleDecisions = new Counter({ name: 'herald_throttle_decisions_total', help: 'Throttle decisions: admitted, critical_bypass, deferred, quiet_hours, released, digest_collected, digest_emitted, dropped, expired.', labelNames: ['decision'], registers: [r] });
    this.throttleHeld = new Gauge({ name: 'herald_throttle_held', help: 'Notifications and open digests throttle holds, per partition this instance owns.', labelNames: ['partition'], registers: [r] });
    this.digestSize = new Histogram({ name: 'herald_throttle_digest_items', help: 'Items per digest sent.', buckets: [1, 2, 5, 10, 20, 50, 100, 500], registers: [r] });
    // The HTTP API's requests by route pattern (never the ids in a path: bounded series), and how long they took.
    this.httpRequests = new Counter({ name: 'herald_http_requests_total', help: 'HTTP API requests answered, by method, route pattern and status code.', labelNames: ['method', 'route', 'status'], registers: [r] });
    this.httpDuration = new Histogram({ name: 'herald_http_request_duration_seconds', help: 'Time from an HTTP API request to its answer (inbox streams, served outside the request cycle, are not counted).', labelNames: ['method', 'route'], buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5], registers: [r] });
    this.deliveryLatency = new Histogram({ name: 'herald_deliver_call_duration_seconds', help: 'Duration of one channel call.', labelNames: ['channel'], buckets: [0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10], registers: [r] });
  }
}
