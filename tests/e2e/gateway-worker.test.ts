/**
 * End to end: the gateway in front of the REAL Python worker (subprocess).
 * The fake engine (real VAD, deterministic text, fixed cost) where timing must
 * be controlled; the tiny random-weight Fun-ASR-Nano through the production
 * loader for the real model path.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { decodeWav } from "../../gateway/src/audio.js";
import type { ServerMessage } from "../../gateway/src/protocol.js";
import OpenAI, { toFile } from "openai";
import { runCli } from "../client/helpers/cli.js";
import { finals, startGateway, TestClient, type TestGateway } from "../gateway/helpers/harness.js";
import { AUDIO_SKIP_REASON, runWorkerCli, sharedAudio, SKIP_REASON as WORKER_SKIP, startRealWorker, type RealWorker } from "./helpers/real-worker.js";

/** e2e tests need the worker venv and the shared recordings; either missing skips them with the reason. */
const SKIP_REASON = WORKER_SKIP || AUDIO_SKIP_REASON;

const THREE_PATH = sharedAudio("synth/three_utterances.wav");
/** The shared audio manifest (read lazily: the audio may be absent, then the tests skip). */
function manifest(): { files: Record<string, { utterances?: Array<{ segment: [number, number] }> }> } {
  return JSON.parse(readFileSync(sharedAudio("MANIFEST.json"), "utf8"));
}

function loadPcm(file: string): Buffer {
  const d = decodeWav(readFileSync(file));
  assert.equal(d.sampleRateHz, 16000);
  return d.pcm;
}

/** 16 kHz -> 8 kHz by averaging sample pairs (good enough for a rate test). */
function to8k(pcm16k: Buffer): Buffer {
  const n = Math.floor(pcm16k.length / 4);
  const out = Buffer.alloc(n * 2);
  for (let i = 0; i < n; i++) out.writeInt16LE(Math.round((pcm16k.readInt16LE(i * 4) + pcm16k.readInt16LE(i * 4 + 2)) / 2), i * 2);
  return out;
}

