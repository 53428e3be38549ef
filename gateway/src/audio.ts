/**
 * Audio helpers of the gateway: RIFF/WAV sniffing and decoding, resampling to
 * a rate the worker accepts, and decoding other containers through an ffmpeg
 * child process when one is on PATH.
 *
 * Why in the gateway: the html5 page sends a whole WAV file (header included)
 * labelled "PCM", and offline clients send whole files; the worker contract
 * takes raw 16-bit PCM at 8 or 16 kHz only.
 */
import { spawn, spawnSync } from "node:child_process";
import { GatewayError } from "./errors.js";

/** Decoded audio ready for the worker. */
export interface Pcm16 {
  /** Signed 16-bit little-endian mono samples. */
  pcm: Buffer;
  /** 8000 or 16000. */
  sampleRateHz: number;
}

/** The parts of a WAV header the gateway needs. */
export interface WavInfo {
  /** WAVE_FORMAT tag: 1 PCM, 3 IEEE float, 0xFFFE extensible. */
  format: number;
  /** Channel count. */
  channels: number;
  /** Sample rate in Hz. */
  sampleRateHz: number;
  /** Bits per sample. */
  bitsPerSample: number;
  /** Byte offset of the sample data. */
  dataOffset: number;
  /** Declared byte length of the data chunk (may exceed the buffer for streams). */
  dataBytes: number;
}

/** Whether bytes start like a RIFF/WAVE file. */
export function looksLikeWav(buf: Buffer): boolean {
  return buf.length >= 12 && buf.toString("latin1", 0, 4) === "RIFF" && buf.toString("latin1", 8, 12) === "WAVE";
}

/**
 * Parses a WAV header. Returns null when the buffer holds a RIFF header but
 * no `data` chunk yet (it may arrive in a later frame); throws DECODE_FAILED
 * when the header is corrupt.
 */
export function parseWavHeader(buf: Buffer): WavInfo | null {
  if (!looksLikeWav(buf)) throw new GatewayError("DECODE_FAILED", "not a RIFF/WAVE file");
  let off = 12;
  let fmt: Omit<WavInfo, "dataOffset" | "dataBytes"> | undefined;
  while (off + 8 <= buf.length) {
    const id = buf.toString("latin1", off, off + 4);
    const size = buf.readUInt32LE(off + 4);
    const body = off + 8;
    if (id === "fmt ") {
      if (body + 16 > buf.length) return null;
      let format = buf.readUInt16LE(body);
      if (format === 0xfffe && size >= 26 && body + 26 <= buf.length) format = buf.readUInt16LE(body + 24);
      fmt = {
        format,
        channels: buf.readUInt16LE(body + 2),
        sampleRateHz: buf.readUInt32LE(body + 4),
        bitsPerSample: buf.readUInt16LE(body + 14),
      };
    } else if (id === "data") {
      if (fmt === undefined) throw new GatewayError("DECODE_FAILED", "WAV data chunk before fmt chunk");
      return { ...fmt, dataOffset: body, dataBytes: size };
    }
    off = body + size + (size % 2);
  }
  return null;
}

/** Converts a whole WAV file to 16-bit mono PCM at 8 or 16 kHz. */
export function decodeWav(buf: Buffer): Pcm16 {
  const info = parseWavHeader(buf);
  if (info === null) throw new GatewayError("DECODE_FAILED", "WAV file has no data chunk");
  if (info.channels < 1 || info.sampleRateHz < 1000 || info.sampleRateHz > 192_000) {
    throw new GatewayError("DECODE_FAILED", "WAV header has an implausible channel count or rate");
  }
  const end = Math.min(buf.length, info.dataOffset + info.dataBytes);
  const data = buf.subarray(info.dataOffset, end);
  const bytes = info.bitsPerSample / 8;
  const frame = bytes * info.channels;
  const n = Math.floor(data.length / frame);
  const mono = new Float32Array(n);
  const read = sampleReader(info);
  for (let i = 0; i < n; i++) {
    let acc = 0;
    for (let c = 0; c < info.channels; c++) acc += read(data, i * frame + c * bytes);
    mono[i] = acc / info.channels;
  }
  const rate = info.sampleRateHz === 8000 || info.sampleRateHz === 16000 ? info.sampleRateHz : 16000;
  const out = rate === info.sampleRateHz ? mono : resampleLinear(mono, info.sampleRateHz, rate);
  return { pcm: floatToPcm16(out), sampleRateHz: rate };
}

