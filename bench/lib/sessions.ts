/**
 * One benchmark session = one client stream, either a FunASR WebSocket session
 * through the gateway or a direct asr.v1 StreamingRecognize call to a worker.
 * Both record the same Trace: when every frame was sent and when every result
 * arrived, so that metrics are computed identically for both paths.
 */
import { credentials } from "@grpc/grpc-js";
import WebSocket from "ws";
// The gateway's own schema of server messages: the load also checks protocol conformance.
import { ServerMessageSchema } from "../../gateway/src/protocol.js";
import { createLogger } from "../../gateway/src/log.js";
import { WorkerConnections } from "../../gateway/src/worker-connections.js";
import { CallWriter } from "../../gateway/src/call-writer.js";
import { MAX_RECEIVE_MESSAGE_BYTES, type RecognizeCall } from "../../gateway/src/workers.js";
import { FastAsrClient, framedAudioRequest, framedRequest, type FramedRequest } from "../../gateway/src/wire.js";
import { DEFAULT_COALESCE_DELAY, WriteCoalescer, type CoalesceDelay } from "../../gateway/src/write-coalescer.js";
import {
  type AsrClient,
  ControlType,
  RecognitionMode,
  type StreamingRecognizeResponse,
} from "../../gateway/src/gen/asr/v1/asr.js";

export type EventKind = "partial" | "final" | "start" | "end" | "ack" | "error";

export interface TraceEvent {
  t: number; // performance.now() ms at receipt
  kind: EventKind;
  seg?: number; // direct only (segment id)
  audioEndMs?: number; // partial: audio covered (direct only)
  startMs?: number; // final (direct only)
  endMs?: number; // final (direct only); speech event offset for start/end
  reason?: number; // final endpoint reason (direct only)
  textLen?: number;
  /** Final text (finals only): exactly-once checks compare it with a direct reference run. */
  text?: string;
  /** ws finals: [first token start, last token end] in ms of session audio, from stamp_sents. */
  span?: [number, number];
  isFinal?: boolean; // ws: is_final flag
  afterStop?: boolean;
}

export interface Trace {
  idx: number;
  /** wav_name sent in the config (`${tag}-${idx}`). */
  wavName: string;
  /** Byte length of each frame sent (for joining with worker-side receipt traces). */
  frameBytes: Uint32Array;
  file: string;
  path: "ws" | "grpc";
  frameMs: number;
  audioMs: number;
  /** Time the first frame was due (the session's audio clock origin). */
  t0: number;
  /** Send time of frame j (audio [j*frameMs, (j+1)*frameMs)). */
  sentAt: Float64Array;
  events: TraceEvent[];
  connectMs?: number;
  stopAt?: number;
  ackAt?: number;
  closedAt?: number;
  errors: string[];
  maxBufferedBytes: number;
}

export interface BenchSession {
  readonly trace: Trace;
  /** Opens the stream and sends the config. */
  open(): Promise<void>;
  sendFrame(j: number, frame: Buffer, now: number): void;
  /** End of input; resolves when the end-of-input acknowledgement (or close/timeout) came. */
  stop(timeoutMs: number): Promise<void>;
  close(): void;
}

export let TAG = "bench";
export function setTag(tag: string): void {
  TAG = tag;
}

function newTrace(idx: number, file: string, path: "ws" | "grpc", frameMs: number, nFrames: number, audioMs: number): Trace {
  return {
    idx,
    wavName: `${TAG}-${idx}`,
    frameBytes: new Uint32Array(nFrames),
    file,
    path,
    frameMs,
    audioMs,
    t0: 0,
    sentAt: new Float64Array(nFrames).fill(Number.NaN),
    events: [],
    errors: [],
    maxBufferedBytes: 0,
  };
}

// ---------------------------------------------------------------- WebSocket

export interface WsOptions {
  url: string;
  mode: "2pass" | "online" | "offline";
  chunkSize: [number, number, number];
  itn: boolean;
  hotwords: string;
  connectTimeoutMs: number;
  /** Config extension: full hypotheses instead of deltas (every worker partial is forwarded). */
  fullHypothesis: boolean;
}

