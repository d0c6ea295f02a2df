/**
 * Mail addresses, checked without loading the mail library (the configuration checks
 * HERALD_SMTP_FROM at start).
 */

/**
 * Whether `s` is one plain mailbox (local@domain) and nothing else: no display name, no
 * list, no comment, no whitespace or control characters, so a mail client library cannot
 * read it as several recipients or as extra header lines. Profiles reach the email channel
 * from users.v1, which any producer may write, so it is checked here and not only by the API.
 */
export function isMailbox(s: string): boolean {
  if (s.length > 254) return false;
  // eslint-disable-next-line no-control-regex
  if (/[\s\u0000-\u001f\u007f,;:<>()[\]\\"]/.test(s)) return false;
  const at = s.lastIndexOf('@');
  if (at <= 0 || at === s.length - 1 || s.indexOf('@') !== at) return false;
  // A dot-atom (RFC 5321 §4.1.2, unquoted): no dot first, last or twice in a row, at most 64
  // characters; the domain's labels: 1–63 characters, no hyphen first or last.
  const local = s.slice(0, at);
  if (local.length > 64 || local.startsWith('.') || local.endsWith('.') || local.includes('..')) return false;
  return s.slice(at + 1).split('.').every((label) => label.length > 0 && label.length <= 63 && !label.startsWith('-') && !label.endsWith('-'));
}

/** The address of a From value (`Name <addr>` or `addr`), or null when it is not one plain mailbox with an optional name. */
export function fromAddress(from: string): string | null {
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(from)) return null;
  const m = /^\s*(?:[^<>@,;"]*?\s*<([^<>]+)>|([^<>\s]+))\s*$/.exec(from);
  const address = m?.[1] ?? m?.[2] ?? null;
  return address !== null && isMailbox(address) ? address : null;
}

/** Whether `from` is a usable From value (HERALD_SMTP_FROM): why not, or null. */
export function checkFrom(from: string): string | null {
  return fromAddress(from) === null ? `expected one address, optionally with a name ("Acme <notifications@acme.example>"), without line breaks; got ${JSON.stringify(from.slice(0, 80))}` : null;
}
