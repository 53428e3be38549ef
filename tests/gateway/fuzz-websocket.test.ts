/**
 * WebSocket fuzzer: a gateway process (`gateway/src/main.ts`) in front of a real
 * fake-engine worker (`asr_worker serve --engine fake`) gets a fixed-seed,
 * fixed-budget stream of malformed and mutated client inputs — configs with
 * fields of every wrong type and size, non-JSON and invalid UTF-8 text, binary
 * before config, odd and oversized frames, end-of-input in odd places, repeated
 * configs, hotwords in odd shapes, abrupt disconnects and raw bytes that are not
 * WebSocket at all — many connections at once, while a live session streams
 * real speech beside them. The oracle, for every input:
 *
 * - every server message parses as a FunASR server message (mode, text,
 *   wav_name, is_final), and every error carries a catalog code that is the
 *   client's fault — never INTERNAL, WORKER_FAILED or WORKER_REJECTED (input that
 *   passed the gateway's validation but broke or was refused by the worker);
 * - a server-initiated close uses a documented close code (never 1011);
 * - the gateway process stays up and ready, and the live session gets every
 *   final exactly once (checked against a direct reference run).
 *
 * Seeded (ASR_FUZZ_SEED) and bounded (ASR_FUZZ_WS_INPUTS), so CI runs the same
 * inputs every time. Findings become named regression cases in CASES below.
 */
import assert from "node:assert/strict";
import { connect } from "node:net";
import { after, before, describe, test } from "node:test";
import WebSocket from "ws";
import { ServerMessageSchema } from "../../gateway/src/protocol.js";
import { DEFAULTS, runLoad } from "../../bench/lib/run.js";
import { loadAudio } from "../../bench/lib/audio.js";
import { checkAll, referenceRun, type TextReference } from "../../bench/chaos/lib/check.js";
import { startGateway, startWorker, type GatewayProc, type Proc } from "../../bench/chaos/lib/cluster.js";
import { AUDIO_SKIP_REASON, SKIP_REASON as WORKER_SKIP } from "../e2e/helpers/real-worker.js";

const SKIP_REASON = WORKER_SKIP || AUDIO_SKIP_REASON;
const SEED = Number(process.env.ASR_FUZZ_SEED ?? 20261129);
const INPUTS = Number(process.env.ASR_FUZZ_WS_INPUTS ?? 2000);
const PARALLEL = 24;
/** The gateway's frame limit in this test (small, so oversized frames are cheap to send). */
const MAX_FRAME_BYTES = 65_536;
/** Close codes the gateway may end a fuzzed connection with (docs/gateway.md). */
const DOCUMENTED_CLOSES = new Set([1000, 1001, 1003, 1007, 1008, 1009, 1013]);
/** Error codes that would mean a bug, not a bad client. */
const BUG_CODES = new Set(["INTERNAL", "WORKER_FAILED", "WORKER_REJECTED"]);

/** mulberry32: a tiny seeded PRNG, so the inputs are the same on every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A text frame, a binary frame, a text frame of raw (maybe invalid UTF-8) bytes, or an action. */
type Frame = string | Buffer | { text: Buffer } | { raw: "destroy" } | { raw: "ping" };

/** One fuzz input: frames for one connection, or raw bytes for the TCP port. */
type Input = { kind: "ws"; frames: Frame[]; name: string } | { kind: "tcp"; bytes: Buffer; name: string };

