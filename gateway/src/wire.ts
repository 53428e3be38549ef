/**
 * The per-frame request encoding of the worker link.
 *
 * Why not the generated encoder for audio: every 60 ms frame of every
 * session becomes one StreamingRecognizeRequest { audio { pcm16le,
 * sample_rate_hz } }. Through ts-proto that is three objects, a growing
 * BinaryWriter and two copies of the PCM (finish(), then Buffer.from in the
 * generated serializer) — 11 % of the gateway's busy time and a large share
 * of its garbage in `--cpu-prof` runs (docs/benchmarks.md). Audio requests
 * are therefore encoded here straight into one Buffer of the exact size; the
 * bytes are the standard protobuf encoding (tests decode them with the
 * generated decoder), and every other request still goes through ts-proto.
 */
import { makeGenericClientConstructor, type ChannelCredentials, type ClientOptions } from "@grpc/grpc-js";
import { AsrService, StreamingRecognizeMuxRequest, StreamingRecognizeRequest, type AsrClient } from "./gen/asr/v1/asr.js";

/** A StreamingRecognizeRequest already encoded (a Buffer the serializer passes through). */
export type EncodedRequest = Buffer & { readonly __encodedRequest: true };

/** StreamingRecognizeRequest.audio is field 2; AudioChunk.pcm16le field 1, sample_rate_hz field 2. */
const TAG_REQUEST_AUDIO = (2 << 3) | 2;
const TAG_PCM = (1 << 3) | 2;
const TAG_RATE = (2 << 3) | 0;

