/**
 * The worker link: one session on a worker — its own StreamingRecognize call
 * or a session of the connection's StreamingRecognizeMux call, whichever the
 * pool's lease gives (session-transport.ts, worker-mux.ts) — kept alive
 * across worker failures.
 *
 * It owns everything about the call that the client never sees: placement
 * (the lease), writing with backpressure (the client's reads pause while the
 * call is full), the replay buffer, and failover — when the call ends with a
 * retryable status it re-opens the session on another worker with
 * StreamingConfig.resume, replays the audio since the last delivered final
 * and repeats the END_OF_INPUT of every round still waiting for its
 * acknowledgement. The session sees typed events only: results, in-band
 * errors, `failover` (for logs and metrics) and, when nothing can be saved,
 * `failed`.
 *
 * A replayed segment is re-decoded from its start by the new worker, so its
 * partial deltas repeat text the client already has; the link drops that
 * repetition before emitting `partial`, so consumers never know a failover
 * happened.
 */
import { EventEmitter } from "node:events";
import type { Logger } from "pino";
import { GatewayError, classifyCallEnd, clientCodeForWorkerError, type ErrorCode } from "./errors.js";
import {
  ControlType,
  type FinalResult,
  type StreamingConfig,
  type StreamingRecognizeRequest,
  type StreamingRecognizeResponse,
} from "./gen/asr/v1/asr.js";
import type { ReaderPath } from "./call-reader.js";
import type { WriterPath } from "./call-writer.js";
import { ReplayBuffer } from "./replay.js";
import type { SessionStatus, SessionTransport } from "./session-transport.js";
import { framedRequest, type FramedRequest } from "./wire.js";
import type { WriteCoalescer } from "./write-coalescer.js";
import type { WorkerLease, WorkerSource } from "./workers.js";

/** Largest AudioChunk sent to a worker (the contract allows 4 MiB). */
const MAX_CHUNK_BYTES = 1024 * 1024;
/** Worker failures a session survives by replaying elsewhere. */
export const MAX_FAILOVERS = 3;

/** A partial after failover de-duplication. */
export interface LinkPartial {
  /** The open segment. */
  segmentId: number;
  /** The full newest hypothesis. */
  text: string;
  /** Stable text the client does not have yet (possibly ""). */
  delta: string;
}

/** An in-band worker error, mapped to the client catalog. */
export interface LinkWorkerError {
  /** Client-facing code. */
  code: ErrorCode;
  /** The worker's message. */
  message: string;
  /** The wire's `retryable`. */
  retryable: boolean;
  /** The segment concerned, if any. */
  segmentId: number | undefined;
}

/** Events of a WorkerLink, with their payloads. */
export interface WorkerLinkEvents {
  /** A call was opened on `worker` (first placement or failover). */
  attached: [worker: string];
  /** A partial of the open segment. */
  partial: [p: LinkPartial];
  /** A segment's final; the replay buffer has already dropped its audio. */
  final: [f: FinalResult];
  /** The worker acknowledged the oldest pending END_OF_INPUT. */
  endOfInput: [];
  /** The worker reported an error in-band; the call goes on. */
  workerError: [e: LinkWorkerError];
  /** The call failed and the session was re-opened on another worker. */
  failover: [info: { attempt: number; from: string; to: string; replayMs: number }];
  /** The call ended and could not be saved; the link is closed. */
  failed: [code: ErrorCode, detail: string | undefined];
}

/** Flow control of the client side (the WebSocket's reads). */
export interface InputFlow {
  /** Stop reading from the client. */
  pause(): void;
  /** Read from the client again. */
  resume(): void;
}

/** What a link is built from. */
export interface WorkerLinkDeps {
  /** Sent to the worker as StreamingConfig.session_id. */
  sessionId: string;
  /** Where workers come from. */
  workers: WorkerSource;
  /** A placement made before the link existed (at upgrade time), or null. */
  initialLease: WorkerLease | null;
  /** Audio kept for replay, seconds. */
  replayBufferSeconds: number;
  /**
   * Write requests straight onto the call's HTTP/2 stream when grpc-js's layout allows
   * (call-writer.ts; default true). False keeps every call on grpc-js's call.write().
   */
  directWrites?: boolean;
  /**
   * Read responses straight off the call's HTTP/2 stream when grpc-js's layout allows
   * (call-reader.ts; default true). False keeps every call on grpc-js's 'data' events.
   */
  directReads?: boolean;
  /** Holds audio briefly so that all calls' audio goes out in one loop turn (write-coalescer.ts); absent: none. */
  coalescer?: WriteCoalescer;
  /** The client's reads, paused while the call is full. */
  input: InputFlow;
  /** Session logger. */
  logger: Logger;
}

/** A round as the worker has seen it, until its END_OF_INPUT is acknowledged. */
interface SentRound {
  config: StreamingConfig;
  /** Session-timeline position of the round's first audio. */
  startMs: number;
  /** Session-timeline position of its END_OF_INPUT; null while audio may still come. */
  eoiAtMs: number | null;
}

