import { render, screen } from '@testing-library/svelte';
import { afterEach, describe, expect, it, vi } from 'vitest';
import Billing from './Billing.svelte';

afterEach(() => vi.unstubAllGlobals());

describe('Billing page', () => {
  it('shows what is used of each limit, and only the limit where nothing is used', async () => {
    const billing = {
      billing: 'enabled',
      plan: 'free',
      self_hosted: false,
      stripe_configured: true,
      limits: { agents: 3, events_per_month: 100000, retention_days: 7 },
      usage: { agents: 1, events_per_month: 1 },
    };
    vi.stubGlobal(
      'fetch',
      vi.fn(async () => new Response(JSON.stringify(billing))),
    );
    render(Billing);
    const cells = (name: string) =>
      Array.from(screen.getByRole('cell', { name }).closest('tr')!.querySelectorAll('td')).map((td) => td.textContent);
    expect(await screen.findByRole('cell', { name: 'agents' })).toBeTruthy();
    expect(cells('agents')).toEqual(['agents', '1', '3']);
    expect(cells('events per month')).toEqual(['events per month', '1', '100,000']);
    expect(cells('retention days')).toEqual(['retention days', '', '7']);
  });
});
