/** What `herald replay` prints: decisions as a table, the what-if as a diff, and totals in words. */
import type { Change, Decision, ReplayReport } from './replay.ts';

const n = (x: number) => x.toLocaleString('en-US');
const pad = (s: string, w: number) => (s.length >= w ? s : s + ' '.repeat(w - s.length));
const who = (d: { tenant: string; recipient: string }) => `${d.tenant}/${d.recipient}`;
const status = (d: Decision | null) => (d ? `${d.status} (${d.reasonCode})` : 'no such notification');

export function decisionLine(d: Decision): string {
  return `${new Date(d.timestamp).toISOString()}  ${pad(d.stage, 8)} ${pad(d.notificationId, 36)} ${pad(who(d), 16)} ${pad(`${d.status} ${d.reasonCode}`, 40)} ${d.reason}`;
}

export function changeLine(c: Change): string {
  const why = c.replayed?.reason ?? c.recorded?.reason ?? '';
  return `${pad(c.notificationId, 36)} ${pad(who(c), 16)} ${pad(c.stage, 8)} ${status(c.recorded)} → ${status(c.replayed)}: ${c.because ?? why}`;
}

/** "ADMITTED → DEFERRED for 1,204 notifications (311 users)", one per kind of change. */
export function changeTotals(changes: Change[]): string[] {
  const kinds = new Map<string, { count: number; users: Set<string> }>();
  for (const c of changes) {
    const k = `${c.stage}: ${c.recorded?.status ?? 'nothing'} → ${c.replayed?.status ?? 'nothing'}`;
    const e = kinds.get(k) ?? { count: 0, users: new Set<string>() };
    e.count++;
    e.users.add(who(c));
    kinds.set(k, e);
  }
  return [...kinds].sort((a, b) => b[1].count - a[1].count).map(([k, e]) => `${k} for ${n(e.count)} notification${e.count === 1 ? '' : 's'} (${n(e.users.size)} user${e.users.size === 1 ? '' : 's'})`);
}

export function formatReport(r: ReplayReport, o: { whatIf: boolean; rules: string; liveRules: string }): string[] {
  const lines: string[] = [];
  if (!o.whatIf) {
    lines.push(`${pad('TIME', 24)}  ${pad('STAGE', 8)} ${pad('NOTIFICATION', 36)} ${pad('RECIPIENT', 16)} ${pad('DECISION', 40)} REASON`);
    for (const d of r.decisions) lines.push(decisionLine(d));
    lines.push('');
  }
  lines.push(`replayed ${r.stages.join(' → ')} over ${r.topic}: ${n(r.records.inRange)} records in range (${n(r.records.read)} read), ${n(r.decisions.length)} decisions in ${r.seconds.toFixed(1)} s`);
  for (const [k, v] of Object.entries(r.counts).sort((a, b) => b[1] - a[1])) lines.push(`  ${pad(k, 44)} ${n(v).padStart(8)}`);
  for (const d of r.dlq) lines.push(`  dead-lettered ${r.topic} partition ${d.partition} offset ${d.offset}: ${d.code} ${d.reason}`);
  if (r.dlqHidden) lines.push(`  ${n(r.dlqHidden)} more dead-lettered in range, not shown: they cannot be matched to --key/--event`);
  if (o.whatIf) {
    const notifications = new Set(r.changes.map((c) => c.notificationId)).size;
    lines.push(`what-if: rules ${o.rules} instead of ${o.liveRules}`);
    for (const c of r.changes) lines.push(`  ${changeLine(c)}`);
    lines.push(r.changes.length
      ? `the rules in ${o.rules} would have changed ${n(r.changes.length)} of ${n(Math.max(r.compared, r.changes.length))} decisions, on ${n(notifications)} notifications:`
      : `the rules in ${o.rules} would have changed none of ${n(r.compared)} decisions`);
    for (const t of changeTotals(r.changes)) lines.push(`  ${t}`);
  } else {
    lines.push(`reproduced ${n(r.reproduced)} of ${n(r.compared + r.changes.filter((c) => !c.recorded || !c.replayed).length)} decisions`);
    if (r.changes.length) {
      lines.push(`not reproduced (${n(r.changes.length)}):`);
      for (const c of r.changes) lines.push(`  ${changeLine(c)}`);
    }
  }
  return lines;
}
