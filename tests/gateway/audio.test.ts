/**
 * WAV sniffing/decoding, resampling, the file decoder without ffmpeg, and the
 * replay buffer's bookkeeping.
 */
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { createFileDecoder, decodeWav, looksLikeWav, parseWavHeader, resampleLinear } from "../../gateway/src/audio.js";
import { GatewayError } from "../../gateway/src/errors.js";
import { ReplayBuffer } from "../../gateway/src/replay.js";
import { pcm, wavFile } from "./helpers/harness.js";

function wavWith(format: number, bits: number, channels: number, rate: number, data: Buffer): Buffer {
  const h = wavFile(data, rate);
  h.writeUInt16LE(format, 20);
  h.writeUInt16LE(channels, 22);
  h.writeUInt32LE((rate * channels * bits) / 8, 28);
  h.writeUInt16LE((channels * bits) / 8, 32);
  h.writeUInt16LE(bits, 34);
  return h;
}

describe("WAV handling", () => {
  test("sniffs RIFF/WAVE and finds the data chunk after extra chunks", () => {
    const data = pcm([{ speech: 100 }]);
    const plain = wavFile(data, 16000);
    const list = Buffer.concat([Buffer.from("LIST"), Buffer.from([4, 0, 0, 0]), Buffer.from("INFO")]);
    const withList = Buffer.concat([plain.subarray(0, 36), list, plain.subarray(36)]);
    withList.writeUInt32LE(withList.length - 8, 4);
    assert.ok(looksLikeWav(withList), "looksLikeWav(withList)");
    const info = parseWavHeader(withList)!;
    assert.equal(info.dataOffset, 56);
    assert.deepEqual(decodeWav(withList).pcm, data);
    assert.equal(looksLikeWav(data), false);
    assert.equal(parseWavHeader(plain.subarray(0, 30)), null);
  });

  test("stereo float 48 kHz becomes mono 16-bit 16 kHz", () => {
    const n = 4800;
    const data = Buffer.alloc(n * 2 * 4);
    for (let i = 0; i < n; i++) {
      data.writeFloatLE(0.5, i * 8);
      data.writeFloatLE(0.0, i * 8 + 4);
    }
    const d = decodeWav(wavWith(3, 32, 2, 48000, data));
    assert.equal(d.sampleRateHz, 16000);
    assert.equal(d.pcm.length, 1600 * 2);
    assert.ok(Math.abs(d.pcm.readInt16LE(200) - 8192) <= 1, "Math.abs(d.pcm.readInt16LE(200) - 8192) <= 1");
  });

  test("8 kHz 16-bit stays 8 kHz", () => {
    const data = pcm([{ speech: 100 }], 8000);
    const d = decodeWav(wavFile(data, 8000));
    assert.equal(d.sampleRateHz, 8000);
    assert.deepEqual(d.pcm, data);
  });

  test("unsupported WAV sample formats are refused with UNSUPPORTED_FORMAT", () => {
    assert.throws(
      () => decodeWav(wavWith(6, 8, 1, 8000, Buffer.alloc(100))),
      (e: unknown) => e instanceof GatewayError && e.code === "UNSUPPORTED_FORMAT",
    );
  });

  test("linear resampling keeps duration", () => {
    assert.equal(resampleLinear(new Float32Array(441), 44100, 16000).length, 160);
  });

  test("without ffmpeg, non-WAV files are UNSUPPORTED_FORMAT; corrupt WAV is DECODE_FAILED", async () => {
    const dec = createFileDecoder(null);
    await assert.rejects(dec.decode(Buffer.from("ID3 not audio"), "mp3"), (e: unknown) => e instanceof GatewayError && e.code === "UNSUPPORTED_FORMAT");
    const bad = Buffer.from("RIFF\0\0\0\0WAVEdata\0\0\0\0");
    await assert.rejects(dec.decode(bad, "wav"), (e: unknown) => e instanceof GatewayError && e.code === "DECODE_FAILED");
  });
});

describe("ffmpeg child process for other containers", () => {
  /** A stand-in ffmpeg: reads the file from stdin, writes 1 s of 16 kHz PCM (or fails). */
  function fakeFfmpeg(ok: boolean): { bin: string; dir: string } {
    const dir = mkdtempSync(path.join(tmpdir(), "fake-ffmpeg-"));
    const bin = path.join(dir, "ffmpeg");
    writeFileSync(bin, ok ? "#!/bin/sh\ncat > /dev/null\nhead -c 32000 /dev/zero\n" : "#!/bin/sh\ncat > /dev/null\nexit 1\n");
    chmodSync(bin, 0o755);
    return { bin, dir };
  }

  test("decodes through the child process to 16 kHz PCM", async () => {
    const f = fakeFfmpeg(true);
    try {
      const d = await createFileDecoder(f.bin).decode(Buffer.from("ID3 pretend mp3"), "mp3");
      assert.equal(d.sampleRateHz, 16000);
      assert.equal(d.pcm.length, 32000);
    } finally {
      rmSync(f.dir, { recursive: true, force: true });
    }
  });

  test("an ffmpeg failure is DECODE_FAILED", async () => {
    const f = fakeFfmpeg(false);
    try {
      await assert.rejects(createFileDecoder(f.bin).decode(Buffer.from("junk"), "mp4"), (e: unknown) => e instanceof GatewayError && e.code === "DECODE_FAILED");
    } finally {
      rmSync(f.dir, { recursive: true, force: true });
    }
  });
});