/** Streams PCM in 60 ms frames at `speed` x real time. */
async function paced(c: TestClient, pcm: Buffer, rate: number, speed: number): Promise<void> {
  const frame = Math.round(0.06 * rate) * 2;
  const t0 = performance.now();
  for (let off = 0, i = 0; off < pcm.length; off += frame, i++) {
    c.ws.send(pcm.subarray(off, Math.min(pcm.length, off + frame)));
    const wait = t0 + ((i + 1) * 60) / speed - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
}

const isAck = (m: ServerMessage): boolean => m.is_end === true;

describe("e2e: gateway + real worker (fake engine)", { skip: SKIP_REASON }, () => {
  let worker: RealWorker;
  let gw: TestGateway;
  let three: Buffer;
  before(async () => {
    three = loadPcm(THREE_PATH);
    worker = await startRealWorker(["--engine", "fake"]);
    gw = await startGateway([worker.address]);
    assert.equal(gw.pool.servingCount(), 1, "worker never reported SERVING");
  });
  after(async () => {
    await gw?.stop();
    await worker?.stop();
  });

  test("three_utterances.wav in 2pass: partials during speech, exactly 3 finals, 2pass-offline, is_final true, wav_name echoed", async () => {
    assert.equal(manifest().files["synth/three_utterances.wav"]!.utterances!.length, 3);
    const c = await TestClient.connect(gw.url, ["binary"]);
    c.json({ mode: "2pass", chunk_size: [5, 10, 5], chunk_interval: 10, wav_name: "three", wav_format: "pcm", audio_fs: 16000, is_speaking: true, itn: true });
    await paced(c, three, 16000, 4);
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.some(isAck), 30_000);
    const fin = finals(msgs);
    assert.equal(fin.length, 3, JSON.stringify(msgs));
    for (const f of fin) {
      assert.equal(f.mode, "2pass-offline");
      assert.equal(f.is_final, true);
      assert.ok(f.text.length > 0, "f.text.length > 0");
    }
    assert.ok(msgs.every((m) => m.wav_name === "three"), "msgs.every((m) => m.wav_name === \"three\")");
    // Partials arrive during speech: before the first final and between finals.
    const idx = fin.map((f) => msgs.indexOf(f));
    const partialIdx = msgs.flatMap((m, i) => (m.mode === "2pass-online" ? [i] : []));
    assert.ok(partialIdx.some((i) => i < idx[0]!), "no partial before the first final");
    assert.ok(partialIdx.some((i) => i > idx[0]! && i < idx[1]!), "no partial during the second utterance");
    assert.deepEqual(msgs[msgs.length - 1], { mode: "2pass-offline", wav_name: "three", text: "", is_final: true, is_end: true });
    c.close();
  });

  test("the worker says it serves the mux, and the gateway carries the session over one StreamingRecognizeMux call", async () => {
    assert.equal(gw.pool.status()[0]!.load?.mux, true);
    const c = await TestClient.connect(gw.url, ["binary"]);
    c.json({ mode: "offline", wav_name: "mux", is_speaking: true });
    await c.audio(three.subarray(0, 32_000 * 2));
    c.json({ is_speaking: false });
    await c.until((m) => finals(m).length === 1, 30_000);
    c.close();
    const [stats] = gw.pool.muxStats(worker.address);
    assert.ok(stats !== undefined && stats.calls === 1 && stats.frames > 2, JSON.stringify(gw.pool.muxStats(worker.address)));
  });

  test("offline mode gives one offline final", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "offline", wav_name: "off", wav_format: "pcm", audio_fs: 16000, is_speaking: true });
    await c.audio(three, 204800);
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.some(isAck), 30_000);
    const off = msgs.filter((m) => !isAck(m));
    assert.equal(off.length, 1, JSON.stringify(msgs));
    assert.equal(off[0]!.mode, "offline");
    assert.equal(off[0]!.is_final, true);
    assert.ok(off[0]!.text.length > 0, "off[0]!.text.length > 0");
    c.close();
  });

  test("an empty session gives one empty final; is_end gives the acknowledgement", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "2pass", wav_name: "empty", is_speaking: true });
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.some(isAck), 10_000);
    assert.deepEqual(msgs, [
      { mode: "2pass-offline", wav_name: "empty", text: "", is_final: true },
      { mode: "2pass-offline", wav_name: "empty", text: "", is_final: true, is_end: true },
    ]);
    c.close();
  });

  test("8 kHz input works", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "2pass", wav_name: "8k", audio_fs: 8000, is_speaking: true });
    await c.audio(to8k(three), 960 * 4);
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.some(isAck), 30_000);
    const fin = finals(msgs);
    assert.equal(fin.length, 3, JSON.stringify(msgs));
    assert.ok(fin.every((f) => f.text.length > 0 && f.wav_name === "8k"), "fin.every((f) => f.text.length > 0 && f.wav_name === \"8k\")");
    c.close();
  });

  test("malformed frames on one connection get errors while a parallel session completes normally", async () => {
    const good = await TestClient.connect(gw.url);
    const bad = await TestClient.connect(gw.url);
    good.json({ mode: "2pass", wav_name: "good", is_speaking: true });
    const goodDone = (async () => {
      await good.audio(three, 1920 * 8, 2);
      good.json({ is_speaking: false, is_end: true });
      return good.until((m) => m.some(isAck), 30_000);
    })();
    bad.ws.send("{not json");
    bad.json({ mode: "3pass" });
    bad.json({ mode: "2pass", wav_name: "bad", audio_fs: 22050 });
    bad.json({ mode: "2pass", wav_name: "bad" });
    bad.ws.send(Buffer.alloc(1919));
    await bad.until((m) => m.filter((x) => x.error !== undefined).length === 4);
    assert.deepEqual(bad.messages.map((m) => m.code), ["INVALID_JSON", "UNSUPPORTED_MODE", "UNSUPPORTED_SAMPLE_RATE", "ODD_FRAME_BYTES"]);
    const msgs = await goodDone;
    assert.equal(finals(msgs).length, 3);
    assert.ok(msgs.every((m) => m.error === undefined), "msgs.every((m) => m.error === undefined)");
    bad.close();
    good.close();
  });

  test("the CLI client against the real stack exits 0 and prints 3 finals", async () => {
    const r = await runCli(["--url", gw.url, "--speed", "8", THREE_PATH]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n");
    assert.equal(lines.length, 3, r.stdout);
    assert.ok(lines.every((l) => l.startsWith("[three_utterances] ") && l.length > "[three_utterances] ".length), "lines.every((l) => l.startsWith(\"[three_utterances] \") && l.length > \"[three_utterances] \".length)");
  });
});