/**
 * Resolves once the end-of-input acknowledgement arrives (at once when `done`),
 * or after `timeoutMs` with the miss recorded in the trace. `install` receives
 * the function the message handler calls when the acknowledgement comes.
 */
function waitForAck(trace: Trace, timeoutMs: number, done: boolean, install: (resolve: () => void) => void): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      trace.errors.push(`no end-of-input acknowledgement within ${timeoutMs} ms`);
      resolve();
    }, timeoutMs);
    const finish = (): void => {
      clearTimeout(timer);
      resolve();
    };
    install(finish);
    if (done) finish();
  });
}

export class WsSession implements BenchSession {
  readonly trace: Trace;
  private ws: WebSocket | undefined;
  private stopped = false;
  private ackResolve: (() => void) | undefined;

  constructor(idx: number, file: string, frameMs: number, nFrames: number, audioMs: number, private readonly opt: WsOptions) {
    this.trace = newTrace(idx, file, "ws", frameMs, nFrames, audioMs);
  }

  open(): Promise<void> {
    const t = performance.now();
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.opt.url, {
        perMessageDeflate: false,
        handshakeTimeout: this.opt.connectTimeoutMs,
        // An all-zero mask lets ws skip masking on the client side (a loopback benchmark has no
        // proxy to protect); the server still unmasks as for any client, so its cost is unchanged.
        generateMask: (mask: Buffer) => void mask.fill(0),
      });
      this.ws = ws;
      ws.binaryType = "nodebuffer";
      ws.on("open", () => {
        this.trace.connectMs = performance.now() - t;
        ws.send(
          JSON.stringify({
            mode: this.opt.mode,
            wav_name: this.trace.wavName,
            wav_format: "pcm",
            audio_fs: 16000,
            is_speaking: true,
            chunk_size: this.opt.chunkSize,
            chunk_interval: 10,
            itn: this.opt.itn,
            hotwords: this.opt.hotwords,
            ...(this.opt.fullHypothesis ? { full_hypothesis: true } : {}),
          }),
        );
        resolve();
      });
      ws.on("message", (data, isBinary) => this.onMessage(data as Buffer, isBinary));
      ws.on("error", (err) => {
        this.trace.errors.push(`ws error: ${err.message}`);
        reject(err);
        this.ackResolve?.();
      });
      ws.on("close", (code, reason) => {
        this.trace.closedAt = performance.now();
        if (!this.stopped || this.trace.ackAt === undefined) {
          if (!(this.stopped && this.trace.ackAt !== undefined)) {
            this.trace.errors.push(`ws closed early: ${code} ${reason.toString()}`);
          }
        }
        this.ackResolve?.();
      });
    });
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    const t = performance.now();
    if (isBinary) {
      this.trace.errors.push("unexpected binary message");
      return;
    }
    let m: Record<string, unknown>;
    try {
      m = JSON.parse(data.toString("utf8")) as Record<string, unknown>;
    } catch {
      this.trace.errors.push("non-JSON message");
      return;
    }
    const afterStop = this.stopped;
    if (!ServerMessageSchema.safeParse(m).success) this.trace.errors.push(`malformed server message: ${data.toString("utf8").slice(0, 200)}`);
    const text = typeof m.text === "string" ? m.text : "";
    if (m.error !== undefined) {
      this.trace.events.push({ t, kind: "error", afterStop });
      this.trace.errors.push(`server error: ${JSON.stringify(m.error)} ${JSON.stringify(m.code ?? "")}`);
    }
    if (m.is_end === true) {
      this.trace.events.push({ t, kind: "ack", afterStop });
      this.trace.ackAt = t;
      this.ackResolve?.();
      return;
    }
    const mode = m.mode;
    if (mode === "2pass-online" || mode === "online") {
      this.trace.events.push({ t, kind: "partial", textLen: text.length, isFinal: m.is_final === true, afterStop });
    } else if (mode === "2pass-offline" || mode === "offline") {
      const st = Array.isArray(m.stamp_sents) ? (m.stamp_sents as { start: number; end: number }[]) : [];
      const span: [number, number] | undefined = st.length ? [st[0]!.start, st[st.length - 1]!.end] : undefined;
      this.trace.events.push({ t, kind: "final", textLen: text.length, text, span, isFinal: m.is_final === true, afterStop });
    }
  }

  sendFrame(j: number, frame: Buffer, now: number): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (j === 0) this.trace.t0 = now;
    ws.send(frame);
    this.trace.sentAt[j] = now;
    this.trace.frameBytes[j] = frame.length;
    if (ws.bufferedAmount > this.trace.maxBufferedBytes) this.trace.maxBufferedBytes = ws.bufferedAmount;
  }

  stop(timeoutMs: number): Promise<void> {
    const ws = this.ws;
    this.stopped = true;
    if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.resolve();
    this.trace.stopAt = performance.now();
    ws.send(JSON.stringify({ is_speaking: false, is_end: true }));
    return waitForAck(this.trace, timeoutMs, this.trace.ackAt !== undefined, (fn) => (this.ackResolve = fn));
  }

  close(): void {
    this.stopped = true;
    try {
      this.ws?.close(1000);
    } catch {
      /* already closed */
    }
  }
}

