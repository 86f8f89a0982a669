import { afterEach, describe, expect, it, vi } from 'vitest';
import { answerConfirm, confirmAction, confirmState } from './confirm.svelte';
import { applySnapshot, live, liveAgent } from './live.svelte';
import { match, navigate, nextPath, route } from './router.svelte';
import { session, sessionExpired } from './session.svelte';

afterEach(() => vi.unstubAllGlobals());

describe('router', () => {
  it('matches patterns and decodes params', () => {
    expect(match('/agents/:name', '/agents/research%20bot')).toEqual({ name: 'research bot' });
    expect(match('/agents/:name', '/agents')).toBeNull();
    expect(match('/', '/')).toEqual({});
  });
  it('only returns to same-site pages after login', () => {
    navigate('/login?next=%2Fagents');
    expect(nextPath()).toBe('/agents');
    navigate('/login?next=%2F%2Fevil.example');
    expect(nextPath()).toBe('/');
  });
});

describe('session expiry', () => {
  it('sends a logged-in user to the login page with the page to come back to', () => {
    navigate('/agents/a?x=1');
    session.me = { user: { id: 1, email: 'a@b.c' }, organization: { id: 1, name: 'o' }, role: 'owner' };
    sessionExpired();
    sessionExpired(); // a second 401 from the same moment keeps the notice
    expect(session.me).toBeNull();
    expect(session.expired).toBe(true);
    expect(route.path).toBe('/login');
    expect(nextPath()).toBe('/agents/a?x=1');
  });
});

describe('live feed store', () => {
  it('keeps the latest snapshot and counts revisions', () => {
    const before = live.revision;
    applySnapshot({
      type: 'snapshot',
      today_nanos: 5,
      month_nanos: 9,
      agents: [
        { name: 'a', status: 'stopped', reason: 'x', last_seen_at: null, spend_today_nanos: 5, spend_month_nanos: 9, calls_month: 1, refusals_month: 0 },
      ],
    });
    expect(live.revision).toBe(before + 1);
    expect(liveAgent('a')?.status).toBe('stopped');
    expect(liveAgent('b')).toBeUndefined();
  });
});

describe('confirm', () => {
  it('resolves true on confirm and false when a new question replaces it', async () => {
    const first = confirmAction({ title: 't', message: 'm', confirmLabel: 'Go' });
    const second = confirmAction({ title: 't2', message: 'm', confirmLabel: 'Go' });
    expect(await first).toBe(false);
    expect(confirmState.request?.title).toBe('t2');
    answerConfirm(true);
    expect(await second).toBe(true);
    expect(confirmState.request).toBeNull();
  });
});