/** One session's worker call with backpressure and failover (see module comment). */
export class WorkerLink extends EventEmitter<WorkerLinkEvents> {
  private readonly d: WorkerLinkDeps;
  private readonly replay: ReplayBuffer;
  private lease: WorkerLease | null;
  /** The current session on the worker: its own call, or a session of a mux call (session-transport.ts). */
  private transport: SessionTransport | null = null;
  private closed = false;
  private paused = false;
  private failovers = 0;
  private readonly failedWorkers = new Set<string>();
  /** Rounds sent since the last acknowledged END_OF_INPUT, oldest first. */
  private readonly rounds: SentRound[] = [];
  /** JSON of the config last written on this call; null forces the next one out. */
  private sentConfigKey: string | null = null;
  /** Resume state for the next config written after a failover. */
  private resumeNext: StreamingConfig["resume"] | null = null;
  /** Deltas emitted for the open segment. */
  private segmentText = "";
  /** After a failover: deltas of the replayed segment so far, until they pass segmentText. */
  private replayText: string | null = null;

  /** Creates a link; nothing is opened before open(). */
  constructor(deps: WorkerLinkDeps) {
    super();
    this.d = deps;
    this.lease = deps.initialLease;
    this.replay = new ReplayBuffer(deps.replayBufferSeconds);
  }

  /** Opens the call (placing the session unless placed at upgrade). Throws NO_WORKER_AVAILABLE. */
  open(): void {
    if (this.lease === null) this.lease = this.d.workers.acquire();
    if (this.lease === null) throw new GatewayError("NO_WORKER_AVAILABLE");
    this.attach(this.lease);
  }

  /** Address of the current worker, or null before open(). */
  get worker(): string | null {
    return this.lease?.address ?? null;
  }

  /** Session-timeline length of all audio sent, ms. */
  get audioMs(): number {
    return this.replay.audioMs;
  }

  /** How the current session's requests are written (null before open()); diagnostics and tests. */
  get writerPath(): WriterPath | "mux" | null {
    return this.transport?.writerPath ?? null;
  }

  /** How the current session's responses are read (null before open()); diagnostics and tests. */
  get readerPath(): ReaderPath | "mux" | null {
    return this.transport?.readerPath ?? null;
  }

  /** Failovers so far. */
  get failoverCount(): number {
    return this.failovers;
  }

  /** Starts a round: writes its config when it differs from the last one (or carries resume state). */
  beginRound(config: StreamingConfig): void {
    this.rounds.push({ config, startMs: this.replay.audioMs, eoiAtMs: null });
    // Failover replays rounds by chunk start times: no chunk may straddle a round's start or end.
    this.replay.mark();
    this.writeConfig(config);
  }

  /** Sends audio of the current round (kept for replay; `pcm` is held, never copied or modified). */
  audio(pcm: Buffer, sampleRateHz: number): void {
    for (let off = 0; off < pcm.length; off += MAX_CHUNK_BYTES) {
      const chunk = off === 0 && pcm.length <= MAX_CHUNK_BYTES ? pcm : pcm.subarray(off, Math.min(pcm.length, off + MAX_CHUNK_BYTES));
      this.replay.push(chunk, sampleRateHz);
      this.writeAudio(chunk, sampleRateHz);
    }
  }

  /** Ends the current round: END_OF_INPUT. */
  endRound(): void {
    const r = this.rounds[this.rounds.length - 1];
    if (r !== undefined && r.eoiAtMs === null) r.eoiAtMs = this.replay.audioMs;
    this.replay.mark();
    this.write(END_OF_INPUT);
  }

  /** Cancels the call and releases the placement (idempotent). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const t = this.transport;
    this.transport = null;
    t?.close();
    this.lease?.release();
    this.removeAllListeners();
  }

  // -------------------------------------------------------------------------

  private attach(lease: WorkerLease): void {
    this.transport?.close();
    // Handlers answer only while their session is the current one.
    let t: SessionTransport | null = null;
    t = lease.openSession(
      {
        onResponse: (r) => {
          if (this.transport === t) this.onResponse(r);
        },
        onEnd: (s) => {
          if (this.transport !== t) return;
          this.transport = null;
          this.onCallEnded(s);
        },
        onDrain: () => {
          if (this.transport === t) this.resumeInput();
        },
      },
      {
        ...(this.d.directWrites !== undefined ? { directWrites: this.d.directWrites } : {}),
        ...(this.d.directReads !== undefined ? { directReads: this.d.directReads } : {}),
        ...(this.d.coalescer !== undefined ? { coalescer: this.d.coalescer } : {}),
      },
    );
    this.transport = t;
    // A paused read belongs to the old session, whose drain will never come.
    this.resumeInput();
    this.emit("attached", lease.address);
  }

  private writeConfig(config: StreamingConfig): void {
    const key = JSON.stringify(config);
    if (key === this.sentConfigKey && this.resumeNext === null) return;
    this.sentConfigKey = key;
    const value = this.resumeNext !== null ? { ...config, resume: this.resumeNext } : config;
    this.resumeNext = null;
    this.write(framedRequest({ streamingRequest: { $case: "config", value } }));
  }

  /** Writes one non-audio request (after the session's held audio). */
  private write(req: FramedRequest): void {
    const t = this.transport;
    if (t === null || this.closed) return;
    this.wrote(t.request(req));
  }

