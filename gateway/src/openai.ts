/**
 * OpenAI-compatible file transcription: `POST /v1/audio/transcriptions`, the
 * API most tools speak for "transcribe this file" (the `openai` SDKs,
 * LangChain, editors' dictation plugins).
 *
 * The request is multipart/form-data as OpenAI defines it: `file` (required),
 * `model` (required, any value: a deployment serves one model), `language`,
 * `prompt` (mapped to hotwords: Fun-ASR-Nano takes phrases in its prompt, so
 * the words of the prompt become the phrases it prefers), `response_format`
 * (json | text | verbose_json | srt | vtt), `timestamp_granularities[]`
 * (segment, word) and `temperature` (accepted, ignored). The file is decoded
 * like the offline mode's files (WAV in-process, anything else with ffmpeg)
 * and recognized through the same worker path (transcribe.ts); each VAD
 * segment becomes one verbose_json segment and one subtitle cue.
 *
 * Every failure is answered in OpenAI's error shape
 * (`{"error": {"message", "type", "param", "code"}}`) so that SDKs raise
 * their typed errors. Uploads larger than MAX_FILE_BYTES are refused with
 * 413; the gateway's token is accepted as `Authorization: Bearer` (what the
 * SDKs send as the API key).
 */
import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import busboy from "busboy";
import type { Logger } from "pino";
import { z } from "zod";
import type { FileDecoder, Pcm16 } from "./audio.js";
import { GatewayError } from "./errors.js";
import { parseHotwords, type HotwordLimits, joinTexts, type TimedToken } from "./protocol.js";
import { toSrt, toVtt } from "./subtitles.js";
import { transcribe, TranscribeError, type Transcript } from "./transcribe.js";
import type { WorkerSource } from "./workers.js";

/** The path this module serves. */
export const TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions";

/** What the endpoint is built from (http.ts wires it). */
export interface OpenAiDeps {
  /** Worker placement. */
  workers: WorkerSource;
  /** Decoder for uploaded files. */
  decoder: FileDecoder;
  /** Largest upload (MAX_FILE_BYTES) and the hotword caps applied to `prompt`. */
  limits: HotwordLimits & { maxFileBytes: number };
  /** Retry-After on 503. */
  retryAfterSeconds: number;
  /** Whether the request carries the gateway's token (always true when auth is off). */
  authorize(req: IncomingMessage): boolean;
  /** Why a new request cannot be taken now (draining, session limit), or null. */
  refusal(): string | null;
  /** Root logger. */
  logger: Logger;
}

/** The formats OpenAI defines for transcriptions. */
const RESPONSE_FORMATS = ["json", "text", "verbose_json", "srt", "vtt"] as const;

/** The form fields, validated once here at the edge (unknown fields are ignored, as OpenAI adds some over time). */
const FieldsSchema = z.looseObject({
  model: z.string({ error: "model is required" }).trim().min(1, "model is required"),
  language: z
    .string()
    .trim()
    .max(32, "language must be at most 32 characters")
    .optional()
    .transform((l) => (l === undefined || l.toLowerCase() === "auto" ? "" : l)),
  prompt: z.string().optional(),
  response_format: z.enum(RESPONSE_FORMATS, { error: `response_format must be one of ${RESPONSE_FORMATS.join(", ")}` }).default("json"),
  temperature: z.coerce.number().min(0).max(1).optional(),
  timestamp_granularities: z.array(z.enum(["segment", "word"], { error: "timestamp_granularities[] must be segment or word" })).default([]),
  stream: z
    .enum(["true", "false"])
    .optional()
    .refine((s) => s !== "true", "stream=true is not supported; the whole transcript is returned at once"),
});

type Fields = z.infer<typeof FieldsSchema>;

