// A small history-API router: the backend answers every page path with index.html.

export const route = $state({ path: location.pathname, search: location.search });

export function navigate(to: string, options: { replace?: boolean } = {}): void {
  const url = new URL(to, location.origin);
  if (options.replace) history.replaceState(null, '', url);
  else history.pushState(null, '', url);
  route.path = url.pathname;
  route.search = url.search;
  window.scrollTo?.(0, 0);
}

export function startRouter(): () => void {
  const onPop = () => {
    route.path = location.pathname;
    route.search = location.search;
  };
  // Same-origin links navigate without a reload; modified clicks open as usual.
  const onClick = (e: MouseEvent) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const a = (e.target as Element | null)?.closest?.('a');
    if (!a || a.target || a.hasAttribute('download')) return;
    const href = a.getAttribute('href');
    if (!href || !href.startsWith('/') || href.startsWith('//') || href.startsWith('/v1/')) return;
    e.preventDefault();
    navigate(href);
  };
  window.addEventListener('popstate', onPop);
  document.addEventListener('click', onClick);
  return () => {
    window.removeEventListener('popstate', onPop);
    document.removeEventListener('click', onClick);
  };
}

/** Matches "/agents/:name" against a path; returns the decoded params or null. */
export function match(pattern: string, path: string): Record<string, string> | null {
  const p = pattern.split('/').filter(Boolean);
  const s = path.split('/').filter(Boolean);
  if (p.length !== s.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < p.length; i++) {
    if (p[i].startsWith(':')) {
      try {
        params[p[i].slice(1)] = decodeURIComponent(s[i]);
      } catch {
        return null;
      }
    } else if (p[i] !== s[i]) return null;
  }
  return params;
}

export function queryParam(name: string): string | null {
  return new URLSearchParams(route.search).get(name);
}

/** The ?next= page to return to after logging in; only same-site paths. */
export function nextPath(): string {
  const next = queryParam('next');
  return next && next.startsWith('/') && !next.startsWith('//') ? next : '/';
}
