/**
 * POST /v1/audio/transcriptions with the official `openai` SDK as the client,
 * over real sockets: against the REAL Python worker (fake engine: real VAD,
 * deterministic text with token times) for the response formats, and against
 * the scripted worker where the test must see what reached the worker
 * (prompt -> hotwords) or steer failures (retry on another worker, rejection).
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { status as GrpcStatus } from "@grpc/grpc-js";
import OpenAI, { toFile } from "openai";
import { AUDIO_SKIP_REASON, sharedAudio, SKIP_REASON as WORKER_SKIP, startRealWorker, type RealWorker } from "../e2e/helpers/real-worker.js";
import { pcm, startGateway, TestClient, wavFile, type TestGateway } from "./helpers/harness.js";
import { ScriptedWorker } from "./helpers/scripted-worker.js";

const THREE = "synth/three_utterances.wav";
/** Allowed distance between a VAD segment boundary and the manifest's span (VAD pads 200 ms, closes after 800 ms of silence). */
const BOUNDARY_TOLERANCE_S = 1.2;

function manifestUtterances(): Array<{ text: string; segment: [number, number] }> {
  const m = JSON.parse(readFileSync(sharedAudio("MANIFEST.json"), "utf8")) as { files: Record<string, { utterances?: Array<{ text: string; segment: [number, number] }> }> };
  return m.files[THREE]!.utterances!;
}

function sdk(gw: TestGateway, apiKey = "unused-key"): OpenAI {
  // No retries: a refusal must surface as the error the server sent.
  return new OpenAI({ apiKey, baseURL: `${gw.http}/v1`, maxRetries: 0, timeout: 60_000 });
}

async function threeFile(): Promise<File> {
  return toFile(readFileSync(sharedAudio(THREE)), "three_utterances.wav", { type: "audio/wav" });
}

/** Runs `f` and returns the OpenAI.APIError it must throw. */
async function apiError(f: () => Promise<unknown>): Promise<InstanceType<typeof OpenAI.APIError>> {
  try {
    await f();
  } catch (e) {
    assert.ok(e instanceof OpenAI.APIError, `expected an OpenAI.APIError, got ${String(e)}`);
    return e;
  }
  assert.fail("the request succeeded but should have failed");
}

