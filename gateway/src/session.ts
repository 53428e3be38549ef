/**
 * One client connection: the FunASR session state machine. It only decides
 * WHEN things happen; each HOW lives in a collaborator it is given or builds:
 *
 *   settings.ts        what a config frame changes
 *   input-assembler.ts frames -> PCM (WAV sniffing) or a buffered offline file
 *   worker-link.ts     the worker call: backpressure, replay, failover
 *   output-policy.ts   worker results -> FunASR messages, chosen once per round
 *   serial-queue.ts    input steps in order while a file decodes
 *
 *   awaiting_config --config--> streaming --(shutdown)--> draining --> closed
 *          \___________________________\______________(any fatal error, socket close)__/
 *
 * Within `streaming`, the connection runs speaking rounds: audio (or the
 * first end of input) opens a round, `{"is_speaking": false}` (or
 * `is_finished`) ends it with an END_OF_INPUT; the worker's acknowledgement
 * closes it. Worker output belongs to the oldest open round (rounds are
 * acknowledged in order) and is delivered by that round's policy, so a client
 * that sends the next config (new wav_name, mode) before the previous round's
 * finals arrived still gets each final under the right name and mode.
 *
 * Every close path goes through close(), which is idempotent, cancels the
 * worker call and releases the placement.
 */
import { randomUUID } from "node:crypto";
import { EventEmitter } from "node:events";
import type { Logger } from "pino";
import type { FileDecoder, Pcm16 } from "./audio.js";
import { ERRORS, GatewayError, type ErrorCode } from "./errors.js";
import { InputAssembler } from "./input-assembler.js";
import { finalModeOf, outputPolicyFor, type OutputPolicy, type OutputSink } from "./output-policy.js";
import { endAckMessage, errorMessage, parseClientMessage, type OutputMode, type ServerMessage } from "./protocol.js";
import { SerialQueue } from "./serial-queue.js";
import { applyConfig, defaultSettings, isFileMode, workerConfig, type Settings, type SettingsPolicy } from "./settings.js";
import { WorkerLink } from "./worker-link.js";
import type { WorkerLease, WorkerSource } from "./workers.js";
import type { WriteCoalescer } from "./write-coalescer.js";

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
export interface SessionLimits extends SettingsPolicy {
  /** Largest binary frame. */
  maxFrameBytes: number;
  /** Largest offline file. */
  maxFileBytes: number;
  /** Wall-clock limit of a connection, seconds. */
  maxSessionSeconds: number;
  /** Idle limit, seconds. */
  idleTimeoutSeconds: number;
  /** Audio kept for replay, seconds. */
  replayBufferSeconds: number;
  /** Audio written straight onto the worker call's HTTP/2 stream (default true; see call-writer.ts). */
  workerDirectWrites?: boolean;
  /** Worker responses read straight off the call's HTTP/2 stream (default true; see call-reader.ts). */
  workerDirectReads?: boolean;
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
  /** The process's audio coalescer for worker calls (write-coalescer.ts); absent: every frame written at once. */
  coalescer?: WriteCoalescer;
}

/** Lifecycle states (see module comment). */
export type SessionState = "awaiting_config" | "streaming" | "draining" | "closed";

/** Counters of one session, reported when it closes. */
export interface SessionStats {
  /** Binary frames received. */
  frames: number;
  /** Bytes of binary frames received. */
  bytes: number;
  /** Finals from the worker. */
  finals: number;
  /** Partials from the worker. */
  partials: number;
  /** Rounds ended by the client. */
  rounds: number;
}

/**
 * Events a session emits, for observers (metrics, tests); the session never
 * depends on anyone listening.
 */
export interface SessionEvents {
  /** The lifecycle state changed. */
  state: [to: SessionState, from: SessionState];
  /** The client was sent an error; `fatal` = the session closes. */
  clientError: [code: ErrorCode, fatal: boolean];
  /** A round was acknowledged by the worker, `ms` after its end of input. */
  roundDone: [info: { mode: OutputMode; ms: number; failed: boolean }];
  /** The worker call failed and was re-opened elsewhere. */
  failover: [info: { attempt: number; from: string; to: string; replayMs: number }];
  /** The worker produced a partial or a final for this session (before the output policy shapes it). */
  workerOutput: [kind: "partial" | "final"];
  /** The session closed (emitted once). */
  closed: [reason: string, stats: SessionStats];
}

