import { api, ApiError, setUnauthorizedHandler } from './api';
import { navigate, route } from './router.svelte';
import type { Me } from './types';

export const session = $state<{ me: Me | null; loaded: boolean; expired: boolean }>({
  me: null,
  loaded: false,
  expired: false,
});

export function isAdmin(): boolean {
  return session.me?.role === 'owner' || session.me?.role === 'admin';
}

/** Sends the user to the login page, remembering where they were. */
export function sessionExpired(): void {
  const wasLoggedIn = session.me !== null;
  session.me = null;
  if (wasLoggedIn) session.expired = true; // later 401s of the same moment keep the notice
  if (route.path !== '/login' && route.path !== '/signup') {
    const next = route.path + route.search;
    navigate(`/login?next=${encodeURIComponent(next)}`, { replace: true });
  }
}

export async function loadSession(): Promise<Me | null> {
  try {
    session.me = await api.get<Me>('/v1/auth/me', { anonymous: true });
  } catch (err) {
    if (!(err instanceof ApiError) || (err.status !== 401 && err.status !== 403)) {
      session.loaded = true;
      throw err;
    }
    session.me = null;
  }
  session.loaded = true;
  return session.me;
}

export async function logout(): Promise<void> {
  try {
    await api.post('/v1/auth/logout', {}, { anonymous: true });
  } finally {
    session.me = null;
    session.expired = false;
    navigate('/login', { replace: true });
  }
}

setUnauthorizedHandler(sessionExpired);
