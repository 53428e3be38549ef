/**
 * The pool of recognition workers: one grpc-js channel per worker address,
 * each health-watched (grpc.health.v1 Watch) and load-watched (asr.v1
 * WatchLoad), both re-established with exponential backoff. New sessions go
 * to the least-loaded worker that is SERVING and accepting; sessions depend
 * only on the `WorkerSource` shape so that a failover can ask for "any worker
 * but this one".
 *
 * The address list may change at run time (discovery.ts re-resolves DNS
 * names): setAddresses() adds channels for new addresses and retires vanished
 * ones — out of placement at once, their open calls cancelled so that their
 * sessions fail over by replay.
 *
 * A hung worker ends no call by itself. Two signs of one are acted on alike
 * (out of placement; its calls cancelled so they replay elsewhere, but only if
 * another worker answers — with nowhere to go, cancelling would only turn a
 * slow worker into failed sessions): its load reports stop (the whole worker
 * is stopped or cut off; `stallTimeoutMs`), or they say `engine_stalled` (its
 * front is alive but its engine process has been silent for a few seconds).
 * Either way it is placed on again once it reports normally.
 */
import { credentials, status as GrpcStatus, type ClientDuplexStream, type ClientReadableStream, type StatusObject } from "@grpc/grpc-js";
import type { Logger } from "pino";
import {
  type AsrClient,
  type LoadReport,
  type StreamingRecognizeRequest,
  type StreamingRecognizeResponse,
} from "./gen/asr/v1/asr.js";
import { HealthCheckResponse_ServingStatus, HealthClient, type HealthCheckResponse } from "./gen/grpc/health/v1/health.js";
import { CallTransport, type SessionHandlers, type SessionTransport, type SessionTransportOptions } from "./session-transport.js";
import { FastAsrClient, type EncodedRequest } from "./wire.js";
import { WorkerConnections } from "./worker-connections.js";
import { emptyMuxTotals, type MuxStats, type MuxTotals } from "./worker-mux.js";

/** Largest message a worker may send the gateway (grpc-js's limit, and call-reader.ts's on the direct path). */
export const MAX_RECEIVE_MESSAGE_BYTES = 8 * 1024 * 1024;

/** A bidirectional StreamingRecognize call (audio requests may be written pre-encoded, see wire.ts). */
export type RecognizeCall = ClientDuplexStream<StreamingRecognizeRequest | EncodedRequest, StreamingRecognizeResponse>;

/** A session's hold on one worker; release it exactly once when the session ends. */
export interface WorkerLease {
  /** The worker's address (for logs and for excluding it on failover). */
  readonly address: string;
  /** Opens a StreamingRecognize call on the worker (one request/response exchange of its own, e.g. a file transcription). */
  open(): RecognizeCall;
  /**
   * Opens a streaming session on the worker: a session of the connection's
   * StreamingRecognizeMux call when the worker serves it (its newest load
   * report says `mux`) and the pool may use it, else its own
   * StreamingRecognize call (session-transport.ts).
   */
  openSession(h: SessionHandlers, opts?: SessionTransportOptions): SessionTransport;
  /** Gives the placement back (idempotent). */
  release(): void;
}

/** What sessions and the HTTP layer need from the pool. */
export interface WorkerSource {
  /** The least-loaded serving worker not in `exclude`, or null when none can take a session. */
  acquire(exclude?: ReadonlySet<string>): WorkerLease | null;
  /** Number of workers currently SERVING (readiness). */
  servingCount(): number;
}

/** How the pool's sessions reach their workers now, and the mux traffic so far (read by /metrics). */
export interface WorkerTransportSource {
  /** Sessions carried by a StreamingRecognizeMux call (`mux`), and sessions and transcription requests with a StreamingRecognize call of their own (`call`). */
  streamsByTransport(): { mux: number; call: number };
  /** Every mux call's traffic since start (the live totals: read, never written). */
  muxTotals(): Readonly<MuxTotals>;
}

