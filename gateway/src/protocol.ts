/**
 * The FunASR WebSocket protocol as zod schemas (types inferred with z.infer)
 * plus the builders of every server message.
 *
 * The schemas accept every config that the official clients send (Python
 * funasr_wss_client.py, the html5 page, Java FunasrWsClient, the C++
 * clients, C#'s "office" mode) and reject everything else with a stable
 * error code from errors.ts. Unknown fields are ignored because real clients
 * send extras (spk fields, svs_* on older servers) that must not break them.
 * See /work/shared/PROTOCOL.md and docs/gateway.md.
 */
import { z } from "zod";
import { GatewayError, type ErrorCode } from "./errors.js";

/** Modes a client may ask for ("office" is the C# client's alias of 2pass). */
export const CLIENT_MODES = ["offline", "online", "2pass", "office"] as const;

/** Sample rates the gateway accepts for PCM streams. */
export const SAMPLE_RATES = [8000, 16000] as const;

/** chunk_size: [look-back, chunk, look-ahead] in 60 ms units, as an array or a "5,10,5" string. */
export const ChunkSizeSchema = z
  .union([
    z.array(z.number().int().min(0).max(1000)).length(3),
    z
      .string()
      .trim()
      .regex(/^\d{1,4}\s*,\s*\d{1,4}\s*,\s*\d{1,4}$/, 'chunk_size string must look like "5,10,5"')
      .transform((s) => s.split(",").map((x) => Number(x.trim()))),
  ])
  .transform((a) => [a[0]!, a[1]!, a[2]!] as [number, number, number]);

/** Hotwords as sent: a string in one of three forms (or, leniently, an object word -> weight). */
export const HotwordsFieldSchema = z.union([z.string(), z.record(z.string(), z.union([z.number(), z.string()]))]);

/** A sample rate; some clients (C++ record mode) send 16000.0, which JSON parses as 16000. */
const AudioFsSchema = z
  .union([z.number(), z.string().trim().regex(/^\d+$/).transform(Number)])
  .pipe(z.number().refine((n) => (SAMPLE_RATES as readonly number[]).includes(n), "audio_fs must be 8000 or 16000"));

/** A small non-negative integer option (chunk_interval, look-backs). */
const SmallInt = z.number().int().min(0).max(100_000);

/**
 * Any JSON text frame from a client: the first is the config, later ones use
 * the same schema (mostly only `is_speaking`). `null` counts as absent.
 */
export const ClientMessageSchema = z.looseObject({
  mode: z.enum(CLIENT_MODES).nullish(),
  wav_name: z.string().max(256).nullish(),
  wav_format: z
    .string()
    .trim()
    .max(32)
    .regex(/^[A-Za-z0-9_.-]*$/, "wav_format must be a short format name")
    .nullish(),
  audio_fs: AudioFsSchema.nullish(),
  is_speaking: z.boolean().nullish(),
  is_finished: z.boolean().nullish(),
  is_end: z.boolean().nullish(),
  chunk_size: ChunkSizeSchema.nullish(),
  chunk_interval: SmallInt.nullish(),
  encoder_chunk_look_back: SmallInt.nullish(),
  decoder_chunk_look_back: SmallInt.nullish(),
  hotwords: HotwordsFieldSchema.nullish(),
  itn: z.boolean().nullish(),
  svs_lang: z.string().max(32).nullish(),
  svs_itn: z.boolean().nullish(),
  /** Extension: per-session is_final behaviour ("seed" or "cpp"). */
  is_final_mode: z.enum(["seed", "cpp"]).nullish(),
  /** Extension: partials carry the full newest hypothesis instead of deltas. */
  full_hypothesis: z.boolean().nullish(),
});

/** A validated client JSON message. */
export type ClientMessage = z.infer<typeof ClientMessageSchema>;

/** One hotword phrase as sent to the worker. */
export interface Hotword {
  /** The phrase. */
  phrase: string;
  /** The client's weight (engines may ignore it). */
  weight: number;
}

/** Caps on hotwords, from the gateway configuration. */
export interface HotwordLimits {
  /** Phrases at most. */
  maxHotwords: number;
  /** Characters per phrase at most. */
  maxHotwordChars: number;
  /** Bytes of the raw field at most. */
  maxHotwordsBytes: number;
}

/** Weight given to hotwords sent without one (FunASR's examples use 20). */
export const DEFAULT_HOTWORD_WEIGHT = 20;

/**
 * Parses hotwords in all three client forms: a JSON object inside a string
 * ("{\"阿里巴巴\":20}"), "word weight" lines, or space/comma separated words.
 * Throws GatewayError INVALID_HOTWORDS when malformed or over the limits.
 */
