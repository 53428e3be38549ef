/**
 * Spreads the streams that one gateway places on one worker address over that
 * worker's front processes.
 *
 * A worker serves one address from several front processes (SO_REUSEPORT):
 * the kernel gives each TCP connection to one front, and one grpc-js channel
 * is one HTTP/2 connection, so every stream of a single channel would land on
 * the same front while the others idle. So, per worker address, this keeps a
 * few extra connections (channels with their own subchannel pool: a
 * connection each), learns which front each one reached from its own
 * WatchLoad reports (`LoadReport.front_id`), and opens every new stream on a
 * connection to the front with the fewest open streams
 * (`LoadReport.front_streams`, plus what this gateway placed since the last
 * report). It opens connections until every front is reached (a connection
 * that lands on an already covered front is closed and retried, within a
 * bounded number of attempts). A single-process worker (no front_streams)
 * gets no extra connection: all streams use the pool's own channel.
 */
import { status as GrpcStatus, type ClientReadableStream, type StatusObject } from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { AsrClient, LoadReport } from "./gen/asr/v1/asr.js";
import type { SessionHandlers } from "./session-transport.js";
import { emptyMuxTotals, WorkerMux, type MuxCall, type MuxSession, type MuxStats, type MuxTotals } from "./worker-mux.js";
import type { WriteCoalescer } from "./write-coalescer.js";

/** Tunables (defaults suit production; tests may shorten them). */
export interface WorkerConnectionsOptions {
  /** WatchLoad interval asked for on each connection, ms. */
  loadIntervalMs?: number;
  /** Connection attempts per front before giving up on covering every front. */
  attemptsPerFront?: number;
  /** Where this worker's mux calls also count (the pool's totals, for /metrics); default: their own. */
  muxTotals?: MuxTotals;
}

/** The one call this module opens on behalf of sessions. */
type Recognize = ReturnType<AsrClient["streamingRecognize"]>;

interface Conn {
  client: AsrClient;
  /** Owned here (closed on close()); the pool's own channel is not. */
  owned: boolean;
  frontId: number | null;
  loadCall: ClientReadableStream<LoadReport> | null;
  /** The connection's StreamingRecognizeMux call (worker-mux.ts), made when the first mux session is placed on it. */
  mux: WorkerMux | null;
}

/** Placement of streams over a worker's front processes (see module comment). */
export class WorkerConnections {
  private readonly conns: Conn[] = [];
  private readonly opts: Required<Omit<WorkerConnectionsOptions, "muxTotals">>;
  private readonly muxTotals: MuxTotals;
  /** Newest per-front stream counts any connection reported. */
  private frontStreams: number[] = [];
  /** Streams placed per front since frontStreams was reported. */
  private placed: number[] = [];
  private attempts = 0;
  private closed = false;
  /** A mux call ended UNIMPLEMENTED: sessions get a call each (see openMuxSession). */
  private muxUnimplemented = false;

  /**
   * @param primary the pool's own channel to the worker (used until fronts are known).
   * @param makeClient opens a new channel with its own connection to the same address.
   * @param log logger carrying the worker address.
   */
  constructor(
    primary: AsrClient,
    private readonly makeClient: () => AsrClient,
    private readonly log: Logger,
    options: WorkerConnectionsOptions = {},
  ) {
    this.opts = { loadIntervalMs: options.loadIntervalMs ?? 1000, attemptsPerFront: options.attemptsPerFront ?? 8 };
    this.muxTotals = options.muxTotals ?? emptyMuxTotals();
    const conn: Conn = { client: primary, owned: false, frontId: null, loadCall: null, mux: null };
    this.conns.push(conn);
  }

  /** Starts learning the fronts (a WatchLoad on the primary connection). */
  start(): void {
    this.watch(this.conns[0]!);
  }

  /** Front processes of the worker (0 until a report names them, or for a single-process worker). */
  frontCount(): number {
    return this.frontStreams.length;
  }

  /** Fronts reached by at least one connection. */
  coveredFronts(): number[] {
    return [...new Set(this.conns.map((c) => c.frontId).filter((f): f is number => f !== null))].sort((a, b) => a - b);
  }

  /** Opens a StreamingRecognize call on a connection to the least-loaded front. */
  streamingRecognize(): Recognize {
    const conn = this.pick();
    if (conn.frontId !== null) this.placed[conn.frontId] = (this.placed[conn.frontId] ?? 0) + 1;
    return conn.client.streamingRecognize();
  }

