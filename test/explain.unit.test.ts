/** `herald explain --event`: one block per tenant, since event ids are per tenant. */
import { describe, expect, it } from 'vitest';
import { formatEvent, formatLifecycle } from '../cli/explain.ts';
import type { NotificationView } from '../processors/outcome.ts';

const view = (tenant: string, recipient: string): NotificationView => ({
  notificationId: `ntf_${tenant}_${recipient}`, tenant, recipient, eventId: 'my-event-2', eventType: 'comment.created', ruleId: 'comments', traceId: 't',
  status: 'DELIVERED', channels: { webhook: 'DELIVERED' }, terminal: ['webhook:DELIVERED'], createdAt: 0, updatedAt: 1,
  events: [{ notificationId: `ntf_${tenant}_${recipient}`, deliveryId: null, tenant, recipient, eventId: 'my-event-2', eventType: 'comment.created', ruleId: 'comments', stage: 'deliver', status: 'DELIVERED', terminal: true, reasonCode: 'delivered', reason: 'HTTP 200', channel: 'webhook', attempt: 1, providerMessageId: null, sourceTopic: 'x', sourcePartition: 0, sourceOffset: '0', timestamp: 1, traceId: 't', content: null, decisionId: 'd' }],
});

describe('formatEvent', () => {
  it('heads each tenant\'s notifications with that tenant, never one tenant\'s header over another\'s recipients', () => {
    const out = formatEvent('my-event-2', [view('acme', 'ada'), view('globex', 'gus'), view('acme', 'mia')]).split('\n');
    expect(out[0]).toBe('event my-event-2 (comment.created), tenant acme: 2 notifications');
    expect(out.slice(1, 3).map((l) => l.trim().split(/\s+/)[0])).toEqual(['ada', 'mia']);
    expect(out[3]).toBe('event my-event-2 (comment.created), tenant globex: 1 notification');
    expect(out[4]!.trim().split(/\s+/)[0]).toBe('gus');
  });
});

describe('a notification with a channel still under way', () => {
  it('shows that channel as not finished, beside the ones that ended', () => {
    // given email delivered and the webhook waiting for a retry
    const v = { ...view('acme', 'grace'), channels: { email: 'DELIVERED', webhook: 'RETRY_SCHEDULED' }, terminal: ['email:DELIVERED'] };
    // then both views name the webhook
    expect(formatEvent('my-event-2', [v]).split('\n')[1]).toContain('email:DELIVERED, webhook:RETRY_SCHEDULED (not finished)');
    expect(formatLifecycle(v).split('\n')[1]).toBe('status DELIVERED; terminal: email:DELIVERED; not finished: webhook:RETRY_SCHEDULED; 1 ms from first to last decision');
  });
});