// ---------------------------------------------------------------- gRPC

export interface GrpcOptions {
  partialIntervalMs: number;
  mode: RecognitionMode;
}

/** What a session needs to open its call, and the coalescer its writes share with the other sessions. */
export type CallOpener = Pick<AsrClient, "streamingRecognize"> & { coalescer?: WriteCoalescer };

/**
 * Channel options as the gateway's (workers.ts): retries off, so that requests go straight onto
 * each call's HTTP/2 stream through the gateway's own CallWriter and, past the coalescer, in the
 * same grouping the gateway sends them in.
 */
const CHANNEL_OPTIONS = { "grpc.enable_retries": 0, "grpc.max_receive_message_length": MAX_RECEIVE_MESSAGE_BYTES };

/**
 * A pool of channels to one worker; sessions are spread round-robin. With one
 * channel (the default) sessions are placed the way a gateway places them:
 * through WorkerConnections, so a worker with several front processes gets its
 * streams spread over them (extra connections, least-loaded front per stream).
 */
export class GrpcPool {
  private clients: AsrClient[] = [];
  private next = 0;
  private spread: WorkerConnections | undefined;
  /** One per pool, as one per gateway process: every session's audio is grouped into the same loop turns. */
  private readonly coalescer: WriteCoalescer;
  /** `coalesce`: the gateway's WORKER_WRITE_COALESCE_MS (write-coalescer.ts; 0 = every request written at once). */
  constructor(address: string, channels: number, coalesce: CoalesceDelay = DEFAULT_COALESCE_DELAY) {
    this.coalescer = new WriteCoalescer({ delay: coalesce });
    for (let i = 0; i < channels; i++) {
      // A distinct option per client forces a distinct channel (grpc-js shares identical ones).
      this.clients.push(
        new FastAsrClient(address, credentials.createInsecure(), { ...CHANNEL_OPTIONS, "bench.channel": i } as Record<string, unknown>),
      );
    }
    if (channels === 1) {
      const extra = (): AsrClient =>
        new FastAsrClient(address, credentials.createInsecure(), { ...CHANNEL_OPTIONS, "grpc.use_local_subchannel_pool": 1 });
      this.spread = new WorkerConnections(this.clients[0]!, extra, createLogger("silent"), { loadIntervalMs: 200 });
      this.spread.start();
    }
  }
  /** Waits (up to timeoutMs) until connections reach every front process of the worker. */
  async settle(timeoutMs = 5000): Promise<void> {
    const s = this.spread;
    if (s === undefined) return;
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && (s.frontCount() === 0 || s.coveredFronts().length < s.frontCount())) {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  pick(): CallOpener {
    const s = this.spread;
    if (s !== undefined) return { streamingRecognize: () => s.streamingRecognize(), coalescer: this.coalescer };
    const c = this.clients[this.next % this.clients.length]!;
    this.next++;
    return { streamingRecognize: () => c.streamingRecognize(), coalescer: this.coalescer };
  }
  close(): void {
    this.spread?.close();
    for (const c of this.clients) c.close();
  }
}

export class GrpcSession implements BenchSession {
  readonly trace: Trace;
  private call: RecognizeCall | undefined;
  /** Writes as the gateway's worker link does (call-writer.ts, coalesced by the pool's WriteCoalescer). */
  private writer: CallWriter | undefined;
  private stopped = false;
  private ackResolve: (() => void) | undefined;
  private ended = false;

