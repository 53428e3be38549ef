/**
 * One StreamingRecognizeMux call per worker connection, carrying every
 * session this gateway process places on that connection.
 *
 * Why: with one StreamingRecognize call per session, every flush of paced
 * audio is one HTTP/2 write per call and the worker reads one message per
 * session and frame (docs/benchmarks.md, "What is left of the 30 µs budget,
 * and the next lever"). Here all sessions' frames go into ONE ordered pending
 * list; a flush encodes the whole list into one StreamingRecognizeMuxRequest
 * (wire.ts: audio frames are hand-encoded into one exact-size buffer, the PCM
 * copied once) and writes it with one grpc-js `call.write()` — one message for
 * all sessions, so grpc-js's per-message cost is paid once per flush, not per
 * frame (the per-call path needs call-writer.ts's direct HTTP/2 writes to get
 * below that cost; the mux does not).
 *
 * Holding: plain audio waits up to the process's coalesce delay
 * (WORKER_WRITE_COALESCE_MS, the same WriteCoalescer timer as the per-call
 * writers); anything else (config, control, half-close, cancel) flushes the
 * whole list as soon as the current turn's synchronous work is done (a
 * microtask: a burst of them is one message), so no session's order ever
 * changes. A list reaching
 * MAX_MUX_MESSAGE_BYTES is flushed at once, and a flush is split so that one
 * message stays within it (a single larger frame goes alone).
 *
 * Backpressure: a session's write returns false while the call is congested
 * (call.write() returned false, until 'drain') or the worker paused that
 * session (MuxEvent.flow, until it resumes it); the session then owes its
 * link one onDrain — the protocol call-writer.ts gives the link.
 *
 * Ending: MuxEvent.end ends one session with its status (the link classifies
 * it like a call's status); the call ending, for any reason, ends every
 * session still open on it with that status (OK with sessions open: the
 * worker walked away). The call is opened when the first session is placed
 * and opened again, with session numbers from 1, when a session is placed
 * after it ended. A session gets its number with its first frame, not when
 * it is placed: the worker opens a session for a number greater than every
 * number it has seen, so numbers must reach it in increasing order. Events for unknown session numbers (a session the gateway
 * cancelled, whose events crossed the cancel) are ignored.
 */
import { status as GrpcStatus, type ClientDuplexStream, type StatusObject } from "@grpc/grpc-js";
import type { StreamingRecognizeMuxRequest, StreamingRecognizeMuxResponse } from "./gen/asr/v1/asr.js";
import type { SessionHandlers, SessionTransport } from "./session-transport.js";
import {
  encodeMuxRequest,
  muxFrame,
  muxFrameWireSize,
  MuxFrameKind,
  unframed,
  type EncodedMuxRequest,
  type FramedRequest,
  type MuxFrameSpec,
} from "./wire.js";
import type { Flushable, WriteCoalescer } from "./write-coalescer.js";

/** A StreamingRecognizeMux call (requests written pre-encoded, see wire.ts). */
export type MuxCall = ClientDuplexStream<StreamingRecognizeMuxRequest | EncodedMuxRequest, StreamingRecognizeMuxResponse>;

/** Largest StreamingRecognizeMuxRequest a flush writes (a single larger frame goes alone). */
export const MAX_MUX_MESSAGE_BYTES = 1024 * 1024;

/** Counters of one mux connection (tests and diagnostics). */
export interface MuxStats {
  /** Calls opened so far. */
  calls: number;
  /** Messages written so far. */
  messages: number;
  /** Frames written so far. */
  frames: number;
}

/**
 * Totals over every mux call of a gateway process (the worker pool's; read by
 * /metrics at scrape time, so counting costs an increment per flush, not per frame).
 */
export interface MuxTotals extends MuxStats {
  /** Times a call became congested (call.write() returned false): every session on it paused until 'drain'. */
  congestions: number;
  /** MuxEvent.flow pauses: a worker asked one session to stop sending. */
  flowPauses: number;
  /** Workers whose mux call answered UNIMPLEMENTED (their sessions get a call each from then on). */
  fallbacks: number;
}

/** A MuxTotals with every count at 0. */
export function emptyMuxTotals(): MuxTotals {
  return { calls: 0, messages: 0, frames: 0, congestions: 0, flowPauses: 0, fallbacks: 0 };
}

/** The mux call of one worker connection (see module comment). */
export class WorkerMux implements Flushable {
  /** Listed in the coalescer's pending set (maintained by the coalescer). */
  listed = false;
  private call: MuxCall | null = null;
  private nextSession = 1;
  /** Every session open on the current call. */
  private readonly sessions = new Set<MuxSession>();
  /** The sessions that have sent a frame, by number (the others are unknown to the worker yet). */
  private readonly numbered = new Map<number, MuxSession>();
  private pending: MuxFrameSpec[] = [];
  private pendingBytes = 0;
  /** call.write() returned false; cleared on the call's 'drain'. */
  private congested = false;
  /** The connection is going away: no new sessions; the call is cancelled once the last one ends. */
  private closing = false;
  private readonly counters: MuxStats = { calls: 0, messages: 0, frames: 0 };
  /** A flush is queued for the end of this turn's synchronous work (see push()). */
  private flushQueued = false;
  private readonly flushQueuedNow = (): void => {
    this.flushQueued = false;
    this.flush();
  };

