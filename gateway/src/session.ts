/**
 * One client connection: the FunASR session state machine over one worker
 * StreamingRecognize call.
 *
 *   awaiting_config --config--> streaming --(shutdown)--> draining --> closed
 *          \___________________________\______________(any fatal error, socket close)__/
 *
 * Within `streaming`, the connection runs speaking rounds: audio (and the
 * first END_OF_INPUT) opens a round, `{"is_speaking": false}` (or
 * `is_finished`) ends it with an END_OF_INPUT control; the worker's
 * EndOfInputAck closes it. Output of the worker is mapped with the settings
 * of the round it belongs to (rounds are acknowledged in order), so a client
 * that sends the next config (new wav_name) before the previous round's
 * finals arrived still gets each final under the right name.
 *
 * When the worker call fails with a retryable status, failover() re-opens the
 * session on another worker and replays the audio kept since the last
 * delivered final (see replay.ts), so the client sees no gap and no duplicate.
 *
 * Every close path goes through close(), which is idempotent, cancels the
 * worker call and releases the worker placement.
 */
import { randomUUID } from "node:crypto";
import { status as GrpcStatus, type StatusObject } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { looksLikeWav, parseWavHeader, type FileDecoder } from "./audio.js";
import { ERRORS, GatewayError, errorCodeForGrpcStatus, type ErrorCode } from "./errors.js";
import {
  ControlType,
  RecognitionMode,
  type FinalResult,
  type PartialResult,
  type StreamingConfig,
  type StreamingRecognizeRequest,
  type StreamingRecognizeResponse,
} from "./gen/asr/v1/asr.js";
import {
  endAckMessage,
  errorMessage,
  joinedOfflineMessage,
  parseClientMessage,
  parseHotwords,
  resultMessage,
  type ClientMessage,
  type Hotword,
  type OutputMode,
  type ServerMessage,
  type TimedToken,
} from "./protocol.js";
import { ReplayBuffer } from "./replay.js";
import type { RecognizeCall, WorkerLease, WorkerSource } from "./workers.js";

/** The socket as a session needs it (a `ws` WebSocket satisfies it). */
export interface ClientSocket {
  /** Sends one text frame. */
  send(data: string): void;
  /** Closes with a code and a short reason. */
  close(code: number, reason: string): void;
  /** Bytes queued but not yet sent (slow-client detection). */
  readonly bufferedAmount: number;
  /** 1 while open (ws readyState). */
  readonly readyState: number;
  /** Stops reading from the client (backpressure while the worker call is full). */
  pause?(): void;
  /** Reads from the client again. */
  resume?(): void;
}

/** Gateway settings that sessions use (a subset of GatewayConfig). */
export interface SessionLimits {
  /** Largest binary frame. */
  maxFrameBytes: number;
  /** Largest offline file. */
  maxFileBytes: number;
  /** Wall-clock limit of a connection, seconds. */
  maxSessionSeconds: number;
  /** Idle limit, seconds. */
  idleTimeoutSeconds: number;
  /** Hotword caps. */
  maxHotwords: number;
  /** Hotword caps. */
  maxHotwordChars: number;
  /** Hotword caps. */
  maxHotwordsBytes: number;
  /** Audio kept for replay, seconds. */
  replayBufferSeconds: number;
  /** Deployment default is_final behaviour. */
  isFinalMode: "seed" | "cpp";
  /** What "online" means. */
  onlineMode: "upgrade" | "strict";
}

/** Everything a session is given by the composition root. */
export interface SessionDeps {
  /** The client's socket. */
  socket: ClientSocket;
  /** Where workers come from. */
  workers: WorkerSource;
  /** The worker chosen at upgrade time (so that 503 could be answered before upgrading). */
  initialLease: WorkerLease | null;
  /** Decodes whole files in offline mode. */
  decoder: FileDecoder;
  /** Limits and behaviours. */
  limits: SessionLimits;
  /** Parent logger; the session makes a child with its id. */
  logger: Logger;
  /** Called once when the session is closed (registry bookkeeping). */
  onClosed?: (s: Session) => void;
}