function varintSize(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

function writeVarint(buf: Buffer, off: number, v: number): number {
  while (v >= 0x80) {
    buf[off++] = (v & 0x7f) | 0x80;
    v = Math.floor(v / 128);
  }
  buf[off++] = v;
  return off;
}

/**
 * A StreamingRecognizeRequest as one gRPC length-prefixed message: a 5-byte
 * header (compressed flag 0, big-endian length) and the protobuf bytes, ready
 * for an HTTP/2 stream (see call-writer.ts).
 */
export type FramedRequest = Buffer & { readonly __framedRequest: true };

/** Bytes of the gRPC message header (flag + 32-bit length). */
export const GRPC_HEADER_BYTES = 5;

/** Encodes StreamingRecognizeRequest { audio { pcm16le: pcm, sample_rate_hz: rate } } into one exact-size Buffer. */
export function encodeAudioRequest(pcm: Uint8Array, sampleRateHz: number): EncodedRequest {
  return encodeAudio(pcm, sampleRateHz, 0) as EncodedRequest;
}

/** The same request as encodeAudioRequest, framed as a gRPC message in the same single Buffer (no extra copy). */
export function framedAudioRequest(pcm: Uint8Array, sampleRateHz: number): FramedRequest {
  const buf = encodeAudio(pcm, sampleRateHz, GRPC_HEADER_BYTES);
  writeGrpcHeader(buf);
  return buf as FramedRequest;
}

/** Any request through the generated encoder, framed as a gRPC message. */
export function framedRequest(req: StreamingRecognizeRequest): FramedRequest {
  const body = StreamingRecognizeRequest.encode(req).finish();
  const buf = Buffer.allocUnsafe(GRPC_HEADER_BYTES + body.length);
  buf.set(body, GRPC_HEADER_BYTES);
  writeGrpcHeader(buf);
  return buf as FramedRequest;
}

/** The protobuf bytes of a framed request (a view, for writers that frame themselves). */
export function unframed(req: FramedRequest): EncodedRequest {
  return req.subarray(GRPC_HEADER_BYTES) as EncodedRequest;
}

function writeGrpcHeader(buf: Buffer): void {
  // Compressed flag 0: the gateway never compresses audio (PCM barely compresses).
  buf[0] = 0;
  buf.writeUInt32BE(buf.length - GRPC_HEADER_BYTES, 1);
}

/** The audio request's protobuf bytes after `headroom` unwritten bytes. */
function encodeAudio(pcm: Uint8Array, sampleRateHz: number, headroom: number): Buffer {
  const buf = Buffer.allocUnsafe(headroom + audioRequestSize(pcm.length, sampleRateHz));
  writeAudioRequest(buf, headroom, pcm, sampleRateHz);
  return buf;
}

/** Bytes of AudioChunk { pcm16le, sample_rate_hz } (proto3 leaves out fields holding their default: empty bytes, rate 0). */
function audioChunkSize(pcmBytes: number, sampleRateHz: number): number {
  return (pcmBytes > 0 ? 1 + varintSize(pcmBytes) + pcmBytes : 0) + (sampleRateHz > 0 ? 1 + varintSize(sampleRateHz) : 0);
}

/** Bytes of StreamingRecognizeRequest { audio { pcm16le, sample_rate_hz } }. */
function audioRequestSize(pcmBytes: number, sampleRateHz: number): number {
  const chunk = audioChunkSize(pcmBytes, sampleRateHz);
  return 1 + varintSize(chunk) + chunk;
}

/** Writes StreamingRecognizeRequest { audio { pcm16le: pcm, sample_rate_hz } } at `off` (the PCM's one copy); returns the end. */
function writeAudioRequest(buf: Buffer, off: number, pcm: Uint8Array, sampleRateHz: number): number {
  buf[off++] = TAG_REQUEST_AUDIO;
  off = writeVarint(buf, off, audioChunkSize(pcm.length, sampleRateHz));
  if (pcm.length > 0) {
    buf[off++] = TAG_PCM;
    off = writeVarint(buf, off, pcm.length);
    buf.set(pcm, off);
    off += pcm.length;
  }
  if (sampleRateHz > 0) {
    buf[off++] = TAG_RATE;
    off = writeVarint(buf, off, sampleRateHz);
  }
  return off;
}

// ---------------------------------------------------------------------------
// StreamingRecognizeMux (worker-mux.ts): one message carries many sessions' frames.

/** A StreamingRecognizeMuxRequest already encoded (a Buffer FAST_ASR_SERVICE's serializer passes through). */
export type EncodedMuxRequest = Buffer & { readonly __encodedMuxRequest: true };

/** What a MuxFrame carries (the oneof `frame`). */
export enum MuxFrameKind {
  /** request { audio { pcm16le, sample_rate_hz } }, encoded here from the PCM (copied once, into the message). */
  Audio,
  /** request, already encoded as a StreamingRecognizeRequest (config, control). */
  Request,
  /** half_close: true. */
  HalfClose,
  /** cancel: true. */
  Cancel,
}

/** One MuxFrame waiting to be encoded (made by muxFrame(); `size` is its encoded MuxFrame size). */
export interface MuxFrameSpec {
  readonly session: number;
  readonly kind: MuxFrameKind;
  /** Audio: the PCM (held, never modified); Request: the encoded StreamingRecognizeRequest; else null. */
  readonly bytes: Uint8Array | null;
  /** Audio: sample_rate_hz. */
  readonly rate: number;
  /** Bytes of the encoded MuxFrame (without the enclosing field's tag and length). */
  readonly size: number;
}

/** MuxFrame: session field 1 (varint), request 2, half_close 3, cancel 4; StreamingRecognizeMuxRequest.frames is field 1. */
const TAG_MUX_FRAMES = (1 << 3) | 2;
const TAG_MUX_SESSION = (1 << 3) | 0;
const TAG_MUX_REQUEST = (2 << 3) | 2;
const TAG_MUX_HALF_CLOSE = (3 << 3) | 0;
const TAG_MUX_CANCEL = (4 << 3) | 0;

/** A frame for a mux connection's pending list (see MuxFrameSpec). */
export function muxFrame(session: number, kind: MuxFrameKind, bytes: Uint8Array | null = null, rate = 0): MuxFrameSpec {
  let body: number;
  if (kind === MuxFrameKind.Audio) {
    const req = audioRequestSize(bytes!.length, rate);
    body = 1 + varintSize(req) + req;
  } else if (kind === MuxFrameKind.Request) {
    body = 1 + varintSize(bytes!.length) + bytes!.length;
  } else {
    body = 2;
  }
  return { session, kind, bytes, rate, size: 1 + varintSize(session) + body };
}

/** Bytes a frame adds to a StreamingRecognizeMuxRequest (the frame plus its field tag and length). */
export function muxFrameWireSize(f: MuxFrameSpec): number {
  return 1 + varintSize(f.size) + f.size;
}

/**
 * Encodes StreamingRecognizeMuxRequest { frames: frames[start..end) } into one
 * Buffer of the exact size (`bytes`: the sum of their muxFrameWireSize): the
 * standard protobuf encoding, each audio frame's PCM copied once, straight
 * into the message.
 */
export function encodeMuxRequest(frames: readonly MuxFrameSpec[], start: number, end: number, bytes: number): EncodedMuxRequest {
  const buf = Buffer.allocUnsafe(bytes);
  let off = 0;
  for (let i = start; i < end; i++) {
    const f = frames[i]!;
    buf[off++] = TAG_MUX_FRAMES;
    off = writeVarint(buf, off, f.size);
    buf[off++] = TAG_MUX_SESSION;
    off = writeVarint(buf, off, f.session);
    switch (f.kind) {
      case MuxFrameKind.Audio:
        buf[off++] = TAG_MUX_REQUEST;
        off = writeVarint(buf, off, audioRequestSize(f.bytes!.length, f.rate));
        off = writeAudioRequest(buf, off, f.bytes!, f.rate);
        break;
      case MuxFrameKind.Request:
        buf[off++] = TAG_MUX_REQUEST;
        off = writeVarint(buf, off, f.bytes!.length);
        buf.set(f.bytes!, off);
        off += f.bytes!.length;
        break;
      case MuxFrameKind.HalfClose:
        buf[off++] = TAG_MUX_HALF_CLOSE;
        buf[off++] = 1;
        break;
      case MuxFrameKind.Cancel:
        buf[off++] = TAG_MUX_CANCEL;
        buf[off++] = 1;
        break;
    }
  }
  if (off !== bytes) throw new Error(`mux request encoded to ${off} bytes, ${bytes} expected`);
  return buf as EncodedMuxRequest;
}

/** The Asr service with request serializers that pass EncodedRequest / EncodedMuxRequest buffers through untouched. */
export const FAST_ASR_SERVICE = {
  ...AsrService,
  streamingRecognize: {
    ...AsrService.streamingRecognize,
    requestSerialize: (value: StreamingRecognizeRequest | EncodedRequest): Buffer =>
      Buffer.isBuffer(value) ? value : Buffer.from(StreamingRecognizeRequest.encode(value).finish()),
  },
  streamingRecognizeMux: {
    ...AsrService.streamingRecognizeMux,
    requestSerialize: (value: StreamingRecognizeMuxRequest | EncodedMuxRequest): Buffer =>
      Buffer.isBuffer(value) ? value : Buffer.from(StreamingRecognizeMuxRequest.encode(value).finish()),
  },
} as const;

/** A grpc-js client constructor for FAST_ASR_SERVICE, shaped like the generated AsrClient. */
export const FastAsrClient = makeGenericClientConstructor(FAST_ASR_SERVICE, "asr.v1.Asr") as unknown as {
  new (address: string, credentials: ChannelCredentials, options?: Partial<ClientOptions>): AsrClient;
};
