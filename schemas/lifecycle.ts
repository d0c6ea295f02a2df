/**
 * The lifecycle vocabulary: every status a stage may record on outcomes.v1, whether it is
 * terminal, and every machine reason code with its meaning. The runtime stamps `terminal`
 * from this table (a stage cannot disagree with it), the accounting invariant reads it,
 * and the README's reason-code table is checked against it by a test.
 *
 * Terminal means: the notification (or, for DELIVERED and DEAD_LETTERED, one channel of
 * it) has reached its end. Every accepted (event, recipient) reaches exactly one terminal
 * status, or one per routed channel.
 */

import { hash } from 'node:crypto';

export const STATUSES = {
  ACCEPTED: { terminal: false, doc: 'ingest matched a rule and derived the notification for a recipient' },
  REJECTED: { terminal: true, doc: 'the event was invalid; it went to dlq.v1' },
  ENRICHED: { terminal: false, doc: 'profile and preferences joined' },
  DROPPED: { terminal: true, doc: 'not sent, by the recipient\'s profile, preferences or the rules' },
  UNIQUE: { terminal: false, doc: 'passed dedupe' },
  SUPPRESSED_DUPLICATE: { terminal: true, doc: 'the same dedupe key was seen inside the rule\'s window' },
  ADMITTED: { terminal: false, doc: 'passed throttle' },
  DEFERRED: { terminal: false, doc: 'held by throttle (a rate limit or quiet hours) until its release time, or collected into a digest' },
  RELEASED: { terminal: false, doc: 'a deferred notification released by throttle when its window allowed' },
  DIGESTED: { terminal: true, doc: 'sent as one item of a digest notification (named in the reason)' },
  THROTTLED: { terminal: true, doc: 'over a rate limit of a rule whose onExceed is drop; not sent' },
  ROUTED: { terminal: false, doc: 'channels chosen, one delivery task each' },
  EXPIRED: { terminal: true, doc: 'its expiry passed before it could be sent' },
  ATTEMPTED: { terminal: false, doc: 'recorded before a channel call' },
  RETRY_SCHEDULED: { terminal: false, doc: 'a transient failure; the next attempt is held until its due time' },
  FAILED: { terminal: false, doc: 'a channel call failed for good (DEAD_LETTERED follows)' },
  DELIVERED: { terminal: true, doc: 'the channel\'s provider accepted it (per channel)' },
  FALLBACK: { terminal: false, doc: 'a channel failed for good and the rule (strategy first) tries the next one (both named in the reason)' },
  READ: { terminal: false, doc: 'the user read the in-app notification (recorded through the API)' },
  SEEN: { terminal: false, doc: 'the in-app notification was shown to the user (recorded through the API)' },
  DEAD_LETTERED: { terminal: true, doc: 'the channel gave up: permanent failure or attempts exhausted (per channel)' },
} as const satisfies Record<string, { terminal: boolean; doc: string }>;

export type Status = keyof typeof STATUSES;