  /**
   * Places a session on the mux call of the connection to the least-loaded
   * front (one mux call per connection, worker-mux.ts); `coalescer` is the
   * process's audio coalescer. Null once a mux call of this worker ended
   * UNIMPLEMENTED: its report said mux, but the method is not served (the
   * contract's fallback is a call per session).
   */
  openMuxSession(h: SessionHandlers, coalescer?: WriteCoalescer): MuxSession | null {
    if (this.muxUnimplemented) return null;
    const conn = this.pick();
    if (conn.frontId !== null) this.placed[conn.frontId] = (this.placed[conn.frontId] ?? 0) + 1;
    const client = conn.client;
    conn.mux ??= new WorkerMux(
      () => client.streamingRecognizeMux() as MuxCall,
      () => {
        if (!this.muxUnimplemented) {
          this.log.warn("worker reports mux but answers UNIMPLEMENTED; one call per session from now on");
          this.muxTotals.fallbacks++;
        }
        this.muxUnimplemented = true;
      },
      this.muxTotals,
    );
    return conn.mux.openSession(h, coalescer);
  }

  /** Counters of every connection's mux (connections without one left out; tests and diagnostics). */
  muxStats(): MuxStats[] {
    return this.conns.flatMap((c) => (c.mux !== null ? [c.mux.stats] : []));
  }

  private pick(): Conn {
    let best: Conn = this.conns[0]!;
    let bestCount = Number.POSITIVE_INFINITY;
    for (const c of this.conns) {
      if (c.frontId === null || c.loadCall === null) continue;
      const count = (this.frontStreams[c.frontId] ?? 0) + (this.placed[c.frontId] ?? 0);
      if (count < bestCount) {
        best = c;
        bestCount = count;
      }
    }
    return best;
  }

  private watch(conn: Conn): void {
    if (this.closed) return;
    const call = conn.client.watchLoad({ intervalMs: this.opts.loadIntervalMs });
    conn.loadCall = call;
    call.on("data", (r: LoadReport) => this.onReport(conn, r));
    call.on("error", () => {
      // Handled by the status event.
    });
    call.on("status", (s: StatusObject) => {
      if (conn.loadCall !== call) return;
      conn.loadCall = null;
      conn.frontId = null;
      if (this.closed || s.code === GrpcStatus.UNIMPLEMENTED) return; // no WatchLoad: one connection
      if (conn.owned) {
        // An extra connection that failed is dropped; coverage is re-established by the next report.
        this.drop(conn);
        return;
      }
      // The primary is the pool's channel: watch again after a pause (it reconnects itself).
      const t = setTimeout(() => this.watch(conn), 1000);
      t.unref();
    });
  }

  private onReport(conn: Conn, r: LoadReport): void {
    const first = conn.frontId === null;
    conn.frontId = r.frontStreams.length > 0 ? r.frontId : null;
    this.frontStreams = [...r.frontStreams];
    this.placed = [];
    if (!first || !conn.owned) {
      this.cover(r.frontStreams.length);
      return;
    }
    // A new extra connection: keep it only if it reached a front no other connection has.
    const duplicate = this.conns.some((c) => c !== conn && c.frontId === conn.frontId);
    if (duplicate) this.drop(conn);
    this.cover(r.frontStreams.length);
  }

  /** Opens one more connection while some front is unreached (and attempts remain). */
  private cover(fronts: number): void {
    if (this.closed || fronts <= 1) return;
    if (this.coveredFronts().length >= fronts) return;
    if (this.conns.some((c) => c.owned && c.frontId === null)) return; // one attempt at a time
    if (this.attempts >= this.opts.attemptsPerFront * fronts) return;
    this.attempts++;
    const conn: Conn = { client: this.makeClient(), owned: true, frontId: null, loadCall: null, mux: null };
    this.conns.push(conn);
    this.watch(conn);
    if (this.attempts === this.opts.attemptsPerFront * fronts) {
      this.log.warn({ fronts, covered: this.coveredFronts().length }, "could not reach every worker front process");
    }
  }

  private drop(conn: Conn): void {
    const i = this.conns.indexOf(conn);
    if (i >= 0) this.conns.splice(i, 1);
    const call = conn.loadCall;
    conn.loadCall = null;
    call?.cancel();
    // Its mux sessions go on; the mux call is cancelled once they have ended.
    conn.mux?.close();
    // Open streams on it keep running: closing a grpc-js channel lets its calls finish.
    if (conn.owned) conn.client.close();
  }

  /** Stops watching and closes the extra connections (the primary belongs to the pool). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const c of [...this.conns]) this.drop(c);
  }
}
