/**
 * The session state machine over a scripted worker (a real grpc-js server)
 * and real WebSockets on port 0.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { finals, pcm, startGateway, TestClient, wavFile, type TestGateway } from "./helpers/harness.js";
import { ScriptedWorker } from "./helpers/scripted-worker.js";

/** Three utterances of 600, 1000 and 400 ms speech separated by silence. */
const THREE = pcm([{ silence: 300 }, { speech: 600 }, { silence: 500 }, { speech: 1000 }, { silence: 500 }, { speech: 400 }, { silence: 100 }]);

describe("session over a scripted worker", () => {
  let worker: ScriptedWorker;
  let gw: TestGateway;
  before(async () => {
    worker = await new ScriptedWorker().start();
    gw = await startGateway([worker.address]);
  });
  after(async () => {
    await gw.stop();
    await worker.stop();
  });

  test("2pass: partials as deltas, one 2pass-offline final per segment, wav_name echoed, is_end ack", async () => {
    const c = await TestClient.connect(gw.url, ["binary"]);
    c.json({ mode: "2pass", chunk_size: [5, 10, 5], chunk_interval: 10, wav_name: "t1", is_speaking: true, hotwords: "", itn: true });
    await c.audio(THREE);
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.some((x) => x.is_end === true));
    const fin = finals(msgs);
    assert.equal(fin.length, 3);
    assert.deepEqual(fin.map((f) => f.text), ["S0wwww", "S1wwwwww", "S2ww"]);
    for (const m of msgs) {
      assert.equal(m.wav_name, "t1");
      assert.equal(typeof m.is_final, "boolean");
      assert.equal(typeof m.text, "string");
    }
    for (const f of fin) {
      assert.equal(f.is_final, true);
      assert.equal(typeof f.timestamp, "string");
      assert.ok(Array.isArray(JSON.parse(f.timestamp!)), "Array.isArray(JSON.parse(f.timestamp!))");
      assert.ok(Array.isArray(f.stamp_sents), "Array.isArray(f.stamp_sents)");
    }
    const partials = msgs.filter((m) => m.mode === "2pass-online");
    assert.ok(partials.length >= 3, "partials.length >= 3");
    assert.ok(partials.every((p) => p.is_final === false), "partials.every((p) => p.is_final === false)");
    // Deltas of segment 1 concatenate to a prefix of its final.
    const seg1 = msgs.slice(msgs.indexOf(fin[0]!) + 1, msgs.indexOf(fin[1]!)).filter((m) => m.mode === "2pass-online");
    assert.ok(fin[1]!.text.startsWith(seg1.map((p) => p.text).join("")), "fin[1]!.text.startsWith(seg1.map((p) => p.text).join(\"\"))");
    const ack = msgs[msgs.length - 1]!;
    assert.deepEqual(ack, { mode: "2pass-offline", wav_name: "t1", text: "", is_final: true, is_end: true });
    assert.equal(c.ws.protocol, "binary");
    c.close();
  });

  test("emits its lifecycle for observers: states in order, each round's acknowledgement, closed once", async () => {
    const c = await TestClient.connect(gw.url);
    const session = [...gw.server.sessions].at(-1)!;
    const seen: string[] = [];
    session.on("state", (to, from) => seen.push(`${from}->${to}`));
    session.on("roundDone", (r) => seen.push(`round ${r.mode} failed=${r.failed}`));
    session.on("closed", (reason) => seen.push(`closed ${reason}`));
    c.json({ mode: "2pass", wav_name: "ev" });
    await c.audio(pcm([{ speech: 400 }, { silence: 400 }]));
    c.json({ is_speaking: false, is_end: true });
    await c.until((m) => m.some((x) => x.is_end === true));
    c.close();
    const deadline = Date.now() + 3000;
    while (session.state !== "closed" && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    session.close("again");
    assert.deepEqual(seen, ["awaiting_config->streaming", "round 2pass-offline failed=false", "streaming->closed", "closed client closed"]);
  });

  test("offline: exactly one offline message joining the round's finals", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "offline", wav_name: "off", is_speaking: true });
    await c.audio(THREE, 204800);
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.some((x) => x.is_end === true));
    const off = msgs.filter((m) => m.mode === "offline" && m.is_end !== true);
    assert.equal(off.length, 1);
    assert.equal(off[0]!.text, "S0wwww S1wwwwww S2ww");
    assert.equal(off[0]!.is_final, true);
    assert.equal(typeof off[0]!.timestamp, "string");
    assert.equal(off[0]!.stamp_sents!.length, 3);
    assert.equal(msgs.filter((m) => m.mode === "2pass-online" || m.mode === "online").length, 0);
    assert.equal(c.ws.protocol, "");
    c.close();
  });

  test("an empty session gives one empty final", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "2pass", wav_name: "empty", is_speaking: true });
    c.json({ is_speaking: false });
    const msgs = await c.until((m) => m.length >= 1);
    await new Promise((r) => setTimeout(r, 150));
    assert.deepEqual(msgs, [{ mode: "2pass-offline", wav_name: "empty", text: "", is_final: true }]);
    c.close();
  });

  test("is_finished (C++ clients) ends input like is_speaking false", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ wav_name: "cpp", wav_format: "pcm", audio_fs: 16000, is_speaking: true });
    await c.audio(pcm([{ speech: 500 }]));
    c.json({ is_finished: true });
    const msgs = await c.until((m) => finals(m).length === 1);
    assert.equal(finals(msgs)[0]!.text, "S0ww");
    c.close();
  });

  test("several speaking rounds on one connection; a new config between rounds updates wav_name and mode", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "2pass", wav_name: "a", is_speaking: true, hotwords: "阿里巴巴 达摩院" });
    await c.audio(pcm([{ speech: 400 }]));
    c.json({ is_speaking: false, is_end: true });
    c.json({ mode: "offline", wav_name: "b", is_speaking: true });
    await c.audio(pcm([{ speech: 600 }]));
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.filter((x) => x.is_end === true).length === 2);
    const acks = msgs.filter((m) => m.is_end === true);
    assert.deepEqual(acks.map((a) => [a.mode, a.wav_name]), [["2pass-offline", "a"], ["offline", "b"]]);
    const fin = finals(msgs);
    assert.deepEqual(fin.map((f) => [f.mode, f.wav_name, f.text]), [["2pass-offline", "a", "S0ww"], ["offline", "b", "S1www"]]);
    const call = worker.calls[worker.calls.length - 1]!;
    assert.equal(call.configs.length, 2);
    assert.equal(call.configs[0]!.mode, 3);
    assert.equal(call.configs[1]!.mode, 1);
    assert.deepEqual((call.configs[1]!.hotwords as Array<{ phrase: string }>).map((h) => h.phrase), ["阿里巴巴", "达摩院"]);
    // The second config went right after END_OF_INPUT, as the contract demands.
    const i = call.order.indexOf("config", 1);
    assert.equal(call.order[i - 1], "control");
    c.close();
  });

  test("cpp is_final behaviour: segment finals false, exactly one is_final true after end of input", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "2pass", wav_name: "cppmode", is_speaking: true, is_final_mode: "cpp" });
    await c.audio(THREE);
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.some((x) => x.is_end === true));
    const fin = finals(msgs);
    assert.equal(fin.length, 3);
    assert.deepEqual(fin.map((f) => f.is_final), [false, false, true]);
    assert.equal(msgs.filter((m) => m.is_final && m.is_end !== true).length, 1);
    c.close();
  });

  test("cpp behaviour when every segment was finalized before end of input: a synthesized empty final carries is_final", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "2pass", wav_name: "cpp2", is_speaking: true, is_final_mode: "cpp" });
    await c.audio(pcm([{ speech: 400 }, { silence: 600 }]));
    await c.until((m) => finals(m).length === 1);
    c.json({ is_speaking: false });
    const msgs = await c.until((m) => m.some((x) => x.is_final));
    const last = msgs[msgs.length - 1]!;
    assert.deepEqual(last, { mode: "2pass-offline", wav_name: "cpp2", text: "", is_final: true });
    c.close();
  });

  test("full_hypothesis extension: partials carry the whole newest hypothesis", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "2pass", wav_name: "full", is_speaking: true, full_hypothesis: true });
    await c.audio(pcm([{ speech: 800 }]));
    c.json({ is_speaking: false });
    const msgs = await c.until((m) => finals(m).length === 1);
    const partials = msgs.filter((m) => m.mode === "2pass-online").map((m) => m.text);
    assert.deepEqual(partials, ["S0w", "S0ww", "S0www", "S0wwww"]);
    c.close();
  });

  test("8 kHz audio is passed at 8000 Hz", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "2pass", wav_name: "8k", audio_fs: 8000, is_speaking: true });
    await c.audio(pcm([{ speech: 600 }], 8000), 960);
    c.json({ is_speaking: false });
    const msgs = await c.until((m) => finals(m).length === 1);
    assert.equal(finals(msgs)[0]!.text, "S0www");
    assert.equal(worker.calls[worker.calls.length - 1]!.configs[0]!.sampleRateHz, 8000);
    c.close();
  });

  test("html5 file mode: a whole WAV labelled PCM has its RIFF header stripped", async () => {
    const c = await TestClient.connect(gw.url);
    const data = pcm([{ speech: 600 }], 8000);
    c.json({ mode: "offline", wav_name: "h5", wav_format: "PCM", audio_fs: 8000, is_speaking: true, chunk_size: [5, 10, 5], chunk_interval: 10, itn: false });
    await c.audio(wavFile(data, 8000), 1920);
    c.json({ is_speaking: false });
    const msgs = await c.until((m) => finals(m).length === 1);
    assert.equal(finals(msgs)[0]!.text, "S0www");
    assert.equal(worker.calls[worker.calls.length - 1]!.audioBytes, data.length);
    c.close();
  });

  test("offline whole WAV file (wav_format wav) is decoded in-process and resampled", async () => {
    const c = await TestClient.connect(gw.url);
    const data = pcm([{ speech: 1000 }], 22050);
    c.json({ mode: "offline", wav_name: "file", wav_format: "wav", is_speaking: true });
    await c.audio(wavFile(data, 22050), 4001);
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.some((x) => x.is_end === true));
    const off = msgs.filter((m) => m.mode === "offline" && m.is_end !== true);
    assert.equal(off.length, 1);
    assert.equal(off[0]!.text, "S0wwwww");
    assert.equal(worker.calls[worker.calls.length - 1]!.configs[0]!.sampleRateHz, 16000);
    c.close();
  });

  test("mp3 without ffmpeg: clear UNSUPPORTED_FORMAT error, then the final and a failed ack", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "offline", wav_name: "mp3", wav_format: "mp3", is_speaking: true });
    c.ws.send(Buffer.from("ID3\u0003\u0000garbage-not-really-mp3"));
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.some((x) => x.is_end === true));
    assert.equal(msgs[0]!.code, "UNSUPPORTED_FORMAT");
    assert.match(msgs[0]!.error!, /ffmpeg/);
    const ack = msgs[msgs.length - 1]!;
    assert.equal(ack.is_final, false);
    assert.match(ack.error!, /UNSUPPORTED_FORMAT/);
    c.close();
  });

  test("a long stream at full speed reaches the worker complete and in order (backpressure, no loss)", async () => {
    const c = await TestClient.connect(gw.url);
    const long = Buffer.concat(Array.from({ length: 20 }, () => THREE)); // 68 s
    c.json({ mode: "2pass", wav_name: "fast", is_speaking: true });
    await c.audio(long, 1920);
    c.json({ is_speaking: false, is_end: true });
    const msgs = await c.until((m) => m.some((x) => x.is_end === true), 20_000);
    assert.equal(finals(msgs).length, 60);
    assert.equal(worker.calls[worker.calls.length - 1]!.audioBytes, long.length);
    c.close();
  });

  test("socket close cancels the worker call", async () => {
    const before = worker.calls.length;
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "2pass", wav_name: "bye", is_speaking: true });
    await c.audio(pcm([{ speech: 300 }]));
    await new Promise((r) => setTimeout(r, 100));
    c.close();
    const deadline = Date.now() + 3000;
    while (Date.now() < deadline && !(worker.calls[before]?.cancelled ?? false)) await new Promise((r) => setTimeout(r, 20));
    assert.equal(worker.calls[before]!.cancelled, true);
    while (Date.now() < deadline && gw.server.sessions.size > 0) await new Promise((r) => setTimeout(r, 20));
    assert.equal(gw.server.sessions.size, 0);
  });

  test("binary before config: error BINARY_BEFORE_CONFIG and close 1008", async () => {
    const c = await TestClient.connect(gw.url);
    c.ws.send(Buffer.alloc(1920));
    const code = await c.closed();
    assert.equal(code, 1008);
    assert.equal(c.messages[0]!.code, "BINARY_BEFORE_CONFIG");
    assert.equal(c.messages[0]!.is_final, true);
    assert.equal(c.messages[0]!.text, "");
    assert.equal(typeof c.messages[0]!.wav_name, "string");
  });

  test("malformed frames on one connection get errors while a parallel session completes normally", async () => {
    const good = await TestClient.connect(gw.url);
    const bad = await TestClient.connect(gw.url);
    good.json({ mode: "2pass", wav_name: "good", is_speaking: true });
    bad.json({ mode: "2pass", wav_name: "bad", is_speaking: true });
    const goodDone = (async () => {
      await good.audio(THREE, 1920, 1);
      good.json({ is_speaking: false, is_end: true });
      return good.until((m) => m.some((x) => x.is_end === true));
    })();
    bad.ws.send("this is not json");
    bad.ws.send(Buffer.alloc(1921));
    bad.json({ mode: "telepathy" });
    bad.json({ audio_fs: 44100 });
    bad.json({ is_speaking: "no" });
    bad.json([1, 2, 3]);
    const errs = await bad.until((m) => m.filter((x) => x.error !== undefined).length >= 6);
    assert.deepEqual(
      errs.map((e) => e.code),
      ["INVALID_JSON", "ODD_FRAME_BYTES", "UNSUPPORTED_MODE", "UNSUPPORTED_SAMPLE_RATE", "INVALID_MESSAGE", "INVALID_MESSAGE"],
    );
    // Those errors do not end the session: it still works.
    await bad.audio(pcm([{ speech: 400 }]));
    bad.json({ is_speaking: false });
    await bad.until((m) => finals(m).length === 1);
    assert.equal(bad.closeCode, null);
    const msgs = await goodDone;
    assert.equal(finals(msgs).length, 3);
    assert.ok(msgs.every((m) => m.error === undefined), "msgs.every((m) => m.error === undefined)");
    // Oversized frames end the session with 1009.
    bad.ws.send(Buffer.alloc(gw.config.maxFrameBytes + 2));
    assert.equal(await bad.closed(), 1009);
    assert.equal(bad.messages[bad.messages.length - 1]!.code, "FRAME_TOO_LARGE");
    good.close();
  });

  test("absurd hotwords are refused with INVALID_HOTWORDS and the session can retry its config", async () => {
    const c = await TestClient.connect(gw.url);
    c.json({ mode: "2pass", wav_name: "hw", hotwords: Array.from({ length: 300 }, (_, i) => `w${i}`).join(" ") });
    await c.until((m) => m.length === 1);
    assert.equal(c.messages[0]!.code, "INVALID_HOTWORDS");
    c.json({ mode: "2pass", wav_name: "hw", hotwords: '{"阿里巴巴": 20}' });
    await c.audio(pcm([{ speech: 200 }]));
    c.json({ is_speaking: false });
    await c.until((m) => finals(m).length === 1);
    c.close();
  });
});

