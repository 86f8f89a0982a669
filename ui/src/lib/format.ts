// Money arrives as integer nano-dollars; dollars appear only here, at the edge.

export const NANOS_PER_USD = 1_000_000_000;

/** "$12.34"; amounts under a cent keep enough digits to be non-zero ("$0.0012"). */
export function fmtUsd(nanos: number): string {
  const usd = nanos / NANOS_PER_USD;
  const abs = Math.abs(usd);
  let digits = 2;
  if (abs > 0 && abs < 0.01) digits = Math.min(9, 1 - Math.floor(Math.log10(abs)));
  return (
    (usd < 0 ? '-' : '') +
    '$' +
    abs.toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: digits })
  );
}

/** Parses "12.5" or "$1,000" into nano-dollars; null when it is not an amount. */
export function parseUsd(text: string): number | null {
  const cleaned = text.trim().replace(/^\$/, '').replace(/,/g, '');
  if (!/^\d+(\.\d{0,9})?$/.test(cleaned)) return null;
  const [whole, frac = ''] = cleaned.split('.');
  return Number(whole) * NANOS_PER_USD + Number((frac + '000000000').slice(0, 9));
}

export function fmtCount(n: number): string {
  return n.toLocaleString('en-US');
}

/** Whole seconds as a length of audio billed by the second: "37 s", "3,600 s". */
export function fmtSeconds(s: number): string {
  return `${fmtCount(s)} s`;
}

export function fmtMs(ms: number): string {
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

export function toDate(value: string | null | undefined): Date | null {
  if (!value) return null;
  const d = new Date(value.includes('T') || value.includes(' ') ? value.replace(' ', 'T') : value);
  return Number.isNaN(d.getTime()) ? null : d;
}

export function fmtTime(value: string | null | undefined): string {
  const d = toDate(value);
  if (!d) return '—';
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

export function fmtAgo(value: string | null | undefined, now = Date.now()): string {
  const d = toDate(value);
  if (!d) return 'never';
  const s = Math.round((now - d.getTime()) / 1000);
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function periodLabel(period: string): string {
  return ({ daily: 'Today', weekly: 'This week', monthly: 'This month', total: 'All time' } as Record<string, string>)[period] ?? period;
}

export function fmtLimit(kind: string, value: number): string {
  if (kind === 'usd') return fmtUsd(value);
  return `${fmtCount(value)} ${kind}`;
}