/** Tunables of the pool (defaults suit production; tests shorten them). */
export interface WorkerPoolOptions {
  /** Health service name watched (the worker reports "" and "asr.v1.Asr"). */
  healthService?: string;
  /** WatchLoad report interval asked for, ms. */
  loadIntervalMs?: number;
  /** First reconnect delay, ms. */
  minBackoffMs?: number;
  /** Largest reconnect delay, ms. */
  maxBackoffMs?: number;
  /**
   * A worker whose load reports (due every loadIntervalMs) stop for this long is
   * treated as hung — SIGSTOPped, wedged, or cut off without a TCP reset, none of
   * which ends a call by itself (keepalive would, after 30 s): it is taken out of
   * placement and its open calls are cancelled, so that their sessions fail over
   * by replay. It is placed on again when its reports resume. 0 = off. (A report
   * that says `engine_stalled` is acted on the same way at once.)
   */
  stallTimeoutMs?: number;
  /**
   * Carry sessions over StreamingRecognizeMux calls on workers whose load
   * report says they serve it (WORKER_MUX=auto, the default); false: one
   * StreamingRecognize call per session everywhere (WORKER_MUX=off).
   */
  mux?: boolean;
}

/** A worker's state as the pool sees it. */
export interface WorkerStatus {
  /** host:port. */
  address: string;
  /** Whether its health Watch currently says SERVING. */
  serving: boolean;
  /** The newest load report, if any. */
  load: LoadReport | null;
  /** Sessions this gateway holds on it. */
  localSessions: number;
}

interface Entry {
  address: string;
  asr: AsrClient;
  health: HealthClient;
  serving: boolean;
  load: LoadReport | null;
  /** Placements since the last load report (the report does not know them yet). */
  placedSinceReport: number;
  localSessions: number;
  healthCall: ClientReadableStream<HealthCheckResponse> | null;
  loadCall: ClientReadableStream<LoadReport> | null;
  healthBackoff: number;
  loadBackoff: number;
  timers: Set<NodeJS.Timeout>;
  /** Open recognition calls and mux sessions (cancelled when the address vanishes or the worker hangs). */
  calls: Set<{ cancel(): void }>;
  /** The address vanished from discovery: never placed on again. */
  retired: boolean;
  /** Spreads this worker's streams over its front processes (extra connections). */
  spread: WorkerConnections;
  /** When the newest load report arrived (Date.now()). */
  lastReportAt: number;
  /** Load reports stopped for stallTimeoutMs, or said engine_stalled: out of placement until a normal one. */
  stalled: boolean;
}

/** The worker pool (see module comment). Call start() once, close() at shutdown. */
export class WorkerPool implements WorkerSource, WorkerTransportSource {
  private entries: Entry[];
  private readonly log: Logger;
  private readonly opts: Required<WorkerPoolOptions>;
  private started = false;
  private closed = false;
  private stallTimer: NodeJS.Timeout | undefined;
  private lastStallCheck = 0;
  /** Every worker's mux traffic (entries come and go with discovery; the totals stay). */
  private readonly muxTraffic: MuxTotals = emptyMuxTotals();

  /** Creates channels for `addresses`; nothing is watched before start(). */
  constructor(addresses: readonly string[], logger: Logger, options: WorkerPoolOptions = {}) {
    this.log = logger;
    this.opts = {
      healthService: options.healthService ?? "asr.v1.Asr",
      loadIntervalMs: options.loadIntervalMs ?? 1000,
      minBackoffMs: options.minBackoffMs ?? 200,
      maxBackoffMs: options.maxBackoffMs ?? 5000,
      stallTimeoutMs: options.stallTimeoutMs ?? 3000,
      mux: options.mux ?? true,
    };
    this.entries = addresses.map((address) => this.createEntry(address));
  }

