/**
 * Holds the audio requests a process writes to its worker calls for a moment
 * and then writes every call's held requests in one loop turn, each call's as
 * ONE buffer.
 *
 * Why: a paced client sends one 60 ms frame per loop turn, so without this
 * every frame is its own HTTP/2 write, its own `writev` of the connection and
 * its own wake-up of the worker: at 500 paced streams the gateway's `writev`
 * and the loopback delivery into the peers' sockets were 23 % of its CPU, and
 * the worker's grpc.aio wakes its poller thread and event loop once per
 * arriving message (docs/benchmarks.md, "Gateway overhead" and "Worker front
 * path"). Held for at most `delayMs`, the frames of all calls go out in one
 * turn: Node's HTTP/2 session sends them in few `writev`s, and the worker
 * reads many messages per wake-up. Several gRPC messages in one DATA write
 * are ordinary gRPC (each keeps its 5-byte length prefix, wire.ts), so the
 * worker sees exactly the same messages in the same order.
 *
 * The coalescer only times and groups; what is held is decided by the
 * writers (call-writer.ts holds plain audio on its direct path and writes
 * everything else at once, after flushing the call's held audio first, so
 * the order of a call's requests never changes).
 */
import type { FramedRequest } from "./wire.js";

/** How long requests may be held: ms (0 = never held), or "turn" (until the end of the current loop turn). */
export type CoalesceDelay = number | "turn";

/**
 * The gateway's default (WORKER_WRITE_COALESCE_MS) and the load client's (`--coalesce-ms`), which
 * stands in for the gateway in worker benchmarks; chosen from docs/benchmarks.md's measurements.
 */
export const DEFAULT_COALESCE_DELAY: CoalesceDelay = 4;

/** Held bytes of one call above which it is written at once (a client streaming a file faster than real time). */
export const DEFAULT_MAX_HELD_BYTES = 64 * 1024;

/** What a coalescer is built from. */
export interface WriteCoalescerOptions {
  /** Longest hold, ms, or "turn" (setImmediate). 0 turns holding off. */
  delay: CoalesceDelay;
  /** Held bytes per call that flush that call early (default DEFAULT_MAX_HELD_BYTES). */
  maxHeldBytes?: number;
}

/**
 * Anything the coalescer flushes in its one loop turn: a call's HeldQueue, or
 * a mux connection's pending frames (worker-mux.ts), which share the process's
 * delay so that per-call and mux writes of one process go out together.
 */
export interface Flushable {
  /** Listed in the coalescer's pending set (maintained by the coalescer). */
  listed: boolean;
  /** Writes what is held now. */
  flush(): void;
}

/** Writes a call's held requests, concatenated, as one buffer (the call writer's raw write). */
export type HeldSink = (bytes: Buffer) => void;

/** One call's held requests (see WriteCoalescer.queue). */
export class HeldQueue implements Flushable {
  private held: FramedRequest[] = [];
  private heldBytes = 0;
  /** Listed in the coalescer's pending set. */
  listed = false;

  /** @internal Made by WriteCoalescer.queue(). */
  constructor(
    private readonly owner: WriteCoalescer,
    private readonly sink: HeldSink,
  ) {}

  /** Bytes held now. */
  get bytes(): number {
    return this.heldBytes;
  }

  /** Holds one request until the coalescer's next flush (or at once past the byte bound). */
  push(req: FramedRequest): void {
    this.held.push(req);
    this.heldBytes += req.length;
    if (this.heldBytes >= this.owner.maxHeldBytes) this.flush();
    else this.owner.pending(this);
  }

  /** Writes what is held now, in order, as one buffer (before a control request, or on the coalescer's flush). */
  flush(): void {
    const held = this.held;
    if (held.length === 0) return;
    const bytes = held.length === 1 ? held[0]! : Buffer.concat(held, this.heldBytes);
    this.held = [];
    this.heldBytes = 0;
    this.sink(bytes);
  }

  /** Drops what is held (the call ended or is being cancelled). */
  drop(): void {
    this.held = [];
    this.heldBytes = 0;
  }
}

/** Groups the held requests of every call of a process into one loop turn (see module comment). */
export class WriteCoalescer {
  /** Held bytes per call that flush it early. */
  readonly maxHeldBytes: number;
  private readonly delay: CoalesceDelay;
  private pendingQueues: Flushable[] = [];
  private armed = false;
  private readonly flushAll = (): void => this.flushPending();

  /**
   * Parses "turn" or a whole number of ms, 0..1000: the one rule for WORKER_WRITE_COALESCE_MS
   * (config.ts) and the load client's --coalesce-ms. Throws a RangeError on anything else.
   */
  static parseDelay(text: string): CoalesceDelay {
    const t = text.trim().toLowerCase();
    if (t === "turn") return "turn";
    if (!/^\d{1,4}$/.test(t) || Number(t) > 1000) throw new RangeError(`coalesce delay must be a whole number of ms 0..1000 or "turn"`);
    return Number(t);
  }

  /** A coalescer; nothing is held until a queue's push. */
  constructor(opts: WriteCoalescerOptions) {
    if (opts.delay !== "turn" && !(Number.isFinite(opts.delay) && opts.delay >= 0)) throw new RangeError(`bad coalesce delay ${opts.delay}`);
    this.delay = opts.delay;
    this.maxHeldBytes = opts.maxHeldBytes ?? DEFAULT_MAX_HELD_BYTES;
  }

  /** False when the delay is 0: writers then write every request at once, as without a coalescer. */
  get enabled(): boolean {
    return this.delay !== 0;
  }

  /** The configured delay (diagnostics). */
  get delayMs(): CoalesceDelay {
    return this.delay;
  }

  /** A queue for one call; `sink` receives its held requests as one buffer. */
  queue(sink: HeldSink): HeldQueue {
    return new HeldQueue(this, sink);
  }

  /** A queue (or a mux connection) holds something: make sure it is flushed within the delay. */
  pending(q: Flushable): void {
    if (!q.listed) {
      q.listed = true;
      this.pendingQueues.push(q);
    }
    if (this.armed) return;
    this.armed = true;
    // One timer for all calls: the first held request starts it, so none waits longer than the delay.
    if (this.delay === "turn") setImmediate(this.flushAll);
    else setTimeout(this.flushAll, this.delay);
  }

  /** Writes every call's held requests now, in this loop turn. */
  flushPending(): void {
    this.armed = false;
    const queues = this.pendingQueues;
    this.pendingQueues = [];
    for (const q of queues) {
      q.listed = false;
      q.flush();
    }
  }
}