/** Lifecycle states (see module comment). */
export type SessionState = "awaiting_config" | "streaming" | "draining" | "closed";

/** Settings in force for the next round (the client may change them between rounds). */
interface Settings {
  /** How the session is served: offline, 2pass, or strict online. */
  kind: "offline" | "2pass" | "online";
  wavName: string;
  wavFormat: string;
  audioFs: number;
  itn: boolean;
  language: string;
  chunkSize: [number, number, number];
  hotwords: Hotword[];
  isFinalMode: "seed" | "cpp";
  fullHypothesis: boolean;
}

/** One speaking round whose results are still (partly) to come. */
interface Round {
  settings: Settings;
  /** END_OF_INPUT was sent for this round. */
  eoiSent: boolean;
  /** The client asked for the is_end acknowledgement. */
  wantsAck: boolean;
  /** Offline mode: the finals to join. */
  finals: Array<{ text: string; tokens: TimedToken[] }>;
  /** cpp behaviour: the newest final after END_OF_INPUT, sent when the next one (or the ack) arrives. */
  held: ServerMessage | null;
  /** Something failed in this round (the ack carries is_final false + error). */
  error: string | null;
  /** Offline file mode: the file's bytes until end of input. */
  fileBytes: Buffer[];
  fileSize: number;
  /** Session-timeline position where the round's audio starts (for replay). */
  startMs: number;
  /** Session-timeline position of its END_OF_INPUT (for replay). */
  eoiAtMs: number;
}

/** Partial deltas that could not be sent to a slow client yet (sent before the next partial). */
interface PendingPartial {
  mode: OutputMode;
  wavName: string;
  text: string;
  full: boolean;
}

/** Above this many queued bytes a client is slow: partials are merged instead of queued. */
const SLOW_CLIENT_BYTES = 256 * 1024;
/** Largest AudioChunk sent to a worker (the contract allows 4 MiB). */
const MAX_CHUNK_BYTES = 1024 * 1024;
/** Worker failures a session survives by replaying elsewhere. */
const MAX_FAILOVERS = 3;

/** One client connection (see module comment). */
export class Session {
  /** Opaque id, also sent to the worker as StreamingConfig.session_id. */
  readonly id: string = randomUUID();
  private st: SessionState = "awaiting_config";
  private readonly d: SessionDeps;
  private log: Logger;
  private settings: Settings;
  private lease: WorkerLease | null;
  private call: RecognizeCall | null = null;
  /** JSON of the worker config last sent; null before the first. */
  private sentWorkerConfig: string | null = null;
  /** The round receiving input, if one is open. */
  private inputRound: Round | null = null;
  /** Rounds whose results are still coming, oldest first (output maps to rounds[0]). */
  private readonly rounds: Round[] = [];
  private readonly replay: ReplayBuffer;
  /** Per open segment: the deltas sent so far (strict online derives the final remainder). */
  private segDeltas = "";
  /**
   * After a failover, the new worker re-decodes the open segment from its
   * start: its deltas are matched against what the client already has
   * (`segDeltas`) and only text beyond it is sent, so nothing is duplicated.
   */
  private replayDeltas: string | null = null;
  /** Workers whose call failed in this session (not chosen again). */
  private readonly failedWorkers = new Set<string>();
  private failovers = 0;
  /** Whether reading from the client is paused for worker backpressure. */
  private readPaused = false;
  /** ResumeState for the next config written (set by a failover with nothing to replay). */
  private resumeNext: { audioOffsetMs: number; finalizedSegments: number } | null = null;
  private pendingPartial: PendingPartial | null = null;
  private idleTimer: NodeJS.Timeout | null = null;
  private lastActivity = Date.now();
  private lifeTimer: NodeJS.Timeout | null = null;
  /** Serializes client input while an async step (file decoding) runs. */
  private busy = false;
  private readonly backlog: Array<() => void | Promise<void>> = [];
  private readonly startedAt = Date.now();
  private stats = { frames: 0, bytes: 0, finals: 0, partials: 0, rounds: 0 };

