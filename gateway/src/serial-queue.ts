/**
 * Runs a session's input steps one at a time, in arrival order, even when a
 * step is asynchronous (decoding an offline file at end of input): frames
 * that arrive meanwhile wait instead of overtaking it. Synchronous steps — the
 * per-frame common case — run at once without a promise or an allocation.
 */

/** One input step; a returned promise holds the queue until it settles. */
export type Step = () => void | Promise<void>;

/** The serial queue (see module comment). */
export class SerialQueue {
  private busy = false;
  private readonly backlog: Step[] = [];
  private stopped = false;

  /**
   * Creates a queue; `onError` receives what a step throws or rejects with
   * (the queue goes on with the next step).
   */
  constructor(private readonly onError: (e: unknown) => void) {}

  /** Whether a step may run at once (nothing is waiting). */
  get idle(): boolean {
    return !this.busy && !this.stopped;
  }

  /** Runs `step` now, or after the steps before it. */
  run(step: Step): void {
    if (this.stopped) return;
    if (this.busy) {
      this.backlog.push(step);
      return;
    }
    this.exec(step);
    // Drain what queued up while an async step ran, synchronously unless a step goes async again.
    while (!this.busy && !this.stopped && this.backlog.length > 0) this.exec(this.backlog.shift()!);
  }

  /** Drops queued steps and refuses new ones (the session closed). */
  stop(): void {
    this.stopped = true;
    this.backlog.length = 0;
  }

  private exec(step: Step): void {
    let r: void | Promise<void>;
    try {
      r = step();
    } catch (e) {
      this.onError(e);
      return;
    }
    if (r instanceof Promise) {
      this.busy = true;
      r.catch((e: unknown) => this.onError(e)).finally(() => {
        this.busy = false;
        const next = this.backlog.shift();
        if (next !== undefined) this.run(next);
      });
    }
  }
}
