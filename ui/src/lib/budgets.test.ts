import { describe, expect, it } from 'vitest';
import { agentState, budgetUse } from './budgets';
import type { Budget, SpendByPeriod } from './types';

const budget = (over: Partial<Budget>): Budget => ({
  id: 1,
  scope: 'agent',
  agent: 'a',
  kind: 'usd',
  period: 'daily',
  limit: 1_000_000_000,
  created_at: '',
  updated_at: '',
  ...over,
});
const spend: SpendByPeriod = {
  daily: { period_id: 'd', cost_nanos: 400_000_000, tokens: 5000, calls: 10 },
  weekly: { period_id: 'w', cost_nanos: 2_000_000_000, tokens: 9000, calls: 20 },
  monthly: { period_id: 'm', cost_nanos: 3_000_000_000, tokens: 9000, calls: 20 },
  total: { period_id: 't', cost_nanos: 3_000_000_000, tokens: 9000, calls: 20 },
};

describe('budgetUse', () => {
  it('measures each budget in its own unit and period', () => {
    expect(budgetUse(budget({}), spend).fraction).toBeCloseTo(0.4);
    expect(budgetUse(budget({ kind: 'tokens', limit: 10000 }), spend).used).toBe(5000);
    expect(budgetUse(budget({ kind: 'calls', period: 'weekly', limit: 20 }), spend).over).toBe(true);
  });
});

describe('agentState', () => {
  it('says stopped before over budget, and over budget before running', () => {
    const over = [budgetUse(budget({ period: 'weekly' }), spend)];
    expect(agentState('stopped', over)).toBe('stopped');
    expect(agentState('running', over)).toBe('over budget');
    expect(agentState('running', [budgetUse(budget({}), spend)])).toBe('running');
  });
});