  /**
   * `open` opens a StreamingRecognizeMux call on this connection;
   * `onUnimplemented` hears of a call that ended UNIMPLEMENTED (a worker, or
   * something in front of it, that does not serve the mux after all);
   * `totals` also counts this connection's calls, messages, frames,
   * congestions and flow pauses (the pool's, for /metrics).
   */
  constructor(
    private readonly open: () => MuxCall,
    private readonly onUnimplemented: () => void = () => {},
    private readonly totals: MuxTotals = emptyMuxTotals(),
  ) {}

  /** Counters so far (a copy). */
  get stats(): MuxStats {
    return { ...this.counters };
  }

  /** Sessions open on the current call. */
  get openSessions(): number {
    return this.sessions.size;
  }

  /** Places a session on this connection's mux call (opening the call if there is none). */
  openSession(h: SessionHandlers, coalescer?: WriteCoalescer): MuxSession {
    const call = this.call ?? this.openCall();
    const s = new MuxSession(this, call, h, coalescer?.enabled === true ? coalescer : undefined);
    this.sessions.add(s);
    return s;
  }

  /**
   * The connection is going away (the pool closes, or drops the connection):
   * sessions open on it go on, none is added, and the call is cancelled when
   * the last one ends — at once when none is open.
   */
  close(): void {
    this.closing = true;
    if (this.sessions.size === 0) this.cancelCall();
  }

  /** Writes every pending frame now, in order, as few messages as MAX_MUX_MESSAGE_BYTES allows. */
  flush(): void {
    const frames = this.pending;
    const call = this.call;
    if (frames.length === 0 || call === null) return;
    this.pending = [];
    this.pendingBytes = 0;
    let start = 0;
    while (start < frames.length) {
      let end = start;
      let bytes = 0;
      while (end < frames.length) {
        const size = muxFrameWireSize(frames[end]!);
        if (end > start && bytes + size > MAX_MUX_MESSAGE_BYTES) break;
        bytes += size;
        end++;
      }
      this.counters.messages++;
      this.counters.frames += end - start;
      this.totals.messages++;
      this.totals.frames += end - start;
      if (!call.write(encodeMuxRequest(frames, start, end, bytes)) && !this.congested) {
        this.congested = true;
        this.totals.congestions++;
        call.once("drain", () => this.drained(call));
      }
      start = end;
    }
  }

  // -------------------------------------------------------------------------

  /** @internal A session's frame: queued in the one list; audio the coalescer may hold waits for its timer, anything else for the end of this turn's synchronous work. */
  push(s: MuxSession, f: MuxFrameSpec, hold: WriteCoalescer | undefined): boolean {
    // A session of a call that ended has nothing left to say (its number means nothing on a new call).
    if (s.call !== this.call) return true;
    this.pending.push(f);
    this.pendingBytes += muxFrameWireSize(f);
    if (this.pendingBytes >= MAX_MUX_MESSAGE_BYTES) this.flush();
    else if (hold !== undefined) hold.pending(this);
    else if (!this.flushQueued) {
      // Not held, but written when this turn's synchronous work is done: the configs and
      // controls of many sessions in one turn (a burst of connections) go out as one message,
      // instead of one write each, which past grpc-js's 16 buffered writes would report the
      // call congested and pause every session on it for a moment.
      this.flushQueued = true;
      queueMicrotask(this.flushQueuedNow);
    }
    return !this.congested && !s.flowPaused;
  }

  /** @internal The number of a session's first frame: the next one of the call. */
  number(s: MuxSession): number {
    const id = this.nextSession++;
    this.numbered.set(id, s);
    return id;
  }

  /** @internal A session is gone (closed by its link, cancelled, or ended by the worker). */
  forget(s: MuxSession): void {
    this.sessions.delete(s);
    this.numbered.delete(s.id);
    if (this.closing && this.sessions.size === 0) this.cancelCall();
  }

  /** @internal Whether the call is congested now. */
  get isCongested(): boolean {
    return this.congested;
  }

  private openCall(): MuxCall {
    if (this.closing) throw new Error("mux connection is closed");
    const call = this.open();
    this.call = call;
    this.counters.calls++;
    this.totals.calls++;
    this.nextSession = 1;
    this.congested = false;
    call.on("data", (m: StreamingRecognizeMuxResponse) => {
      if (this.call === call) this.onMessage(m);
    });
    call.on("error", () => {
      // The status event handles every ending; this keeps grpc-js from throwing.
    });
    call.on("status", (st: StatusObject) => {
      if (this.call !== call) return;
      this.call = null;
      if (st.code === GrpcStatus.UNIMPLEMENTED) this.onUnimplemented();
      // Frames still pending belonged to sessions of this call, which end now.
      this.pending = [];
      this.pendingBytes = 0;
      this.congested = false;
      const open = [...this.sessions];
      this.sessions.clear();
      this.numbered.clear();
      for (const s of open) s.ended({ code: st.code, details: st.details });
    });
    return call;
  }

