/**
 * The accounting invariant (DESIGN section 4) over a set of lifecycle events: every
 * accepted (event, recipient) reaches exactly one terminal status (per channel once
 * routed), and no (notificationId, channel) is DELIVERED by two different attempts.
 * A decision recorded twice (a redelivery) is the same decision and counts once.
 */
import { STATUSES, type Status, isTerminal } from '../../schemas/lifecycle.ts';
import type { LifecycleEvent } from '../../schemas/types.ts';

export interface Accounting { notifications: number; terminal: number; violations: string[] }

export function checkAccounting(events: LifecycleEvent[], accepted: ReadonlySet<string>): Accounting {
  const byId = new Map<string, LifecycleEvent[]>();
  for (const e of events) byId.set(e.notificationId, [...(byId.get(e.notificationId) ?? []), e]);
  const violations: string[] = [];
  let terminal = 0;
  for (const id of accepted) {
    const evs = byId.get(id) ?? [];
    const routed = evs.find((e) => e.status === 'ROUTED');
    const terminals = new Map<string, Set<string>>();
    for (const e of evs) {
      if (!(e.status in STATUSES)) violations.push(`${id}: status ${e.status} is not in the lifecycle vocabulary`);
      else if (e.terminal !== isTerminal(e.status as Status)) violations.push(`${id}: ${e.status} recorded with terminal=${e.terminal}`);
    }
    for (const e of evs.filter((x) => x.status in STATUSES && isTerminal(x.status as Status))) {
      const scope = e.channel ?? '';
      terminals.set(scope, (terminals.get(scope) ?? new Set()).add(e.status));
    }
    const delivered = new Set(evs.filter((e) => e.status === 'DELIVERED').map((e) => `${e.channel}#${e.attempt}`));
    const channels = [...new Set(evs.filter((e) => e.channel).map((e) => e.channel!))];
    if (terminals.size === 0) violations.push(`${id}: no terminal status (last: ${evs.at(-1)?.status ?? 'nothing'})`);
    for (const [scope, statuses] of terminals) if (statuses.size > 1) violations.push(`${id}${scope ? `:${scope}` : ''}: several terminal statuses ${[...statuses].join(', ')}`);
    if (routed && channels.some((c) => !terminals.has(c))) violations.push(`${id}: a routed channel has no terminal status`);
    for (const c of channels) if ([...delivered].filter((d) => d.startsWith(`${c}#`)).length > 1) violations.push(`${id}:${c}: DELIVERED by two attempts`);
    terminal += [...terminals.values()].length;
  }
  return { notifications: accepted.size, terminal, violations };
}
