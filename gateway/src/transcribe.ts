/**
 * Whole-file transcription through a worker: the offline mode's worker path
 * (one StreamingRecognize call with mode OFFLINE, the audio, END_OF_INPUT)
 * for callers that hold the whole audio at once, such as the
 * OpenAI-compatible HTTP endpoint.
 *
 * Why its own module and not a Session: a Session is a WebSocket state
 * machine (rounds, deltas, replay); a request/response caller needs only the
 * worker's VAD segments and finals. Failover is therefore simple here: the
 * whole audio is still at hand, so a retryable failure before the
 * acknowledgement just runs the request again on another worker.
 */
import { status as GrpcStatus, type StatusObject } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { ControlType, RecognitionMode, type StreamingRecognizeRequest, type StreamingRecognizeResponse } from "./gen/asr/v1/asr.js";
import type { Hotword, TimedToken } from "./protocol.js";
import type { RecognizeCall, WorkerLease, WorkerSource } from "./workers.js";

/** One VAD segment's final, on the audio's timeline. */
export interface TranscriptSegment {
  /** Segment id as the worker numbered it (0, 1, ...). */
  id: number;
  /** The segment's transcript. */
  text: string;
  /** Start in ms. */
  startMs: number;
  /** End in ms. */
  endMs: number;
  /** Per-token times when the engine has them; otherwise empty. */
  tokens: TimedToken[];
}

/** What a transcription returns. */
export interface Transcript {
  /** Finals in segment order. */
  segments: TranscriptSegment[];
  /** Length of the audio the worker received, ms. */
  durationMs: number;
  /** The worker that answered (for logs). */
  worker: string;
}

/** How to recognize the audio. */
export interface TranscribeOptions {
  /** Name for worker logs (the file name). */
  name: string;
  /** Opaque id, sent as StreamingConfig.session_id so that logs join. */
  requestId: string;
  /** Sample rate of `pcm`: 8000 or 16000. */
  sampleRateHz: number;
  /** Phrases to prefer. */
  hotwords: readonly Hotword[];
  /** Inverse text normalization. */
  itn: boolean;
  /** Model language name or code; "" lets the model decide. */
  language: string;
}

/** Why a transcription failed; `kind` decides the HTTP status at the edge. */
export class TranscribeError extends Error {
  /**
   * `unavailable`: no worker could take or finish the request (retry later);
   * `rejected`: the worker refused the input (the request is wrong);
   * `failed`: recognition failed.
   */
  readonly kind: "unavailable" | "rejected" | "failed";

  /** Creates the error. */
  constructor(kind: "unavailable" | "rejected" | "failed", message: string) {
    super(message);
    this.name = "TranscribeError";
    this.kind = kind;
  }
}

/** Largest AudioChunk sent (the contract allows 4 MiB; the session uses the same). */
const MAX_CHUNK_BYTES = 1024 * 1024;
/** Workers tried for one request before giving up. */
const MAX_ATTEMPTS = 3;
/** Worker call statuses after which another worker may succeed (asr.proto: call-ending statuses). */
const RETRYABLE = new Set<number>([GrpcStatus.RESOURCE_EXHAUSTED, GrpcStatus.UNAVAILABLE, GrpcStatus.INTERNAL, GrpcStatus.UNKNOWN, GrpcStatus.ABORTED]);

/** Dependencies of a transcription. */
export interface TranscribeDeps {
  /** Worker placement. */
  workers: WorkerSource;
  /** Request-scoped logger. */
  logger: Logger;
}

/**
 * Recognizes `pcm` (16-bit mono) in offline mode. `firstLease`, when given,
 * is used for the first attempt (the caller acquired it to refuse early with
 * 503). `signal` aborts the call (the HTTP client went away).
 */
export async function transcribe(
  deps: TranscribeDeps,
  pcm: Buffer,
  opts: TranscribeOptions,
  firstLease: WorkerLease | null,
  signal?: AbortSignal,
): Promise<Transcript> {
  const failed = new Set<string>();
  let lease = firstLease;
  let lastError = "no recognition worker is available";
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    lease ??= deps.workers.acquire(failed);
    if (lease === null) break;
    try {
      return await runOnce(lease, pcm, opts, signal);
    } catch (e) {
      if (!(e instanceof RetryableFailure)) throw e;
      deps.logger.warn({ worker: lease.address, grpc_code: e.code, attempt }, "transcription failed on a worker; trying another");
      failed.add(lease.address);
      lastError = e.message;
    } finally {
      lease.release();
    }
    lease = null;
  }
  throw new TranscribeError("unavailable", lastError);
}