  /** A channel for one worker address (not watched yet). */
  private createEntry(address: string): Entry {
    const channelOptions = {
      // grpc-js keeps every written message for transparent retries until the call commits;
      // sessions fail over by replay themselves (worker-link.ts), so that copy is pure cost.
      "grpc.enable_retries": 0,
      // Audio frames are small, but a whole decoded file is re-chunked to 1 MiB; results are small.
      "grpc.max_send_message_length": 8 * 1024 * 1024,
      "grpc.max_receive_message_length": MAX_RECEIVE_MESSAGE_BYTES,
      // Detect a worker that vanished without closing TCP (host down, partition) within
      // ~30 s, so its sessions fail over; the worker accepts pings every >= 10 s.
      "grpc.keepalive_time_ms": 20_000,
      "grpc.keepalive_timeout_ms": 10_000,
      "grpc.keepalive_permit_without_calls": 1,
    };
    const asr = new FastAsrClient(address, credentials.createInsecure(), channelOptions);
    // Extra connections (own subchannel pool each) reach the worker's other front processes.
    const extra = (): AsrClient =>
      new FastAsrClient(address, credentials.createInsecure(), { ...channelOptions, "grpc.use_local_subchannel_pool": 1 });
    const spread = new WorkerConnections(asr, extra, this.log.child({ worker: address }), {
      loadIntervalMs: this.opts.loadIntervalMs,
      muxTotals: this.muxTraffic,
    });
    // Share the one channel: health, load and recognition use the same connection.
    const health = new HealthClient(address, credentials.createInsecure(), { channelOverride: asr.getChannel() });
    return {
      address,
      asr,
      health,
      serving: false,
      load: null,
      placedSinceReport: 0,
      localSessions: 0,
      healthCall: null,
      loadCall: null,
      healthBackoff: this.opts.minBackoffMs,
      loadBackoff: this.opts.minBackoffMs,
      timers: new Set(),
      calls: new Set(),
      retired: false,
      spread,
      lastReportAt: 0,
      stalled: false,
    };
  }

  /** Starts watching health and load of every worker. */
  start(): void {
    this.started = true;
    for (const e of this.entries) {
      this.watchHealth(e);
      this.watchLoad(e);
      e.spread.start();
    }
    const stall = this.opts.stallTimeoutMs;
    if (stall > 0) {
      // A quarter of the timeout between checks: a hang is noticed within 1.25 x the timeout.
      const period = Math.max(50, stall / 4);
      this.lastStallCheck = Date.now();
      this.stallTimer = setInterval(() => this.checkStalls(period), period);
      this.stallTimer.unref();
    }
  }

  /** Takes workers whose load reports stopped out of placement and fails their sessions over. */
  private checkStalls(period: number): void {
    const now = Date.now();
    const late = now - this.lastStallCheck > 2 * period;
    this.lastStallCheck = now;
    if (late) {
      // This process was starved (the check itself ran late): reports may be waiting unread
      // behind this timer (Node runs timers before I/O). Count silence only from here on.
      for (const e of this.entries) e.lastReportAt = Math.max(e.lastReportAt, now - period);
      return;
    }
    for (const e of this.entries) {
      // Only a load watch that has reported proves the worker can report; without one
      // (not connected yet, or no WatchLoad) there is nothing to time out.
      if (e.stalled || e.loadCall === null || e.load === null) continue;
      if (now - e.lastReportAt < this.opts.stallTimeoutMs) continue;
      this.markStalled(e, "worker stopped reporting load; treating it as hung", { silent_ms: now - e.lastReportAt });
    }
  }

  /** Takes a hung worker out of placement and, if another worker answers, fails its sessions over. */
  private markStalled(e: Entry, msg: string, fields: Record<string, unknown>): void {
    if (e.stalled) return;
    e.stalled = true;
    // Failing over needs somewhere to go: with no other worker answering, cancelling would
    // only turn a slow worker into failed sessions (keepalive still ends a dead link).
    const elsewhere = this.entries.some((o) => o !== e && o.serving && !o.stalled && !o.retired);
    this.log.warn({ worker: e.address, ...fields, sessions: e.localSessions, failing_over: elsewhere }, msg);
    // CANCELLED by us is retryable: each session replays on another worker.
    if (elsewhere) for (const call of [...e.calls]) call.cancel();
  }