function sampleReader(info: WavInfo): (b: Buffer, off: number) => number {
  if (info.format === 1 && info.bitsPerSample === 16) return (b, o) => b.readInt16LE(o) / 32768;
  if (info.format === 1 && info.bitsPerSample === 8) return (b, o) => (b.readUInt8(o) - 128) / 128;
  if (info.format === 1 && info.bitsPerSample === 24) return (b, o) => b.readIntLE(o, 3) / 8388608;
  if (info.format === 1 && info.bitsPerSample === 32) return (b, o) => b.readInt32LE(o) / 2147483648;
  if (info.format === 3 && info.bitsPerSample === 32) return (b, o) => b.readFloatLE(o);
  if (info.format === 3 && info.bitsPerSample === 64) return (b, o) => b.readDoubleLE(o);
  throw new GatewayError("UNSUPPORTED_FORMAT", `WAV sample format ${info.format}/${info.bitsPerSample}-bit is not supported`);
}

/** Linear-interpolation resampler; adequate for speech going into a 16 kHz model. */
export function resampleLinear(x: Float32Array, from: number, to: number): Float32Array {
  if (from === to || x.length === 0) return x;
  const n = Math.max(1, Math.round((x.length * to) / from));
  const y = new Float32Array(n);
  const step = from / to;
  for (let i = 0; i < n; i++) {
    const p = i * step;
    const j = Math.floor(p);
    const f = p - j;
    const a = x[Math.min(j, x.length - 1)]!;
    const b = x[Math.min(j + 1, x.length - 1)]!;
    y[i] = a + (b - a) * f;
  }
  return y;
}

function floatToPcm16(x: Float32Array): Buffer {
  const out = Buffer.alloc(x.length * 2);
  for (let i = 0; i < x.length; i++) {
    const v = Math.max(-1, Math.min(1, x[i]!));
    out.writeInt16LE(Math.round(v < 0 ? v * 32768 : v * 32767), i * 2);
  }
  return out;
}

/** Decodes whole files of any container; injected so that sessions and tests do not depend on PATH. */
export interface FileDecoder {
  /** Decodes a whole file to PCM at 8 or 16 kHz. */
  decode(file: Buffer, formatHint: string): Promise<Pcm16>;
}

/** Finds ffmpeg on PATH once (the composition root calls this at start). */
export function findFfmpeg(): string | null {
  const r = spawnSync("ffmpeg", ["-hide_banner", "-version"], { stdio: "ignore", timeout: 5000 });
  return r.status === 0 ? "ffmpeg" : null;
}

/**
 * A decoder that handles WAV in-process and everything else with ffmpeg
 * when `ffmpegPath` is given (otherwise UNSUPPORTED_FORMAT).
 */
export function createFileDecoder(ffmpegPath: string | null, timeoutMs = 120_000): FileDecoder {
  return {
    async decode(file: Buffer, formatHint: string): Promise<Pcm16> {
      if (looksLikeWav(file)) {
        try {
          return decodeWav(file);
        } catch (e) {
          if (ffmpegPath === null || !(e instanceof GatewayError) || e.code !== "UNSUPPORTED_FORMAT") throw e;
        }
      }
      if (ffmpegPath === null) {
        throw new GatewayError(
          "UNSUPPORTED_FORMAT",
          `wav_format "${formatHint}" needs ffmpeg, which this gateway does not have; send WAV or raw PCM`,
        );
      }
      return { pcm: await ffmpegToPcm(ffmpegPath, file, timeoutMs), sampleRateHz: 16000 };
    },
  };
}

function ffmpegToPcm(ffmpeg: string, file: Buffer, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(ffmpeg, ["-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-f", "s16le", "-ac", "1", "-ar", "16000", "pipe:1"], {
      stdio: ["pipe", "pipe", "ignore"],
    });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.stdout.on("data", (c: Buffer) => chunks.push(c));
    child.stdin.on("error", () => {
      // ffmpeg may exit before reading all input (corrupt file); the exit code tells.
    });
    child.on("error", () => {
      clearTimeout(timer);
      reject(new GatewayError("DECODE_FAILED", "ffmpeg could not be started"));
    });
    child.on("close", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(Buffer.concat(chunks));
      else reject(new GatewayError("DECODE_FAILED", "ffmpeg could not decode the file"));
    });
    child.stdin.end(file);
  });
}
