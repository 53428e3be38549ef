/**
 * Third-party FunASR clients, used unchanged as their users do, against the gateway in
 * front of the REAL Python worker (fake engine: real VAD, deterministic text):
 *   - npm `funasr-client` (FunASRClient), pinned in package.json;
 *   - PyPI `funasr-python` (AsyncFunASRClient), pinned in worker-py/requirements-dev.txt,
 *     driven by helpers/funasr_python_client.py.
 *
 * Both stop listening at the first `is_final: true` once end of input is sent. A live
 * (paced) client has its segment finals before it stops, so the default IS_FINAL_MODE=seed
 * serves it; a client that sends a whole file at once needs IS_FINAL_MODE=cpp (segment
 * finals false, one true after end of input). The tests show both halves: each client gets
 * every final with the behaviour the README's client table gives it, and loses finals with
 * the other one.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { FunASRClient } from "funasr-client";
import WebSocket from "ws";
import { decodeWav } from "../../gateway/src/audio.js";
import type { ServerMessage } from "../../gateway/src/protocol.js";
import { finals, startGateway, TestClient, type TestGateway } from "../gateway/helpers/harness.js";
import { AUDIO_SKIP_REASON, REPO_ROOT, sharedAudio, SKIP_REASON as WORKER_SKIP, startRealWorker, WORKER_PYTHON, type RealWorker } from "./helpers/real-worker.js";

const SKIP_REASON = WORKER_SKIP || AUDIO_SKIP_REASON;
/** Three utterances (0.5-6.8 s, 8.3-13.4 s, 14.9-22.2 s per MANIFEST.json), 0.5 s of silence at the end. */
const THREE_PATH = sharedAudio("synth/three_utterances.wav");
const PY_CLIENT = path.join(REPO_ROOT, "tests", "e2e", "helpers", "funasr_python_client.py");

// funasr-client uses the WHATWG WebSocket global, which Node has only from 22 on (20 needs a
// flag): give it ws, which implements the same onopen/onmessage/onclose interface.
(globalThis as Record<string, unknown>).WebSocket ??= WebSocket;

/** Segment finals: what a user keeps (the empty end-of-input final of seed mode is not one). */
function spokenFinals(msgs: ServerMessage[]): ServerMessage[] {
  return finals(msgs).filter((m) => m.text !== "");
}

/** The reference: the segment final texts the gateway sends the project's own client for the file. */
async function referenceFinals(gw: TestGateway, pcm: Buffer): Promise<string[]> {
  const c = await TestClient.connect(gw.url);
  c.json({ mode: "2pass", wav_name: "ref", is_speaking: true });
  await c.audio(pcm, 1920 * 8);
  c.json({ is_speaking: false, is_end: true });
  const msgs = await c.until((m) => m.some((x) => x.is_end === true), 60_000);
  c.close();
  return spokenFinals(msgs).map((m) => m.text);
}

/** One npm funasr-client session in 2pass; resolves with every message its onMessage got. */
async function npmClientSession(url: string, pcm: Buffer, opts: { pacedSpeed?: number }): Promise<ServerMessage[]> {
  const got: ServerMessage[] = [];
  const client = new FunASRClient({
    url,
    decode: true,
    onMessage: (m) => got.push(m as unknown as ServerMessage),
    config: { mode: "2pass", wav_name: "npm", wav_format: "pcm", chunk_size: [5, 10, 5], audio_fs: 16000, itn: true },
  });
  await client.connect();
  // send() takes PCM16 samples and transmits the view's whole underlying buffer, so each
  // frame is copied into a buffer of its own.
  const send = (b: Buffer): void => client.send(new Int16Array(new Uint8Array(b).buffer));
  const frame = 1920; // 60 ms at 16 kHz
  if (opts.pacedSpeed === undefined) {
    for (let off = 0; off < pcm.length; off += frame) send(pcm.subarray(off, off + frame));
  } else {
    const speed = opts.pacedSpeed;
    const t0 = performance.now();
    let i = 0;
    const tick = async (): Promise<void> => {
      i++;
      const wait = t0 + (i * 60) / speed - performance.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    };
    for (let off = 0; off < pcm.length; off += frame) {
      send(pcm.subarray(off, off + frame));
      await tick();
    }
    // A live microphone keeps sending (silence) until its user presses stop, which people do
    // once the last sentence is on screen: at most 10 s of it here.
    const silence = Buffer.alloc(frame);
    const expected = 3;
    for (let n = 0; n < 10_000 / 60 && spokenFinals(got).length < expected; n++) {
      send(silence);
      await tick();
    }
  }
  await client.close(30_000);
  return got;
}

/** What funasr-python surfaced in one session, and the PCM it sent. */
interface PythonClientReport {
  /** Every result in order: "partial" (is_final false), "final" (is_final true) or "error". */
  results: Array<{ kind: string; text: string }>;
  /** The text recognize_file returned. */
  returned: string;
  /** The PCM16 the client streamed (its own conversion of the file). */
  pcm: Buffer;
}