  /**
   * Replaces the address list: new addresses get a channel (watched at once
   * when the pool is started); vanished ones are retired — never placed on
   * again, their open calls cancelled (their sessions fail over), their
   * channel closed.
   */
  setAddresses(addresses: readonly string[]): void {
    if (this.closed) return;
    const wanted = new Set(addresses);
    const have = new Set(this.entries.map((e) => e.address));
    for (const e of this.entries) if (!wanted.has(e.address)) this.retire(e);
    this.entries = this.entries.filter((e) => !e.retired);
    for (const address of addresses) {
      if (have.has(address)) continue;
      const e = this.createEntry(address);
      this.entries.push(e);
      this.log.info({ worker: address }, "worker added");
      if (this.started) {
        this.watchHealth(e);
        this.watchLoad(e);
        e.spread.start();
      }
    }
  }

  private retire(e: Entry): void {
    e.retired = true;
    this.log.warn({ worker: e.address, sessions: e.localSessions }, "worker address vanished; its sessions fail over");
    this.stopWatching(e);
    // The calls' status events reach their sessions, which fail over (CANCELLED by us is retryable).
    for (const call of [...e.calls]) call.cancel();
    e.spread.close();
    e.asr.close();
  }

  private stopWatching(e: Entry): void {
    for (const t of e.timers) clearTimeout(t);
    e.timers.clear();
    const h = e.healthCall;
    const l = e.loadCall;
    e.healthCall = null;
    e.loadCall = null;
    h?.cancel();
    l?.cancel();
    e.serving = false;
  }