describe("OpenAI transcriptions: official SDK against gateway + real worker (fake engine)", { skip: WORKER_SKIP || AUDIO_SKIP_REASON }, () => {
  let worker: RealWorker;
  let gw: TestGateway;
  let client: OpenAI;
  before(async () => {
    worker = await startRealWorker(["--engine", "fake"]);
    gw = await startGateway([worker.address]);
    assert.equal(gw.pool.servingCount(), 1, "worker never reported SERVING");
    client = sdk(gw);
  });
  after(async () => {
    await gw?.stop();
    await worker?.stop();
  });

  test("json: the text equals what the WebSocket offline mode gives for the same file", async () => {
    const r = await client.audio.transcriptions.create({ file: await threeFile(), model: "fun-asr-nano" });
    assert.ok(r.text.length > 0, "empty transcript");
    const ws = await TestClient.connect(gw.url, ["binary"]);
    ws.json({ mode: "offline", wav_name: "three", wav_format: "wav", is_speaking: true });
    ws.ws.send(readFileSync(sharedAudio(THREE)));
    ws.json({ is_speaking: false });
    const msgs = await ws.until((m) => m.some((x) => x.mode === "offline" && x.is_final), 30_000);
    ws.close();
    assert.equal(r.text, msgs.find((x) => x.mode === "offline")!.text);
  });

  test("text: the bare transcript with a trailing newline, same as json", async () => {
    const json = await client.audio.transcriptions.create({ file: await threeFile(), model: "m" });
    const text = await client.audio.transcriptions.create({ file: await threeFile(), model: "m", response_format: "text" });
    assert.equal(typeof text, "string");
    assert.equal(text, `${json.text}\n`);
  });

  test("verbose_json: one segment per VAD segment, on the manifest's utterance spans, duration of the file", async () => {
    const r = await client.audio.transcriptions.create({ file: await threeFile(), model: "m", response_format: "verbose_json" });
    const utts = manifestUtterances();
    assert.equal((r as unknown as { task: string }).task, "transcribe");
    assert.ok(Math.abs(r.duration - 22.66) < 0.1, `duration ${r.duration}`);
    assert.equal(r.segments?.length, utts.length, JSON.stringify(r.segments));
    r.segments!.forEach((s, i) => {
      const [start, end] = utts[i]!.segment;
      assert.equal(s.id, i);
      assert.ok(Math.abs(s.start - start) < BOUNDARY_TOLERANCE_S, `segment ${i} starts at ${s.start}, utterance at ${start}`);
      assert.ok(Math.abs(s.end - end) < BOUNDARY_TOLERANCE_S, `segment ${i} ends at ${s.end}, utterance at ${end}`);
      assert.ok(s.text.length > 0, `segment ${i} has no text`);
    });
    assert.equal(r.segments!.map((s) => s.text).join(""), r.text);
    assert.equal(r.words, undefined, "words are only sent when asked for");
  });

  test("verbose_json with timestamp_granularities word: the engine's token times, ordered, inside their segments", async () => {
    const r = await client.audio.transcriptions.create({
      file: await threeFile(),
      model: "m",
      response_format: "verbose_json",
      timestamp_granularities: ["word", "segment"],
    });
    const words = r.words ?? [];
    assert.ok(words.length > 3, `got ${words.length} words`);
    assert.equal(words.map((w) => w.word).join(""), r.text.replace(/[\p{P}\s]/gu, ""));
    for (let i = 0; i < words.length; i++) {
      const w = words[i]!;
      assert.ok(w.end > w.start, `word ${i} has no duration`);
      if (i > 0) assert.ok(w.start >= words[i - 1]!.start, `word ${i} goes back in time`);
      assert.ok(
        r.segments!.some((s) => w.start >= s.start - 0.001 && w.end <= s.end + 0.001),
        `word ${i} (${w.start}-${w.end}) lies outside every segment`,
      );
    }
    const wordsOnly = await client.audio.transcriptions.create({ file: await threeFile(), model: "m", response_format: "verbose_json", timestamp_granularities: ["word"] });
    assert.equal(wordsOnly.segments, undefined, "segments were not asked for");
    assert.deepEqual(wordsOnly.words, words);
  });

  test("srt and vtt: one numbered cue per segment with the segment's times and text", async () => {
    const verbose = await client.audio.transcriptions.create({ file: await threeFile(), model: "m", response_format: "verbose_json" });
    const srt = await client.audio.transcriptions.create({ file: await threeFile(), model: "m", response_format: "srt" });
    const vtt = await client.audio.transcriptions.create({ file: await threeFile(), model: "m", response_format: "vtt" });
    const srtCues = srt.trim().split(/\n\n/);
    assert.equal(srtCues.length, verbose.segments!.length, srt);
    srtCues.forEach((cue, i) => {
      const [num, times, text] = cue.split("\n");
      assert.equal(num, String(i + 1));
      const m = /^(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)$/.exec(times ?? "");
      assert.ok(m !== null, `bad SRT time line ${times}`);
      const start = Number(m[1]) * 3600 + Number(m[2]) * 60 + Number(m[3]) + Number(m[4]) / 1000;
      assert.ok(Math.abs(start - verbose.segments![i]!.start) < 0.0015, `cue ${i} starts at ${start}`);
      assert.equal(text, verbose.segments![i]!.text);
    });
    assert.ok(vtt.startsWith("WEBVTT\n\n"), vtt);
    const vttCues = vtt.slice("WEBVTT\n\n".length).trim().split(/\n\n/);
    assert.equal(vttCues.length, srtCues.length);
    assert.match(vttCues[0]!.split("\n")[0]!, /^\d\d:\d\d:\d\d\.\d\d\d --> \d\d:\d\d:\d\d\.\d\d\d$/);
  });

  test("errors come in OpenAI's shape: bad response_format, empty model, undecodable file, wrong method", async () => {
    const badFormat = await apiError(async () => client.audio.transcriptions.create({ file: await threeFile(), model: "m", response_format: "mp3" as "json" }));
    assert.equal(badFormat.status, 400);
    assert.equal(badFormat.type, "invalid_request_error");
    assert.equal(badFormat.param, "response_format");
    assert.match(badFormat.message, /response_format must be one of/);

    const noModel = await apiError(async () => client.audio.transcriptions.create({ file: await threeFile(), model: "" }));
    assert.equal(noModel.status, 400);
    assert.equal(noModel.param, "model");

    // This gateway has no ffmpeg: a non-WAV file is refused by the decoder, named as such.
    const notAudio = await apiError(async () => client.audio.transcriptions.create({ file: await toFile(Buffer.from("not audio at all"), "notes.mp3"), model: "m" }));
    assert.equal(notAudio.status, 400);
    assert.equal(notAudio.param, "file");
    assert.equal(notAudio.code, "unsupported_format");

    const get = await fetch(`${gw.http}/v1/audio/transcriptions`);
    assert.equal(get.status, 405);
    const body = (await get.json()) as { error: { message: string; type: string; param: unknown; code: string } };
    assert.deepEqual(Object.keys(body.error).sort(), ["code", "message", "param", "type"]);
  });
});

