// One confirmation dialog for the whole app: `await confirmAction({...})` is true when the
// person pressed the confirm button, false when they cancelled or pressed Escape.

export interface ConfirmRequest {
  title: string;
  message: string;
  confirmLabel: string;
  danger?: boolean;
}

export const confirmState = $state<{ request: ConfirmRequest | null }>({ request: null });
let resolver: ((ok: boolean) => void) | null = null;

export function confirmAction(request: ConfirmRequest): Promise<boolean> {
  resolver?.(false);
  confirmState.request = request;
  return new Promise((resolve) => {
    resolver = resolve;
  });
}

export function answerConfirm(ok: boolean): void {
  const r = resolver;
  resolver = null;
  confirmState.request = null;
  r?.(ok);
}
