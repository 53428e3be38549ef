/**
 * Writes a StreamingRecognize call's requests straight onto the call's
 * HTTP/2 stream, past grpc-js's per-message machinery.
 *
 * Why: a grpc-js `call.write()` runs every message through a Writable, a
 * promise chain of filters (resolving call, compression filter), the retry
 * layer's buffer and per-message callbacks and nextTicks before it reaches
 * the HTTP/2 stream. At 500 paced streams (8,300 frames/s) that machinery is
 * most of the gateway's CPU: bench/gateway-floor.ts measures ws alone at
 * 16-22 µs per paced frame, ws + grpc-js writes at 43-58 µs and ws + the same
 * bytes on a plain node:http2 stream at 29-31 µs (docs/benchmarks.md). The
 * gRPC wire format of a message is trivial (a 5-byte header, wire.ts), so
 * the link frames requests itself and writes them to the stream grpc-js
 * opened; grpc-js still owns everything else about the call: placement on a
 * subchannel, headers, reading and decoding responses, trailers and status,
 * cancellation, keepalive and reconnection.
 *
 * grpc-js does not expose the stream, so it is found through the call's
 * internal objects (ClientDuplexStream -> intercepting call -> resolving call
 * -> retrying call -> load-balancing call -> subchannel call ->
 * `http2Stream`), as laid out in @grpc/grpc-js 1.14 (package-lock.json pins
 * it). The writer never mixes paths: until the stream exists (the pick of a
 * subchannel is asynchronous) requests wait in its own queue, and if the
 * layout is not the expected one — a grpc-js upgrade — it falls back, for the
 * whole call, to `call.write()` of the unframed bytes, which FastAsrClient's
 * serializer passes through. So the bytes on the wire and their order are the
 * same either way; tests/gateway/call-writer.test.ts checks both paths
 * against a real grpc-js server, and that the direct path is the one taken.
 * Retries must stay off on the channel (`grpc.enable_retries: 0`,
 * workers.ts): a transparently retried attempt would open a second stream
 * that never saw the bytes written to the first; the writer falls back
 * unless the call can never start another attempt (grpc-js state NO_RETRY
 * or COMMITTED, one attempt).
 *
 * With a WriteCoalescer (write-coalescer.ts), audio on the direct path is
 * held briefly and written with the other calls' held audio in one loop
 * turn, as one buffer per call; any other request first writes the call's
 * held audio, then itself, at once. The grpc-js fallback path is never
 * coalesced: call.write() takes exactly one message.
 */
import type { Http2Stream } from "node:http2";
import { http2StreamOf, locateStream, type StreamSource } from "./call-stream.js";
import { unframed, type FramedRequest } from "./wire.js";
import type { HeldQueue, WriteCoalescer } from "./write-coalescer.js";
import type { RecognizeCall } from "./workers.js";

/** How requests reach the call now. */
export type WriterPath = "pending" | "direct" | "grpc-js";

/** Queued bytes (while the stream does not exist yet) above which write() asks the caller to pause. */
const QUEUE_HIGH_BYTES = 256 * 1024;

/** One call's request writer (see module comment). */
export class CallWriter {
  private readonly call: RecognizeCall;
  private readonly onDrain: () => void;
  private stream: Http2Stream | null = null;
  private mode: WriterPath = "pending";
  private queue: FramedRequest[] = [];
  private queuedBytes = 0;
  /** write() returned false and onDrain is still owed. */
  private owesDrain = false;
  /** Stops waiting for the stream. */
  private readonly unlocate: () => void;
  private closed = false;
  /** Held audio of the direct path (null: no coalescing, or not on the direct path yet). */
  private held: HeldQueue | null = null;
  private readonly coalescer: WriteCoalescer | undefined;

  /**
   * Starts looking for the call's stream. `onDrain` is called once after
   * write() returned false, when writing may go on. `find` locates the
   * stream: the locator the call's reader shares (worker-link.ts), or a
   * finder of its own (default http2StreamOf; tests pass one that finds none).
   * `coalescer`, when given and enabled, holds audio on the direct path.
   */
  constructor(
    call: RecognizeCall,
    onDrain: () => void,
    find: StreamSource = http2StreamOf,
    coalescer?: WriteCoalescer,
  ) {
    this.call = call;
    this.onDrain = onDrain;
    this.coalescer = coalescer?.enabled === true ? coalescer : undefined;
    this.unlocate = locateStream(call, find, (found) => this.located(found));
  }

  /** Which path requests take (tests and diagnostics). */
  get path(): WriterPath {
    return this.mode;
  }

  /**
   * Writes one request; false = the caller should pause until onDrain.
   * `audio` marks a plain audio request, which a coalescer may hold; any
   * other request writes the call's held audio first and then goes at once.
   */
  write(req: FramedRequest, audio = false): boolean {
    if (this.closed) return true;
    if (this.mode === "direct") {
      const held = this.held;
      if (held !== null) {
        if (audio) {
          // Held: the stream's answer comes at the flush; a full stream shows as owesDrain then.
          held.push(req);
          return !this.owesDrain;
        }
        held.flush();
      }
      return this.writeDirect(req);
    }
    if (this.mode === "grpc-js") {
      if (this.call.write(unframed(req))) return true;
      this.awaitDrain(this.call);
      return false;
    }
    this.queue.push(req);
    this.queuedBytes += req.length;
    if (this.queuedBytes <= QUEUE_HIGH_BYTES) return true;
    this.owesDrain = true;
    return false;
  }

  /** Stops looking for the stream and drops queued requests (the call is being cancelled or has ended). */
  close(): void {
    this.closed = true;
    this.unlocate();
    this.queue = [];
    this.queuedBytes = 0;
    this.held?.drop();
  }

  // -------------------------------------------------------------------------

  /** Writes bytes (one request or a call's held requests) onto the stream; false = full. */
  private writeDirect(bytes: Buffer): boolean {
    const s = this.stream!;
    // A stream that ended is the call ending: its status is on the way, the bytes are moot.
    if (this.closed || s.destroyed || s.writableEnded) return true;
    if (s.write(bytes)) return true;
    this.awaitDrain(s);
    return false;
  }

  private awaitDrain(emitter: Http2Stream | RecognizeCall): void {
    if (this.owesDrain) return;
    this.owesDrain = true;
    emitter.once("drain", () => this.drained());
  }

  private drained(): void {
    if (!this.owesDrain || this.closed) return;
    this.owesDrain = false;
    this.onDrain();
  }

  /** The call's stream was found (null: grpc-js's own writes for the whole call); queued requests go first. */
  private located(found: Http2Stream | null): void {
    const queue = this.queue;
    this.queue = [];
    this.queuedBytes = 0;
    if (found === null) {
      this.mode = "grpc-js";
      for (const r of queue) this.call.write(unframed(r));
    } else {
      this.stream = found;
      this.mode = "direct";
      for (const r of queue) found.write(r);
      if (this.coalescer !== undefined) this.held = this.coalescer.queue((bytes) => void this.writeDirect(bytes));
    }
    if (this.owesDrain) {
      this.owesDrain = false;
      this.onDrain();
    }
  }
}
