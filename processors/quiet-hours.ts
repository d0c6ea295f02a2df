/**
 * Quiet hours in the user's own time zone, read with `Intl` (the IANA database Node ships),
 * so daylight-saving changes move the window with the clock on the wall: 22:00–07:00 in
 * Europe/Berlin ends at 07:00 local time on the night the clocks change, whatever the UTC
 * offset did in between. A window whose end precedes its start spans midnight.
 */

const formatters = new Map<string, Intl.DateTimeFormat>();

function formatter(timeZone: string): Intl.DateTimeFormat {
  let f = formatters.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric' });
    formatters.set(timeZone, f);
  }
  return f;
}

/** True when `timeZone` is an IANA zone this Node knows. */
export function isTimeZone(timeZone: string): boolean {
  try {
    formatter(timeZone);
    return true;
  } catch {
    return false;
  }
}

/** `HH:MM` (00:00–23:59) as minutes of the day, or null. */
export function minutesOf(hhmm: string): number | null {
  const m = /^([01]\d|2[0-3]):([0-5]\d)$/.exec(hhmm);
  return m ? Number(m[1]) * 60 + Number(m[2]) : null;
}

/** The wall-clock time at instant `t` in `timeZone`. */
function wall(t: number, timeZone: string): { minutes: number; seconds: number; ms: number; offsetMs: number } {
  const p = Object.fromEntries(formatter(timeZone).formatToParts(t).map((x) => [x.type, x.value]));
  const asUtc = Date.UTC(Number(p.year), Number(p.month) - 1, Number(p.day), Number(p.hour), Number(p.minute), Number(p.second));
  const ms = ((t % 1000) + 1000) % 1000;
  return { minutes: Number(p.hour) * 60 + Number(p.minute), seconds: Number(p.second), ms, offsetMs: asUtc - (t - ms) };
}

const inside = (m: number, start: number, end: number) => (start <= end ? m >= start && m < end : m >= start || m < end);

/**
 * When the quiet window that contains `t` ends (the first instant whose wall time is `end`,
 * or the first after it when a clock change skips it), or null when `t` is outside it.
 */
export function quietUntil(t: number, window: { start: string; end: string }, timeZone: string): number | null {
  const start = minutesOf(window.start);
  const end = minutesOf(window.end);
  if (start === null || end === null || start === end) return null;
  const now = wall(t, timeZone);
  if (!inside(now.minutes, start, end)) return null;
  // Wall-clock minutes to go, then correct for an offset change on the way (DST).
  const ahead = (end - now.minutes + 1440) % 1440 || 1440;
  let guess = t - now.seconds * 1000 - now.ms + ahead * 60_000;
  for (let i = 0; i < 2; i++) {
    const there = wall(guess, timeZone);
    const drift = there.offsetMs - now.offsetMs;
    if (there.minutes === end) break;
    guess -= drift;
  }
  // A skipped wall time (the spring-forward gap) has no instant: the first one after it.
  while (inside(wall(guess, timeZone).minutes, start, end) && guess < t + 2 * 86_400_000) guess += 60_000;
  return guess;
}

/**
 * `HH:MM <zone>` for a reason sentence, or `HH:MM:SS <zone>` when the time is not on a whole
 * minute (a 20 s window releases mid-minute); with `from` (the time of the decision), the
 * local date follows when it is another day than that one's (`22:00 Europe/Berlin on
 * 2026-12-04`): a release at 22:00 decided at 23:43 is tomorrow's, not a time already past.
 */
export function localTime(t: number, timeZone: string, from?: number): string {
  const parts = (x: number) => Object.fromEntries(formatter(timeZone).formatToParts(x).map((y) => [y.type, y.value]));
  const p = parts(t);
  const seconds = p.second!.padStart(2, '0');
  const date = `${p.year!}-${p.month!.padStart(2, '0')}-${p.day!.padStart(2, '0')}`;
  const f = from === undefined ? null : parts(from);
  const sameDay = f === null || `${f.year!}-${f.month!.padStart(2, '0')}-${f.day!.padStart(2, '0')}` === date;
  return `${p.hour!.padStart(2, '0')}:${p.minute!.padStart(2, '0')}${seconds === '00' ? '' : `:${seconds}`} ${timeZone}${sameDay ? '' : ` on ${date}`}`;
}
