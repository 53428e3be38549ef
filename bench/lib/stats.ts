/** Small statistics helpers (linear-interpolated percentiles, as FunASR's benchmark computes them). */

export function percentile(values: ArrayLike<number>, p: number): number | null {
  const n = values.length;
  if (n === 0) return null;
  const s = Float64Array.from(values).sort();
  if (n === 1) return s[0]!;
  const idx = ((n - 1) * p) / 100;
  const lo = Math.floor(idx);
  const hi = Math.min(lo + 1, n - 1);
  const w = idx - lo;
  return s[lo]! * (1 - w) + s[hi]! * w;
}

export interface Dist {
  n: number;
  p50: number | null;
  p95: number | null;
  p99: number | null;
  max: number | null;
  mean: number | null;
}

export function dist(values: ArrayLike<number>): Dist {
  const n = values.length;
  let max = -Infinity;
  let sum = 0;
  for (let i = 0; i < n; i++) {
    const v = values[i]!;
    sum += v;
    if (v > max) max = v;
  }
  return {
    n,
    p50: percentile(values, 50),
    p95: percentile(values, 95),
    p99: percentile(values, 99),
    max: n ? max : null,
    mean: n ? sum / n : null,
  };
}

export function fmt(v: number | null | undefined, digits = 1): string {
  return v === null || v === undefined || Number.isNaN(v) ? "-" : v.toFixed(digits);
}
