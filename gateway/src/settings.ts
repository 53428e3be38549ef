/**
 * A session's settings: what the client's config frames ask for, merged over
 * the deployment defaults, and the worker StreamingConfig that follows from
 * them.
 *
 * Why a module of its own: the merge rules are protocol rules (PROTOCOL.md:
 * "a new config frame may update wav_name, mode, itn, audio_fs, wav_format;
 * hotwords and chunk_size persist") that the session, the output policy and
 * the worker link all read, but only this file decides.
 */
import { RecognitionMode, type StreamingConfig } from "./gen/asr/v1/asr.js";
import { parseHotwords, type ClientMessage, type Hotword, type HotwordLimits } from "./protocol.js";

/** How a round is served: offline, 2pass, or strict online. */
export type ServiceKind = "offline" | "2pass" | "online";

/** Settings in force for a round (the client may change them between rounds). */
export interface Settings {
  /** How the round is served. */
  readonly kind: ServiceKind;
  /** Echoed in every reply. */
  readonly wavName: string;
  /** "pcm" for streams; a container name (wav, mp3, ...) for whole files in offline mode. */
  readonly wavFormat: string;
  /** PCM sample rate, 8000 or 16000. */
  readonly audioFs: number;
  /** Inverse text normalization. */
  readonly itn: boolean;
  /** Language hint for the model ("" = automatic). */
  readonly language: string;
  /** [look-back, chunk, look-ahead] in 60 ms units; chunk sets the partial cadence. */
  readonly chunkSize: readonly [number, number, number];
  /** Parsed hotwords. */
  readonly hotwords: readonly Hotword[];
  /** is_final behaviour of 2pass rounds. */
  readonly isFinalMode: "seed" | "cpp";
  /** Partials carry the full hypothesis instead of deltas. */
  readonly fullHypothesis: boolean;
}

/** Deployment behaviours and caps that the merge needs. */
export interface SettingsPolicy extends HotwordLimits {
  /** Deployment default is_final behaviour. */
  isFinalMode: "seed" | "cpp";
  /** What "online" means. */
  onlineMode: "upgrade" | "strict";
}

/** The settings before any config frame. */
export function defaultSettings(policy: SettingsPolicy): Settings {
  return {
    kind: "2pass",
    wavName: "microphone",
    wavFormat: "pcm",
    audioFs: 16000,
    itn: true,
    language: "",
    chunkSize: [5, 10, 5],
    hotwords: [],
    isFinalMode: policy.isFinalMode,
    fullHypothesis: false,
  };
}

/**
 * Applies a client message to the settings. The first config also decides
 * the default mode (absent mode: "2pass", or "offline" when wav_format is
 * not pcm, as the C++ offline client expects). Later configs update
 * wav_name, mode, itn, audio_fs, wav_format, language and the extensions;
 * hotwords and chunk_size persist unless sent again. Throws GatewayError
 * INVALID_HOTWORDS for bad hotwords (the settings are then unchanged).
 */
export function applyConfig(prev: Settings, m: ClientMessage, policy: SettingsPolicy, first: boolean): Settings {
  const wavFormat = m.wav_format != null && m.wav_format !== "" ? m.wav_format : prev.wavFormat;
  let kind = prev.kind;
  if (m.mode != null) {
    kind = m.mode === "offline" ? "offline" : m.mode === "online" && policy.onlineMode === "strict" ? "online" : "2pass";
  } else if (first && wavFormat.toLowerCase() !== "pcm") {
    kind = "offline";
  }
  return {
    kind,
    wavName: m.wav_name ?? prev.wavName,
    wavFormat,
    audioFs: m.audio_fs ?? prev.audioFs,
    itn: m.itn ?? prev.itn,
    language: m.svs_lang != null ? (m.svs_lang.toLowerCase() === "auto" ? "" : m.svs_lang) : prev.language,
    chunkSize: m.chunk_size ?? prev.chunkSize,
    hotwords: m.hotwords != null ? parseHotwords(m.hotwords, policy) : prev.hotwords,
    isFinalMode: m.is_final_mode ?? prev.isFinalMode,
    fullHypothesis: m.full_hypothesis ?? prev.fullHypothesis,
  };
}

/** Offline mode with a container format: the bytes are a whole file, decoded at end of input. */
export function isFileMode(s: Settings): boolean {
  return s.kind === "offline" && s.wavFormat.toLowerCase() !== "pcm";
}

/** The worker StreamingConfig for a round with these settings. */
export function workerConfig(sessionId: string, s: Settings): StreamingConfig {
  return {
    sessionId,
    wavName: s.wavName,
    mode:
      s.kind === "offline"
        ? RecognitionMode.RECOGNITION_MODE_OFFLINE
        : s.kind === "online"
          ? RecognitionMode.RECOGNITION_MODE_ONLINE
          : RecognitionMode.RECOGNITION_MODE_TWO_PASS,
    sampleRateHz: s.audioFs,
    hotwords: s.hotwords.map((h) => ({ phrase: h.phrase, weight: h.weight })),
    itn: s.itn,
    language: s.language,
    partialIntervalMs: s.chunkSize[1] * 60,
  };
}