describe("replay buffer", () => {
  test("keeps audio since the last delivered final with session-timeline offsets", () => {
    const r = new ReplayBuffer(60);
    r.push(Buffer.alloc(3200), 16000); // 0-100 ms
    r.push(Buffer.alloc(3200), 16000); // 100-200 ms
    r.push(Buffer.alloc(1600), 8000); // 200-300 ms at 8 kHz
    assert.equal(r.audioMs, 300);
    r.finalDelivered(0, 150);
    const s = r.snapshot();
    // The chunk straddling the final's end keeps only its tail.
    assert.equal(s.audioOffsetMs, 150);
    assert.equal(s.chunks[0]!.pcm.length, 1600);
    assert.equal(s.finalizedSegments, 1);
    assert.equal(s.chunks.length, 2);
    assert.equal(s.complete, true);
  });

  test("a whole file sent as one chunk is trimmed at each final", () => {
    const r = new ReplayBuffer(60);
    r.push(Buffer.alloc(32000 * 3), 16000); // 0-3000 ms
    r.finalDelivered(1, 1200);
    const s = r.snapshot();
    assert.equal(s.audioOffsetMs, 1200);
    assert.equal(s.chunks[0]!.pcm.length, 32000 * 1.8);
    assert.equal(r.retainedBytes, 32000 * 1.8);
    assert.equal(s.finalizedSegments, 2);
  });

  test("does not hold on to a received streaming frame: its bytes are copied", () => {
    const r = new ReplayBuffer(60);
    const frame = Buffer.alloc(1920, 7);
    r.push(frame, 16000);
    frame.fill(0);
    const [c] = r.snapshot().chunks;
    assert.notEqual(c!.pcm.buffer, frame.buffer);
    assert.deepEqual(c!.pcm, Buffer.alloc(1920, 7));
  });

  test("consecutive frames form one chunk, split at marks, with the audio in order", () => {
    const r = new ReplayBuffer(60);
    for (let i = 0; i < 5; i++) r.push(Buffer.alloc(1920, i), 16000); // 0-300 ms
    r.mark();
    for (let i = 5; i < 8; i++) r.push(Buffer.alloc(1920, i), 16000); // 300-480 ms
    const s = r.snapshot();
    assert.deepEqual(s.chunks.map((c) => [c.startMs, c.endMs]), [[0, 300], [300, 480]]);
    const all = Buffer.concat(s.chunks.map((c) => c.pcm));
    for (let i = 0; i < 8; i++) assert.equal(all[i * 1920], i);
    r.finalDelivered(0, 90);
    const t = r.snapshot();
    assert.equal(t.audioOffsetMs, 90);
    assert.equal(t.chunks[0]!.pcm[0], 1); // the first frame's tail: 90 ms = 1.5 frames in
    assert.equal(r.retainedBytes, 8 * 1920 - 2880);
  });

  test("slabs freed by finals are reused, so a long stream keeps a few slabs, not every frame", () => {
    const r = new ReplayBuffer(60);
    const seen = new Set<ArrayBufferLike>();
    for (let i = 0; i < 2000; i++) {
      r.push(Buffer.alloc(1920, i % 251), 16000);
      if (i % 50 === 49) r.finalDelivered(i, r.audioMs - 600); // a final every 3 s, 0.6 s behind
      for (const c of r.snapshot().chunks) seen.add(c.pcm.buffer);
    }
    // 2,000 frames = 120 s of audio; about 3.6 s is ever retained at once.
    assert.ok(seen.size <= 10, `${seen.size} distinct buffers`);
    const s = r.snapshot();
    const all = Buffer.concat(s.chunks.map((c) => c.pcm));
    assert.equal(all.length, r.retainedBytes);
    assert.equal(all[all.length - 1], 1999 % 251);
  });

  test("is bounded; truncation is reported until a final covers it", () => {
    const r = new ReplayBuffer(1);
    for (let i = 0; i < 15; i++) r.push(Buffer.alloc(3200), 16000);
    assert.ok(r.retainedBytes <= 32000, "r.retainedBytes <= 32000");
    assert.equal(r.snapshot().complete, false);
    r.finalDelivered(0, 1500);
    assert.equal(r.snapshot().complete, true);
    assert.equal(r.retainedBytes, 0);
  });
});