/** An error answered in OpenAI's shape. */
class OpenAiError extends Error {
  constructor(
    readonly status: number,
    readonly type: "invalid_request_error" | "server_error",
    readonly code: string,
    message: string,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

/** The `POST /v1/audio/transcriptions` handler (see module comment). */
export class OpenAiTranscriptions {
  private readonly d: OpenAiDeps;
  private active = 0;

  /** Creates the handler. */
  constructor(deps: OpenAiDeps) {
    this.d = deps;
  }

  /** Requests being served now (they count against MAX_SESSIONS and are waited for on shutdown). */
  get inFlight(): number {
    return this.active;
  }

  /** Serves one request; never throws (every failure becomes an OpenAI error response). */
  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.active++;
    const id = randomUUID();
    const log = this.d.logger.child({ request: id, api: "openai" });
    const abort = new AbortController();
    res.on("close", () => {
      if (!res.writableFinished) abort.abort();
    });
    try {
      await this.serve(req, res, id, log, abort.signal);
    } catch (e) {
      const err = this.toOpenAiError(e, log);
      log.info({ status: err.status, code: err.code }, "transcription request refused or failed");
      if (!req.complete && !req.destroyed) {
        if (err.status === 413) {
          // Do not read an oversized upload: answer and close so the client stops sending it.
          res.setHeader("Connection", "close");
        } else {
          // Read (and drop) the rest of the body first: a client still uploading would
          // otherwise see a reset instead of the error.
          await new Promise<void>((r) => {
            req.once("end", r);
            req.once("close", r);
            req.resume();
          });
        }
      }
      sendJson(res, err.status, { error: { message: err.message, type: err.type, param: err.param, code: err.code } }, err.headers);
    } finally {
      this.active--;
    }
  }

  private async serve(req: IncomingMessage, res: ServerResponse, id: string, log: Logger, signal: AbortSignal): Promise<void> {
    if (req.method !== "POST") {
      throw new OpenAiError(405, "invalid_request_error", "method_not_allowed", `${TRANSCRIPTIONS_PATH} takes POST`, null, { Allow: "POST" });
    }
    if (!this.d.authorize(req)) {
      throw new OpenAiError(401, "invalid_request_error", "invalid_api_key", "a valid token is required: send it as the API key (Authorization: Bearer)", null, {
        "WWW-Authenticate": "Bearer",
      });
    }
    const refusal = this.d.refusal() ?? (this.d.workers.servingCount() === 0 ? "no recognition worker is available; retry later" : null);
    if (refusal !== null) throw this.unavailable(refusal);
    const declared = Number(req.headers["content-length"] ?? "0");
    // Multipart framing adds a little to the file; refuse what cannot fit before reading it.
    if (declared > this.d.limits.maxFileBytes + 64 * 1024) throw tooLarge(this.d.limits.maxFileBytes);

    const form = await readForm(req, this.d.limits.maxFileBytes);
    const parsed = FieldsSchema.safeParse({
      ...form.fields,
      timestamp_granularities: [...(form.arrays["timestamp_granularities[]"] ?? []), ...(form.arrays["timestamp_granularities"] ?? [])],
    });
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      const param = String(issue.path[0] ?? "") || null;
      throw new OpenAiError(400, "invalid_request_error", "invalid_value", issue.message, param === "timestamp_granularities" ? "timestamp_granularities[]" : param);
    }
    const fields = parsed.data;
    if (form.file === null) throw new OpenAiError(400, "invalid_request_error", "missing_file", "file is required (multipart field \"file\")", "file");
    if (form.file.bytes.length === 0) throw new OpenAiError(400, "invalid_request_error", "invalid_value", "file is empty", "file");
    let hotwords;
    try {
      hotwords = fields.prompt === undefined ? [] : parseHotwords(fields.prompt, this.d.limits);
    } catch (e) {
      if (e instanceof GatewayError) throw new OpenAiError(400, "invalid_request_error", "invalid_value", `prompt: ${e.message}`, "prompt");
      throw e;
    }

    let audio: Pcm16;
    try {
      audio = await this.d.decoder.decode(form.file.bytes, formatHint(form.file.name, form.file.mimeType));
    } catch (e) {
      if (e instanceof GatewayError) throw new OpenAiError(400, "invalid_request_error", e.code.toLowerCase(), e.message, "file");
      throw e;
    }
    const t0 = Date.now();
    const transcript = await transcribe(
      { workers: this.d.workers, logger: log },
      audio.pcm,
      { name: form.file.name, requestId: id, sampleRateHz: audio.sampleRateHz, hotwords, itn: true, language: fields.language },
      null,
      signal,
    );
    log.info(
      { worker: transcript.worker, segments: transcript.segments.length, audio_ms: transcript.durationMs, ms: Date.now() - t0, format: fields.response_format },
      "transcription served",
    );
    respond(res, fields, transcript);
  }

  private unavailable(message: string): OpenAiError {
    return new OpenAiError(503, "server_error", "service_unavailable", message, null, { "Retry-After": String(this.d.retryAfterSeconds) });
  }

  private toOpenAiError(e: unknown, log: Logger): OpenAiError {
    if (e instanceof OpenAiError) return e;
    if (e instanceof TranscribeError) {
      if (e.kind === "unavailable") return this.unavailable(e.message);
      if (e.kind === "rejected") return new OpenAiError(400, "invalid_request_error", "invalid_value", e.message);
      return new OpenAiError(500, "server_error", "transcription_failed", e.message);
    }
    if (e instanceof FormError) return new OpenAiError(e.status, "invalid_request_error", e.code, e.message, e.param);
    log.error({ err: e }, "unexpected error in the transcription endpoint");
    return new OpenAiError(500, "server_error", "internal_error", "internal gateway error");
  }
}

// ---------------------------------------------------------------------------
// multipart

/** A malformed or oversized form. */
class FormError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

function tooLarge(max: number): OpenAiError {
  return new OpenAiError(413, "invalid_request_error", "file_too_large", `file exceeds the upload limit of ${max} bytes (MAX_FILE_BYTES)`, "file");
}

interface Form {
  /** Single-valued fields (the last value wins). */
  fields: Record<string, string>;
  /** Every value of each field, for array fields such as timestamp_granularities[]. */
  arrays: Record<string, string[]>;
  file: { name: string; mimeType: string; bytes: Buffer } | null;
}