describe("e2e: gateway + real worker with the tiny Fun-ASR-Nano model", { skip: SKIP_REASON }, () => {
  let worker: RealWorker;
  let gw: TestGateway;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(path.join(tmpdir(), "nano-tiny-"));
    const modelDir = path.join(dir, "model");
    await runWorkerCli(["tiny-model", modelDir]);
    worker = await startRealWorker(["--model-dir", modelDir, "--device", "cpu"]);
    gw = await startGateway([worker.address]);
    assert.equal(gw.pool.servingCount(), 1, "worker never reported SERVING");
  });
  after(async () => {
    await gw?.stop();
    await worker?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });

  test("offline: a real recording gives exactly one offline final through the production model path", async () => {
    const c = await TestClient.connect(gw.url, ["binary"]);
    c.json({ mode: "offline", wav_name: "damo", wav_format: "pcm", audio_fs: 16000, is_speaking: true, hotwords: '{"达摩院": 20}', itn: true });
    await c.audio(loadPcm(sharedAudio("zh/damo.wav")), 204800);
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.some(isAck), 60_000);
    assert.equal(msgs.length, 2, JSON.stringify(msgs));
    assert.equal(msgs[0]!.mode, "offline");
    assert.equal(msgs[0]!.is_final, true);
    assert.equal(msgs[0]!.wav_name, "damo");
    assert.equal(typeof msgs[0]!.text, "string");
    assert.deepEqual(msgs[1], { mode: "offline", wav_name: "damo", text: "", is_final: true, is_end: true });
    c.close();
  });

  test("OpenAI /v1/audio/transcriptions through the model path: the openai SDK gets the offline mode's text as verbose_json segments and SRT", async () => {
    const wav = readFileSync(sharedAudio("zh/damo.wav"));
    const client = new OpenAI({ apiKey: "unused", baseURL: `${gw.http}/v1`, maxRetries: 0, timeout: 120_000 });
    const verbose = await client.audio.transcriptions.create({
      file: await toFile(wav, "damo.wav"),
      model: "fun-asr-nano",
      response_format: "verbose_json",
      timestamp_granularities: ["segment", "word"],
    });
    const c = await TestClient.connect(gw.url, ["binary"]);
    c.json({ mode: "offline", wav_name: "damo", wav_format: "wav", is_speaking: true });
    c.ws.send(wav);
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.some(isAck), 60_000);
    c.close();
    assert.equal(verbose.text, msgs[0]!.text, "same worker path, same text");
    assert.ok(Math.abs(verbose.duration - 5.55) < 0.1, `duration ${verbose.duration}`);
    const segments = verbose.segments ?? [];
    assert.ok(segments.length >= 1, "the recording's speech is one VAD segment at least");
    assert.equal(segments.map((s) => s.text).join(""), verbose.text);
    for (const s of segments) assert.ok(s.end > s.start && s.start >= 0 && s.end <= 5.6, `segment ${s.start}-${s.end}`);
    // Word times come from the model's CTC alignment of the text (timestamp string of the offline message).
    const stamps = msgs[0]!.timestamp === undefined ? [] : (JSON.parse(msgs[0]!.timestamp) as Array<[number, number]>);
    const words = verbose.words ?? [];
    if (stamps.length === 0) {
      assert.equal(words.length, 0, "no token times from the engine, so no words");
    } else {
      assert.ok(words.length > 0 && words.length <= stamps.length, `${words.length} words for ${stamps.length} timed tokens`);
      const [first, last] = [stamps[0]![0] / 1000, stamps[stamps.length - 1]![1] / 1000];
      for (const w of words) assert.ok(w.start >= first - 0.001 && w.end <= last + 0.001, `word ${w.word} at ${w.start}-${w.end} outside ${first}-${last}`);
    }
    const srt = await client.audio.transcriptions.create({ file: await toFile(wav, "damo.wav"), model: "fun-asr-nano", response_format: "srt" });
    assert.equal(srt.trim().split(/\n\n/).filter((cue) => cue !== "").length, segments.filter((s) => s.text !== "").length);
  });

  test("2pass: three_utterances.wav gives finals and the acknowledgement", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "2pass", wav_name: "tiny3", is_speaking: true });
    await c.audio(loadPcm(THREE_PATH), 1920 * 16, 1);
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.some(isAck), 90_000);
    const fin = finals(msgs);
    assert.ok(fin.length >= 1, "fin.length >= 1");
    assert.ok(fin.every((f) => f.mode === "2pass-offline" && f.is_final === true && f.wav_name === "tiny3"), "fin.every((f) => f.mode === \"2pass-offline\" && f.is_final === true && f.wav_name === \"tiny3\")");
    assert.equal(msgs[msgs.length - 1]!.is_final, true);
    c.close();
  });
});