export function parseHotwords(raw: string | Record<string, number | string>, limits: HotwordLimits): Hotword[] {
  let entries: Array<[string, number]>;
  const rawBytes = Buffer.byteLength(typeof raw === "string" ? raw : JSON.stringify(raw));
  if (rawBytes > limits.maxHotwordsBytes) {
    throw new GatewayError("INVALID_HOTWORDS", `hotwords field is ${rawBytes} bytes; the limit is ${limits.maxHotwordsBytes}`);
  }
  if (typeof raw !== "string") {
    entries = Object.entries(raw).map(([k, v]) => [k, weightOf(v)]);
  } else {
    const text = raw.trim();
    if (text === "") return [];
    if (text.startsWith("{")) {
      let obj: unknown;
      try {
        obj = JSON.parse(text);
      } catch {
        throw new GatewayError("INVALID_HOTWORDS", "hotwords looks like a JSON object but does not parse");
      }
      const r = z.record(z.string(), z.union([z.number(), z.string()])).safeParse(obj);
      if (!r.success) throw new GatewayError("INVALID_HOTWORDS", "hotwords JSON must map phrases to weights");
      entries = Object.entries(r.data).map(([k, v]) => [k, weightOf(v)]);
    } else {
      const lines = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length > 0);
      const weighted = lines.every((l) => /^\S.*\s+-?\d+(\.\d+)?$/.test(l));
      if (weighted) {
        // "阿里巴巴 20" lines (the Python client's hotword file format).
        entries = lines.map((l) => {
          const m = /^(.*\S)\s+(-?\d+(?:\.\d+)?)$/.exec(l)!;
          return [m[1]!, Number(m[2])];
        });
      } else {
        entries = text
          .split(/[\s,，、;；]+/)
          .filter((w) => w.length > 0)
          .map((w) => [w, DEFAULT_HOTWORD_WEIGHT]);
      }
    }
  }
  const seen = new Map<string, number>();
  for (const [phraseRaw, weight] of entries) {
    const phrase = phraseRaw.trim();
    if (phrase === "") continue;
    if ([...phrase].length > limits.maxHotwordChars) {
      throw new GatewayError("INVALID_HOTWORDS", `a hotword is longer than ${limits.maxHotwordChars} characters`);
    }
    if (!Number.isFinite(weight)) throw new GatewayError("INVALID_HOTWORDS", "a hotword weight is not a number");
    if (!seen.has(phrase)) seen.set(phrase, weight);
  }
  if (seen.size > limits.maxHotwords) {
    throw new GatewayError("INVALID_HOTWORDS", `${seen.size} hotwords; the limit is ${limits.maxHotwords}`);
  }
  return [...seen].map(([phrase, weight]) => ({ phrase, weight }));
}

function weightOf(v: number | string): number {
  const n = typeof v === "number" ? v : Number(v.trim());
  return Number.isFinite(n) ? n : Number.NaN;
}

/** Maps a zod issue path to the most specific error code. */
function codeForPath(path: readonly PropertyKey[]): ErrorCode {
  switch (path[0]) {
    case "mode":
      return "UNSUPPORTED_MODE";
    case "audio_fs":
      return "UNSUPPORTED_SAMPLE_RATE";
    case "hotwords":
      return "INVALID_HOTWORDS";
    default:
      return "INVALID_MESSAGE";
  }
}

/**
 * Parses and validates one client text frame. Throws GatewayError with
 * INVALID_JSON, INVALID_MESSAGE, UNSUPPORTED_MODE, UNSUPPORTED_SAMPLE_RATE or
 * INVALID_HOTWORDS; the message names the offending field, never its content.
 */
export function parseClientMessage(text: string): ClientMessage {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new GatewayError("INVALID_JSON");
  }
  if (json === null || typeof json !== "object" || Array.isArray(json)) {
    throw new GatewayError("INVALID_MESSAGE", "a text frame must be a JSON object");
  }
  const r = ClientMessageSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const field = issue.path.length > 0 ? issue.path.map(String).join(".") : "message";
    const code = codeForPath(issue.path);
    throw new GatewayError(code, `${field}: ${issue.message}`);
  }
  return r.data;
}

// ---------------------------------------------------------------------------
// Server -> client messages

/** The `mode` values of server messages. */
export const OUTPUT_MODES = ["online", "offline", "2pass-online", "2pass-offline"] as const;

/** The `mode` field of server messages. */
export type OutputMode = (typeof OUTPUT_MODES)[number];

