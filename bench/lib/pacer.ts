/**
 * One timer for many paced streams: a min-heap of due times, so thousands of
 * sessions sending a frame every 60 ms cost one wake-up per due instant
 * rather than one timer per frame.
 */

interface Entry {
  due: number;
  run: (now: number, due: number) => number | null; // returns next due time or null when finished
}

export class Pacer {
  private heap: Entry[] = [];
  private timer: NodeJS.Timeout | undefined;
  private armedFor = Infinity;
  /** Lateness of every run (now - due) in ms: the load generator's own health. */
  readonly lateness: number[] = [];

  add(due: number, run: Entry["run"]): void {
    this.push({ due, run });
    this.arm();
  }

  private push(e: Entry): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (h[p]!.due <= e.due) break;
      h[i] = h[p]!;
      i = p;
    }
    h[i] = e;
  }

  private pop(): Entry | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        let mv = last.due;
        if (l < h.length && h[l]!.due < mv) {
          m = l;
          mv = h[l]!.due;
        }
        if (r < h.length && h[r]!.due < mv) m = r;
        if (m === i) break;
        h[i] = h[m]!;
        i = m;
      }
      h[i] = last;
    }
    return top;
  }

  private arm(): void {
    const next = this.heap[0];
    if (!next) return;
    if (this.timer && next.due >= this.armedFor) return;
    if (this.timer) clearTimeout(this.timer);
    this.armedFor = next.due;
    this.timer = setTimeout(() => this.tick(), Math.max(0, next.due - performance.now()));
  }

  private tick(): void {
    this.timer = undefined;
    this.armedFor = Infinity;
    const now = performance.now();
    // Run everything due within half a millisecond (timers fire with ~1 ms granularity).
    while (this.heap.length > 0 && this.heap[0]!.due <= now + 0.5) {
      const e = this.pop()!;
      const t = performance.now();
      this.lateness.push(t - e.due);
      const next = e.run(t, e.due);
      if (next !== null) this.push({ due: next, run: e.run });
    }
    this.arm();
  }

  get pending(): number {
    return this.heap.length;
  }
}
