/**
 * Where Herald may send: webhook and chat URLs are user data, so a caller must not be able
 * to point them at Herald's own network (cloud metadata, loopback services, the private
 * LAN). A destination is allowed when every address its host resolves to is public
 * unicast, or falls inside the configured allowlist (`HERALD_OUTBOUND_ALLOW`, CIDRs).
 * The check runs when a URL is accepted (literal addresses, scheme, userinfo) and again
 * at connect time on the addresses DNS actually returned, so a name that rebinds to
 * 127.0.0.1 after it was accepted is still refused.
 */
import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import ipaddr from 'ipaddr.js';

type Address = ipaddr.IPv4 | ipaddr.IPv6;

export interface OutboundPolicy {
  /** Only https URLs (production), except to allowlisted literal addresses. */
  requireHttps: boolean;
  allow: readonly [Address, number][];
}

/** Parses `127.0.0.1,::1,10.0.0.0/8`; throws naming the bad entry. */
export function parseAllowList(text: string): [Address, number][] {
  return text.split(',').map((s) => s.trim()).filter(Boolean).map((entry) => {
    try {
      if (entry.includes('/')) return ipaddr.parseCIDR(entry);
      const a = ipaddr.parse(entry);
      return [a, a.kind() === 'ipv4' ? 32 : 128] as [Address, number];
    } catch {
      throw new Error(`"${entry}" is not an IP address or CIDR range`);
    }
  });
}

const RANGE_NAMES: Record<string, string> = { linkLocal: 'link-local', carrierGradeNat: 'carrier-grade NAT', uniqueLocal: 'unique-local', ipv4Mapped: 'IPv4-mapped' };

function parseAddress(ip: string): Address | null {
  try {
    const a = ipaddr.parse(ip.replace(/^\[|\]$/g, ''));
    return a.kind() === 'ipv6' && (a as ipaddr.IPv6).isIPv4MappedAddress() ? (a as ipaddr.IPv6).toIPv4Address() : a;
  } catch {
    return null;
  }
}

const allowlisted = (a: Address, policy: OutboundPolicy) => policy.allow.some(([range, bits]) => range.kind() === a.kind() && a.match(range, bits));

/** Why an address may not be reached, or null when it may. */
export function addressRefusal(ip: string, policy: OutboundPolicy): string | null {
  const a = parseAddress(ip);
  if (!a) return 'not an IP address';
  if (allowlisted(a, policy)) return null;
  const kind = a.range();
  return kind === 'unicast' ? null : `${RANGE_NAMES[kind] ?? kind} addresses are not allowed`;
}

/** Checks a URL a caller gives (webhookUrl, chatWebhookUrl): a sentence naming what is wrong, or null. */
export function urlRefusal(text: string, policy: OutboundPolicy): string | null {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return 'expected an absolute http(s) URL';
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return `expected an http(s) URL, got scheme "${url.protocol.replace(':', '')}"`;
  if (url.username || url.password) return 'credentials in the URL are not accepted; authenticate the receiver with the signature header';
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const literal = ipaddr.isValid(host);
  if (literal) {
    const why = addressRefusal(host, policy);
    if (why) return `destination ${why}`;
  }
  // Plain http only to an allowlisted literal address (a local receiver in development and tests).
  if (policy.requireHttps && url.protocol !== 'https:' && !(literal && allowlisted(parseAddress(host)!, policy))) return 'expected an https URL';
  return null;
}

/** The URL without userinfo, query or fragment: safe to show in a lifecycle or a log. */
export function displayUrl(text: string): string {
  try {
    const u = new URL(text);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return '(unparseable URL)';
  }
}

export class DestinationRefused extends Error {
  readonly code = 'EDESTINATIONREFUSED';
}

/**
 * A `lookup` for net/tls.connect (undici's `connect.lookup`): resolves as usual, then
 * refuses the connection if any returned address is not allowed.
 */
export function guardedLookup(policy: OutboundPolicy) {
  return (hostname: string, options: { all?: boolean; family?: number | string }, callback: (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void): void => {
    dnsLookup(hostname, { all: true, ...(options.family ? { family: Number(options.family) || 0 } : {}) }, (err, addresses) => {
      if (err) return callback(err, []);
      for (const a of addresses) {
        const why = addressRefusal(a.address, policy);
        if (why) return callback(new DestinationRefused(`${hostname} resolves to a refused address (${why})`), []);
      }
      if (options.all) return callback(null, addresses);
      callback(null, addresses[0]!.address, addresses[0]!.family);
    });
  };
}
