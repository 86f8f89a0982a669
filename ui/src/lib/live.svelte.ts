// The live feed (GET /v1/live, server-sent events): agents' status and spend, pushed by
// the backend whenever they change. Pages read `live.snapshot` and merge it over what
// they fetched, so numbers move on screen without a reload.
import type { LiveAgent, LiveSnapshot } from './types';

export const live = $state<{
  snapshot: LiveSnapshot | null;
  connected: boolean;
  /** Increments on every snapshot, so pages can refetch details when something moved. */
  revision: number;
}>({ snapshot: null, connected: false, revision: 0 });

export function applySnapshot(data: LiveSnapshot): void {
  live.snapshot = data;
  live.revision += 1;
}

export function liveAgent(name: string): LiveAgent | undefined {
  return live.snapshot?.agents.find((a) => a.name === name);
}

let source: EventSource | null = null;

export function startLive(onLost: () => void, url = '/v1/live'): void {
  if (source || typeof EventSource === 'undefined') return;
  const es = new EventSource(url, { withCredentials: true });
  source = es;
  es.onopen = () => {
    live.connected = true;
  };
  es.addEventListener('snapshot', (e) => {
    try {
      applySnapshot(JSON.parse((e as MessageEvent<string>).data) as LiveSnapshot);
    } catch {
      /* a malformed message is skipped; the next one replaces it */
    }
  });
  es.onerror = () => {
    live.connected = false;
    // EventSource retries by itself; a closed stream means the server refused it
    // (for example an expired session), which the caller checks.
    if (es.readyState === EventSource.CLOSED) {
      stopLive();
      onLost();
    }
  };
}

export function stopLive(): void {
  source?.close();
  source = null;
  live.connected = false;
}
