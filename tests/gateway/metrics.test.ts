/**
 * GET /metrics on the gateway, scraped over a real socket and parsed with a
 * real Prometheus text parser, before and after real sessions against the
 * scripted worker: each metric moves by what the sessions did.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { finals, pcm, startGateway, TestClient, type TestGateway } from "./helpers/harness.js";
import { hasFamily, histogramCount, PARSER_SKIP_REASON, scrape, value } from "./helpers/prometheus.js";
import { ScriptedWorker } from "./helpers/scripted-worker.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
/** Three utterances for the scripted worker (speech = a loud sine). */
const THREE = pcm([{ silence: 300 }, { speech: 600 }, { silence: 500 }, { speech: 1000 }, { silence: 500 }, { speech: 400 }, { silence: 100 }]);
const isAck = (m: { is_end?: boolean }): boolean => m.is_end === true;
/** The worker-transport families (the pool's WorkerTransportSource). */
const TRANSPORT_METRICS = [
  "asr_gateway_worker_streams", "asr_gateway_worker_mux_calls_total", "asr_gateway_worker_mux_messages_total",
  "asr_gateway_worker_mux_frames_total", "asr_gateway_worker_mux_congestions_total", "asr_gateway_worker_mux_flow_pauses_total",
  "asr_gateway_worker_mux_fallbacks_total",
];

/** Frame size the sessions here send (60 ms of 16 kHz PCM16). */
const FRAME = 1920;

/** A 2pass session that has sent THREE and had its end of input acknowledged (still open). */
async function twoPassRound(url: string, name: string): Promise<TestClient> {
  const c = await TestClient.connect(url);
  c.json({ mode: "2pass", wav_name: name, is_speaking: true });
  await c.audio(THREE, FRAME);
  c.json({ is_speaking: false, is_end: true });
  await c.until((m) => m.some(isAck));
  return c;
}

