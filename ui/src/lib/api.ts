// The one way the dashboard talks to the backend: same-origin fetch with the session
// cookie, the CSRF double-submit header on writes, and errors turned into sentences.

export const CSRF_COOKIE = 'kavach_csrf';
export const CSRF_HEADER = 'X-CSRF-Token';

export class ApiError extends Error {
  readonly status: number;
  readonly detail: string;
  constructor(status: number, message: string, detail = '') {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.detail = detail;
  }
}

interface ErrorBody {
  detail?: unknown;
  extra?: unknown;
}

function sentence(text: string): string {
  const t = text.trim();
  if (!t) return t;
  const capital = t[0].toUpperCase() + t.slice(1);
  return /[.!?]$/.test(capital) ? capital : capital + '.';
}

function validationProblems(extra: unknown): string[] {
  if (!Array.isArray(extra)) return [];
  return extra
    .map((item) => {
      if (!item || typeof item !== 'object') return '';
      const { key, message } = item as { key?: unknown; message?: unknown };
      const what = typeof key === 'string' && key ? key.replace(/_/g, ' ') + ': ' : '';
      return typeof message === 'string' ? what + message : '';
    })
    .filter(Boolean);
}

/** A message a person understands for an HTTP status and the backend's JSON error body. */
export function humanMessage(status: number, body: ErrorBody | null): string {
  const detail = typeof body?.detail === 'string' ? body.detail : '';
  const problems = validationProblems(body?.extra);
  if (status === 0) return 'Cannot reach the AgentKavach server. Check your connection and try again.';
  if (status === 400 || status === 422) {
    if (problems.length) return sentence('Please check the form: ' + problems.join('; '));
    return detail && !detail.startsWith('Validation failed')
      ? sentence(detail)
      : 'The server did not accept that request. Please check the values and try again.';
  }
  if (status === 401) return detail ? sentence(detail) : 'Your session has expired. Please log in again.';
  if (status === 403) return detail ? sentence(detail) : 'You do not have permission to do that.';
  if (status === 404) return detail ? sentence(detail) : 'That was not found. It may have been deleted.';
  if (status === 409) return detail ? sentence(detail) : 'That conflicts with something that already exists.';
  if (status === 413) return 'That request is too large for the server.';
  if (status === 429) return 'Too many requests. Wait a moment and try again.';
  if (status >= 500) return `The server had a problem (error ${status}). Try again in a moment.`;
  return detail ? sentence(detail) : `The request failed (error ${status}).`;
}

export function readCookie(name: string): string | null {
  for (const part of document.cookie.split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === name) return decodeURIComponent(v.join('='));
  }
  return null;
}

let onUnauthorized: (() => void) | null = null;

/** Called when a request that needed a session got 401: the session expired. */
export function setUnauthorizedHandler(handler: (() => void) | null): void {
  onUnauthorized = handler;
}

export interface RequestOptions {
  /** Leave 401s to the caller (login form, session probe) instead of going to the login page. */
  anonymous?: boolean;
  signal?: AbortSignal;
}

export async function request<T>(
  method: string,
  path: string,
  body?: unknown,
  options: RequestOptions = {},
): Promise<T> {
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (!['GET', 'HEAD', 'OPTIONS'].includes(method)) {
    const csrf = readCookie(CSRF_COOKIE);
    if (csrf) headers[CSRF_HEADER] = csrf;
  }
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      signal: options.signal,
    });
  } catch (err) {
    if ((err as Error)?.name === 'AbortError') throw err;
    throw new ApiError(0, humanMessage(0, null));
  }
  const text = await response.text();
  let data: unknown = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const errorBody = data && typeof data === 'object' ? (data as ErrorBody) : null;
    if (response.status === 401 && !options.anonymous && onUnauthorized) onUnauthorized();
    throw new ApiError(
      response.status,
      humanMessage(response.status, errorBody),
      typeof errorBody?.detail === 'string' ? errorBody.detail : '',
    );
  }
  return data as T;
}

export const api = {
  get: <T>(path: string, options?: RequestOptions) => request<T>('GET', path, undefined, options),
  post: <T>(path: string, body?: unknown, options?: RequestOptions) =>
    request<T>('POST', path, body ?? {}, options),
  patch: <T>(path: string, body: unknown, options?: RequestOptions) =>
    request<T>('PATCH', path, body, options),
  del: <T>(path: string, options?: RequestOptions) => request<T>('DELETE', path, undefined, options),
};

/** The message to show for anything a request threw. */
export function errorText(err: unknown): string {
  if (err instanceof ApiError) return err.message;
  if (err instanceof Error && err.message) return err.message;
  return 'Something went wrong. Please try again.';
}
