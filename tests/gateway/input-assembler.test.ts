/**
 * The input assembler on its own: frame limits, the html5 page's WAV-as-PCM,
 * sample alignment, and offline file buffering.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { GatewayError } from "../../gateway/src/errors.js";
import { InputAssembler } from "../../gateway/src/input-assembler.js";
import { pcm, wavFile } from "./helpers/harness.js";

const code = (f: () => unknown): string => {
  try {
    f();
  } catch (e) {
    if (e instanceof GatewayError) return e.code;
    throw e;
  }
  return "none";
};

describe("input assembler", () => {
  test("PCM frames pass through as views of the received bytes (no copy)", () => {
    const a = new InputAssembler({ maxFrameBytes: 4096, maxFileBytes: 10_000 });
    const frame = pcm([{ speech: 60 }]);
    const out = a.pcmFrame(frame, true)!;
    assert.equal(out.pcm.buffer, frame.buffer);
    assert.equal(out.pcm.length, frame.length);
    assert.equal(out.headerRateHz, null);
  });

  test("a WAV header at the start of a round is stripped and its rate reported; later frames are not sniffed", () => {
    const a = new InputAssembler({ maxFrameBytes: 1 << 20, maxFileBytes: 1 << 20 });
    const body = pcm([{ speech: 100 }], 8000);
    const out = a.pcmFrame(wavFile(body, 8000), true)!;
    assert.equal(out.headerRateHz, 8000);
    assert.deepEqual(out.pcm, body);
    assert.equal(a.pcmFrame(wavFile(body, 8000), false)!.pcm.length, body.length + 44);
  });

  test("a header split over frames yields nothing yet; non-16-bit WAV is UNSUPPORTED_FORMAT", () => {
    const a = new InputAssembler({ maxFrameBytes: 1 << 20, maxFileBytes: 1 << 20 });
    assert.equal(a.pcmFrame(wavFile(pcm([{ speech: 10 }]), 16000).subarray(0, 30), true), null);
    const stereo = wavFile(pcm([{ speech: 10 }]), 16000);
    stereo.writeUInt16LE(2, 22);
    assert.equal(code(() => a.pcmFrame(stereo, true)), "UNSUPPORTED_FORMAT");
  });

  test("odd byte counts and oversized frames are refused with their codes", () => {
    const a = new InputAssembler({ maxFrameBytes: 2048, maxFileBytes: 4096 });
    assert.equal(code(() => a.pcmFrame(Buffer.alloc(3), false)), "ODD_FRAME_BYTES");
    assert.equal(code(() => a.checkFrame(Buffer.alloc(2049))), "FRAME_TOO_LARGE");
    assert.equal(code(() => a.checkFrame(Buffer.alloc(2048))), "none");
  });

  test("file frames are buffered up to MAX_FILE_BYTES and handed over whole, once", () => {
    const a = new InputAssembler({ maxFrameBytes: 2048, maxFileBytes: 4096 });
    a.fileFrame(Buffer.from("abc"));
    a.fileFrame(Buffer.from("def"));
    assert.equal(a.takeFile().toString(), "abcdef");
    assert.equal(a.takeFile().length, 0);
    a.fileFrame(Buffer.alloc(4000));
    assert.equal(code(() => a.fileFrame(Buffer.alloc(97))), "FILE_TOO_LARGE");
  });
});
