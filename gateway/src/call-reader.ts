/**
 * Reads a StreamingRecognize call's responses straight off the call's HTTP/2
 * stream, past grpc-js's per-message receive machinery: the mirror of
 * call-writer.ts.
 *
 * Why: grpc-js hands every response message through its subchannel call (a
 * pause of the HTTP/2 stream and a nextTick per message), the load-balancing,
 * retrying and resolving calls, a promise chain of filters (the compression
 * filter awaits every message), the interceptors, the deserializer and an
 * object-mode Readable push before the link sees it. At 500 paced streams
 * (833 partials/s) that chain was ~9 % of the gateway's busy time in
 * `--cpu-prof`, more than decoding the message and rendering and sending its
 * FunASR JSON together (docs/benchmarks.md, "Gateway overhead"). A gRPC
 * message on the wire is a 5-byte header (compressed flag, big-endian length)
 * and the protobuf bytes, so the reader takes over the stream's 'data' events
 * and decodes each message with the generated decoder (the same one grpc-js's
 * deserializer calls), synchronously, in order. grpc-js still owns everything
 * else about the call: headers, trailers and status (its 'end'/'trailers'/
 * 'close' handlers on the stream are untouched, so the call's 'status' event
 * still comes after the last message), cancellation, keepalive, and HTTP/2
 * flow control (the stream stays flowing; every message is handled before the
 * next chunk is read).
 *
 * The stream is found as the writer finds it (http2StreamOf, grpc-js 1.14's
 * internal call objects). The reader only takes over a stream grpc-js has not
 * read from yet (`readableDidRead`), carrying exactly one 'data' listener
 * (grpc-js's), on a call whose intercepting call can end it with a status;
 * otherwise, or while the call is not placed, responses come through the
 * call's own 'data' events — for the whole call, so no message can overtake
 * another. The writer writes nothing before the stream is found, and the
 * call's writer and reader share one StreamLocator that tells both in one
 * turn, so a worker cannot answer before the reader has taken over. (With
 * WORKER_DIRECT_WRITES=false grpc-js writes as soon as it places the call,
 * so the reader may find a stream already read from and stay on grpc-js.)
 *
 * Errors end the call as grpc-js would: a message over the channel's receive
 * limit with RESOURCE_EXHAUSTED, one the decoder rejects with INTERNAL
 * ("Response message parsing error"). One difference: grpc-js decompresses
 * messages from a server that compresses (grpc-encoding gzip/deflate); the
 * reader ends such a call with INTERNAL instead. asr.v1 workers never
 * compress (PCM and short texts gain nothing); WORKER_DIRECT_READS=false puts
 * every call back on grpc-js's reads.
 */
import type { Http2Stream } from "node:http2";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { http2StreamOf, locateStream, type StreamSource } from "./call-stream.js";
import { StreamingRecognizeResponse } from "./gen/asr/v1/asr.js";
import { GRPC_HEADER_BYTES } from "./wire.js";
import { MAX_RECEIVE_MESSAGE_BYTES, type RecognizeCall } from "./workers.js";

/** How responses reach the link now. */
export type ReaderPath = "pending" | "direct" | "grpc-js";

/** What the reader uses of grpc-js's intercepting call (ClientDuplexStream.call). */
interface Cancellable {
  cancelWithStatus(code: GrpcStatus, details: string): void;
}

/** One call's response reader (see module comment). */
export class CallReader {
  private readonly call: RecognizeCall;
  private readonly onResponse: (r: StreamingRecognizeResponse) => void;
  private readonly maxMessageBytes: number;
  private mode: ReaderPath = "pending";
  /** Stops waiting for the stream. */
  private readonly unlocate: () => void;
  private closed = false;
  /** The header of the message being read, while it arrives in pieces. */
  private readonly header = Buffer.alloc(GRPC_HEADER_BYTES);
  private headerHave = 0;
  /** The body of the message being read, when it spans chunks. */
  private body: Buffer | null = null;
  private bodyHave = 0;

  /**
   * Starts delivering the call's responses to `onResponse`, in order, and
   * looks for the call's stream. `find` locates it: the locator the call's
   * writer shares, so the reader takes the stream over in the same turn as
   * the writer first writes to it; or a finder of its own (default
   * http2StreamOf; WORKER_DIRECT_READS=false and tests pass one that finds
   * none).
   */
  constructor(
    call: RecognizeCall,
    onResponse: (r: StreamingRecognizeResponse) => void,
    find: StreamSource = http2StreamOf,
    maxMessageBytes = MAX_RECEIVE_MESSAGE_BYTES,
  ) {
    this.call = call;
    this.onResponse = onResponse;
    this.maxMessageBytes = maxMessageBytes;
    // Until (and unless) the reader takes the stream over, grpc-js delivers.
    call.on("data", (r: StreamingRecognizeResponse) => {
      if (this.mode !== "direct" && !this.closed) this.onResponse(r);
    });
    this.unlocate = locateStream(call, find, (found) => this.located(found));
  }

