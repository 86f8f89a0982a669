import { describe, expect, it } from 'vitest';
import { fmtAgo, fmtLimit, fmtMs, fmtSeconds, fmtUsd, parseUsd } from './format';

describe('fmtUsd', () => {
  it('shows dollars and cents', () => {
    expect(fmtUsd(12_340_000_000)).toBe('$12.34');
    expect(fmtUsd(0)).toBe('$0.00');
    expect(fmtUsd(1_234_567_000_000)).toBe('$1,234.57');
  });
  it('keeps amounts under a cent visible', () => {
    expect(fmtUsd(1_234_000)).toBe('$0.0012');
    expect(fmtUsd(7_260_000)).toBe('$0.0073');
    expect(fmtUsd(40)).toBe('$0.00000004');
  });
});

describe('parseUsd', () => {
  it('reads dollar amounts into nano-dollars exactly', () => {
    expect(parseUsd('25')).toBe(25_000_000_000);
    expect(parseUsd('$1,000.50')).toBe(1_000_500_000_000);
    expect(parseUsd('0.10')).toBe(100_000_000);
  });
  it('refuses what is not an amount', () => {
    expect(parseUsd('ten')).toBeNull();
    expect(parseUsd('-5')).toBeNull();
    expect(parseUsd('')).toBeNull();
  });
});

describe('other formats', () => {
  it('formats latency, limits and ages', () => {
    expect(fmtMs(321.4)).toBe('321 ms');
    expect(fmtMs(0.34)).toBe('0.3 ms');
    expect(fmtMs(2500)).toBe('2.50 s');
    expect(fmtSeconds(37)).toBe('37 s');
    expect(fmtSeconds(3600)).toBe('3,600 s');
    expect(fmtLimit('tokens', 100000)).toBe('100,000 tokens');
    expect(fmtLimit('usd', 5_000_000_000)).toBe('$5.00');
    const now = Date.parse('2026-11-28T12:00:00Z');
    expect(fmtAgo('2026-11-28T11:58:00Z', now)).toBe('2 min ago');
    expect(fmtAgo(null, now)).toBe('never');
  });
});