  /** Creates the session; it waits for the client's config. */
  constructor(deps: SessionDeps) {
    this.d = deps;
    this.lease = deps.initialLease;
    this.settings = defaultSettings(deps.limits);
    this.replay = new ReplayBuffer(deps.limits.replayBufferSeconds);
    this.log = deps.logger.child({ session: this.id });
    this.armIdle();
    this.lifeTimer = setTimeout(() => this.fail("SESSION_TOO_LONG"), deps.limits.maxSessionSeconds * 1000);
    this.lifeTimer.unref();
  }

  /** Current lifecycle state. */
  get state(): SessionState {
    return this.st;
  }

  /** Handles one text frame from the client. */
  onText(text: string): void {
    if (this.st === "closed") return;
    this.armIdle();
    this.serial(() => this.handleText(text));
  }

  /** Handles one binary frame from the client. */
  onBinary(data: Buffer): void {
    if (this.st === "closed") return;
    this.armIdle();
    this.serial(() => this.handleBinary(data));
  }

  /** The client's socket closed: cancel the worker call at once. */
  onSocketClosed(): void {
    this.close("client closed");
  }

  /**
   * Graceful shutdown: a session with no round in flight closes now (1001);
   * one waiting for results drains and closes after its last acknowledgement.
   */
  shutdown(): void {
    if (this.st === "closed" || this.st === "draining") return;
    if (this.rounds.length === 0 || this.rounds.every((r) => !r.eoiSent)) {
      this.fail("SHUTTING_DOWN");
      return;
    }
    this.st = "draining";
  }

  /** Closes with SHUTTING_DOWN even when results are pending (end of the grace period). */
  forceClose(): void {
    if (this.st !== "closed") this.fail("SHUTTING_DOWN");
  }

  // -------------------------------------------------------------------------
  // client input

  private serial(fn: () => void | Promise<void>): void {
    if (this.busy) {
      this.backlog.push(fn);
      return;
    }
    let r: void | Promise<void>;
    try {
      r = fn();
    } catch (e) {
      this.handleError(e);
      return;
    }
    if (r instanceof Promise) {
      this.busy = true;
      r.catch((e: unknown) => this.handleError(e)).finally(() => {
        this.busy = false;
        const next = this.backlog.shift();
        if (next !== undefined && this.st !== "closed") this.serial(next);
        // Drain the rest synchronously unless a step went async again.
        while (!this.busy && this.backlog.length > 0 && this.st !== "closed") this.serial(this.backlog.shift()!);
      });
    }
  }

  private handleError(e: unknown): void {
    if (e instanceof GatewayError) {
      if (e.spec.fatal) this.fail(e.code, e.message);
      else this.sendError(e.code, e.message);
      return;
    }
    this.log.error({ err: e }, "unexpected session error");
    this.fail("INTERNAL");
  }

  private handleText(text: string): void | Promise<void> {
    const msg = parseClientMessage(text);
    if (this.st === "awaiting_config") {
      const next = applyConfig(this.settings, msg, this.d.limits, true);
      this.settings = next;
      this.openWorker();
      this.st = "streaming";
      this.log = this.log.child({ wav_name: next.wavName });
      this.log.info({ mode: next.kind, audio_fs: next.audioFs, wav_format: next.wavFormat, hotword_count: next.hotwords.length }, "session configured");
    } else if (this.st === "streaming") {
      this.settings = applyConfig(this.settings, msg, this.d.limits, false);
    } else {
      return;
    }
    if (msg.is_speaking === false || msg.is_finished === true) return this.endOfInput(msg.is_end === true);
  }

