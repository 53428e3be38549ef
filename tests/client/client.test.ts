/**
 * The CLI client and its library against an in-process gateway and the
 * scripted worker, over real sockets.
 */
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { runFunasrSession } from "../../client/funasr-session.js";
import { pcm, startGateway, wavFile, type TestGateway } from "../gateway/helpers/harness.js";
import { ScriptedWorker } from "../gateway/helpers/scripted-worker.js";
import { runCli } from "./helpers/cli.js";

const THREE = pcm([{ silence: 300 }, { speech: 600 }, { silence: 500 }, { speech: 1000 }, { silence: 500 }, { speech: 400 }, { silence: 100 }]);

describe("funasr-client CLI", () => {
  let worker: ScriptedWorker;
  let gw: TestGateway;
  let dir: string;
  let wav: string;
  before(async () => {
    worker = await new ScriptedWorker().start();
    gw = await startGateway([worker.address]);
    dir = mkdtempSync(path.join(tmpdir(), "client-test-"));
    wav = path.join(dir, "three.wav");
    writeFileSync(wav, wavFile(THREE, 16000));
  });
  after(async () => {
    await gw.stop();
    await worker.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test("streams a WAV file and prints one line per final; exit 0", async () => {
    const r = await runCli(["--url", gw.url, "--speed", "8", wav]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n"), ["[three] S0wwww", "[three] S1wwwwww", "[three] S2ww"]);
    assert.match(r.stderr, /1\/1 sessions ok, 3 finals/);
  });

  test("--concurrency runs parallel sessions, --mode offline prints one line each", async () => {
    const r = await runCli(["--url", gw.url, "--no-pace", "--mode", "offline", "--concurrency", "3", "--wav-name", "c", wav]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n").sort();
    assert.deepEqual(lines, ["[c-0] S0wwww S1wwwwww S2ww", "[c-1] S0wwww S1wwwwww S2ww", "[c-2] S0wwww S1wwwwww S2ww"]);
  });

  test("--stdin raw PCM at 8 kHz with --json prints every message", async () => {
    const r = await runCli(["--url", gw.url, "--no-pace", "--stdin", "--audio-fs", "8000", "--json", "--hotwords", "阿里巴巴 20"], pcm([{ speech: 600 }], 8000));
    assert.equal(r.code, 0, r.stderr);
    const msgs = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.ok(msgs.some((m) => m.mode === "2pass-offline" && m.text === "S0www"), "msgs.some((m) => m.mode === \"2pass-offline\" && m.text === \"S0www\")");
    assert.ok(msgs.some((m) => m.is_end === true), "msgs.some((m) => m.is_end === true)");
  });

  test("--no-is-end completes at the single is_final message (cpp behaviour requested)", async () => {
    const r = await runCli(["--url", gw.url, "--no-pace", "--no-is-end", wav]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim().split("\n").length, 3);
  });

  test("exits 1 when the server errs (connection refused with 503)", async () => {
    const r = await runCli(["--url", "ws://127.0.0.1:1/", "--no-pace", wav]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /session 0:/);
  });

  test("bad usage exits 2", async () => {
    const r = await runCli(["--mode", "fast", wav]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--mode must be/);
  });
});

describe("funasr-client timeouts and errors", () => {
  test("exits 3 when the server never finalizes", async () => {
    const worker = await new ScriptedWorker({ finalDelayMs: 5000 }).start();
    const gw = await startGateway([worker.address]);
    const dir = mkdtempSync(path.join(tmpdir(), "client-test-"));
    try {
      const f = path.join(dir, "a.wav");
      writeFileSync(f, wavFile(pcm([{ speech: 400 }]), 16000));
      const r = await runCli(["--url", gw.url, "--no-pace", "--timeout", "1", f]);
      assert.equal(r.code, 3, r.stderr);
      assert.match(r.stderr, /no final from the server within 1000 ms/);
    } finally {
      await gw.stop();
      await worker.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("the library reports the refusal reason with Retry-After", async () => {
    const worker = await new ScriptedWorker({ serving: false }).start();
    const gw = await startGateway([worker.address], {}, { waitServing: false });
    try {
      const r = await runFunasrSession(
        { url: gw.url, mode: "2pass", wavName: "x", wavFormat: "pcm", audioFs: 16000, chunkSize: [5, 10, 5], chunkInterval: 10, itn: true, isEnd: true, speed: 0, timeoutMs: 2000 },
        { data: pcm([{ speech: 100 }]), sampleRateHz: 16000, isFile: false, format: "pcm" },
      );
      assert.equal(r.ok, false);
      assert.match(r.error!, /HTTP 503 \(Retry-After 5\)/);
    } finally {
      await gw.stop();
      await worker.stop();
    }
  });
});