/** One speaking round whose results are still (partly) to come. */
interface Round {
  /** Settings in force when the round opened (a later config does not change them). */
  settings: Settings;
  /** Delivers the round's results. */
  readonly policy: OutputPolicy;
  /** The worker was sent the round's config. */
  begun: boolean;
  /** END_OF_INPUT was sent; when (ms epoch). */
  endedAt: number | null;
  /** The client asked for the is_end acknowledgement. */
  wantsAck: boolean;
  /** Something failed in this round (the ack carries is_final false + error). */
  error: string | null;
}

/** Above this many queued bytes a client is slow: partials are merged instead of queued. */
const SLOW_CLIENT_BYTES = 256 * 1024;

/** One client connection (see module comment). */
export class Session extends EventEmitter<SessionEvents> {
  /** Opaque id, also sent to the worker as StreamingConfig.session_id. */
  readonly id: string = randomUUID();
  private st: SessionState = "awaiting_config";
  private readonly d: SessionDeps;
  private log: Logger;
  private settings: Settings;
  private readonly link: WorkerLink;
  private readonly input: InputAssembler;
  private readonly queue: SerialQueue;
  private readonly sink: OutputSink;
  /** The round receiving input, if one is open. */
  private inputRound: Round | null = null;
  /** Rounds whose results are still coming, oldest first (output maps to rounds[0]). */
  private readonly rounds: Round[] = [];
  private idleTimer: NodeJS.Timeout | null = null;
  private lastActivity = Date.now();
  private lifeTimer: NodeJS.Timeout | null = null;
  private readonly startedAt = Date.now();
  private readonly stats: SessionStats = { frames: 0, bytes: 0, finals: 0, partials: 0, rounds: 0 };

  /** Creates the session; it waits for the client's config. */
  constructor(deps: SessionDeps) {
    super();
    this.d = deps;
    this.settings = defaultSettings(deps.limits);
    this.log = deps.logger.child({ session: this.id });
    this.input = new InputAssembler(deps.limits);
    this.queue = new SerialQueue((e) => this.handleError(e));
    const socket = deps.socket;
    this.sink = {
      send: (m) => this.sendJson(m),
      congested: () => socket.bufferedAmount > SLOW_CLIENT_BYTES,
    };
    this.link = new WorkerLink({
      sessionId: this.id,
      workers: deps.workers,
      initialLease: deps.initialLease,
      replayBufferSeconds: deps.limits.replayBufferSeconds,
      directWrites: deps.limits.workerDirectWrites,
      directReads: deps.limits.workerDirectReads,
      ...(deps.coalescer !== undefined ? { coalescer: deps.coalescer } : {}),
      input: { pause: () => socket.pause?.(), resume: () => socket.resume?.() },
      logger: this.log,
    });
    this.wireLink();
    this.armIdle();
    this.lifeTimer = setTimeout(() => this.fail("SESSION_TOO_LONG"), deps.limits.maxSessionSeconds * 1000);
    this.lifeTimer.unref();
  }

  /** Current lifecycle state. */
  get state(): SessionState {
    return this.st;
  }

  /** The service mode of the settings now in force: `2pass` (also online served as 2pass), `online` or `offline`. */
  get mode(): Settings["kind"] {
    return this.settings.kind;
  }

  /** Handles one text frame from the client. */
  onText(text: string): void {
    if (this.st === "closed") return;
    this.armIdle();
    this.queue.run(() => this.handleText(text));
  }

  /** Handles one binary frame from the client (the buffer is kept for replay, never modified). */
  onBinary(data: Buffer): void {
    if (this.st === "closed") return;
    this.armIdle();
    if (!this.queue.idle) {
      this.queue.run(() => this.handleBinary(data));
      return;
    }
    // The per-frame common case: no step is pending, so run now without queueing a closure.
    try {
      this.handleBinary(data);
    } catch (e) {
      this.handleError(e);
    }
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
    if (!this.awaitingResults()) {
      this.fail("SHUTTING_DOWN");
      return;
    }
    this.setState("draining");
  }

  /** Closes with SHUTTING_DOWN even when results are pending (end of the grace period). */
  forceClose(): void {
    if (this.st !== "closed") this.fail("SHUTTING_DOWN");
  }