/** One sentence of `stamp_sents`, as FunASR servers send it. */
export interface StampSent {
  /** The sentence's tokens, space separated. */
  text_seg: string;
  /** Trailing punctuation (empty when the engine gives none separately). */
  punc: string;
  /** Start in ms. */
  start: number;
  /** End in ms. */
  end: number;
  /** Per-token [start, end] pairs in ms. */
  ts_list: Array<[number, number]>;
}

/** Every server message: mode, text, wav_name and is_final are always present. */
export const ServerMessageSchema = z.looseObject({
  mode: z.enum(OUTPUT_MODES),
  text: z.string(),
  wav_name: z.string(),
  is_final: z.boolean(),
  timestamp: z.string().optional(),
  stamp_sents: z
    .array(
      z.object({
        text_seg: z.string(),
        punc: z.string(),
        start: z.number(),
        end: z.number(),
        ts_list: z.array(z.tuple([z.number(), z.number()])),
      }),
    )
    .optional(),
  is_end: z.boolean().optional(),
  error: z.string().optional(),
  code: z.string().optional(),
});

/** A server message (the client library validates incoming frames with the schema). */
export type ServerMessage = z.infer<typeof ServerMessageSchema>;

/** A token with times, as the worker reports them. */
export interface TimedToken {
  /** Token text. */
  text: string;
  /** Start in ms. */
  startMs: number;
  /** End in ms. */
  endMs: number;
}

/** A partial or final result message. */
export function resultMessage(o: {
  mode: OutputMode;
  wavName: string;
  text: string;
  isFinal: boolean;
  tokens?: readonly TimedToken[];
}): ServerMessage {
  const m: ServerMessage = { mode: o.mode, text: o.text, wav_name: o.wavName, is_final: o.isFinal };
  if (o.tokens !== undefined && o.tokens.length > 0) {
    m.timestamp = timestampString(o.tokens);
    m.stamp_sents = [stampSent(o.tokens)];
  }
  return m;
}

/** The offline mode's single message: the round's finals joined, timestamps covering all of them. */
export function joinedOfflineMessage(o: {
  wavName: string;
  segments: ReadonlyArray<{ text: string; tokens: readonly TimedToken[] }>;
}): ServerMessage {
  const text = joinTexts(o.segments.map((s) => s.text));
  const m: ServerMessage = { mode: "offline", text, wav_name: o.wavName, is_final: true };
  const all = o.segments.flatMap((s) => s.tokens);
  if (all.length > 0) {
    m.timestamp = timestampString(all);
    m.stamp_sents = o.segments.filter((s) => s.tokens.length > 0).map((s) => stampSent(s.tokens));
  }
  return m;
}

/** The end-of-input acknowledgement (`is_end: true`); is_final false plus error when the round failed. */
export function endAckMessage(o: { mode: OutputMode; wavName: string; error?: string }): ServerMessage {
  const m: ServerMessage = { mode: o.mode, wav_name: o.wavName, text: "", is_final: o.error === undefined, is_end: true };
  if (o.error !== undefined) m.error = o.error;
  return m;
}

/** An error message: text "", is_final true (so waiting clients stop), the code and a reason. */
export function errorMessage(o: { mode: OutputMode; wavName: string; code: ErrorCode; message: string }): ServerMessage {
  return { mode: o.mode, wav_name: o.wavName, text: "", is_final: true, error: `${o.code}: ${o.message}`, code: o.code };
}

/** FunASR's timestamp field: a JSON STRING "[[start_ms,end_ms],...]". */
export function timestampString(tokens: readonly TimedToken[]): string {
  return JSON.stringify(tokens.map((t) => [Math.round(t.startMs), Math.round(t.endMs)]));
}

const PUNCT = /^[，。？！、,.?!;；:：]+$/u;

function stampSent(tokens: readonly TimedToken[]): StampSent {
  const words = tokens.filter((t) => !PUNCT.test(t.text));
  const last = tokens[tokens.length - 1];
  const punc = last !== undefined && PUNCT.test(last.text) ? last.text : "";
  const timed = words.length > 0 ? words : tokens;
  return {
    text_seg: timed.map((t) => t.text).join(" "),
    punc,
    start: Math.round(timed[0]?.startMs ?? 0),
    end: Math.round(timed[timed.length - 1]?.endMs ?? 0),
    ts_list: timed.map((t) => [Math.round(t.startMs), Math.round(t.endMs)] as [number, number]),
  };
}

/**
 * Joins segment texts: no separator between CJK text (as FunASR does), one
 * space between Latin words so that English segments do not run together.
 */
export function joinTexts(texts: readonly string[]): string {
  let out = "";
  for (const t of texts) {
    if (t === "") continue;
    if (out !== "" && /[A-Za-z0-9]$/.test(out) && /^[A-Za-z0-9]/.test(t)) out += " ";
    out += t;
  }
  return out;
}
