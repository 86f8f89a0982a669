import { untrack } from 'svelte';
import { live } from './live.svelte';

/**
 * Calls `load` now and again (debounced) whenever the live feed reports a change.
 * Call it while a component initialises.
 */
export function refreshOnLive(load: () => unknown, delayMs = 400): void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let first = true;
  $effect(() => {
    void live.revision;
    untrack(() => {
      if (first) {
        first = false;
        load();
        return;
      }
      clearTimeout(timer);
      timer = setTimeout(load, delayMs);
    });
    return () => clearTimeout(timer);
  });
}