/** Waits (3 s at most) until the gateway has forgotten every session. */
async function untilNoSessions(gw: TestGateway): Promise<void> {
  const deadline = Date.now() + 3000;
  while (gw.server.sessions.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
}

/** Scrapes until counter `name` reads `want` (3 s at most). */
async function untilMetric(http: string, name: string, want: number): Promise<void> {
  const deadline = Date.now() + 3000;
  for (;;) {
    const got = value(await scrape(http), name);
    if (got === want) return;
    if (Date.now() > deadline) assert.fail(`${name} is ${got}, not ${want}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** Opens a connection and returns the HTTP status its upgrade was refused with (or 101). */
async function upgradeStatus(url: string): Promise<number> {
  try {
    const c = await TestClient.connect(url);
    c.close();
    return 101;
  } catch (e) {
    return (e as { status?: number }).status ?? -1;
  }
}

describe("gateway /metrics", { skip: PARSER_SKIP_REASON }, () => {
  test("parses as Prometheus text and counts sessions by mode, frames, bytes, messages and both latency histograms", async () => {
    const worker = await new ScriptedWorker().start();
    let gw: TestGateway | undefined;
    try {
      gw = await startGateway([worker.address], {}, { metrics: true });
      const before = await scrape(gw.http);
      for (const name of [
        "asr_gateway_sessions_open", "asr_gateway_sessions_total", "asr_gateway_frames_received_total", "asr_gateway_bytes_received_total",
        "asr_gateway_messages_sent_total", "asr_gateway_errors_total", "asr_gateway_failovers_total", "asr_gateway_refusals_total",
        "asr_gateway_final_after_end_of_input_seconds", "asr_gateway_first_partial_seconds", "asr_gateway_workers_serving", "process_cpu_seconds_total",
      ]) assert.ok(hasFamily(before, name), `missing ${name}`);
      assert.equal(value(before, "asr_gateway_frames_received_total"), 0);
      assert.equal(value(before, "asr_gateway_workers_serving"), 1);

      // A 2pass session, still open at the first scrape.
      const live = await twoPassRound(gw.url, "live");
      const during = await scrape(gw.http);
      assert.equal(value(during, "asr_gateway_sessions_open", { mode: "2pass" }), 1);
      assert.equal(value(during, "asr_gateway_sessions_total", { mode: "2pass" }), 1);
      assert.equal(value(during, "asr_gateway_frames_received_total"), Math.ceil(THREE.length / FRAME));
      assert.equal(value(during, "asr_gateway_bytes_received_total"), THREE.length);
      assert.equal(value(during, "asr_gateway_messages_sent_total"), live.messages.length);
      assert.equal(finals(live.messages).length, 3);
      assert.equal(histogramCount(during, "asr_gateway_final_after_end_of_input_seconds", { mode: "2pass-offline" }), 1);
      assert.equal(histogramCount(during, "asr_gateway_first_partial_seconds"), 1);

      // An offline session; then both close.
      const off = await TestClient.connect(gw.url);
      off.json({ mode: "offline", wav_name: "off", is_speaking: true });
      await off.audio(THREE, 204800);
      off.json({ is_speaking: false, is_end: true });
      await off.until((m) => m.some(isAck));
      live.close();
      off.close();
      await live.closed();
      await off.closed();
      await untilNoSessions(gw);
      const after = await scrape(gw.http);
      assert.equal(value(after, "asr_gateway_sessions_open"), 0, "every open-session gauge is back to 0");
      assert.equal(value(after, "asr_gateway_sessions_total", { mode: "offline" }), 1);
      assert.equal(value(after, "asr_gateway_sessions_total"), 2);
      assert.equal(value(after, "asr_gateway_bytes_received_total"), 2 * THREE.length);
      assert.equal(value(after, "asr_gateway_messages_sent_total"), live.messages.length + off.messages.length);
      assert.equal(histogramCount(after, "asr_gateway_final_after_end_of_input_seconds", { mode: "offline" }), 1);
      assert.equal(value(after, "asr_gateway_errors_total"), 0);
    } finally {
      await gw?.stop();
      await worker.stop();
    }
  });

  test("counts refusals by reason and errors by code", async () => {
    const worker = await new ScriptedWorker().start();
    let gw: TestGateway | undefined;
    try {
      gw = await startGateway([worker.address], { AUTH_TOKEN: "secret-token-1", MAX_SESSIONS: "1" }, { metrics: true });
      assert.equal(await upgradeStatus(gw.url), 401);
      const c = await TestClient.connect(`${gw.url}/?token=secret-token-1`);
      assert.equal(await upgradeStatus(`${gw.url}/?token=secret-token-1`), 503);
      c.ws.send("{not json");
      c.json({ mode: "3pass" });
      await c.until((m) => m.filter((x) => x.error !== undefined).length === 2);
      c.json({ mode: "2pass" });
      c.ws.send(Buffer.alloc(3));
      await c.until((m) => m.filter((x) => x.error !== undefined).length === 3);
      const m = await scrape(gw.http);
      assert.equal(value(m, "asr_gateway_refusals_total", { reason: "unauthorized" }), 1);
      assert.equal(value(m, "asr_gateway_refusals_total", { reason: "max_sessions" }), 1);
      assert.equal(value(m, "asr_gateway_refusals_total"), 2);
      assert.equal(value(m, "asr_gateway_errors_total", { code: "INVALID_JSON", fatal: "false" }), 1);
      assert.equal(value(m, "asr_gateway_errors_total", { code: "UNSUPPORTED_MODE" }), 1);
      assert.equal(value(m, "asr_gateway_errors_total", { code: "ODD_FRAME_BYTES" }), 1);
      c.close();
    } finally {
      await gw?.stop();
      await worker.stop();
    }
  });

  test("counts a failover when a session's worker dies and it resumes on another", async () => {
    const bad = await new ScriptedWorker({ failAfterAudioMs: { ms: 1800, code: GrpcStatus.UNAVAILABLE, details: "killed" } }).start();
    const good = await new ScriptedWorker({ serving: false }).start();
    let gw: TestGateway | undefined;
    try {
      gw = await startGateway([bad.address, good.address], {}, { metrics: true });
      const c = await TestClient.connect(gw.url);
      good.setServing(true);
      const deadline = Date.now() + 3000;
      while (gw.pool.servingCount() < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      c.json({ mode: "2pass", wav_name: "fo", is_speaking: true });
      await c.audio(THREE, FRAME, 1);
      c.json({ is_speaking: false, is_end: true });
      await c.until((m) => m.some(isAck));
      assert.equal(good.calls.length, 1, "the session resumed on the second worker");
      const m = await scrape(gw.http);
      assert.equal(value(m, "asr_gateway_failovers_total"), 1);
      assert.equal(value(m, "asr_gateway_workers_serving"), 2);
      c.close();
    } finally {
      await gw?.stop();
      await bad.stop();
      await good.stop();
    }
  });

  test("counts the sessions on workers by transport, the mux traffic and a worker's flow pause", async () => {
    const worker = await new ScriptedWorker().start();
    let gw: TestGateway | undefined;
    try {
      gw = await startGateway([worker.address], {}, { metrics: true });
      const before = await scrape(gw.http);
      for (const name of TRANSPORT_METRICS) assert.ok(hasFamily(before, name), `missing ${name}`);
      assert.equal(value(before, "asr_gateway_worker_streams", { transport: "mux" }), 0);
      assert.equal(value(before, "asr_gateway_worker_mux_calls_total"), 0);

      const c = await twoPassRound(gw.url, "mux");
      const during = await scrape(gw.http);
      assert.equal(value(during, "asr_gateway_worker_streams", { transport: "mux" }), 1);
      assert.equal(value(during, "asr_gateway_worker_streams", { transport: "call" }), 0);
      assert.equal(value(during, "asr_gateway_worker_mux_calls_total"), 1);
      // The config, every audio frame and the end of input, in fewer messages than frames.
      const frames = value(during, "asr_gateway_worker_mux_frames_total");
      assert.ok(frames >= Math.ceil(THREE.length / FRAME) + 2, `mux frames ${frames}`);
      const messages = value(during, "asr_gateway_worker_mux_messages_total");
      assert.ok(messages >= 1 && messages < frames, `mux messages ${messages} for ${frames} frames`);
      assert.equal(value(during, "asr_gateway_worker_mux_flow_pauses_total"), 0);

      worker.setFlow(0, true);
      await untilMetric(gw.http, "asr_gateway_worker_mux_flow_pauses_total", 1);
      worker.setFlow(0, false);
      c.close();
      await c.closed();
      await untilNoSessions(gw);
      const after = await scrape(gw.http);
      assert.equal(value(after, "asr_gateway_worker_streams", { transport: "mux" }), 0);
      assert.equal(value(after, "asr_gateway_worker_mux_congestions_total"), 0);
      assert.equal(value(after, "asr_gateway_worker_mux_fallbacks_total"), 0);
    } finally {
      await gw?.stop();
      await worker.stop();
    }
  });

  test("counts a fallback when a worker reports the mux but does not serve it, and its later sessions as calls", async () => {
    const worker = await new ScriptedWorker({ mux: false, reportMux: true }).start();
    let gw: TestGateway | undefined;
    try {
      gw = await startGateway([worker.address], {}, { metrics: true });
      // The first session goes to the mux call that answers UNIMPLEMENTED (and has nowhere else to go).
      const first = await TestClient.connect(gw.url);
      first.json({ mode: "2pass", wav_name: "first", is_speaking: true });
      await first.audio(THREE.subarray(0, 10 * FRAME), FRAME);
      await untilMetric(gw.http, "asr_gateway_worker_mux_fallbacks_total", 1);
      first.close();
      const second = await twoPassRound(gw.url, "second");
      const m = await scrape(gw.http);
      assert.equal(value(m, "asr_gateway_worker_streams", { transport: "call" }), 1);
      assert.equal(value(m, "asr_gateway_worker_streams", { transport: "mux" }), 0);
      assert.equal(value(m, "asr_gateway_worker_mux_fallbacks_total"), 1);
      second.close();
    } finally {
      await gw?.stop();
      await worker.stop();
    }
  });

  test("GATEWAY_PROCESSES=2: every scrape, whichever process answers it, counts the sessions of both processes", async () => {
    const worker = await new ScriptedWorker().start();
    const child = spawn(process.execPath, ["--import", "tsx", "gateway/src/main.ts"], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? "", GATEWAY_PROCESSES: "2", GATEWAY_PORT: "0", GATEWAY_HOST: "127.0.0.1", WORKER_ADDRESSES: worker.address, LOG_LEVEL: "info" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const listeners = new Map<number, number>();
    const bothListening = new Promise<void>((resolve) => {
      createInterface({ input: child.stdout }).on("line", (l) => {
        const j = JSON.parse(l) as { msg: string; pid: number; port?: number };
        if (j.msg === "gateway listening") listeners.set(j.pid, j.port!);
        if (listeners.size === 2) resolve();
      });
    });
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    try {
      await bothListening;
      const port = [...listeners.values()][0]!;
      const http = `http://127.0.0.1:${port}`;
      for (let i = 0; i < 100 && (await fetch(`${http}/readyz`)).status !== 200; i++) await new Promise((r) => setTimeout(r, 50));
      const clients = await Promise.all([0, 1, 2, 3].map(() => TestClient.connect(`ws://127.0.0.1:${port}/`)));
      for (const [i, c] of clients.entries()) {
        c.json({ mode: "2pass", wav_name: `c${i}` });
        await c.audio(pcm([{ speech: 400 }]));
        c.json({ is_speaking: false, is_end: true });
      }
      await Promise.all(clients.map((c) => c.until((m) => m.some(isAck))));
      assert.equal(new Set(worker.calls.map((c) => c.peer)).size, 2, "sessions ran on both processes");
      // Each process ran some of the 4 sessions, so any one process's answer of 4 is the cluster's sum.
      for (let i = 0; i < 4; i++) {
        const m = await scrape(http);
        assert.equal(value(m, "asr_gateway_sessions_total", { mode: "2pass" }), 4, `scrape ${i}`);
        assert.equal(value(m, "asr_gateway_sessions_open", { mode: "2pass" }), 4, `scrape ${i}`);
        assert.equal(histogramCount(m, "asr_gateway_final_after_end_of_input_seconds", { mode: "2pass-offline" }), 4, `scrape ${i}`);
        assert.equal(value(m, "asr_gateway_workers_serving"), 1, "a worker seen by both processes counts once");
      }
      for (const c of clients) c.close();
      child.kill("SIGTERM");
      assert.equal(await exited, 0);
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL");
      await worker.stop();
    }
  });
});