  private handleBinary(data: Buffer): void {
    if (this.st === "awaiting_config") throw new GatewayError("BINARY_BEFORE_CONFIG");
    if (this.st !== "streaming") return;
    if (data.length > this.d.limits.maxFrameBytes) {
      throw new GatewayError("FRAME_TOO_LARGE", `binary frame of ${data.length} bytes exceeds MAX_FRAME_BYTES (${this.d.limits.maxFrameBytes})`);
    }
    this.stats.frames++;
    this.stats.bytes += data.length;
    if (data.length === 0) return;
    if (isFileMode(this.settings)) {
      const round = this.openRound(false);
      round.fileSize += data.length;
      if (round.fileSize > this.d.limits.maxFileBytes) {
        throw new GatewayError("FILE_TOO_LARGE", `offline file exceeds MAX_FILE_BYTES (${this.d.limits.maxFileBytes})`);
      }
      round.fileBytes.push(data);
      return;
    }
    let pcm = data;
    const fresh = this.inputRound === null;
    if (fresh && looksLikeWav(pcm)) {
      // The html5 page's file mode sends a whole WAV (header included) labelled "PCM".
      const info = parseWavHeader(pcm);
      if (info === null) return; // a header split over frames: nothing audible is lost
      if (info.format !== 1 || info.bitsPerSample !== 16 || info.channels !== 1) {
        throw new GatewayError("UNSUPPORTED_FORMAT", "WAV sent as PCM must be 16-bit mono; use wav_format \"wav\" in offline mode");
      }
      if (info.sampleRateHz === 8000 || info.sampleRateHz === 16000) this.settings = { ...this.settings, audioFs: info.sampleRateHz };
      pcm = pcm.subarray(info.dataOffset);
    }
    if (pcm.length % 2 !== 0) {
      throw new GatewayError("ODD_FRAME_BYTES", `PCM frame of ${pcm.length} bytes is not a whole number of 16-bit samples; frame dropped`);
    }
    const round = this.openRound(true);
    this.sendAudio(pcm, round.settings.audioFs);
  }

  private async endOfInput(wantsAck: boolean): Promise<void> {
    const round = this.openRound(!isFileMode(this.settings));
    round.wantsAck = round.wantsAck || wantsAck;
    this.inputRound = null;
    if (isFileMode(round.settings)) {
      const file = Buffer.concat(round.fileBytes);
      round.fileBytes = [];
      let decoded: { pcm: Buffer; sampleRateHz: number } | null = null;
      if (file.length > 0) {
        try {
          decoded = await this.d.decoder.decode(file, round.settings.wavFormat);
        } catch (e) {
          if (!(e instanceof GatewayError)) throw e;
          // Still end the round on the worker so that ordering and the final/ack guarantees hold.
          round.error = `${e.code}: ${e.message}`;
          this.sendError(e.code, e.message, round.settings);
        }
      }
      if (this.st !== "streaming" && this.st !== "draining") return;
      if (decoded !== null) round.settings = { ...round.settings, audioFs: decoded.sampleRateHz };
      this.writeWorkerConfigIfNeeded(round.settings);
      if (decoded !== null) this.sendAudio(decoded.pcm, decoded.sampleRateHz);
    }
    round.eoiSent = true;
    round.eoiAtMs = this.replay.audioMs;
    this.stats.rounds++;
    this.write({ streamingRequest: { $case: "control", value: { type: ControlType.CONTROL_TYPE_END_OF_INPUT } } });
  }

  /**
   * The round receiving input, opened on first use. Opening a round sends
   * the worker a config when the settings changed since the last one (the
   * contract allows a config directly after END_OF_INPUT, which is exactly
   * where rounds start).
   */
  private openRound(sendConfig: boolean): Round {
    if (this.inputRound !== null) return this.inputRound;
    const round: Round = {
      settings: this.settings,
      eoiSent: false,
      wantsAck: false,
      finals: [],
      held: null,
      error: null,
      fileBytes: [],
      fileSize: 0,
      startMs: this.replay.audioMs,
      eoiAtMs: -1,
    };
    this.inputRound = round;
    this.rounds.push(round);
    if (sendConfig) this.writeWorkerConfigIfNeeded(round.settings);
    return round;
  }

  private writeWorkerConfigIfNeeded(s: Settings): void {
    const cfg = workerConfig(this.id, s);
    const key = JSON.stringify(cfg);
    if (key === this.sentWorkerConfig && this.resumeNext === null) return;
    this.sentWorkerConfig = key;
    if (this.resumeNext !== null) cfg.resume = this.resumeNext;
    this.resumeNext = null;
    this.write({ streamingRequest: { $case: "config", value: cfg } });
  }

