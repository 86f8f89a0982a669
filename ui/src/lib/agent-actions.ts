import { api } from './api';
import { confirmAction } from './confirm.svelte';

/** Asks, then stops the agent; true when it was stopped. */
export async function stopAgent(name: string): Promise<boolean> {
  const ok = await confirmAction({
    title: `Stop ${name}?`,
    message:
      'Every SDK process of this agent refuses its next call within a second and stays stopped until you resume it.',
    confirmLabel: 'Stop agent',
    danger: true,
  });
  if (!ok) return false;
  await api.post(`/v1/agents/${encodeURIComponent(name)}/kill`, { reason: 'stopped from the dashboard' });
  return true;
}

/** Asks, then resumes the agent; true when it was resumed. */
export async function resumeAgent(name: string): Promise<boolean> {
  const ok = await confirmAction({
    title: `Resume ${name}?`,
    message: 'The agent may make calls again, within its budgets.',
    confirmLabel: 'Resume agent',
  });
  if (!ok) return false;
  await api.post(`/v1/agents/${encodeURIComponent(name)}/resume`, {});
  return true;
}