  private onMessage(m: StreamingRecognizeMuxResponse): void {
    for (const ev of m.events) {
      const s = this.numbered.get(ev.session);
      const e = ev.event;
      if (s === undefined || e === undefined) continue;
      switch (e.$case) {
        case "response":
          s.response(e.value);
          break;
        case "end":
          this.forget(s);
          s.ended({ code: e.value.code, details: e.value.message });
          break;
        case "flow":
          if (e.value.paused && !s.flowPaused) this.totals.flowPauses++;
          s.flow(e.value.paused, this.congested);
          break;
      }
    }
  }

  private drained(call: MuxCall): void {
    if (this.call !== call || !this.congested) return;
    this.congested = false;
    for (const s of [...this.sessions]) s.drainIfOwed();
  }

  private cancelCall(): void {
    const call = this.call;
    this.call = null;
    this.pending = [];
    this.pendingBytes = 0;
    call?.cancel();
  }
}

/** One session on a mux call: the link's SessionTransport (see module comment). */
export class MuxSession implements SessionTransport {
  /** The worker paused this session's input (MuxEvent.flow). */
  flowPaused = false;
  /** The session number on its call (0 until its first frame, see WorkerMux). */
  id = 0;
  /** A write returned false; onDrain is owed. */
  private owesDrain = false;
  /** Closed by the link, cancelled, or ended: nothing more is written or reported. */
  private done = false;

  /** @internal Made by WorkerMux.openSession(). */
  constructor(
    private readonly mux: WorkerMux,
    /** @internal The call the session lives on. */
    readonly call: MuxCall,
    private readonly h: SessionHandlers,
    private readonly hold: WriteCoalescer | undefined,
  ) {}

  /** {@inheritDoc SessionTransport.writerPath} */
  get writerPath(): "mux" {
    return "mux";
  }

  /** {@inheritDoc SessionTransport.readerPath} */
  get readerPath(): "mux" {
    return "mux";
  }

  /** {@inheritDoc SessionTransport.audio} */
  audio(pcm: Buffer, sampleRateHz: number): boolean {
    if (this.done) return true;
    return this.written(this.mux.push(this, muxFrame(this.numberNow(), MuxFrameKind.Audio, pcm, sampleRateHz), this.hold));
  }

  /** {@inheritDoc SessionTransport.request} */
  request(req: FramedRequest): boolean {
    if (this.done) return true;
    // The mux frame embeds the request's protobuf bytes (a view of the framed buffer, no copy).
    return this.written(this.mux.push(this, muxFrame(this.numberNow(), MuxFrameKind.Request, unframed(req)), undefined));
  }

  /** {@inheritDoc SessionTransport.cancel} */
  cancel(): void {
    if (this.done) return;
    this.free();
    // As grpc-js reports a cancelled call: asynchronously, CANCELLED (retryable for the link).
    process.nextTick(() => this.h.onEnd({ code: GrpcStatus.CANCELLED, details: "Cancelled on client" }));
  }

  /** {@inheritDoc SessionTransport.close} */
  close(): void {
    if (this.done) return;
    this.free();
  }

  // -------------------------------------------------------------------------

  /** @internal A response for this session. */
  response(r: Parameters<SessionHandlers["onResponse"]>[0]): void {
    if (!this.done) this.h.onResponse(r);
  }

  /** @internal The worker ended the session, or the call ended. */
  ended(s: { code: number; details: string }): void {
    if (this.done) return;
    this.done = true;
    this.h.onEnd(s);
  }

  /** @internal MuxEvent.flow for this session. */
  flow(paused: boolean, congested: boolean): void {
    this.flowPaused = paused;
    if (!paused && !congested) this.drainIfOwed();
  }

  /** @internal Writing may go on (the call drained, or the worker resumed the session). */
  drainIfOwed(): void {
    if (!this.owesDrain || this.flowPaused || this.done || this.mux.isCongested) return;
    this.owesDrain = false;
    this.h.onDrain();
  }

  private numberNow(): number {
    if (this.id === 0) this.id = this.mux.number(this);
    return this.id;
  }

  private written(ok: boolean): boolean {
    if (!ok) this.owesDrain = true;
    return ok;
  }

  /** Tells the worker to free the session (a cancel frame flushes the whole list) and forgets it. */
  private free(): void {
    this.done = true;
    // A session that never sent a frame is unknown to the worker: nothing to cancel there.
    if (this.id !== 0) this.mux.push(this, muxFrame(this.id, MuxFrameKind.Cancel), undefined);
    this.mux.forget(this);
  }
}