  private sendAudio(pcm: Buffer, rate: number): void {
    for (let off = 0; off < pcm.length; off += MAX_CHUNK_BYTES) {
      const chunk = pcm.subarray(off, Math.min(pcm.length, off + MAX_CHUNK_BYTES));
      // Copy: a frame can be a view into a larger socket read, and the replay buffer keeps it.
      const own = Buffer.from(chunk);
      this.replay.push(own, rate);
      this.write({ streamingRequest: { $case: "audio", value: { pcm16le: own, sampleRateHz: rate } } });
    }
  }

  // -------------------------------------------------------------------------
  // worker

  private openWorker(): void {
    if (this.lease === null) this.lease = this.d.workers.acquire();
    if (this.lease === null) throw new GatewayError("NO_WORKER_AVAILABLE");
    this.attach(this.lease);
  }

  /** Opens the recognition call on `lease` and routes its events to this session. */
  private attach(lease: WorkerLease): void {
    const call = lease.open();
    this.call = call;
    // A paused read belongs to the old call, whose drain will never come.
    this.resumeReading();
    this.log = this.d.logger.child({ session: this.id, wav_name: this.settings.wavName, worker: lease.address });
    call.on("data", (r: StreamingRecognizeResponse) => {
      if (this.call !== call || this.st === "closed") return;
      try {
        this.onWorkerResponse(r);
      } catch (e) {
        this.handleError(e);
      }
    });
    call.on("error", () => {
      // The status event handles every ending; this keeps grpc-js from throwing.
    });
    call.on("status", (s: StatusObject) => {
      if (this.call !== call) return;
      this.call = null;
      this.onWorkerEnded(s);
    });
  }

  private write(req: StreamingRecognizeRequest): void {
    const call = this.call;
    if (call === null || this.st === "closed") return;
    if (!call.write(req) && !this.readPaused) {
      // The worker (or the network to it) is slower than the client sends, e.g. a
      // C++ client streaming a file at full speed: stop reading the WebSocket
      // until the call drains instead of buffering without bound.
      this.readPaused = true;
      this.d.socket.pause?.();
      call.once("drain", () => this.resumeReading());
    }
  }

  private resumeReading(): void {
    if (!this.readPaused) return;
    this.readPaused = false;
    if (this.st !== "closed") this.d.socket.resume?.();
  }

  private onWorkerResponse(r: StreamingRecognizeResponse): void {
    const x = r.streamingResponse;
    if (x === undefined) return;
    switch (x.$case) {
      case "partial":
        this.onPartial(x.value);
        break;
      case "final":
        this.onFinal(x.value);
        break;
      case "endOfInput":
        this.onEndOfInputAck();
        break;
      case "error": {
        const round = this.outputRound();
        const code: ErrorCode = x.value.code === 4 ? "INFERENCE_FAILED" : "WORKER_FAILED";
        round.error = `${code}: ${x.value.message}`;
        this.log.warn({ code, worker_code: x.value.code, segment: x.value.segmentId }, "worker reported an error");
        this.sendError(code, x.value.message || ERRORS[code].message, round.settings);
        break;
      }
      case "speechEvent":
        break;
    }
  }

  /** The round that worker output belongs to (the oldest unacknowledged). */
  private outputRound(): Round {
    const r = this.rounds[0];
    if (r !== undefined) return r;
    // Output without a round (a worker talking before any input): attribute it to a fresh one.
    return this.openRound(false);
  }

