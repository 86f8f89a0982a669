import { describe, expect, it } from 'vitest';
import { pivot } from './series';
import type { StatPoint } from './types';

const point = (bucket: string, agent: string, cost_nanos: number): StatPoint => ({
  bucket,
  agent,
  cost_nanos,
  cost_usd: '',
  calls: 1,
  tokens: 1,
  refusals: 0,
});

describe('pivot', () => {
  it('makes one dollar series per agent over every day, empty days as zero', () => {
    const s = pivot(
      [point('2026-11-26', 'a', 2e9), point('2026-11-28', 'a', 1e9), point('2026-11-28', 'b', 5e8)],
      'agent',
      'day',
      '2026-11-26',
      new Date('2026-11-28T12:00:00Z'),
    );
    expect(s.x).toHaveLength(3);
    expect(s.labels).toEqual(['a', 'b']);
    expect(s.ys[0]).toEqual([2, 0, 1]);
    expect(s.ys[1]).toEqual([0, 0, 0.5]);
  });

  it('folds the smallest series into "other" beyond the limit', () => {
    const points = ['a', 'b', 'c'].map((l, i) => point('2026-11-28', l, (3 - i) * 1e9));
    const s = pivot(points, 'agent', 'day', '2026-11-28', new Date('2026-11-28T01:00:00Z'), 2);
    expect(s.labels).toEqual(['a', 'b', 'other']);
    expect(s.ys[2]).toEqual([1]);
  });

  it('buckets hourly rows by their hour', () => {
    const s = pivot(
      [point('2026-11-28T10:00:00+00:00', 'a', 1e9)],
      'agent',
      'hour',
      '2026-11-28 09:00:00+00:00',
      new Date('2026-11-28T11:30:00Z'),
    );
    expect(s.x).toHaveLength(3);
    expect(s.ys[0]).toEqual([0, 1, 0]);
  });
});