describe("e2e: failover when a real worker is killed", { skip: SKIP_REASON }, () => {
  test("SIGKILL of the session's worker mid-stream: replay elsewhere, exactly 3 finals, no error", async () => {
    const workers = [await startRealWorker(["--engine", "fake"]), await startRealWorker(["--engine", "fake"])];
    const gw = await startGateway(workers.map((w) => w.address));
    try {
      const deadline = Date.now() + 10_000;
      while (gw.pool.servingCount() < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      const c = await TestClient.connect(gw.url, ["binary"]);
      c.json({ mode: "2pass", wav_name: "killed", is_speaking: true });
      const three = loadPcm(THREE_PATH);
      const streaming = paced(c, three, 16000, 4);
      // 2.5 s wall clock = 10 s of audio: inside the second utterance.
      await new Promise((r) => setTimeout(r, 2500));
      const busy = gw.pool.status().find((w) => w.localSessions === 1)!;
      const victim = workers.find((w) => w.address === busy.address)!;
      victim.child.kill("SIGKILL");
      await streaming;
      c.json({ is_speaking: false, is_end: true });
      const msgs = await c.until((m) => m.some(isAck), 30_000);
      assert.ok(msgs.every((m) => m.error === undefined), JSON.stringify(msgs));
      const fin = finals(msgs);
      assert.equal(fin.length, 3, JSON.stringify(msgs));
      assert.ok(fin.every((f) => f.text.length > 0 && f.is_final), "fin.every((f) => f.text.length > 0 && f.is_final)");
      // (The fake engine's partial and final texts use different windows, so deltas are not checked
      // against finals here; the scripted-worker test checks that replayed deltas are not repeated.)
      assert.equal(msgs[msgs.length - 1]!.is_final, true);
      // Both workers serve the mux: the session lived on the victim's mux call, then on the survivor's.
      const survivor = workers.find((w) => w !== victim)!;
      assert.equal(gw.pool.muxStats(survivor.address)[0]?.calls, 1, JSON.stringify(gw.pool.muxStats(survivor.address)));
      c.close();
    } finally {
      await gw.stop();
      for (const w of workers) await w.stop();
    }
  });
});