describe("worker failures and limits", () => {
  test("a worker stream failure gives the client a clear error and a documented close", async () => {
    const worker = await new ScriptedWorker({ failAfterAudioMs: { ms: 500, code: GrpcStatus.INTERNAL, details: "boom" } }).start();
    const gw = await startGateway([worker.address]);
    try {
      const c = await TestClient.connect(gw.url);
      c.json({ mode: "2pass", wav_name: "fail", is_speaking: true });
      await c.audio(pcm([{ speech: 1000 }]));
      c.json({ is_speaking: false, is_end: true });
      const code = await c.closed();
      assert.equal(code, 1011);
      const err = c.messages.find((m) => m.error !== undefined)!;
      assert.equal(err.code, "WORKER_FAILED");
      assert.equal(err.wav_name, "fail");
      const ack = c.messages.find((m) => m.is_end === true)!;
      assert.equal(ack.is_final, false);
    } finally {
      await gw.stop();
      await worker.stop();
    }
  });

  test("strict online mode: online deltas, then exactly one is_final true after end of input", async () => {
    const worker = await new ScriptedWorker().start();
    const gw = await startGateway([worker.address], { ONLINE_MODE: "strict" });
    try {
      const c = await TestClient.connect(gw.url);
      c.json({ mode: "online", wav_name: "on", is_speaking: true });
      await c.audio(THREE);
      c.json({ is_speaking: false, is_end: true });
      const msgs = await c.until((m) => m.some((x) => x.is_end === true));
      assert.ok(msgs.every((m) => m.mode === "online"), "msgs.every((m) => m.mode === \"online\")");
      const text = msgs.filter((m) => m.is_end !== true).map((m) => m.text).join("");
      assert.equal(text, "S0wwwwS1wwwwwwS2ww");
      assert.equal(msgs.filter((m) => m.is_final && m.is_end !== true).length, 1);
      assert.equal(worker.calls[0]!.configs[0]!.mode, 2);
    } finally {
      await gw.stop();
      await worker.stop();
    }
  });

  test("online is upgraded to 2pass by default", async () => {
    const worker = await new ScriptedWorker().start();
    const gw = await startGateway([worker.address]);
    try {
      const c = await TestClient.connect(gw.url);
      c.json({ mode: "online", wav_name: "up", is_speaking: true });
      await c.audio(pcm([{ speech: 600 }]));
      c.json({ is_speaking: false });
      const msgs = await c.until((m) => finals(m).length === 1);
      assert.ok(msgs.some((m) => m.mode === "2pass-online"), "msgs.some((m) => m.mode === \"2pass-online\")");
      assert.equal(finals(msgs)[0]!.mode, "2pass-offline");
      assert.equal(worker.calls[0]!.configs[0]!.mode, 3);
      c.close();
    } finally {
      await gw.stop();
      await worker.stop();
    }
  });

  test("idle timeout closes with IDLE_TIMEOUT (1008)", async () => {
    const worker = await new ScriptedWorker().start();
    const gw = await startGateway([worker.address], { IDLE_TIMEOUT_SECONDS: "1" });
    try {
      const c = await TestClient.connect(gw.url);
      c.json({ mode: "2pass", wav_name: "idle" });
      assert.equal(await c.closed(3000), 1008);
      assert.equal(c.messages[0]!.code, "IDLE_TIMEOUT");
    } finally {
      await gw.stop();
      await worker.stop();
    }
  });

  test("least-loaded placement spreads sessions over two workers", async () => {
    const w1 = await new ScriptedWorker().start();
    const w2 = await new ScriptedWorker().start();
    const gw = await startGateway([w1.address, w2.address]);
    try {
      const deadline = Date.now() + 3000;
      while (gw.pool.servingCount() < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const clients = await Promise.all([0, 1, 2, 3].map(() => TestClient.connect(gw.url)));
      for (const c of clients) c.json({ mode: "2pass", wav_name: "p" });
      await new Promise((r) => setTimeout(r, 200));
      // Placement, as the gateway holds it (a mux session reaches its worker only with its first frame).
      assert.deepEqual(gw.pool.status().map((s) => s.localSessions), [2, 2]);
      for (const c of clients) c.close();
    } finally {
      await gw.stop();
      await w1.stop();
      await w2.stop();
    }
  });

  test("SIGTERM-style shutdown drains a session waiting for its results", async () => {
    const worker = await new ScriptedWorker({ finalDelayMs: 300 }).start();
    const gw = await startGateway([worker.address]);
    try {
      const c = await TestClient.connect(gw.url);
      c.json({ mode: "2pass", wav_name: "drain", is_speaking: true });
      await c.audio(pcm([{ speech: 400 }]));
      c.json({ is_speaking: false, is_end: true });
      await new Promise((r) => setTimeout(r, 50));
      const done = gw.server.shutdown(5000);
      const code = await c.closed(5000);
      await done;
      assert.equal(code, 1001);
      assert.equal(finals(c.messages).length, 1);
      assert.ok(c.messages.some((m) => m.is_end === true && m.is_final === true), "c.messages.some((m) => m.is_end === true && m.is_final === true)");
    } finally {
      gw.pool.close();
      await worker.stop();
    }
  });
});

describe("failover by replay", () => {
  /** Two workers: the session lands on `bad` (the only one serving at connect), then `good` becomes serving. */
  async function setup(bad: ScriptedWorker): Promise<{ good: ScriptedWorker; gw: Awaited<ReturnType<typeof startGateway>>; c: TestClient }> {
    const good = await new ScriptedWorker({ serving: false }).start();
    const gw = await startGateway([bad.address, good.address]);
    const c = await TestClient.connect(gw.url);
    good.setServing(true);
    const deadline = Date.now() + 3000;
    while (gw.pool.servingCount() < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return { good, gw, c };
  }

  test("a worker dying mid-segment: the session continues elsewhere with no duplicate and no missing final", async () => {
    const bad = await new ScriptedWorker({ failAfterAudioMs: { ms: 1800, code: GrpcStatus.UNAVAILABLE, details: "killed" } }).start();
    const { good, gw, c } = await setup(bad);
    try {
      c.json({ mode: "2pass", wav_name: "fo", is_speaking: true });
      await c.audio(THREE, 1920, 1);
      c.json({ is_speaking: false, is_end: true });
      const msgs = await c.until((m) => m.some((x) => x.is_end === true));
      assert.ok(msgs.every((m) => m.error === undefined), JSON.stringify(msgs));
      const fin = finals(msgs);
      assert.deepEqual(fin.map((f) => f.text), ["S0wwww", "S1wwwwww", "S2ww"]);
      // The client's concatenated deltas of the replayed segment are never duplicated.
      const seg1 = msgs.slice(msgs.indexOf(fin[0]!) + 1, msgs.indexOf(fin[1]!)).filter((m) => m.mode === "2pass-online");
      const joined = seg1.map((p) => p.text).join("");
      assert.ok(fin[1]!.text.startsWith(joined), `deltas ${joined} vs final ${fin[1]!.text}`);
      assert.equal(bad.calls.length, 1);
      assert.equal(good.calls.length, 1);
      const resume = good.calls[0]!.configs[0]!.resume as { audioOffsetMs: number; finalizedSegments: number };
      assert.equal(resume.finalizedSegments, 1);
      assert.ok(resume.audioOffsetMs >= 1100 && resume.audioOffsetMs <= 1300, String(resume.audioOffsetMs));
      // Finals keep session-timeline times after the replay.
      assert.ok(JSON.parse(fin[2]!.timestamp!)[0][0] > 2800, "JSON.parse(fin[2]!.timestamp!)[0][0] > 2800");
      c.close();
    } finally {
      await gw.stop();
      await bad.stop();
      await good.stop();
    }
  });

  test("a worker dying after end of input: audio and END_OF_INPUT are replayed, the ack arrives", async () => {
    const bad = await new ScriptedWorker({ failOnEndOfInput: GrpcStatus.INTERNAL }).start();
    const { good, gw, c } = await setup(bad);
    try {
      c.json({ mode: "offline", wav_name: "fo2", is_speaking: true });
      await c.audio(THREE, 204800);
      c.json({ is_speaking: false, is_end: true });
      const msgs = await c.until((m) => m.some((x) => x.is_end === true));
      assert.deepEqual(msgs, [
        { mode: "offline", wav_name: "fo2", text: "S0wwww S1wwwwww S2ww", is_final: true, timestamp: msgs[0]!.timestamp, stamp_sents: msgs[0]!.stamp_sents },
        { mode: "offline", wav_name: "fo2", text: "", is_final: true, is_end: true },
      ]);
      assert.equal(good.calls[0]!.eois, 1);
      c.close();
    } finally {
      await gw.stop();
      await bad.stop();
      await good.stop();
    }
  });
});
