export type Theme = 'light' | 'dark' | 'system';
const KEY = 'kavach-theme';

function saved(): Theme {
  try {
    const t = localStorage.getItem(KEY);
    if (t === 'light' || t === 'dark') return t;
  } catch {
    /* storage may be blocked */
  }
  return 'system';
}

export const theme = $state<{ choice: Theme; dark: boolean }>({ choice: saved(), dark: false });

function systemDark(): boolean {
  return typeof matchMedia === 'function' && matchMedia('(prefers-color-scheme: dark)').matches;
}

export function applyTheme(choice: Theme = theme.choice): void {
  theme.choice = choice;
  theme.dark = choice === 'dark' || (choice === 'system' && systemDark());
  const root = document.documentElement;
  if (choice === 'system') delete root.dataset.theme;
  else root.dataset.theme = choice;
  try {
    if (choice === 'system') localStorage.removeItem(KEY);
    else localStorage.setItem(KEY, choice);
  } catch {
    /* ignore */
  }
}

export function watchSystemTheme(): void {
  if (typeof matchMedia !== 'function') return;
  matchMedia('(prefers-color-scheme: dark)').addEventListener?.('change', () => applyTheme());
}