/** Largest text field (a prompt); OpenAI's own prompt limit is far below this. */
const MAX_FIELD_BYTES = 64 * 1024;

/** Reads the multipart body with busboy, keeping the `file` part in memory up to `maxFileBytes`. */
function readForm(req: IncomingMessage, maxFileBytes: number): Promise<Form> {
  return new Promise((resolve, reject) => {
    let bb: busboy.Busboy;
    try {
      bb = busboy({
        headers: req.headers,
        limits: { fileSize: maxFileBytes, files: 1, fields: 32, fieldSize: MAX_FIELD_BYTES, parts: 40 },
      });
    } catch {
      reject(new FormError(400, "invalid_value", "the body must be multipart/form-data"));
      return;
    }
    const form: Form = { fields: {}, arrays: {}, file: null };
    let failure: Error | null = null;
    const fail = (e: Error): void => {
      failure ??= e;
    };
    bb.on("field", (name, value, info) => {
      if (info.valueTruncated) fail(new FormError(400, "invalid_value", `field ${name} exceeds ${MAX_FIELD_BYTES} bytes`, name));
      form.fields[name] = value;
      (form.arrays[name] ??= []).push(value);
    });
    bb.on("file", (name, stream, info) => {
      if (name !== "file") {
        stream.resume();
        return;
      }
      const chunks: Buffer[] = [];
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("limit", () => fail(tooLarge(maxFileBytes)));
      stream.on("end", () => {
        form.file = { name: info.filename ?? "audio", mimeType: info.mimeType, bytes: Buffer.concat(chunks) };
      });
    });
    bb.on("filesLimit", () => fail(new FormError(400, "invalid_value", "only one file may be sent", "file")));
    bb.on("partsLimit", () => fail(new FormError(400, "invalid_value", "too many form parts")));
    bb.on("fieldsLimit", () => fail(new FormError(400, "invalid_value", "too many form fields")));
    bb.on("error", () => {
      fail(new FormError(400, "invalid_value", "the multipart body is malformed"));
      reject(failure);
    });
    bb.on("close", () => (failure !== null ? reject(failure) : resolve(form)));
    req.on("aborted", () => reject(new FormError(400, "invalid_value", "the upload was aborted")));
    req.pipe(bb);
  });
}

/** The decoder's format hint: the file name's extension, else the MIME subtype. */
function formatHint(name: string, mimeType: string): string {
  const ext = /\.([A-Za-z0-9]{1,8})$/.exec(name)?.[1];
  if (ext !== undefined) return ext.toLowerCase();
  return mimeType.split("/")[1]?.toLowerCase() ?? "bin";
}

// ---------------------------------------------------------------------------
// responses

const PUNCT_ONLY = /^[\p{P}\s]+$/u;

/** verbose_json words: the engine's timed tokens (characters for Chinese), punctuation left out, in seconds. */
function words(tokens: readonly TimedToken[]): Array<{ word: string; start: number; end: number }> {
  return tokens.filter((t) => t.text.trim() !== "" && !PUNCT_ONLY.test(t.text)).map((t) => ({ word: t.text.trim(), start: sec(t.startMs), end: sec(t.endMs) }));
}

function sec(ms: number): number {
  return Math.round(ms) / 1000;
}

function respond(res: ServerResponse, fields: Fields, t: Transcript): void {
  const text = joinTexts(t.segments.map((s) => s.text));
  switch (fields.response_format) {
    case "json":
      sendJson(res, 200, { text });
      return;
    case "text":
      sendText(res, "text/plain; charset=utf-8", `${text}\n`);
      return;
    case "srt":
      sendText(res, "application/x-subrip; charset=utf-8", toSrt(t.segments.filter((s) => s.text !== "")));
      return;
    case "vtt":
      sendText(res, "text/vtt; charset=utf-8", toVtt(t.segments.filter((s) => s.text !== "")));
      return;
    case "verbose_json": {
      const g = fields.timestamp_granularities;
      // OpenAI: segments are the default granularity; words only when asked for.
      const withSegments = g.length === 0 || g.includes("segment");
      const body: Record<string, unknown> = { task: "transcribe", language: fields.language || "auto", duration: sec(t.durationMs), text };
      if (withSegments) {
        body.segments = t.segments.map((s, i) => ({
          id: i,
          seek: 0,
          start: sec(s.startMs),
          end: sec(s.endMs),
          text: s.text,
          // Whisper decoding statistics that this engine does not compute: neutral values, as other
          // OpenAI-compatible servers without them send, so that clients parsing them do not fail.
          tokens: [],
          temperature: 0,
          avg_logprob: 0,
          compression_ratio: 0,
          no_speech_prob: 0,
        }));
      }
      if (g.includes("word")) body.words = t.segments.flatMap((s) => words(s.tokens));
      sendJson(res, 200, body);
      return;
    }
  }
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.writeHead(status, { ...headers, "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

function sendText(res: ServerResponse, type: string, body: string): void {
  res.writeHead(200, { "Content-Type": type, "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}