/** A failure another worker may not have. */
class RetryableFailure extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

function runOnce(lease: WorkerLease, pcm: Buffer, opts: TranscribeOptions, signal?: AbortSignal): Promise<Transcript> {
  return new Promise((resolve, reject) => {
    const call: RecognizeCall = lease.open();
    const segments: TranscriptSegment[] = [];
    let durationMs = 0;
    let acked = false;
    let inferenceError: string | null = null;
    const onAbort = (): void => call.cancel();
    signal?.addEventListener("abort", onAbort, { once: true });

    call.on("data", (r: StreamingRecognizeResponse) => {
      const x = r.streamingResponse;
      if (x === undefined) return;
      if (x.$case === "final") {
        const f = x.value;
        segments.push({
          id: f.segmentId,
          text: f.text,
          startMs: Number(f.startMs),
          endMs: Number(f.endMs),
          tokens: f.tokens.map((t) => ({ text: t.text, startMs: Number(t.startMs), endMs: Number(t.endMs) })),
        });
      } else if (x.$case === "endOfInput") {
        acked = true;
        durationMs = Number(x.value.audioReceivedMs);
      } else if (x.$case === "error") {
        // A segment without its final: the transcript would silently miss words.
        inferenceError ??= x.value.message || "recognition of a segment failed";
      }
    });
    call.on("error", () => {
      // The status event below handles every ending.
    });
    call.on("status", (s: StatusObject) => {
      signal?.removeEventListener("abort", onAbort);
      if (signal?.aborted) {
        reject(new TranscribeError("failed", "the request was aborted"));
      } else if (s.code === GrpcStatus.OK && acked) {
        if (inferenceError !== null) reject(new TranscribeError("failed", inferenceError));
        else resolve({ segments: segments.sort((a, b) => a.startMs - b.startMs), durationMs, worker: lease.address });
      } else if (s.code === GrpcStatus.INVALID_ARGUMENT || s.code === GrpcStatus.FAILED_PRECONDITION || s.code === GrpcStatus.OUT_OF_RANGE) {
        reject(new TranscribeError("rejected", `the recognition worker rejected the input: ${s.details}`));
      } else if (RETRYABLE.has(s.code) || s.code === GrpcStatus.OK) {
        reject(new RetryableFailure(s.code, `the recognition worker failed (${s.details || `gRPC status ${s.code}`})`));
      } else {
        reject(new TranscribeError("failed", `the recognition worker failed (${s.details || `gRPC status ${s.code}`})`));
      }
    });

    void writeAll(call, pcm, opts).catch(() => call.cancel());
  });
}

/** Writes config, audio (respecting the call's flow control) and END_OF_INPUT, then half-closes. */
async function writeAll(call: RecognizeCall, pcm: Buffer, opts: TranscribeOptions): Promise<void> {
  const write = async (req: StreamingRecognizeRequest): Promise<void> => {
    if (!call.write(req)) await new Promise<void>((r) => call.once("drain", () => r()));
  };
  await write({
    streamingRequest: {
      $case: "config",
      value: {
        sessionId: opts.requestId,
        wavName: opts.name,
        mode: RecognitionMode.RECOGNITION_MODE_OFFLINE,
        sampleRateHz: opts.sampleRateHz,
        hotwords: opts.hotwords.map((h) => ({ phrase: h.phrase, weight: h.weight })),
        itn: opts.itn,
        language: opts.language,
        partialIntervalMs: 0,
      },
    },
  });
  for (let off = 0; off < pcm.length; off += MAX_CHUNK_BYTES) {
    await write({ streamingRequest: { $case: "audio", value: { pcm16le: pcm.subarray(off, Math.min(pcm.length, off + MAX_CHUNK_BYTES)), sampleRateHz: opts.sampleRateHz } } });
  }
  await write({ streamingRequest: { $case: "control", value: { type: ControlType.CONTROL_TYPE_END_OF_INPUT } } });
  call.end();
}
