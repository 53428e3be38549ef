/**
 * A reusable FunASR WebSocket protocol client: one session = connect, send
 * the config, stream audio frames (paced in real time, faster, or not at
 * all), end input, and collect partials and finals until the session is
 * complete. The CLI (funasr-client.ts) and load tools build on it.
 *
 * When is a session complete? With `isEnd` (the default, as the 2026
 * official Python client does): when the `is_end` acknowledgement arrives.
 * Without it: at the first is_final:true message after end of input; for
 * 2pass/online the session then asks for the cpp is_final behaviour
 * (exactly one is_final:true after end of input) unless `isFinalMode` says
 * otherwise. Either way a deadline turns a silent server into an error.
 */
import { readFileSync } from "node:fs";
import path from "node:path";
import WebSocket from "ws";
import { decodeWav, looksLikeWav } from "../gateway/src/audio.js";
import { ServerMessageSchema, type ServerMessage } from "../gateway/src/protocol.js";

/** Options of one session. */
export interface FunasrSessionOptions {
  /** ws:// or wss:// URL. */
  url: string;
  /** FunASR mode. */
  mode: "offline" | "online" | "2pass";
  /** Echoed in every reply. */
  wavName: string;
  /** "pcm" for streams; a container name ("wav", "mp3") to send a whole file in offline mode. */
  wavFormat: string;
  /** Sample rate of PCM audio. */
  audioFs: number;
  /** [look-back, chunk, look-ahead] in 60 ms units. */
  chunkSize: [number, number, number];
  /** Frames per chunk: frame = 60 * chunkSize[1] / chunkInterval ms. */
  chunkInterval: number;
  /** Hotwords string as FunASR clients send it (any of the three forms). */
  hotwords?: string | undefined;
  /** Inverse text normalization. */
  itn: boolean;
  /** Ask for the end-of-input acknowledgement. */
  isEnd: boolean;
  /** Extension: request an is_final behaviour. */
  isFinalMode?: "seed" | "cpp" | undefined;
  /** Extension: full hypotheses instead of deltas. */
  fullHypothesis?: boolean | undefined;
  /** Playback speed: 1 = real time, 2 = twice as fast, 0 = no pacing. */
  speed: number;
  /** Give up this long after end of input without completion. */
  timeoutMs: number;
  /** Accept self-signed certificates (wss). */
  insecure?: boolean | undefined;
  /** Bearer token for gateways with AUTH_TOKEN. */
  token?: string | undefined;
  /** Subprotocols to offer (the Python client offers ["binary"]). */
  protocols?: string[] | undefined;
}

/** Callbacks during a session. */
export interface FunasrSessionEvents {
  /** Every server message with its arrival time (performance.now()). */
  onMessage?: (m: ServerMessage, atMs: number) => void;
  /** The open segment's text so far (deltas concatenated, or the full hypothesis). */
  onPartial?: (segmentText: string, m: ServerMessage) => void;
  /** A final (2pass-offline, offline, or an online end-of-input flush). */
  onFinal?: (m: ServerMessage) => void;
  /** Sent audio, in bytes so far (for load tools). */
  onAudioSent?: (bytesSoFar: number, atMs: number) => void;
}

/** The outcome of one session. */
export interface FunasrSessionResult {
  /** Whether the session completed without error. */
  ok: boolean;
  /** Why not. */
  error?: string | undefined;
  /** Finals in arrival order. */
  finals: ServerMessage[];
  /** Every message. */
  messages: ServerMessage[];
  /** The acknowledgement, when asked for. */
  ack?: ServerMessage | undefined;
  /** The transcript: finals joined. */
  text: string;
  /** The negotiated subprotocol. */
  protocol: string;
}

/** Audio to send: PCM frames (any size) or a whole file. */
export interface AudioSource {
  /** PCM16LE mono at `sampleRateHz`, or the bytes of a whole file when `isFile`. */
  data: Buffer;
  /** PCM sample rate (ignored for files). */
  sampleRateHz: number;
  /** Whether `data` is a whole file (offline mode with a container format). */
  isFile: boolean;
  /** The file's format name when isFile. */
  format: string;
}

/**
 * Loads audio for a session: a .wav file is decoded to PCM (8/16 kHz kept,
 * other rates resampled to 16 kHz); .pcm is raw PCM at `audioFs`; anything
 * else is sent as a whole file (offline mode only).
 */
export function loadAudioFile(file: string, audioFs = 16000): AudioSource {
  const data = readFileSync(file);
  const ext = path.extname(file).slice(1).toLowerCase();
  if (looksLikeWav(data)) {
    const d = decodeWav(data);
    return { data: d.pcm, sampleRateHz: d.sampleRateHz, isFile: false, format: "pcm" };
  }
  if (ext === "pcm" || ext === "raw") return { data, sampleRateHz: audioFs, isFile: false, format: "pcm" };
  return { data, sampleRateHz: audioFs, isFile: true, format: ext || "others" };
}

/** Whether a message is a final of the FunASR protocol (not an ack or an error). */
export function isFinalMessage(m: ServerMessage): boolean {
  if (m.is_end === true || m.error !== undefined) return false;
  return m.mode === "2pass-offline" || m.mode === "offline" || (m.mode === "online" && m.is_final);
}