export const REASON_CODES = {
  // ingest
  rule_matched: 'the event type matched a rule; one notification per (rule, recipient)',
  unknown_event_type: 'no rule matches the event type',
  invalid_recipient: 'a recipient id is empty or blank',
  empty_audience: 'the event names an audience with no members and no explicit recipients',
  no_recipients: 'the event names neither recipients nor an audience',
  fanout_too_large: 'the event would notify more users than HERALD_MAX_FANOUT; nothing was sent',
  schema_violation: 'the event does not match the DomainEvent schema (field and expectation in the reason)',
  payload_too_large: 'the record is larger than HERALD_MAX_PAYLOAD_BYTES',
  undecodable: 'the bytes are neither Avro in Confluent wire format nor JSON',
  invalid_event: 'the event failed validation for another reason (given in the reason)',
  // enrich
  profile_joined: 'the recipient\'s profile (and preferences, when set) were joined',
  unknown_recipient: 'no profile for the recipient in users.v1 (at deliver: the profile was deleted after routing)',
  recipient_inactive: 'the recipient\'s profile is deactivated (at deliver: since routing)',
  tenant_mismatch: 'the recipient belongs to another tenant than the event',
  // dedupe
  first_seen: 'the dedupe key was not seen inside the window',
  window_expired: 'the dedupe key was seen before, outside the window',
  replayed: 'the same notification seen again (redelivery or replay); passed through',
  not_deduplicated: 'the rule sets no dedupe key, or a field of its key is missing from the event, and the event has no idempotencyKey: passed without a dedupe check',
  duplicate_key: 'another notification with the same dedupe key fields is inside the window',
  duplicate_idempotency_key: 'another notification with the same idempotency key is inside the window',
  // throttle
  no_limit: 'no rate limit or quiet hours apply',
  within_limits: 'every rate limit of the rule had room (counts in the reason)',
  critical_bypass: 'a CRITICAL notification passes limits and quiet hours',
  limit_deferred: 'over a rate limit: held until the window has room (the limit, the count and the release time in the reason)',
  limit_dropped: 'over a rate limit of a rule whose onExceed is drop',
  quiet_hours: 'inside the user\'s quiet hours: held until they end (window and release time in the user\'s time zone)',
  released: 'a held notification was released',
  digest_collected: 'over a rate limit: collected into a digest (its id and when it is sent in the reason)',
  digest_emitted: 'a digest notification made of the collected items',
  digested: 'the notification went out as an item of a digest',
  expired_while_held: 'its expiry passed while throttle held it; never sent',
  // route
  channels_selected: 'the channels that can reach the recipient were chosen',
  expired_before_routing: 'the notification\'s expiry passed before it was routed',
  rule_removed: 'the notification\'s rule is no longer in the rules file',
  category_opted_out: 'the recipient opted out of the rule\'s category',
  no_reachable_channel: 'no channel of the rule can reach the recipient',
  // deliver
  channel_called: 'the channel is about to be called (attempt recorded first)',
  channel_opted_out: 'the recipient opted out of the channel after the notification was routed: not sent on it',
  address_removed: 'the recipient\'s profile has no address for the channel any more: not sent on it',
  accepted_by_provider: 'the channel\'s provider accepted the message',
  circuit_open: 'the endpoint\'s circuit is open after repeated failures: the task waits without a call and without using an attempt',
  slow_endpoint: 'the URL hangs or answers slowly and already has calls queued in its slow lane: the task waits without a call and without using an attempt',
  fallback: 'the channel failed for good; the next channel of the rule (strategy first) gets the notification',
  added_to_inbox: 'the notification was put in the user\'s in-app inbox',
  read_by_user: 'the user read it in the in-app inbox',
  seen_by_user: 'the in-app inbox showed it to the user',
  already_recorded: 'a redelivered task whose result was already recorded; not sent again',
  expired_before_delivery: 'the notification\'s expiry passed before this attempt',
  transient_failure: 'a failure that may pass (timeout, connection error, 429, 5xx); retried with backoff',
  permanent_failure: 'a failure retrying cannot fix (4xx, bad address, no provider)',
  attempts_exhausted: 'every attempt failed transiently; no attempts left',
} as const satisfies Record<string, string>;

export type ReasonCode = keyof typeof REASON_CODES;

/**
 * The id of a decision: a hash of (notificationId, stage, status, deliveryId, attempt).
 * Reprocessing or redelivery records the same decision with the same id.
 */
export function decisionIdOf(d: { notificationId: string; stage: string; status: string; deliveryId: string | null; attempt: number | null; repeat?: string | null }): string {
  const parts = [d.notificationId, d.stage, d.status, d.deliveryId ?? '', d.attempt === null ? '' : String(d.attempt), ...(d.repeat ? [d.repeat] : [])];
  return `dec_${hash('sha256', `${parts.join('\u0000')}\u0000`, 'hex').slice(0, 32)}`;
}

export function isTerminal(status: Status): boolean {
  return STATUSES[status].terminal;
}