  private onPartial(p: PartialResult): void {
    const round = this.outputRound();
    const s = round.settings;
    if (s.kind === "offline") return;
    const mode: OutputMode = s.kind === "online" ? "online" : "2pass-online";
    let delta = p.delta;
    if (this.replayDeltas !== null) {
      // Replayed segment: send only what goes beyond the text the client already has.
      this.replayDeltas += delta;
      const have = this.segDeltas;
      if (this.replayDeltas.length <= have.length || !this.replayDeltas.startsWith(have)) {
        delta = "";
      } else {
        delta = this.replayDeltas.slice(have.length);
        this.replayDeltas = null;
      }
    }
    if (delta !== "") this.segDeltas += delta;
    const text = s.fullHypothesis ? p.text : delta;
    if (s.fullHypothesis) {
      this.pendingPartial = { mode, wavName: s.wavName, text, full: true };
    } else {
      if (text === "" && this.pendingPartial === null) return;
      const prev = this.pendingPartial;
      this.pendingPartial = { mode, wavName: s.wavName, text: (prev?.text ?? "") + text, full: false };
    }
    if (this.d.socket.bufferedAmount > SLOW_CLIENT_BYTES) return; // merged into the next one
    const pp = this.pendingPartial;
    this.pendingPartial = null;
    if (pp.text === "" && !pp.full) return;
    this.stats.partials++;
    this.sendJson(resultMessage({ mode: pp.mode, wavName: pp.wavName, text: pp.text, isFinal: false }));
  }

  private onFinal(f: FinalResult): void {
    const round = this.outputRound();
    const s = round.settings;
    const tokens: TimedToken[] = f.tokens.map((t) => ({ text: t.text, startMs: t.startMs, endMs: t.endMs }));
    this.pendingPartial = null;
    const deltas = this.segDeltas;
    this.segDeltas = "";
    this.replayDeltas = null;
    this.stats.finals++;
    this.replay.finalDelivered(f.segmentId, f.endMs);
    if (s.kind === "offline") {
      round.finals.push({ text: f.text, tokens });
      return;
    }
    let msg: ServerMessage;
    if (s.kind === "online") {
      // Strict online: clients concatenate deltas, so send only what the deltas did not cover yet.
      const rest = f.text.startsWith(deltas) ? f.text.slice(deltas.length) : "";
      msg = resultMessage({ mode: "online", wavName: s.wavName, text: rest, isFinal: false });
    } else {
      msg = resultMessage({ mode: "2pass-offline", wavName: s.wavName, text: f.text, isFinal: true, tokens });
    }
    if (s.kind === "2pass" && s.isFinalMode === "seed") {
      this.sendJson(msg);
      return;
    }
    // cpp behaviour and strict online: segment finals carry is_final false and
    // exactly one is_final true follows end of input. Finals after END_OF_INPUT
    // are held one-deep so that the last of them can carry it.
    msg.is_final = false;
    if (!round.eoiSent) {
      if (s.kind === "2pass" || msg.text !== "") this.sendJson(msg);
      return;
    }
    if (round.held !== null && (s.kind === "2pass" || round.held.text !== "")) this.sendJson(round.held);
    round.held = msg;
  }

  private onEndOfInputAck(): void {
    const round = this.rounds.shift();
    if (round === undefined) return;
    const s = round.settings;
    const finalMode: OutputMode = finalModeOf(s);
    if (s.kind === "offline") {
      this.sendJson(joinedOfflineMessage({ wavName: s.wavName, segments: round.finals }));
    } else if (s.kind === "online" || s.isFinalMode === "cpp") {
      const last = round.held ?? resultMessage({ mode: finalMode, wavName: s.wavName, text: "", isFinal: true });
      last.is_final = true;
      this.sendJson(last);
    }
    if (round.wantsAck) {
      this.sendJson(endAckMessage({ mode: finalMode, wavName: s.wavName, ...(round.error !== null ? { error: round.error } : {}) }));
    }
    if (this.st === "draining" && !this.rounds.some((r) => r.eoiSent)) this.fail("SHUTTING_DOWN");
  }

  private onWorkerEnded(s: StatusObject): void {
    if (this.st === "closed") return;
    const code: ErrorCode = s.code === GrpcStatus.OK ? "WORKER_UNAVAILABLE" : errorCodeForGrpcStatus(s.code);
    this.log.warn({ grpc_code: s.code, code }, "worker call ended");
    if (ERRORS[code].retryable && this.failover()) return;
    if (s.code === GrpcStatus.OK) {
      this.fail("WORKER_UNAVAILABLE", "the recognition worker ended the session");
      return;
    }
    this.fail(code, s.details !== "" && code === "WORKER_REJECTED" ? `the worker rejected the input: ${s.details}` : undefined);
  }

