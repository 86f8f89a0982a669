import { fireEvent, render, screen, waitFor } from '@testing-library/svelte';
import { afterEach, describe, expect, it, vi } from 'vitest';
import ConfirmHost from '../components/ConfirmHost.svelte';
import { applySnapshot } from '../lib/live.svelte';
import { session } from '../lib/session.svelte';
import Agents from './Agents.svelte';

const agent = {
  name: 'bot',
  status: 'running',
  kill_reason: null,
  control_version: 1,
  created_at: '2026-11-28T10:00:00Z',
  last_seen_at: '2026-11-28T10:00:00Z',
  spend_today: { cost_nanos: 6e8, cost_usd: '0.60' },
  spend_month: { cost_nanos: 6e8, cost_usd: '0.60' },
  budgets: [
    { id: 7, scope: 'agent', agent: 'bot', kind: 'usd', period: 'daily', limit: 1e9, created_at: '', updated_at: '' },
  ],
  spend: {
    daily: { period_id: 'd', cost_nanos: 6e8, tokens: 1, calls: 1 },
    weekly: { period_id: 'w', cost_nanos: 6e8, tokens: 1, calls: 1 },
    monthly: { period_id: 'm', cost_nanos: 6e8, tokens: 1, calls: 1 },
    total: { period_id: 't', cost_nanos: 6e8, tokens: 1, calls: 1 },
  },
};

function backend() {
  const calls: { method: string; url: string }[] = [];
  const fetch = vi.fn(async (url: string, init?: RequestInit) => {
    calls.push({ method: init?.method ?? 'GET', url });
    if (url === '/v1/agents') return new Response(JSON.stringify([agent]));
    if (url === '/v1/agents/bot') return new Response(JSON.stringify(agent));
    if (url === '/v1/agents/bot/kill') return new Response(JSON.stringify({ agent: 'bot', status: 'stopped' }));
    return new Response('{}', { status: 404 });
  });
  vi.stubGlobal('fetch', fetch);
  return calls;
}

afterEach(() => vi.unstubAllGlobals());

describe('Agents page', () => {
  it('shows spend against the budget and stops the agent only after confirmation', async () => {
    session.me = { user: { id: 1, email: 'o@x.io' }, organization: { id: 1, name: 'o' }, role: 'owner' };
    const calls = backend();
    render(ConfirmHost);
    render(Agents);
    const meter = await screen.findByRole('meter', { name: 'Today spend' });
    expect(meter.getAttribute('aria-valuetext')).toBe('$0.60 of $1.00, 60%');
    expect(screen.getByTestId('agent-status').textContent).toBe('running');

    await fireEvent.click(screen.getByRole('button', { name: 'Stop bot' }));
    expect(calls.some((c) => c.url.endsWith('/kill'))).toBe(false);
    await fireEvent.click(await screen.findByRole('button', { name: 'Stop agent', hidden: true }));
    await waitFor(() => expect(calls.some((c) => c.method === 'POST' && c.url === '/v1/agents/bot/kill')).toBe(true));
  });

  it('follows the live feed: status and spend change without a reload', async () => {
    session.me = { user: { id: 1, email: 'o@x.io' }, organization: { id: 1, name: 'o' }, role: 'viewer' };
    backend();
    render(Agents);
    await screen.findByText('running');
    expect(screen.queryByRole('button', { name: 'Stop bot' })).toBeNull(); // viewers cannot stop
    applySnapshot({
      type: 'snapshot',
      today_nanos: 9e8,
      month_nanos: 9e8,
      agents: [{ name: 'bot', status: 'stopped', reason: 'loop', last_seen_at: null, spend_today_nanos: 9e8, spend_month_nanos: 9e8, calls_month: 2, refusals_month: 0 }],
    });
    await waitFor(() => expect(screen.getByTestId('agent-status').textContent).toBe('stopped'));
    expect(screen.getAllByText('$0.90').length).toBeGreaterThan(0);
  });
});
