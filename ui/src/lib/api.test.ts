import { afterEach, describe, expect, it, vi } from 'vitest';
import { api, ApiError, humanMessage, setUnauthorizedHandler } from './api';

function respond(status: number, body: unknown) {
  return vi.fn(async () => new Response(body === undefined ? '' : JSON.stringify(body), { status }));
}

afterEach(() => {
  vi.unstubAllGlobals();
  setUnauthorizedHandler(null);
  document.cookie = 'kavach_csrf=; expires=Thu, 01 Jan 1970 00:00:00 GMT';
});

describe('humanMessage', () => {
  it('turns validation errors into a sentence naming the fields', () => {
    const msg = humanMessage(400, {
      detail: 'Validation failed for POST /v1/auth/register',
      extra: [{ key: 'password', message: 'Expected `str` of length >= 8', source: 'body' }],
    });
    expect(msg).toBe('Please check the form: password: Expected `str` of length >= 8.');
  });
  it('explains server failures and unreachable servers without internals', () => {
    expect(humanMessage(500, { detail: 'internal server error' })).toBe(
      'The server had a problem (error 500). Try again in a moment.',
    );
    expect(humanMessage(0, null)).toMatch(/Cannot reach the AgentKavach server/);
    expect(humanMessage(429, null)).toMatch(/Too many requests/);
  });
  it("keeps the backend's own explanation for 403 and 404", () => {
    expect(humanMessage(403, { detail: 'this needs the owner or admin role' })).toBe(
      'This needs the owner or admin role.',
    );
    expect(humanMessage(404, { detail: "no agent named 'x'" })).toBe("No agent named 'x'.");
  });
});

describe('request', () => {
  it('sends the CSRF cookie back in the header on writes only', async () => {
    document.cookie = 'kavach_csrf=tok123';
    const fetch = respond(200, { ok: true });
    vi.stubGlobal('fetch', fetch);
    await api.post('/v1/agents/a/kill', {});
    await api.get('/v1/agents');
    const [, post] = fetch.mock.calls[0] as unknown as [string, RequestInit];
    const [, get] = fetch.mock.calls[1] as unknown as [string, RequestInit];
    expect((post.headers as Record<string, string>)['X-CSRF-Token']).toBe('tok123');
    expect((get.headers as Record<string, string>)['X-CSRF-Token']).toBeUndefined();
    expect(post.credentials).toBe('same-origin');
  });

  it('calls the expiry handler on 401, except for anonymous requests', async () => {
    const expired = vi.fn();
    setUnauthorizedHandler(expired);
    vi.stubGlobal('fetch', respond(401, { detail: 'invalid or expired session; log in again' }));
    await expect(api.get('/v1/agents')).rejects.toBeInstanceOf(ApiError);
    expect(expired).toHaveBeenCalledTimes(1);
    await expect(api.post('/v1/auth/login', {}, { anonymous: true })).rejects.toThrow(
      'Invalid or expired session; log in again.',
    );
    expect(expired).toHaveBeenCalledTimes(1);
  });

  it('reports a network failure as a readable error', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => Promise.reject(new TypeError('Failed to fetch'))));
    const err = await api.get('/v1/agents').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ApiError);
    expect((err as ApiError).status).toBe(0);
  });
});