  /**
   * Re-opens the session on another worker and replays the audio since the
   * last delivered final (StreamingConfig.resume tells the new worker where
   * the session timeline stands and how many segments the client has), then
   * repeats the END_OF_INPUT of every round still waiting for its
   * acknowledgement. Returns false when that is impossible (no other worker,
   * replay buffer overflowed, too many failovers).
   */
  private failover(): boolean {
    if (this.st !== "streaming" && this.st !== "draining") return false;
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
    this.attach(next);
    this.log.warn({ failover: this.failovers, replay_ms: Math.round(this.replay.audioMs - snap.audioOffsetMs), rounds: this.rounds.length }, "failing over to another worker");
    // The new worker re-decodes the open segment: dedupe its partials against what was sent.
    this.pendingPartial = null;
    this.replayDeltas = this.segDeltas === "" ? null : "";
    this.sentWorkerConfig = null;
    const pending = this.rounds;
    const firstStart = pending.length > 0 ? pending[0]!.startMs : this.replay.audioMs;
    const chunks = snap.chunks.filter((c) => c.startMs >= firstStart);
    this.resumeNext = {
      audioOffsetMs: Math.round(chunks[0]?.startMs ?? this.replay.audioMs),
      finalizedSegments: snap.finalizedSegments,
    };
    // With no round in flight, the next round's config carries the resume state.
    for (const r of pending) {
      // An offline file is sent at its end of input, which will carry the resume state itself.
      if (!r.eoiSent && isFileMode(r.settings)) break;
      this.writeWorkerConfigIfNeeded(r.settings);
      for (const c of chunks) {
        if (c.startMs < r.startMs || (r.eoiSent && c.startMs >= r.eoiAtMs)) continue;
        this.write({ streamingRequest: { $case: "audio", value: { pcm16le: c.pcm, sampleRateHz: c.sampleRateHz } } });
      }
      if (r.eoiSent) this.write({ streamingRequest: { $case: "control", value: { type: ControlType.CONTROL_TYPE_END_OF_INPUT } } });
    }
    return true;
  }

  // -------------------------------------------------------------------------
  // output and lifecycle

  private sendJson(m: ServerMessage): void {
    if (this.d.socket.readyState !== 1) return;
    this.d.socket.send(JSON.stringify(m));
  }

  private sendError(code: ErrorCode, message: string, s: Settings = this.settings): void {
    this.log.info({ code }, "client error");
    this.sendJson(errorMessage({ mode: finalModeOf(s), wavName: s.wavName, code, message }));
  }

  /** Sends the error, acknowledges pending is_end requests with it, and closes with the catalog's close code. */
  private fail(code: ErrorCode, detail?: string): void {
    if (this.st === "closed") return;
    const spec = ERRORS[code];
    const message = detail ?? spec.message;
    const s = this.rounds[0]?.settings ?? this.settings;
    this.sendError(code, message, s);
    for (const r of this.rounds) {
      if (r.wantsAck) {
        this.sendJson(endAckMessage({ mode: finalModeOf(r.settings), wavName: r.settings.wavName, error: `${code}: ${message}` }));
      }
    }
    this.rounds.length = 0;
    if (this.d.socket.readyState === 1) this.d.socket.close(spec.closeCode, code);
    this.close(code);
  }

  /** Ends the session (idempotent): cancels the worker call, releases the worker, clears timers. */
  close(reason: string): void {
    if (this.st === "closed") return;
    this.st = "closed";
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    if (this.lifeTimer !== null) clearTimeout(this.lifeTimer);
    const call = this.call;
    this.call = null;
    if (call !== null) call.cancel();
    this.lease?.release();
    this.backlog.length = 0;
    this.log.info(
      { reason, seconds: (Date.now() - this.startedAt) / 1000, audio_ms: Math.round(this.replay.audioMs), ...this.stats },
      "session closed",
    );
    this.d.onClosed?.(this);
  }

