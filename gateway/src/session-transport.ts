/**
 * How a worker link's session reaches its worker: the one seam between
 * worker-link.ts (replay, failover, results) and the wire.
 *
 * Two implementations, chosen per placement by the worker pool (workers.ts):
 * `CallTransport` here — one StreamingRecognize call per session, written and
 * read straight on its HTTP/2 stream where grpc-js allows (call-writer.ts,
 * call-reader.ts, one StreamLocator for both) — for workers that do not serve
 * StreamingRecognizeMux; and a session of a shared mux call (worker-mux.ts)
 * for workers whose load report says `mux: true`. The link sees the same
 * protocol either way: requests in order, writes that return false while the
 * session cannot take more (then `onDrain` once), responses in order and
 * exactly one `onEnd` with a grpc-js-like status unless the link closed the
 * session itself.
 */
import type { StatusObject } from "@grpc/grpc-js";
import { CallReader, type ReaderPath } from "./call-reader.js";
import { StreamLocator } from "./call-stream.js";
import { CallWriter, type WriterPath } from "./call-writer.js";
import type { StreamingRecognizeResponse } from "./gen/asr/v1/asr.js";
import { framedAudioRequest, type FramedRequest } from "./wire.js";
import type { WriteCoalescer } from "./write-coalescer.js";
import type { RecognizeCall } from "./workers.js";

/** The status a session ended with (a grpc-js StatusObject's code and details). */
export type SessionStatus = Pick<StatusObject, "code" | "details">;

/** What a transport tells its link. */
export interface SessionHandlers {
  /** One response of the session, in order. */
  onResponse(r: StreamingRecognizeResponse): void;
  /** The session ended (once; never after close()). */
  onEnd(s: SessionStatus): void;
  /** Writing may go on after a write returned false (once per such write). */
  onDrain(): void;
}

/** How a transport writes, from the link's settings (WORKER_DIRECT_WRITES/READS, the process's coalescer). */
export interface SessionTransportOptions {
  /** Per-call: write straight onto the HTTP/2 stream when grpc-js allows (default true). */
  directWrites?: boolean;
  /** Per-call: read straight off the HTTP/2 stream when grpc-js allows (default true). */
  directReads?: boolean;
  /** The process's audio coalescer (write-coalescer.ts); absent: audio written at once. */
  coalescer?: WriteCoalescer;
}

/** Which path a session's requests or responses take: the per-call paths, or a shared mux call. */
export type TransportPath = WriterPath | ReaderPath | "mux";

/** One session's way to its worker (see module comment). */
export interface SessionTransport {
  /** How requests reach the worker (diagnostics and tests). */
  readonly writerPath: WriterPath | "mux";
  /** How responses reach the link (diagnostics and tests). */
  readonly readerPath: ReaderPath | "mux";
  /** Sends audio (`pcm` is held, never modified); false = pause the client until onDrain. */
  audio(pcm: Buffer, sampleRateHz: number): boolean;
  /** Sends any other request (config, control), after the session's held audio; false as for audio(). */
  request(req: FramedRequest): boolean;
  /** The pool gives up on the worker (hung or gone): the session ends with CANCELLED (retryable) via onEnd. */
  cancel(): void;
  /** The link is done with the session: the worker is told to free it; no onEnd follows. */
  close(): void;
}

/** A session as its own StreamingRecognize call (see module comment). */
export class CallTransport implements SessionTransport {
  private readonly writer: CallWriter;
  private readonly reader: CallReader;
  private closed = false;

  /** Takes over `call` (just opened by the lease) and reports to `h`. */
  constructor(
    private readonly call: RecognizeCall,
    h: SessionHandlers,
    opts: SessionTransportOptions = {},
  ) {
    // A finder that finds no stream puts the whole call on grpc-js's call.write().
    // One look for the call's stream serves writer and reader (call-stream.ts says why).
    const locator = new StreamLocator(call);
    this.writer = new CallWriter(call, () => h.onDrain(), opts.directWrites === false ? () => null : locator, opts.coalescer);
    this.reader = new CallReader(
      call,
      (r) => {
        if (!this.closed) h.onResponse(r);
      },
      opts.directReads === false ? () => null : locator,
    );
    call.on("error", () => {
      // The status event handles every ending; this keeps grpc-js from throwing.
    });
    call.on("status", (s: StatusObject) => {
      this.writer.close();
      this.reader.close();
      if (this.closed) return;
      this.closed = true;
      h.onEnd(s);
    });
  }

  /** {@inheritDoc SessionTransport.writerPath} */
  get writerPath(): WriterPath {
    return this.writer.path;
  }

  /** {@inheritDoc SessionTransport.readerPath} */
  get readerPath(): ReaderPath {
    return this.reader.path;
  }

  /** {@inheritDoc SessionTransport.audio} */
  audio(pcm: Buffer, sampleRateHz: number): boolean {
    if (this.closed) return true;
    return this.writer.write(framedAudioRequest(pcm, sampleRateHz), true);
  }

  /** {@inheritDoc SessionTransport.request} */
  request(req: FramedRequest): boolean {
    if (this.closed) return true;
    return this.writer.write(req);
  }

  /** {@inheritDoc SessionTransport.cancel} */
  cancel(): void {
    // grpc-js ends the call with CANCELLED; its status event reaches onEnd.
    this.call.cancel();
  }

  /** {@inheritDoc SessionTransport.close} */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.writer.close();
    this.reader.close();
    this.call.cancel();
  }
}