  // -------------------------------------------------------------------------
  // client input

  private handleText(text: string): void | Promise<void> {
    const msg = parseClientMessage(text);
    if (this.st === "awaiting_config") {
      this.settings = applyConfig(this.settings, msg, this.d.limits, true);
      this.link.open();
      this.setState("streaming");
      const s = this.settings;
      this.log.info({ mode: s.kind, audio_fs: s.audioFs, wav_format: s.wavFormat, hotword_count: s.hotwords.length }, "session configured");
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
    this.input.checkFrame(data);
    this.stats.frames++;
    this.stats.bytes += data.length;
    if (data.length === 0) return;
    if (isFileMode(this.settings)) {
      this.currentRound();
      this.input.fileFrame(data);
      return;
    }
    const pcm = this.input.pcmFrame(data, this.inputRound === null);
    if (pcm === null) return;
    if (pcm.headerRateHz !== null) this.settings = { ...this.settings, audioFs: pcm.headerRateHz };
    const round = this.currentRound();
    this.beginOnWorker(round);
    this.link.audio(pcm.pcm, round.settings.audioFs);
  }

  private async endOfInput(wantsAck: boolean): Promise<void> {
    const round = this.currentRound();
    round.wantsAck = round.wantsAck || wantsAck;
    this.inputRound = null;
    if (isFileMode(round.settings)) {
      const decoded = await this.decodeFile(round);
      if (this.st !== "streaming" && this.st !== "draining") return;
      if (decoded !== null) round.settings = { ...round.settings, audioFs: decoded.sampleRateHz };
      this.beginOnWorker(round);
      if (decoded !== null) this.link.audio(decoded.pcm, decoded.sampleRateHz);
    } else {
      this.beginOnWorker(round);
    }
    round.endedAt = Date.now();
    round.policy.inputEnded();
    this.stats.rounds++;
    this.link.endRound();
  }

  /** The offline file of `round`, decoded; null when empty or undecodable (the round still ends on the worker). */
  private async decodeFile(round: Round): Promise<Pcm16 | null> {
    const file = this.input.takeFile();
    if (file.length === 0) return null;
    try {
      return await this.d.decoder.decode(file, round.settings.wavFormat);
    } catch (e) {
      if (!(e instanceof GatewayError)) throw e;
      // Ending the round anyway keeps ordering and the final/ack guarantees.
      round.error = `${e.code}: ${e.message}`;
      this.sendError(e.code, e.message, round);
      return null;
    }
  }

  /** The round receiving input, opened (with the settings now in force) on first use. */
  private currentRound(): Round {
    if (this.inputRound !== null) return this.inputRound;
    const settings = this.settings;
    const round: Round = {
      settings,
      policy: outputPolicyFor(settings, this.sink),
      begun: false,
      endedAt: null,
      wantsAck: false,
      error: null,
    };
    this.inputRound = round;
    this.rounds.push(round);
    return round;
  }

  /** Sends the worker the round's config (the contract allows one directly after END_OF_INPUT). */
  private beginOnWorker(round: Round): void {
    if (round.begun) return;
    round.begun = true;
    this.link.beginRound(workerConfig(this.id, round.settings));
  }

  // -------------------------------------------------------------------------
  // worker output

  private wireLink(): void {
    const link = this.link;
    link.on("attached", (worker) => {
      this.log = this.d.logger.child({ session: this.id, wav_name: this.settings.wavName, worker });
    });
    link.on("partial", (p) => this.guard(() => {
      this.stats.partials++;
      this.emit("workerOutput", "partial");
      this.outputRound().policy.partial(p);
    }));
    link.on("final", (f) => this.guard(() => {
      this.stats.finals++;
      this.emit("workerOutput", "final");
      const tokens = f.tokens.map((t) => ({ text: t.text, startMs: t.startMs, endMs: t.endMs }));
      this.outputRound().policy.final({ text: f.text, tokens });
    }));
    link.on("endOfInput", () => this.guard(() => this.onRoundAcknowledged()));
    link.on("workerError", (e) => this.guard(() => {
      const round = this.outputRound();
      round.error = `${e.code}: ${e.message}`;
      this.log.warn({ code: e.code, retryable: e.retryable, segment: e.segmentId }, "worker reported an error");
      this.sendError(e.code, e.message || ERRORS[e.code].message, round);
    }));
    link.on("failover", (info) => {
      this.log.warn({ failover: info.attempt, from: info.from, to: info.to, replay_ms: info.replayMs, rounds: this.rounds.length }, "failing over to another worker");
      this.emit("failover", info);
    });
    link.on("failed", (code, detail) => this.fail(code, detail));
  }

  /** Runs a worker-event handler; a throw ends the session like any other error. */
  private guard(fn: () => void): void {
    if (this.st === "closed") return;
    try {
      fn();
    } catch (e) {
      this.handleError(e);
    }
  }

  /** The round that worker output belongs to (the oldest unacknowledged). */
  private outputRound(): Round {
    // Output without a round (a worker talking before any input): attribute it to a fresh one.
    return this.rounds[0] ?? this.currentRound();
  }

  private onRoundAcknowledged(): void {
    const round = this.rounds.shift();
    if (round === undefined) return;
    if (this.inputRound === round) this.inputRound = null;
    round.policy.endOfInput();
    const mode = round.policy.finalMode;
    if (round.wantsAck) {
      this.sendJson(endAckMessage({ mode, wavName: round.settings.wavName, ...(round.error !== null ? { error: round.error } : {}) }));
    }
    this.emit("roundDone", { mode, ms: round.endedAt === null ? 0 : Date.now() - round.endedAt, failed: round.error !== null });
    if (this.st === "draining" && !this.awaitingResults()) this.fail("SHUTTING_DOWN");
  }

  /** Whether a round has ended on the client side and waits for its results. */
  private awaitingResults(): boolean {
    return this.rounds.some((r) => r.endedAt !== null);
  }

  // -------------------------------------------------------------------------
  // errors, output and lifecycle

  private handleError(e: unknown): void {
    if (e instanceof GatewayError) {
      if (e.spec.fatal) this.fail(e.code, e.message);
      else this.sendError(e.code, e.message);
      return;
    }
    this.log.error({ err: e }, "unexpected session error");
    this.fail("INTERNAL");
  }

  private sendJson(m: ServerMessage): void {
    if (this.d.socket.readyState !== 1) return;
    this.d.socket.send(JSON.stringify(m));
  }

  /** Sends an error in the mode and wav_name of `round` (default: the settings now in force). */
  private sendError(code: ErrorCode, message: string, round?: Round): void {
    this.log.info({ code }, "client error");
    this.emit("clientError", code, ERRORS[code].fatal);
    const mode = round?.policy.finalMode ?? finalModeOf(this.settings);
    const wavName = round?.settings.wavName ?? this.settings.wavName;
    this.sendJson(errorMessage({ mode, wavName, code, message }));
  }

  /** Sends the error, acknowledges pending is_end requests with it, and closes with the catalog's close code. */
  private fail(code: ErrorCode, detail?: string): void {
    if (this.st === "closed") return;
    const spec = ERRORS[code];
    const message = detail ?? spec.message;
    this.sendError(code, message, this.rounds[0]);
    for (const r of this.rounds) {
      if (r.wantsAck) {
        this.sendJson(endAckMessage({ mode: r.policy.finalMode, wavName: r.settings.wavName, error: `${code}: ${message}` }));
      }
    }
    this.rounds.length = 0;
    if (this.d.socket.readyState === 1) this.d.socket.close(spec.closeCode, code);
    this.close(code);
  }

  /** Ends the session (idempotent): cancels the worker call, releases the worker, clears timers. */
  close(reason: string): void {
    if (this.st === "closed") return;
    this.setState("closed");
    if (this.idleTimer !== null) clearTimeout(this.idleTimer);
    if (this.lifeTimer !== null) clearTimeout(this.lifeTimer);
    this.queue.stop();
    const audioMs = Math.round(this.link.audioMs);
    this.link.close();
    this.log.info({ reason, seconds: (Date.now() - this.startedAt) / 1000, audio_ms: audioMs, ...this.stats }, "session closed");
    this.d.onClosed?.(this);
    this.emit("closed", reason, this.stats);
  }

  private setState(to: SessionState): void {
    const from = this.st;
    this.st = to;
    this.emit("state", to, from);
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
      else if (this.awaitingResults()) this.scheduleIdleCheck(limit);
      else this.fail("IDLE_TIMEOUT");
    }, ms);
    this.idleTimer.unref();
  }
}
