import { NANOS_PER_USD } from './format';
import type { StatPoint } from './types';

export interface Series {
  /** Bucket starts, unix seconds, one per hour or day, with no gaps. */
  x: number[];
  labels: string[];
  /** Dollars per bucket for each label, aligned with x. */
  ys: number[][];
}

function bucketSeconds(bucket: string, granularity: 'hour' | 'day'): number {
  const iso = granularity === 'day' && bucket.length === 10 ? bucket + 'T00:00:00Z' : bucket;
  const withZone = /Z|[+-]\d\d:?\d\d$/.test(iso) ? iso : iso + 'Z';
  return Math.floor(new Date(withZone).getTime() / 1000);
}

/**
 * Turns the backend's rows ({bucket, agent|model, cost_nanos}) into one series per label
 * over every bucket from `since` to `now`, empty buckets as zero spend.
 */
export function pivot(
  points: StatPoint[],
  key: 'agent' | 'model',
  granularity: 'hour' | 'day',
  since: string,
  now: Date = new Date(),
  maxSeries = 8,
): Series {
  const step = granularity === 'hour' ? 3600 : 86400;
  let start = bucketSeconds(since.replace(' ', 'T'), granularity);
  const end = Math.floor(now.getTime() / 1000);
  if (Number.isNaN(start)) start = end - step;
  start -= start % step;
  const x: number[] = [];
  for (let t = start; t <= end; t += step) x.push(t);
  const index = new Map(x.map((t, i) => [t, i]));

  const totals = new Map<string, number>();
  for (const p of points) {
    const label = String(p[key] ?? 'unknown');
    totals.set(label, (totals.get(label) ?? 0) + p.cost_nanos);
  }
  const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const kept = ranked.slice(0, maxSeries).map(([l]) => l);
  const other = ranked.length > maxSeries;
  const labels = other ? [...kept, 'other'] : kept;
  const ys = labels.map(() => x.map(() => 0));
  for (const p of points) {
    const label = String(p[key] ?? 'unknown');
    let s = labels.indexOf(label);
    if (s < 0) s = labels.length - 1;
    const t = bucketSeconds(p.bucket, granularity);
    const i = index.get(t - (t % step));
    if (i !== undefined) ys[s][i] += p.cost_nanos / NANOS_PER_USD;
  }
  return { x, labels, ys };
}