/** Runs one session to completion (never throws for server-side failures; see `ok`). */
export async function runFunasrSession(
  o: FunasrSessionOptions,
  audio: AudioSource,
  ev: FunasrSessionEvents = {},
): Promise<FunasrSessionResult> {
  const messages: ServerMessage[] = [];
  const finals: ServerMessage[] = [];
  let ack: ServerMessage | undefined;
  let error: string | undefined;
  let eoiSent = false;
  let segmentText = "";
  let done = false;
  const headers: Record<string, string> = {};
  if (o.token !== undefined) headers.Authorization = `Bearer ${o.token}`;
  const ws = new WebSocket(o.url, o.protocols ?? [], { rejectUnauthorized: o.insecure !== true, headers, perMessageDeflate: false });
  let finish!: () => void;
  const finished = new Promise<void>((r) => (finish = r));
  const complete = (err?: string): void => {
    if (done) return;
    done = true;
    if (err !== undefined && error === undefined) error = err;
    finish();
  };
  const wantIsFinalMode = o.isFinalMode ?? (!o.isEnd && o.mode !== "offline" ? "cpp" : undefined);

  ws.on("message", (data: Buffer, isBinary: boolean) => {
    const at = performance.now();
    if (isBinary) return;
    let m: ServerMessage;
    try {
      m = ServerMessageSchema.parse(JSON.parse(data.toString("utf8")));
    } catch {
      complete("server sent a message that is not FunASR JSON (missing mode/text/wav_name/is_final)");
      return;
    }
    messages.push(m);
    ev.onMessage?.(m, at);
    if (m.error !== undefined) {
      error ??= m.error;
      if (m.is_end === true) ack = m;
      if (m.is_end === true || eoiSent) complete();
      return;
    }
    if (m.is_end === true) {
      ack = m;
      if (!m.is_final) error ??= "server did not finalize the input";
      complete();
      return;
    }
    if (m.mode === "2pass-online" || (m.mode === "online" && !m.is_final)) {
      segmentText = o.fullHypothesis === true ? m.text : segmentText + m.text;
      ev.onPartial?.(segmentText, m);
      if (m.mode === "2pass-online") return;
    }
    if (isFinalMessage(m)) {
      segmentText = "";
      finals.push(m);
      ev.onFinal?.(m);
      if (!o.isEnd && eoiSent && m.is_final) complete();
    }
  });
  ws.on("close", (code: number, reason: Buffer) => {
    if (!done) complete(`connection closed (${code}${reason.length > 0 ? ` ${reason.toString()}` : ""}) before the session completed`);
  });
  const opened = await new Promise<string | null>((resolve) => {
    ws.once("open", () => resolve(null));
    ws.once("error", (e) => resolve(e.message));
    ws.once("unexpected-response", (_req, res) => {
      const retry = res.headers["retry-after"];
      resolve(`server refused the connection: HTTP ${res.statusCode}${retry !== undefined ? ` (Retry-After ${retry})` : ""}`);
      res.resume();
    });
  });
  if (opened !== null) {
    return { ok: false, error: opened, finals, messages, text: "", protocol: "" };
  }
  ws.on("error", () => {
    // close follows
  });

  const config: Record<string, unknown> = {
    mode: o.mode,
    chunk_size: o.chunkSize,
    chunk_interval: o.chunkInterval,
    encoder_chunk_look_back: 4,
    decoder_chunk_look_back: 0,
    audio_fs: audio.isFile ? o.audioFs : audio.sampleRateHz,
    wav_name: o.wavName,
    wav_format: audio.isFile ? audio.format : o.wavFormat,
    is_speaking: true,
    hotwords: o.hotwords ?? "",
    itn: o.itn,
  };
  if (wantIsFinalMode !== undefined) config.is_final_mode = wantIsFinalMode;
  if (o.fullHypothesis === true) config.full_hypothesis = true;
  ws.send(JSON.stringify(config));

  // Frame size as FunASR clients compute it: 60 ms * chunk_size[1] / chunk_interval.
  const frameMs = (60 * o.chunkSize[1]) / Math.max(1, o.chunkInterval);
  const frameBytes = audio.isFile ? 204_800 : Math.max(2, Math.round((frameMs / 1000) * audio.sampleRateHz) * 2);
  const t0 = performance.now();
  let sent = 0;
  for (let off = 0, i = 0; off < audio.data.length && !done; off += frameBytes, i++) {
    const frame = audio.data.subarray(off, Math.min(audio.data.length, off + frameBytes));
    ws.send(frame);
    sent += frame.length;
    ev.onAudioSent?.(sent, performance.now());
    if (o.speed > 0 && !audio.isFile) {
      const due = t0 + ((i + 1) * frameMs) / o.speed;
      const wait = due - performance.now();
      if (wait > 0) await sleep(wait);
    } else if (ws.bufferedAmount > 4 * 1024 * 1024) {
      while (ws.bufferedAmount > 1024 * 1024 && ws.readyState === WebSocket.OPEN) await sleep(5);
    }
  }
  if (!done && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify(o.isEnd ? { is_speaking: false, is_end: true } : { is_speaking: false }));
    eoiSent = true;
  }
  const timer = setTimeout(() => complete(`no final from the server within ${o.timeoutMs} ms after end of input`), o.timeoutMs);
  await finished;
  clearTimeout(timer);
  const protocol = ws.protocol;
  ws.close(1000);
  return {
    ok: error === undefined,
    error,
    finals,
    messages,
    ack,
    text: finals.map((f) => f.text).join(""),
    protocol,
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