function makeGen(rnd: () => number, speech: Buffer) {
  const int = (n: number): number => Math.floor(rnd() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const weird = (): unknown =>
    pick([
      null, true, false, 0, -1, 1e308, -1e308, 2 ** 53, 0.5, NaN, "", "x".repeat(int(5000)), "\u0000", "💥".repeat(int(50)),
      "2pass", "offline", "online", "office", "16000", [], [1, 2, 3], ["5", "10", "5"], {}, { a: { b: { c: 1 } } },
      "{\"阿里巴巴\":20}", "阿里巴巴 20\n达摩院 10", "a,b,,c", -0, 8000, 16000, 44100, "pcm", "wav", "PCM",
    ]);
  const fields = ["mode", "wav_name", "wav_format", "audio_fs", "is_speaking", "is_finished", "is_end", "chunk_size",
    "chunk_interval", "hotwords", "itn", "svs_lang", "svs_itn", "full_hypothesis", "is_final_mode", "encoder_chunk_look_back", "__proto__", "constructor"];
  const goodConfig = (): Record<string, unknown> => ({
    mode: pick(["2pass", "online", "offline", "office"]), wav_name: "fuzz", wav_format: "pcm", audio_fs: pick([8000, 16000]),
    is_speaking: true, chunk_size: [5, 10, 5], itn: rnd() < 0.5, hotwords: "",
  });
  const mutated = (): string => {
    const c: Record<string, unknown> = rnd() < 0.7 ? goodConfig() : {};
    for (let i = int(4); i >= 0; i--) c[pick(fields)] = weird();
    if (rnd() < 0.1) delete c.mode;
    return JSON.stringify(c);
  };
  const pcmFrame = (): Buffer => {
    const n = pick([0, 1, 2, 3, 1919, 1920, 1921, 3200, 204_800 % (MAX_FRAME_BYTES + 7), MAX_FRAME_BYTES, MAX_FRAME_BYTES + 1, int(8000)]);
    if (rnd() < 0.5) {
      const o = int(Math.max(1, speech.length - n));
      return Buffer.from(speech.subarray(o, o + n));
    }
    const b = Buffer.alloc(n);
    for (let i = 0; i + 4 <= n; i += 4) b.writeUInt32LE(int(2 ** 32), i);
    return b;
  };
  const text = (): string =>
    pick([
      "not json", "{", "[]", "null", "42", "\"str\"", "{\"is_speaking\": false}", "{\"is_speaking\": false, \"is_end\": true}",
      "{\"is_finished\": true}", "{\"is_speaking\": \"no\"}", "x".repeat(int(100_000)), mutated(), mutated(), mutated(),
    ]);
  const frame = (): Frame => {
    const r = rnd();
    if (r < 0.35) return pcmFrame();
    if (r < 0.75) return text();
    if (r < 0.78) return Buffer.from([0xff, 0xfe, 0xfd]); // binary garbage
    if (r < 0.8) return { text: Buffer.from([0x7b, 0x22, 0xc3, 0x28, 0x22, 0x7d]) }; // invalid UTF-8
    if (r < 0.85) return { raw: "ping" };
    if (r < 0.9) return Buffer.from("{\"mode\":\"2pass\"}"); // JSON sent as binary
    return rnd() < 0.5 ? mutated() : JSON.stringify(goodConfig());
  };
  return (): Input => {
    const r = rnd();
    if (r < 0.04) {
      // Not WebSocket at all: random bytes or a broken upgrade request.
      const bytes = rnd() < 0.5
        ? Buffer.from(Array.from({ length: int(2000) }, () => int(256)))
        : Buffer.from(`GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: ${pick(["13", "8", "x"])}\r\nSec-WebSocket-Key: ${pick(["", "abc", "dGhlIHNhbXBsZSBub25jZQ=="])}\r\n\r\n`);
      return { kind: "tcp", bytes, name: "tcp" };
    }
    const frames: Frame[] = [];
    if (rnd() < 0.6) frames.push(rnd() < 0.5 ? JSON.stringify(goodConfig()) : mutated());
    for (let i = int(8); i >= 0; i--) frames.push(frame());
    if (rnd() < 0.15) frames.splice(int(frames.length + 1), 0, { raw: "destroy" });
    return { kind: "ws", frames, name: "ws" };
  };
}

interface Outcome {
  messages: unknown[];
  closeCode: number | null;
  serverClosed: boolean;
}

/** Plays one input; resolves when the server closed, or `linger` ms after the last frame. */
function play(url: string, input: Input, linger = 250): Promise<Outcome> {
  if (input.kind === "tcp") {
    return new Promise((resolve) => {
      const port = Number(new URL(url).port);
      const s = connect(port, "127.0.0.1", () => s.end(input.bytes));
      s.on("data", () => undefined);
      s.on("error", () => undefined);
      s.setTimeout(2000, () => s.destroy());
      s.on("close", () => resolve({ messages: [], closeCode: null, serverClosed: false }));
    });
  }
  return new Promise((resolve) => {
    const out: Outcome = { messages: [], closeCode: null, serverClosed: false };
    const ws = new WebSocket(url, { perMessageDeflate: false });
    let done = false;
    let clientClosing = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      resolve(out);
    };
    const hard = setTimeout(() => {
      ws.terminate();
      finish();
    }, 10_000);
    ws.on("message", (d, isBinary) => {
      out.messages.push(isBinary ? { binary: true } : (() => {
        try {
          return JSON.parse(d.toString()) as unknown;
        } catch {
          return { unparsable: d.toString().slice(0, 200) };
        }
      })());
    });
    ws.on("error", () => undefined);
    ws.on("close", (code) => {
      clearTimeout(hard);
      out.closeCode = code;
      out.serverClosed = !clientClosing;
      finish();
    });
    ws.on("open", async () => {
      for (const f of input.frames) {
        if (ws.readyState !== WebSocket.OPEN) break;
        if (typeof f === "string" || Buffer.isBuffer(f)) ws.send(f);
        else if ("text" in f) ws.send(f.text, { binary: false });
        else if (f.raw === "ping") ws.ping();
        else {
          clientClosing = true;
          ws.terminate();
          return;
        }
        await new Promise((r) => setImmediate(r));
      }
      await new Promise((r) => setTimeout(r, linger));
      clientClosing = true;
      if (ws.readyState === WebSocket.OPEN) ws.close(1000);
      else if (ws.readyState !== WebSocket.CLOSED) ws.terminate();
    });
  });
}

