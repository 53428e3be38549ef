/**
 * The hand-encoded audio request (and mux request) is byte-for-byte what the
 * generated encoder produces, so a worker decodes it like any other request.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ControlType, StreamingRecognizeMuxRequest, StreamingRecognizeRequest } from "../../gateway/src/gen/asr/v1/asr.js";
import {
  FAST_ASR_SERVICE,
  MuxFrameKind,
  encodeAudioRequest,
  encodeMuxRequest,
  framedAudioRequest,
  framedRequest,
  muxFrame,
  muxFrameWireSize,
  unframed,
} from "../../gateway/src/wire.js";

describe("audio request encoding", () => {
  test("equals the generated encoding for frame sizes across varint boundaries and both rates", () => {
    for (const bytes of [0, 2, 126, 128, 1920, 16_382, 16_384, 204_800, 1 << 20]) {
      for (const rate of [0, 8000, 16000]) {
        const pcm = Buffer.alloc(bytes, 7);
        const generated = Buffer.from(StreamingRecognizeRequest.encode({ streamingRequest: { $case: "audio", value: { pcm16le: pcm, sampleRateHz: rate } } }).finish());
        assert.deepEqual(encodeAudioRequest(pcm, rate), generated, `${bytes} bytes at ${rate} Hz`);
      }
    }
  });

  test("decodes back to the same audio, and the serializer passes encoded requests through", () => {
    const pcm = Buffer.from([1, 2, 3, 4, 5, 6]);
    const enc = encodeAudioRequest(pcm.subarray(2), 16000);
    const back = StreamingRecognizeRequest.decode(enc).streamingRequest;
    assert.equal(back?.$case, "audio");
    assert.deepEqual(Buffer.from(back!.$case === "audio" ? back.value.pcm16le : []), Buffer.from([3, 4, 5, 6]));
    const ser = FAST_ASR_SERVICE.streamingRecognize.requestSerialize;
    assert.equal(ser(enc), enc);
    assert.deepEqual(ser({ streamingRequest: { $case: "audio", value: { pcm16le: pcm, sampleRateHz: 8000 } } }), encodeAudioRequest(pcm, 8000));
  });

  test("framed requests are a 5-byte gRPC header (uncompressed, big-endian length) before the same protobuf bytes", () => {
    for (const bytes of [0, 1920, 204_800]) {
      const pcm = Buffer.alloc(bytes, 3);
      const framed = framedAudioRequest(pcm, 16000);
      const body = encodeAudioRequest(pcm, 16000);
      assert.equal(framed[0], 0);
      assert.equal(framed.readUInt32BE(1), body.length);
      assert.deepEqual(unframed(framed), body);
    }
    const eoi = { streamingRequest: { $case: "control" as const, value: { type: 1 } } };
    const framed = framedRequest(eoi);
    assert.deepEqual(unframed(framed), Buffer.from(StreamingRecognizeRequest.encode(eoi).finish()));
    assert.equal(framed.readUInt32BE(1), framed.length - 5);
  });
});

describe("mux request encoding", () => {
  test("equals the generated encoding of StreamingRecognizeMuxRequest for every kind of frame, across varint boundaries", () => {
    const config = framedRequest({ streamingRequest: { $case: "control", value: { type: ControlType.CONTROL_TYPE_END_OF_INPUT } } });
    for (const bytes of [0, 2, 126, 128, 1920, 16_384, 1 << 20]) {
      for (const session of [1, 127, 128, 70_000]) {
        const pcm = Buffer.alloc(bytes, 5);
        const frames = [
          muxFrame(session, MuxFrameKind.Audio, pcm, 16000),
          muxFrame(session + 1, MuxFrameKind.Audio, pcm, 0),
          muxFrame(session, MuxFrameKind.Request, unframed(config)),
          muxFrame(session, MuxFrameKind.HalfClose),
          muxFrame(session + 1, MuxFrameKind.Cancel),
        ];
        const size = frames.reduce((n, f) => n + muxFrameWireSize(f), 0);
        const generated = Buffer.from(
          StreamingRecognizeMuxRequest.encode({
            frames: [
              { session, frame: { $case: "request", value: { streamingRequest: { $case: "audio", value: { pcm16le: pcm, sampleRateHz: 16000 } } } } },
              { session: session + 1, frame: { $case: "request", value: { streamingRequest: { $case: "audio", value: { pcm16le: pcm, sampleRateHz: 0 } } } } },
              { session, frame: { $case: "request", value: StreamingRecognizeRequest.decode(unframed(config)) } },
              { session, frame: { $case: "halfClose", value: true } },
              { session: session + 1, frame: { $case: "cancel", value: true } },
            ],
          }).finish(),
        );
        assert.deepEqual(encodeMuxRequest(frames, 0, frames.length, size), generated, `${bytes} bytes, session ${session}`);
        // A slice of the list encodes just those frames.
        assert.equal(StreamingRecognizeMuxRequest.decode(encodeMuxRequest(frames, 3, 5, muxFrameWireSize(frames[3]!) + muxFrameWireSize(frames[4]!))).frames.length, 2);
      }
    }
    assert.equal(FAST_ASR_SERVICE.streamingRecognizeMux.requestSerialize(encodeMuxRequest([], 0, 0, 0)).length, 0);
  });
});