/** Runs funasr-python on `file` against `url`. */
function pythonClientSession(url: string, file: string): Promise<PythonClientReport> {
  const dir = mkdtempSync(path.join(tmpdir(), "funasr-python-"));
  const pcmOut = path.join(dir, "sent.pcm");
  return new Promise<PythonClientReport>((resolve, reject) => {
    const child = spawn(WORKER_PYTHON, [PY_CLIENT, url, file, pcmOut], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    const t = setTimeout(() => child.kill("SIGKILL"), 120_000);
    child.on("close", (code) => {
      clearTimeout(t);
      if (code !== 0) return reject(new Error(`funasr-python helper exited ${code}: ${err}`));
      const line = out.trim().split("\n").pop() ?? "";
      resolve({ ...(JSON.parse(line) as Omit<PythonClientReport, "pcm">), pcm: readFileSync(pcmOut) });
    });
  }).finally(() => rmSync(dir, { recursive: true, force: true }));
}

describe("e2e: third-party FunASR clients, unchanged, against gateway + real worker", { skip: SKIP_REASON }, () => {
  let worker: RealWorker;
  let seed: TestGateway;
  let cpp: TestGateway;
  let three: Buffer;
  let reference: string[];
  before(async () => {
    const wav = decodeWav(readFileSync(THREE_PATH));
    assert.equal(wav.sampleRateHz, 16000);
    three = wav.pcm;
    worker = await startRealWorker(["--engine", "fake"]);
    seed = await startGateway([worker.address]);
    cpp = await startGateway([worker.address], { IS_FINAL_MODE: "cpp" });
    reference = await referenceFinals(seed, three);
    assert.equal(reference.length, 3, `the reference run should have 3 segment finals: ${JSON.stringify(reference)}`);
  });
  after(async () => {
    await seed?.stop();
    await cpp?.stop();
    await worker?.stop();
  });

  test("npm funasr-client streaming live (paced) in 2pass gets every segment final with the default IS_FINAL_MODE=seed", { timeout: 120_000 }, async () => {
    const got = await npmClientSession(seed.url, three, { pacedSpeed: 4 });
    const fin = spokenFinals(got);
    assert.deepEqual(fin.map((m) => m.text), reference, JSON.stringify(got));
    assert.ok(fin.every((m) => m.mode === "2pass-offline" && m.is_final === true), "seed: every segment final has is_final true");
    assert.ok(got.some((m) => m.mode === "2pass-online"), "partials arrived while streaming");
    assert.ok(got.every((m) => m.error === undefined), JSON.stringify(got));
  });

  test("npm funasr-client sending a whole file at once (unpaced) gets every final with IS_FINAL_MODE=cpp", { timeout: 120_000 }, async () => {
    const got = await npmClientSession(cpp.url, three, {});
    const fin = spokenFinals(got);
    assert.deepEqual(fin.map((m) => m.text), reference, JSON.stringify(got));
    // cpp: the segment finals say false, and the one true is last (what the client waits for).
    assert.deepEqual(fin.map((m) => m.is_final), [false, false, true]);
    assert.equal(got.filter((m) => m.is_final === true).length, 1, JSON.stringify(got));
    assert.equal(got[got.length - 1]!.is_final, true);
  });

  test("npm funasr-client sending a whole file at once loses the later finals with IS_FINAL_MODE=seed (why cpp exists)", { timeout: 120_000 }, async () => {
    const got = await npmClientSession(seed.url, three, {});
    const texts = spokenFinals(got).map((m) => m.text);
    assert.ok(texts.length >= 1 && texts.length < reference.length, `expected the client to stop early: ${JSON.stringify(texts)}`);
    assert.deepEqual(texts, reference.slice(0, texts.length));
  });

  test("funasr-python (PyPI) on a file gets every segment final and one final result with IS_FINAL_MODE=cpp", { timeout: 120_000 }, async () => {
    const r = await pythonClientSession(cpp.url, THREE_PATH);
    // Its float round trip changes a few samples, so the reference is for the audio it sent.
    const reference = await referenceFinals(seed, r.pcm);
    assert.equal(reference.length, 3, JSON.stringify(reference));
    const fin = r.results.filter((x) => x.kind === "final");
    assert.deepEqual(fin.map((x) => x.text), [reference[2]], JSON.stringify(r));
    assert.equal(r.returned, reference[2]);
    // The segment finals before the last reach it too, as results it calls partial (is_final false).
    const partials = r.results.filter((x) => x.kind === "partial").map((x) => x.text);
    assert.ok(partials.includes(reference[0]!) && partials.includes(reference[1]!), JSON.stringify(r));
    assert.ok(r.results.every((x) => x.kind !== "error"), JSON.stringify(r));
  });

  test("funasr-python (PyPI) on a file misses the last segment's final with IS_FINAL_MODE=seed (why cpp exists)", { timeout: 120_000 }, async () => {
    const r = await pythonClientSession(seed.url, THREE_PATH);
    const reference = await referenceFinals(seed, r.pcm);
    assert.equal(reference.length, 3, JSON.stringify(reference));
    const texts = r.results.filter((x) => x.kind === "final").map((x) => x.text);
    assert.ok(texts.length >= 1 && texts.length < reference.length, `expected the client to stop early: ${JSON.stringify(r)}`);
    assert.deepEqual(texts, reference.slice(0, texts.length));
    assert.ok(!r.results.some((x) => x.text === reference[2]), "the last segment's text never reached the client");
  });
});