  /** Writes audio (which the transport may hold for the process's coalesce delay). */
  private writeAudio(pcm: Buffer, sampleRateHz: number): void {
    const t = this.transport;
    if (t === null || this.closed) return;
    this.wrote(t.audio(pcm, sampleRateHz));
  }

  private wrote(ok: boolean): void {
    if (!ok && !this.paused) {
      // The worker (or the network to it) is slower than the client sends, e.g. a
      // C++ client streaming a file at full speed: stop reading the WebSocket
      // until the call drains (the writer's onDrain) instead of buffering without bound.
      this.paused = true;
      this.d.input.pause();
    }
  }

  private resumeInput(): void {
    if (!this.paused) return;
    this.paused = false;
    if (!this.closed) this.d.input.resume();
  }

  private onResponse(r: StreamingRecognizeResponse): void {
    const x = r.streamingResponse;
    if (x === undefined) return;
    switch (x.$case) {
      case "partial":
        this.onPartial(x.value.segmentId, x.value.text, x.value.delta);
        break;
      case "final":
        this.segmentText = "";
        this.replayText = null;
        this.replay.finalDelivered(x.value.segmentId, x.value.endMs);
        this.emit("final", x.value);
        break;
      case "endOfInput":
        this.rounds.shift();
        this.emit("endOfInput");
        break;
      case "error":
        this.emit("workerError", {
          code: clientCodeForWorkerError(x.value.code),
          message: x.value.message,
          retryable: x.value.retryable,
          segmentId: x.value.segmentId,
        });
        break;
      case "speechEvent":
        break;
    }
  }

  private onPartial(segmentId: number, text: string, delta: string): void {
    let fresh = delta;
    if (this.replayText !== null) {
      // Replayed segment: pass on only what goes beyond the text the client already has.
      this.replayText += delta;
      const have = this.segmentText;
      if (this.replayText.length <= have.length || !this.replayText.startsWith(have)) {
        fresh = "";
      } else {
        fresh = this.replayText.slice(have.length);
        this.replayText = null;
      }
    }
    this.segmentText += fresh;
    this.emit("partial", { segmentId, text, delta: fresh });
  }

  private onCallEnded(s: SessionStatus): void {
    if (this.closed) return;
    const end = classifyCallEnd(s);
    const from = this.lease?.address ?? "";
    this.d.logger.warn({ grpc_code: s.code, code: end.code, retryable: end.retryable, worker: from }, "worker call ended");
    if (end.retryable && this.failover()) return;
    const failedEvent: [ErrorCode, string | undefined] = [end.code, end.detail];
    this.emit("failed", ...failedEvent);
    this.close();
  }

  /**
   * Re-opens the call on another worker and replays (see module comment).
   * Returns false when that is impossible: no other worker, replay buffer
   * overflowed, or too many failovers.
   */
  private failover(): boolean {
    if (this.failovers >= MAX_FAILOVERS) return false;
    const snap = this.replay.snapshot();
    if (!snap.complete) return false;
    const failed = this.lease;
    if (failed !== null) this.failedWorkers.add(failed.address);
    const next = this.d.workers.acquire(this.failedWorkers);
    if (next === null) return false;
    failed?.release();
    this.lease = next;
    this.failovers++;
    this.sentConfigKey = null;
    this.replayText = this.segmentText === "" ? null : "";
    const firstStart = this.rounds[0]?.startMs ?? this.replay.audioMs;
    const chunks = snap.chunks.filter((c) => c.startMs >= firstStart);
    this.resumeNext = {
      audioOffsetMs: Math.round(chunks[0]?.startMs ?? this.replay.audioMs),
      finalizedSegments: snap.finalizedSegments,
    };
    this.attach(next);
    this.emit("failover", {
      attempt: this.failovers,
      from: failed?.address ?? "",
      to: next.address,
      replayMs: Math.round(this.replay.audioMs - snap.audioOffsetMs),
    });
    // With no round in flight, the next round's config carries the resume state.
    for (const r of this.rounds) {
      this.writeConfig(r.config);
      for (const c of chunks) {
        if (c.startMs < r.startMs || (r.eoiAtMs !== null && c.startMs >= r.eoiAtMs)) continue;
        this.writeAudio(c.pcm, c.sampleRateHz);
      }
      if (r.eoiAtMs !== null) this.write(END_OF_INPUT);
    }
    return true;
  }
}

/** Encoded once: the same bytes end every round (writers never modify what they are given). */
const END_OF_INPUT: FramedRequest = framedRequest({
  streamingRequest: { $case: "control", value: { type: ControlType.CONTROL_TYPE_END_OF_INPUT } },
});
