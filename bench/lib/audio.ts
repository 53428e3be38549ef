/**
 * Test audio for the load benchmarks: resolves the shared audio directory and
 * reads 16 kHz mono PCM16 WAV files into fixed-size frames.
 */
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** Repository root (bench/lib/ -> ../..). */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

/** The shared audio directory: $ASR_SHARED_AUDIO, else ../shared/audio beside the checkout. */
export function sharedAudioDir(): string {
  const dir = process.env.ASR_SHARED_AUDIO ?? path.resolve(REPO_ROOT, "..", "shared", "audio");
  if (!existsSync(path.join(dir, "MANIFEST.json"))) {
    throw new Error(`shared audio not found at ${dir} (set ASR_SHARED_AUDIO)`);
  }
  return dir;
}

/** Default file set: every file of the manifest (real recordings + the synthetic 3-utterance session). */
export const DEFAULT_FILES = [
  "synth/three_utterances.wav",
  "zh/binhai.wav",
  "zh/damo.wav",
  "zh/long.wav",
  "zh/mid.wav",
];

export interface Audio {
  /** Path relative to the shared audio dir (or as given). */
  name: string;
  sampleRate: number;
  /** Raw PCM16 LE mono. */
  pcm: Buffer;
  durationMs: number;
}

/** Reads a PCM16 mono WAV (RIFF chunks walked, so extra chunks are fine). */
export function readWav(file: string, name = file): Audio {
  const buf = readFileSync(file);
  if (buf.toString("ascii", 0, 4) !== "RIFF" || buf.toString("ascii", 8, 12) !== "WAVE") {
    throw new Error(`${file}: not a RIFF/WAVE file`);
  }
  let off = 12;
  let sampleRate = 0;
  let channels = 0;
  let bits = 0;
  let data: Buffer | undefined;
  while (off + 8 <= buf.length) {
    const id = buf.toString("ascii", off, off + 4);
    const size = buf.readUInt32LE(off + 4);
    const body = off + 8;
    if (id === "fmt ") {
      channels = buf.readUInt16LE(body + 2);
      sampleRate = buf.readUInt32LE(body + 4);
      bits = buf.readUInt16LE(body + 14);
    } else if (id === "data") {
      data = buf.subarray(body, Math.min(buf.length, body + size));
      break;
    }
    off = body + size + (size & 1);
  }
  if (!data || channels !== 1 || bits !== 16) {
    throw new Error(`${file}: need mono 16-bit PCM (got ${channels} ch, ${bits} bit)`);
  }
  if (data.length & 1) data = data.subarray(0, data.length - 1);
  return { name, sampleRate, pcm: data, durationMs: (data.length / 2 / sampleRate) * 1000 };
}

/** Loads files named relative to the shared audio dir (absolute paths are used as is). */
export function loadAudio(names: string[]): Audio[] {
  const dir = sharedAudioDir();
  return names.map((n) => readWav(path.isAbsolute(n) ? n : path.join(dir, n), n));
}

/** Splits PCM into frames of `frameMs` (the last one may be shorter). */
export function frames(audio: Audio, frameMs: number): Buffer[] {
  const bytes = Math.round((audio.sampleRate * frameMs) / 1000) * 2;
  const out: Buffer[] = [];
  for (let o = 0; o < audio.pcm.length; o += bytes) out.push(audio.pcm.subarray(o, o + bytes));
  return out;
}