  /** Resolves once at least one worker is SERVING, or after `timeoutMs` (false). */
  async waitForServing(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.servingCount() > 0) return true;
      await new Promise((r) => setTimeout(r, 50));
    }
    return this.servingCount() > 0;
  }

  /** {@inheritDoc WorkerSource.servingCount} */
  servingCount(): number {
    return this.entries.filter((e) => e.serving && !e.stalled).length;
  }

  /** {@inheritDoc WorkerTransportSource.streamsByTransport} */
  streamsByTransport(): { mux: number; call: number } {
    let mux = 0;
    let call = 0;
    for (const e of this.entries) {
      for (const t of e.calls) {
        if ((t as Partial<SessionTransport>).writerPath === "mux") mux++;
        else call++;
      }
    }
    return { mux, call };
  }

  /** {@inheritDoc WorkerTransportSource.muxTotals} */
  muxTotals(): Readonly<MuxTotals> {
    return this.muxTraffic;
  }

  /** A snapshot of every worker (for logs and tests). */
  status(): WorkerStatus[] {
    return this.entries.map((e) => ({ address: e.address, serving: e.serving && !e.stalled, load: e.load, localSessions: e.localSessions }));
  }

  /** {@inheritDoc WorkerSource.acquire} */
  acquire(exclude?: ReadonlySet<string>): WorkerLease | null {
    let best: Entry | null = null;
    let bestScore = Number.POSITIVE_INFINITY;
    for (const e of this.entries) {
      if (!e.serving || e.stalled || exclude?.has(e.address)) continue;
      const score = this.score(e);
      if (score === null) continue;
      if (score < bestScore) {
        best = e;
        bestScore = score;
      }
    }
    if (best === null) return null;
    const e = best;
    e.localSessions++;
    e.placedSinceReport++;
    let released = false;
    return {
      address: e.address,
      open: () => {
        const call = e.spread.streamingRecognize() as RecognizeCall;
        e.calls.add(call);
        call.on("status", () => e.calls.delete(call));
        return call;
      },
      openSession: (h, opts = {}) => {
        // The transport exists only once opened; its end (any kind) takes it off the worker's list.
        let t: SessionTransport | null = null;
        const handlers: SessionHandlers = {
          onResponse: (r) => h.onResponse(r),
          onDrain: () => h.onDrain(),
          onEnd: (s) => {
            if (t !== null) e.calls.delete(t);
            h.onEnd(s);
          },
        };
        const s = this.opts.mux && e.load?.mux === true ? e.spread.openMuxSession(handlers, opts.coalescer) : null;
        if (s !== null) {
          t = {
            writerPath: "mux",
            readerPath: "mux",
            audio: (pcm, rate) => s.audio(pcm, rate),
            request: (req) => s.request(req),
            cancel: () => s.cancel(),
            close: () => {
              e.calls.delete(t!);
              s.close();
            },
          };
        } else {
          const call = e.spread.streamingRecognize() as RecognizeCall;
          const transport = new CallTransport(call, handlers, opts);
          t = transport;
          // Also after the link closed it (no onEnd then): the cancelled call's status.
          call.on("status", () => e.calls.delete(transport));
        }
        e.calls.add(t);
        return t;
      },
      release: () => {
        if (released) return;
        released = true;
        e.localSessions--;
      },
    };
  }

  /**
   * Lower is better; null when the worker cannot take a session. With a load
   * report: fraction of max_streams in use (counting placements the report
   * does not know yet), queued audio as a tie-breaker. Without one (a worker
   * without WatchLoad): this gateway's own session count.
   */
  private score(e: Entry): number | null {
    const l = e.load;
    if (l === null) return e.localSessions;
    if (!l.accepting) return null;
    const active = l.activeStreams + e.placedSinceReport;
    if (l.maxStreams > 0 && active >= l.maxStreams) return null;
    const frac = l.maxStreams > 0 ? active / l.maxStreams : active;
    return frac + Math.min(l.queuedAudioSeconds, 1000) * 1e-6;
  }

  private later(e: Entry, ms: number, f: () => void): void {
    if (this.closed) return;
    const t = setTimeout(() => {
      e.timers.delete(t);
      if (!this.closed) f();
    }, ms);
    t.unref();
    e.timers.add(t);
  }

  private watchHealth(e: Entry): void {
    const call = e.health.watch({ service: this.opts.healthService });
    e.healthCall = call;
    call.on("data", (r: HealthCheckResponse) => {
      e.healthBackoff = this.opts.minBackoffMs;
      const serving = r.status === HealthCheckResponse_ServingStatus.SERVING;
      if (serving !== e.serving) this.log.info({ worker: e.address, serving }, "worker health changed");
      e.serving = serving;
    });
    call.on("error", () => {
      // The status event below handles every ending; this only keeps the error from being thrown.
    });
    call.on("status", (s: StatusObject) => {
      if (e.healthCall !== call) return;
      e.healthCall = null;
      if (e.serving) this.log.warn({ worker: e.address, code: s.code }, "worker health watch ended; not serving");
      e.serving = false;
      if (this.closed) return;
      const delay = e.healthBackoff;
      e.healthBackoff = Math.min(this.opts.maxBackoffMs, e.healthBackoff * 2);
      this.later(e, delay, () => this.watchHealth(e));
    });
  }

  private watchLoad(e: Entry): void {
    const call = e.asr.watchLoad({ intervalMs: this.opts.loadIntervalMs });
    e.loadCall = call;
    call.on("data", (r: LoadReport) => {
      e.loadBackoff = this.opts.minBackoffMs;
      e.lastReportAt = Date.now();
      e.load = r;
      e.placedSinceReport = 0;
      if (r.engineStalled) {
        // Its front answers, its engine does not: as hung as a silent worker.
        this.markStalled(e, "worker reports its engine stalled; treating it as hung", {});
      } else if (e.stalled) {
        e.stalled = false;
        this.log.info({ worker: e.address }, "worker reporting load again; placing on it");
      }
    });
    call.on("error", () => {
      // Handled by the status event.
    });
    call.on("status", (s: StatusObject) => {
      if (e.loadCall !== call) return;
      e.loadCall = null;
      // A stale report must not steer placement; fall back to local counts until the next one.
      e.load = null;
      if (this.closed) return;
      const delay = s.code === GrpcStatus.UNIMPLEMENTED ? this.opts.maxBackoffMs * 6 : e.loadBackoff;
      e.loadBackoff = Math.min(this.opts.maxBackoffMs, e.loadBackoff * 2);
      this.later(e, delay, () => this.watchLoad(e));
    });
  }

  /** Counters of the mux calls on `address`'s connections (tests and diagnostics). */
  muxStats(address: string): MuxStats[] {
    return this.entries.find((e) => e.address === address)?.spread.muxStats() ?? [];
  }

  /** Stops watching and closes every channel (open recognition calls are cancelled by their sessions). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.stallTimer) clearInterval(this.stallTimer);
    for (const e of this.entries) {
      this.stopWatching(e);
      e.spread.close();
      e.asr.close();
    }
  }
}