describe("OpenAI transcriptions: limits, auth, refusals and worker failures (scripted worker)", () => {
  const speech = wavFile(pcm([{ silence: 200 }, { speech: 1000 }, { silence: 500 }, { speech: 600 }, { silence: 400 }]), 16000);

  test("prompt words reach the worker as hotwords; an oversized prompt is a 400 on param prompt", async () => {
    const w = await new ScriptedWorker().start();
    const gw = await startGateway([w.address], { MAX_HOTWORDS: "3" });
    try {
      const r = await sdk(gw).audio.transcriptions.create({ file: await toFile(speech, "a.wav"), model: "m", prompt: "阿里巴巴 达摩院", language: "zh" });
      assert.match(r.text, /^S0w+ S1w+$/, r.text);
      const cfg = w.calls.at(-1)!.configs[0] as { hotwords: Array<{ phrase: string }>; language: string; mode: number };
      assert.deepEqual(cfg.hotwords.map((h) => h.phrase), ["阿里巴巴", "达摩院"]);
      assert.equal(cfg.language, "zh");
      assert.equal(cfg.mode, 1, "offline mode");
      const e = await apiError(async () => sdk(gw).audio.transcriptions.create({ file: await toFile(speech, "a.wav"), model: "m", prompt: "a b c d e" }));
      assert.equal(e.status, 400);
      assert.equal(e.param, "prompt");
    } finally {
      await gw.stop();
      await w.stop();
    }
  });

  test("an upload above MAX_FILE_BYTES is refused with 413 file_too_large", async () => {
    const w = await new ScriptedWorker().start();
    const gw = await startGateway([w.address], { MAX_FILE_BYTES: "4096" });
    try {
      const e = await apiError(async () => sdk(gw).audio.transcriptions.create({ file: await toFile(speech, "a.wav"), model: "m" }));
      assert.equal(e.status, 413);
      assert.equal(e.code, "file_too_large");
      assert.equal(w.calls.length, 0, "nothing reached the worker");
    } finally {
      await gw.stop();
      await w.stop();
    }
  });

  test("with AUTH_TOKEN the token is the API key: a wrong key gets 401 invalid_api_key, the right one a transcript", async () => {
    const w = await new ScriptedWorker().start();
    const gw = await startGateway([w.address], { AUTH_TOKEN: "s3cret-token" });
    try {
      const e = await apiError(async () => sdk(gw, "wrong-key-123").audio.transcriptions.create({ file: await toFile(speech, "a.wav"), model: "m" }));
      assert.equal(e.status, 401);
      assert.equal(e.code, "invalid_api_key");
      assert.ok(e instanceof OpenAI.AuthenticationError);
      assert.equal(w.calls.length, 0);
      const r = await sdk(gw, "s3cret-token").audio.transcriptions.create({ file: await toFile(speech, "a.wav"), model: "m" });
      assert.match(r.text, /^S0w+ S1w+$/);
    } finally {
      await gw.stop();
      await w.stop();
    }
  });

  test("no serving worker: 503 with Retry-After in OpenAI's error shape", async () => {
    const w = await new ScriptedWorker({ serving: false }).start();
    const gw = await startGateway([w.address], { RETRY_AFTER_SECONDS: "7" }, { waitServing: false });
    try {
      const e = await apiError(async () => sdk(gw).audio.transcriptions.create({ file: await toFile(speech, "a.wav"), model: "m" }));
      assert.equal(e.status, 503);
      assert.equal(e.type, "server_error");
      assert.equal(e.headers?.get("retry-after"), "7");
    } finally {
      await gw.stop();
      await w.stop();
    }
  });

  test("a worker that fails mid-request: the whole file is run again on another worker", async () => {
    const bad = await new ScriptedWorker({ failAfterAudioMs: { ms: 100, code: GrpcStatus.UNAVAILABLE, details: "draining" } }).start();
    const good = await new ScriptedWorker().start();
    const gw = await startGateway([bad.address, good.address]);
    try {
      // Both must be serving, else placement would just pick the good one.
      const t0 = Date.now();
      while (gw.pool.servingCount() < 2 && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 20));
      for (let i = 0; i < 2; i++) {
        const r = await sdk(gw).audio.transcriptions.create({ file: await toFile(speech, "a.wav"), model: "m" });
        assert.match(r.text, /^S0w+ S1w+$/);
      }
      assert.ok(bad.calls.length >= 1, "the failing worker was never tried");
    } finally {
      await gw.stop();
      await bad.stop();
      await good.stop();
    }
  });

  test("a worker that rejects the input: 400, not retried elsewhere", async () => {
    const w = await new ScriptedWorker({ failOnEndOfInput: GrpcStatus.INVALID_ARGUMENT }).start();
    const gw = await startGateway([w.address]);
    try {
      const e = await apiError(async () => sdk(gw).audio.transcriptions.create({ file: await toFile(speech, "a.wav"), model: "m" }));
      assert.equal(e.status, 400);
      assert.match(e.message, /rejected the input/);
      assert.equal(w.calls.length, 1);
    } finally {
      await gw.stop();
      await w.stop();
    }
  });
});