  constructor(
    idx: number,
    file: string,
    frameMs: number,
    nFrames: number,
    audioMs: number,
    private readonly client: CallOpener,
    private readonly opt: GrpcOptions,
  ) {
    this.trace = newTrace(idx, file, "grpc", frameMs, nFrames, audioMs);
  }

  open(): Promise<void> {
    const t = performance.now();
    // FastAsrClient's serializer passes framed requests' bytes through (the writer's grpc-js fallback).
    const call = this.client.streamingRecognize() as RecognizeCall;
    this.call = call;
    // The load client ignores backpressure (as before: grpc-js buffered without bound too).
    const writer = new CallWriter(call, () => {}, undefined, this.client.coalescer);
    this.writer = writer;
    call.on("status", () => writer.close());
    call.on("data", (r: StreamingRecognizeResponse) => this.onResponse(r));
    call.on("error", (err: Error & { code?: number }) => {
      if (!(this.stopped && this.trace.ackAt !== undefined)) this.trace.errors.push(`grpc status ${err.code}: ${err.message}`);
      this.ended = true;
      this.ackResolve?.();
    });
    call.on("end", () => {
      this.ended = true;
      this.trace.closedAt = performance.now();
      this.ackResolve?.();
    });
    writer.write(framedRequest({
      streamingRequest: {
        $case: "config",
        value: {
          sessionId: this.trace.wavName,
          wavName: this.trace.wavName,
          mode: this.opt.mode,
          sampleRateHz: 16000,
          hotwords: [],
          itn: true,
          language: "",
          partialIntervalMs: this.opt.partialIntervalMs,
        },
      },
    }));
    this.trace.connectMs = performance.now() - t;
    return Promise.resolve();
  }

  private onResponse(r: StreamingRecognizeResponse): void {
    const t = performance.now();
    const afterStop = this.stopped;
    const x = r.streamingResponse;
    if (!x) return;
    switch (x.$case) {
      case "partial":
        this.trace.events.push({ t, kind: "partial", seg: x.value.segmentId, audioEndMs: x.value.audioEndMs, textLen: x.value.delta.length, afterStop });
        break;
      case "final":
        this.trace.events.push({
          t,
          kind: "final",
          seg: x.value.segmentId,
          startMs: x.value.startMs,
          endMs: x.value.endMs,
          reason: x.value.reason,
          textLen: x.value.text.length,
          text: x.value.text,
          afterStop,
        });
        break;
      case "speechEvent":
        this.trace.events.push({ t, kind: x.value.type === 1 ? "start" : "end", seg: x.value.segmentId, endMs: x.value.offsetMs, afterStop });
        break;
      case "endOfInput":
        this.trace.events.push({ t, kind: "ack", afterStop });
        this.trace.ackAt = t;
        this.ackResolve?.();
        break;
      case "error":
        this.trace.events.push({ t, kind: "error", afterStop });
        this.trace.errors.push(`worker error ${x.value.code}: ${x.value.message}`);
        break;
    }
  }

  sendFrame(j: number, frame: Buffer, now: number): void {
    if (!this.call || this.ended) return;
    if (j === 0) this.trace.t0 = now;
    this.writer!.write(framedAudioRequest(frame, 0), true);
    this.trace.sentAt[j] = now;
    this.trace.frameBytes[j] = frame.length;
  }

  stop(timeoutMs: number): Promise<void> {
    this.stopped = true;
    if (!this.call || this.ended) return Promise.resolve();
    this.trace.stopAt = performance.now();
    this.writer!.write(END_OF_INPUT);
    return waitForAck(this.trace, timeoutMs, this.trace.ackAt !== undefined || this.ended, (fn) => (this.ackResolve = fn));
  }

  close(): void {
    this.stopped = true;
    if (this.call && !this.ended) {
      this.call.end();
      // Give the worker a moment to close with OK; then cancel.
      setTimeout(() => this.call?.cancel(), 2000).unref();
    }
  }
}

const END_OF_INPUT: FramedRequest = framedRequest({
  streamingRequest: { $case: "control", value: { type: ControlType.CONTROL_TYPE_END_OF_INPUT } },
});

export { RecognitionMode };