  /** Which path responses take (tests and diagnostics). */
  get path(): ReaderPath {
    return this.mode;
  }

  /** Stops delivering (the call is being cancelled or has ended). */
  close(): void {
    this.closed = true;
    this.unlocate();
    this.body = null;
  }

  // -------------------------------------------------------------------------

  /** The call's stream was found (null: grpc-js delivers for the whole call); take it over if grpc-js has not read yet. */
  private located(found: Http2Stream | null): void {
    const theirs = found?.listeners("data");
    if (found === null || found.readableDidRead || theirs?.length !== 1 || cancellable(this.call) === null) {
      this.mode = "grpc-js";
      return;
    }
    found.removeListener("data", theirs[0] as (chunk: Buffer) => void);
    found.on("data", (chunk: Buffer) => this.onData(chunk));
    this.mode = "direct";
  }

  /** One HTTP/2 DATA chunk: any number of whole or partial gRPC messages. */
  private onData(chunk: Buffer): void {
    let off = 0;
    while (off < chunk.length && !this.closed) {
      if (this.body === null) {
        if (this.headerHave === 0 && chunk.length - off >= GRPC_HEADER_BYTES) {
          // The common case: a whole header in this chunk, often the whole message too.
          const flag = chunk[off]!;
          const len = chunk.readUInt32BE(off + 1);
          off += GRPC_HEADER_BYTES;
          if (!this.accept(flag, len)) return;
          if (chunk.length - off >= len) {
            this.deliver(chunk.subarray(off, off + len));
            off += len;
            continue;
          }
          this.body = Buffer.allocUnsafe(len);
          this.bodyHave = 0;
        } else {
          const n = Math.min(GRPC_HEADER_BYTES - this.headerHave, chunk.length - off);
          chunk.copy(this.header, this.headerHave, off, off + n);
          this.headerHave += n;
          off += n;
          if (this.headerHave < GRPC_HEADER_BYTES) return;
          this.headerHave = 0;
          const len = this.header.readUInt32BE(1);
          if (!this.accept(this.header[0]!, len)) return;
          if (len === 0) {
            this.deliver(chunk.subarray(off, off));
            continue;
          }
          this.body = Buffer.allocUnsafe(len);
          this.bodyHave = 0;
        }
      }
      const body = this.body!;
      const n = Math.min(body.length - this.bodyHave, chunk.length - off);
      chunk.copy(body, this.bodyHave, off, off + n);
      this.bodyHave += n;
      off += n;
      if (this.bodyHave === body.length) {
        this.body = null;
        this.deliver(body);
      }
    }
  }

  /** Whether a message with this header can be read; if not, the call is ended (as grpc-js would). */
  private accept(flag: number, len: number): boolean {
    if (len > this.maxMessageBytes) {
      this.fail(GrpcStatus.RESOURCE_EXHAUSTED, `Received message larger than max (${len} vs ${this.maxMessageBytes})`);
      return false;
    }
    if (flag === 1) {
      this.fail(GrpcStatus.INTERNAL, "Received a compressed message; the gateway reads worker responses uncompressed (WORKER_DIRECT_READS=false reads them through grpc-js)");
      return false;
    }
    return true;
  }

  private deliver(bytes: Uint8Array): void {
    let r: StreamingRecognizeResponse;
    try {
      r = StreamingRecognizeResponse.decode(bytes);
    } catch (e) {
      this.fail(GrpcStatus.INTERNAL, `Response message parsing error: ${e instanceof Error ? e.message : String(e)}`);
      return;
    }
    this.onResponse(r);
  }

  /** Ends the call with a status through grpc-js (its 'status' event follows); nothing more is delivered. */
  private fail(code: GrpcStatus, details: string): void {
    this.closed = true;
    this.body = null;
    cancellable(this.call)?.cancelWithStatus(code, details);
  }
}

/** grpc-js's intercepting call under a ClientDuplexStream, when it can end the call with a status. */
function cancellable(call: RecognizeCall): Cancellable | null {
  const inner = (call as unknown as { call?: Partial<Cancellable> | null }).call;
  return inner !== null && typeof inner === "object" && typeof inner.cancelWithStatus === "function" ? (inner as Cancellable) : null;
}
