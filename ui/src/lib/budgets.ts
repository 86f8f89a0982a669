import type { Budget, SpendByPeriod } from './types';

export interface BudgetUse {
  budget: Budget;
  used: number;
  fraction: number;
  over: boolean;
}

/** What an agent has used of each of its budgets, in the budget's own unit and period. */
export function budgetUse(budget: Budget, spend: SpendByPeriod | undefined): BudgetUse {
  const period = spend?.[budget.period];
  const used = !period ? 0 : budget.kind === 'usd' ? period.cost_nanos : budget.kind === 'tokens' ? period.tokens : period.calls;
  const fraction = budget.limit > 0 ? used / budget.limit : used > 0 ? Infinity : 0;
  return { budget, used, fraction, over: used >= budget.limit && (budget.limit > 0 || used > 0) };
}

export type AgentState = 'running' | 'stopped' | 'over budget';

export function agentState(status: string, uses: BudgetUse[]): AgentState {
  if (status === 'stopped') return 'stopped';
  if (uses.some((u) => u.over)) return 'over budget';
  return 'running';
}