  /**
   * Records client activity. One timer per session checks the idle limit
   * lazily, instead of re-creating a timer per frame (thousands of frames a
   * second per gateway core).
   */
  private armIdle(): void {
    this.lastActivity = Date.now();
    if (this.idleTimer === null) this.scheduleIdleCheck(this.d.limits.idleTimeoutSeconds * 1000);
  }

  private scheduleIdleCheck(ms: number): void {
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      if (this.st === "closed") return;
      const limit = this.d.limits.idleTimeoutSeconds * 1000;
      const idle = Date.now() - this.lastActivity;
      // A client waiting for results of an ended round is not idle.
      if (idle < limit) this.scheduleIdleCheck(Math.max(10, limit - idle));
      else if (this.rounds.some((r) => r.eoiSent)) this.scheduleIdleCheck(limit);
      else this.fail("IDLE_TIMEOUT");
    }, ms);
    this.idleTimer.unref();
  }
}

// ---------------------------------------------------------------------------
// pure helpers

function defaultSettings(limits: SessionLimits): Settings {
  return {
    kind: "2pass",
    wavName: "microphone",
    wavFormat: "pcm",
    audioFs: 16000,
    itn: true,
    language: "",
    chunkSize: [5, 10, 5],
    hotwords: [],
    isFinalMode: limits.isFinalMode,
    fullHypothesis: false,
  };
}

/**
 * Applies a client message to the settings. The first config also decides
 * the default mode (absent mode: "2pass", or "offline" when wav_format is
 * not pcm, as the C++ offline client expects). Later configs update
 * wav_name, mode, itn, audio_fs, wav_format, language and the extensions;
 * hotwords and chunk_size persist unless sent again.
 */
function applyConfig(prev: Settings, m: ClientMessage, limits: SessionLimits, first: boolean): Settings {
  const s: Settings = { ...prev };
  if (m.wav_name != null) s.wavName = m.wav_name;
  if (m.wav_format != null && m.wav_format !== "") s.wavFormat = m.wav_format;
  if (m.audio_fs != null) s.audioFs = m.audio_fs;
  if (m.itn != null) s.itn = m.itn;
  if (m.svs_lang != null) s.language = m.svs_lang.toLowerCase() === "auto" ? "" : m.svs_lang;
  if (m.chunk_size != null) s.chunkSize = m.chunk_size;
  if (m.is_final_mode != null) s.isFinalMode = m.is_final_mode;
  if (m.full_hypothesis != null) s.fullHypothesis = m.full_hypothesis;
  if (m.hotwords != null) s.hotwords = parseHotwords(m.hotwords, limits);
  if (m.mode != null) {
    s.kind = m.mode === "offline" ? "offline" : m.mode === "online" && limits.onlineMode === "strict" ? "online" : "2pass";
  } else if (first && s.wavFormat.toLowerCase() !== "pcm") {
    s.kind = "offline";
  }
  return s;
}

/** Offline mode with a container format: bytes are a whole file, decoded at end of input. */
function isFileMode(s: Settings): boolean {
  return s.kind === "offline" && s.wavFormat.toLowerCase() !== "pcm";
}

function finalModeOf(s: Settings): OutputMode {
  return s.kind === "offline" ? "offline" : s.kind === "online" ? "online" : "2pass-offline";
}

function workerConfig(sessionId: string, s: Settings): StreamingConfig {
  return {
    sessionId,
    wavName: s.wavName,
    mode:
      s.kind === "offline"
        ? RecognitionMode.RECOGNITION_MODE_OFFLINE
        : s.kind === "online"
          ? RecognitionMode.RECOGNITION_MODE_ONLINE
          : RecognitionMode.RECOGNITION_MODE_TWO_PASS,
    sampleRateHz: s.audioFs,
    hotwords: s.hotwords.map((h) => ({ phrase: h.phrase, weight: h.weight })),
    itn: s.itn,
    language: s.language,
    partialIntervalMs: s.chunkSize[1] * 60,
  };
}
