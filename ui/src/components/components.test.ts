import { fireEvent, render, screen } from '@testing-library/svelte';
import { tick } from 'svelte';
import { describe, expect, it, vi } from 'vitest';
import { fmtUsd } from '../lib/format';
import { confirmAction } from '../lib/confirm.svelte';
import ConfirmHost from './ConfirmHost.svelte';
import ErrorBanner from './ErrorBanner.svelte';
import Gauge from './Gauge.svelte';
import SecretReveal from './SecretReveal.svelte';

describe('Gauge', () => {
  it('is a labelled meter that says how much of the budget is used', () => {
    render(Gauge, { label: 'Today spend', used: 8e8, limit: 1e9, format: fmtUsd });
    const meter = screen.getByRole('meter', { name: 'Today spend' });
    expect(meter.getAttribute('aria-valuetext')).toBe('$0.80 of $1.00, 80%');
    expect(meter.querySelector('.fill')?.classList.contains('warn')).toBe(true);
  });
  it('caps the bar at full and marks an overrun', () => {
    render(Gauge, { label: 'Calls', used: 150, limit: 100, format: String });
    const meter = screen.getByRole('meter', { name: 'Calls' });
    expect(screen.getByText('(150%)')).toBeTruthy();
    const fill = meter.querySelector('.fill') as HTMLElement;
    expect(fill.style.width).toBe('100%');
    expect(fill.classList.contains('over')).toBe(true);
  });
});

describe('ConfirmHost', () => {
  it('asks before acting and answers with the button pressed', async () => {
    render(ConfirmHost);
    const answer = confirmAction({ title: 'Stop bot?', message: 'It stops.', confirmLabel: 'Stop agent', danger: true });
    await tick();
    expect(screen.getByText('Stop bot?')).toBeTruthy();
    await fireEvent.click(screen.getByRole('button', { name: 'Stop agent', hidden: true }));
    expect(await answer).toBe(true);

    const cancelled = confirmAction({ title: 'Again?', message: '', confirmLabel: 'Yes' });
    await tick();
    await fireEvent.click(screen.getByRole('button', { name: 'Cancel', hidden: true }));
    expect(await cancelled).toBe(false);
  });
});

describe('SecretReveal', () => {
  it('shows the secret once with a copy button that uses the clipboard', async () => {
    const writeText = vi.fn(async () => {});
    Object.defineProperty(navigator, 'clipboard', { value: { writeText }, configurable: true });
    const ondismiss = vi.fn();
    render(SecretReveal, { title: 'New key', secret: 'ak_live_abc', note: 'Copy it now', ondismiss });
    expect((screen.getByTestId('secret-value') as HTMLInputElement).value).toBe('ak_live_abc');
    await fireEvent.click(screen.getByRole('button', { name: 'Copy' }));
    expect(writeText).toHaveBeenCalledWith('ak_live_abc');
    expect(screen.getByRole('button', { name: 'Copied' })).toBeTruthy();
    await fireEvent.click(screen.getByRole('button', { name: 'I have saved it' }));
    expect(ondismiss).toHaveBeenCalled();
  });
});

describe('ErrorBanner', () => {
  it('announces errors and renders nothing without one', () => {
    const { container } = render(ErrorBanner, { message: null });
    expect(container.textContent?.trim()).toBe('');
    render(ErrorBanner, { message: 'Cannot reach the server.' });
    expect(screen.getByRole('alert').textContent).toBe('Cannot reach the server.');
  });
});