/** What is wrong with an outcome (empty when it is fine). */
function problems(o: Outcome): string[] {
  const p: string[] = [];
  for (const m of o.messages) {
    if (!ServerMessageSchema.safeParse(m).success) p.push(`not a server message: ${JSON.stringify(m).slice(0, 200)}`);
    const err = (m as { error?: unknown }).error;
    // The code is in `code`, or (the end-of-input acknowledgement of a failed round) leads `error`.
    const code = (m as { code?: unknown }).code ?? (typeof err === "string" ? /^([A-Z_]+):/.exec(err)?.[1] : undefined);
    if (err !== undefined && (typeof code !== "string" || BUG_CODES.has(code))) {
      p.push(`error that is not the client's fault: ${JSON.stringify(m).slice(0, 300)}`);
    }
  }
  if (o.serverClosed && o.closeCode !== null && !DOCUMENTED_CLOSES.has(o.closeCode)) p.push(`undocumented close ${o.closeCode}`);
  return p;
}

describe("WebSocket fuzzing of the gateway", { skip: SKIP_REASON, timeout: 300_000 }, () => {
  let worker: Proc;
  let gw: GatewayProc;
  let ref: TextReference;
  let speech: Buffer;

  before(async () => {
    worker = await startWorker({ label: "worker", fronts: 1, args: ["--max-batch-size", "32", "--fake-base-ms", "5", "--fake-per-item-ms", "0.5"] });
    ref = await referenceRun(worker.address, ["zh/long.wav*4"], 60);
    gw = await startGateway("gateway", [worker.address], { MAX_FRAME_BYTES: String(MAX_FRAME_BYTES), LOG_LEVEL: "error" });
    speech = loadAudio(["zh/damo.wav"])[0]!.pcm;
  });
  after(async () => {
    await gw?.stop();
    await worker?.stop();
  });

  // Regression cases, each once by name (a fuzzer finding gets added here).
  const CASES: Array<[string, Frame[]]> = [
    ["binary before config", [Buffer.alloc(1920)]],
    ["odd byte count after config", [JSON.stringify({ mode: "2pass", wav_name: "c" }), Buffer.alloc(1921)]],
    ["end of input before any config", ["{\"is_speaking\": false, \"is_end\": true}"]],
    ["a config whose __proto__ is an object", ["{\"mode\":\"2pass\",\"__proto__\":{\"is_speaking\":false}}"]],
    ["a frame one byte over the limit", [JSON.stringify({ mode: "2pass" }), Buffer.alloc(MAX_FRAME_BYTES + 2)]],
    ["invalid UTF-8 in a text frame", [{ text: Buffer.from([0x7b, 0xc3, 0x28, 0x7d]) }]],
  ];
  for (const [name, frames] of CASES) {
    test(`regression: ${name} gets a catalog error or a documented close`, async () => {
      const o = await play(gw.url, { kind: "ws", frames, name });
      assert.deepEqual(problems(o), []);
    });
  }

  test(`${INPUTS} seeded malformed inputs beside a live session: no bug errors, documented closes, the live session intact`, async () => {
    const gen = makeGen(prng(SEED), speech);
    const inputs = Array.from({ length: INPUTS }, gen);
    const live = runLoad({ ...DEFAULTS, target: gw.url, streams: 2, files: ["zh/long.wav*4"], rampMs: 500, maxSeconds: 120, quiet: true, tag: "live" });
    const found: string[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        while (next < inputs.length) {
          const i = next++;
          const o = await play(gw.url, inputs[i]!);
          for (const p of problems(o)) if (found.length < 20) found.push(`input #${i} (seed ${SEED}): ${p}`);
        }
      }),
    );
    const r = await live;
    assert.deepEqual(found, []);
    assert.equal(gw.proc.exitCode, null, "the gateway exited");
    assert.equal((await fetch(`http://${gw.address}/readyz`)).status, 200);
    const { totals } = checkAll(r.traces, ref);
    assert.deepEqual(totals.errors, []);
    assert.equal(totals.lost, 0);
    assert.equal(totals.duplicates, 0);
  });
});
