/**
 * The worker link on its own: real grpc-js calls to scripted workers on port
 * 0, through the real WorkerPool — its typed events, backpressure, failover
 * with replay and de-duplicated deltas, and what it reports when nothing can
 * be saved.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { createLogger } from "../../gateway/src/log.js";
import type { ErrorCode } from "../../gateway/src/errors.js";
import type { FinalResult } from "../../gateway/src/gen/asr/v1/asr.js";
import { defaultSettings, workerConfig } from "../../gateway/src/settings.js";
import { WorkerLink, type LinkPartial } from "../../gateway/src/worker-link.js";
import { WorkerPool } from "../../gateway/src/workers.js";
import { WriteCoalescer } from "../../gateway/src/write-coalescer.js";
import { pcm } from "./helpers/harness.js";
import { ScriptedWorker } from "./helpers/scripted-worker.js";

const THREE = pcm([{ silence: 300 }, { speech: 600 }, { silence: 500 }, { speech: 1000 }, { silence: 500 }, { speech: 400 }, { silence: 100 }]);
const logger = createLogger("silent");
const CONFIG = workerConfig("link-test", defaultSettings({ isFinalMode: "seed", onlineMode: "upgrade", maxHotwords: 8, maxHotwordChars: 16, maxHotwordsBytes: 256 }));

async function pool(addresses: string[], serving = 1): Promise<WorkerPool> {
  const p = new WorkerPool(addresses, logger, { minBackoffMs: 50, maxBackoffMs: 300, loadIntervalMs: 200 });
  p.start();
  const deadline = Date.now() + 5000;
  // Load reports too: they say whether a worker serves the mux, which decides each session's path.
  while ((p.servingCount() < serving || p.status().some((s) => s.load === null)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  return p;
}

/** A link with every event recorded. */
function recordedLink(workers: WorkerPool, directWrites?: boolean, directReads?: boolean, coalescer?: WriteCoalescer) {
  const flow = { pauses: 0, resumes: 0 };
  const link = new WorkerLink({
    sessionId: "link-test",
    workers,
    initialLease: null,
    replayBufferSeconds: 60,
    directWrites,
    directReads,
    coalescer,
    input: { pause: () => void flow.pauses++, resume: () => void flow.resumes++ },
    logger,
  });
  const events: string[] = [];
  const partials: LinkPartial[] = [];
  const finals: FinalResult[] = [];
  const failures: Array<[ErrorCode, string | undefined]> = [];
  const failovers: Array<{ from: string; to: string }> = [];
  let acks = 0;
  link.on("attached", (w) => events.push(`attached ${w}`));
  link.on("partial", (p) => partials.push(p));
  link.on("final", (f) => {
    events.push(`final ${f.text}`);
    finals.push(f);
  });
  link.on("endOfInput", () => {
    events.push("ack");
    acks++;
  });
  link.on("failover", (f) => failovers.push(f));
  link.on("failed", (code, detail) => failures.push([code, detail]));
  const until = async (pred: () => boolean, ms = 5000): Promise<void> => {
    const deadline = Date.now() + ms;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error(`timed out; events ${JSON.stringify(events)} failures ${JSON.stringify(failures)}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  return { link, flow, events, partials, finals, failures, failovers, acks: () => acks, until };
}

function send(link: WorkerLink, audio: Buffer, frame = 1920): void {
  for (let off = 0; off < audio.length; off += frame) link.audio(audio.subarray(off, off + frame), 16000);
}

describe("worker link", () => {
  for (const path of ["mux", "direct", "grpc-js"] as const) {
  const direct = path !== "grpc-js";
  const label = {
    mux: "a session of the worker's mux call",
    direct: "a call of its own, requests and responses straight on the HTTP/2 stream",
    "grpc-js": "a call of its own, direct writes and reads off: through grpc-js",
  }[path];
  test(`emits each segment's partials and final, then the round's acknowledgement, in order (${label})`, async () => {
    const w = await new ScriptedWorker({ mux: path === "mux" }).start();
    const workers = await pool([w.address]);
    const r = recordedLink(workers, direct ? undefined : false, direct ? undefined : false);
    try {
      r.link.open();
      r.link.beginRound(CONFIG);
      send(r.link, THREE);
      r.link.endRound();
      await r.until(() => r.acks() === 1);
      assert.equal(r.link.writerPath, path);
      assert.equal(r.link.readerPath, path);
      assert.equal(w.muxCalls.length, path === "mux" ? 1 : 0);
      assert.deepEqual(r.events, [`attached ${w.address}`, "final S0wwww", "final S1wwwwww", "final S2ww", "ack"]);
      const seg1 = r.partials.filter((p) => p.segmentId === 1).map((p) => p.delta).join("");
      assert.equal(seg1, "S1wwwwww");
      assert.deepEqual(w.calls[0]!.order.slice(0, 2), ["config", "audio"]);
      assert.equal(w.calls[0]!.audioBytes, THREE.length);
    } finally {
      r.link.close();
      workers.close();
      await w.stop();
    }
  });
  }

  test("an unchanged config is not sent again for the next round; a changed one is", async () => {
    const w = await new ScriptedWorker().start();
    const workers = await pool([w.address]);
    const r = recordedLink(workers);
    try {
      r.link.open();
      for (const cfg of [CONFIG, CONFIG, { ...CONFIG, wavName: "other" }]) {
        r.link.beginRound(cfg);
        send(r.link, pcm([{ speech: 300 }, { silence: 100 }]));
        r.link.endRound();
      }
      await r.until(() => r.acks() === 3);
      assert.deepEqual(w.calls[0]!.configs.map((c) => c.wavName), ["microphone", "other"]);
    } finally {
      r.link.close();
      workers.close();
      await w.stop();
    }
  });

  // The mux path's own backpressure (the worker's per-session flow, the shared call's congestion) is
  // worker-mux.test.ts's; a mux call takes 16 MiB before grpc-js reports it full.
  test("pauses the client's reads while its own call is full and resumes them when it drains", async () => {
    const w = await new ScriptedWorker({ mux: false }).start();
    const workers = await pool([w.address]);
    const r = recordedLink(workers);
    try {
      r.link.open();
      r.link.beginRound(CONFIG);
      // 40 s of audio written at once: far beyond the call's buffer.
      send(r.link, pcm([{ speech: 20_000 }, { silence: 20_000 }]));
      r.link.endRound();
      assert.ok(r.flow.pauses >= 1, `pauses ${r.flow.pauses}`);
      await r.until(() => r.acks() === 1, 20_000);
      assert.equal(r.flow.resumes, r.flow.pauses);
    } finally {
      r.link.close();
      workers.close();
      await w.stop();
    }
  });

  test("a call failing mid-segment fails over: resume state, replayed audio, and no repeated delta", async () => {
    const bad = await new ScriptedWorker({ failAfterAudioMs: { ms: 1800, code: GrpcStatus.UNAVAILABLE, details: "killed" } }).start();
    const good = await new ScriptedWorker({ serving: false }).start();
    const workers = await pool([bad.address, good.address]);
    const r = recordedLink(workers);
    try {
      r.link.open();
      assert.equal(r.link.worker, bad.address);
      good.setServing(true);
      await r.until(() => workers.servingCount() === 2);
      r.link.beginRound(CONFIG);
      send(r.link, THREE);
      r.link.endRound();
      await r.until(() => r.acks() === 1);
      assert.deepEqual(r.finals.map((f) => f.text), ["S0wwww", "S1wwwwww", "S2ww"]);
      assert.deepEqual(r.failovers.map((f) => [f.from, f.to]), [[bad.address, good.address]]);
      assert.equal(r.link.failoverCount, 1);
      // Segment 1 was replayed from its start on `good`: its deltas still concatenate to its text once.
      const seg1 = r.partials.filter((p) => p.segmentId === 1).map((p) => p.delta).join("");
      assert.equal(seg1, "S1wwwwww");
      const resume = good.calls[0]!.configs[0]!.resume as { audioOffsetMs: number; finalizedSegments: number };
      assert.equal(resume.finalizedSegments, 1);
      assert.ok(resume.audioOffsetMs >= 1100 && resume.audioOffsetMs <= 1300, String(resume.audioOffsetMs));
      assert.equal(good.calls[0]!.eois, 1);
      assert.deepEqual(r.failures, []);
    } finally {
      r.link.close();
      workers.close();
      await bad.stop();
      await good.stop();
    }
  });

  for (const [label, path, coalesceMs, frameBytes] of [
    ["60 ms frames on the worker's mux call, held 4 ms by the coalescer", "mux", 4, 1920],
    ["60 ms frames on the worker's mux call, not held", "mux", 0, 1920],
    ["0.5 s frames on the worker's mux call, above the slabs' size limit", "mux", 4, 16_000],
    ["60 ms frames on a call of their own, straight on the HTTP/2 stream, held 4 ms by the coalescer", "direct", 4, 1920],
    ["60 ms frames on a call of their own, straight on the HTTP/2 stream, not held", "direct", 0, 1920],
    ["60 ms frames on a call of their own, through grpc-js", "grpc-js", 0, 1920],
    ["0.5 s frames on a call of their own, above the slabs' size limit", "direct", 4, 16_000],
  ] as const) {
    const direct = path !== "grpc-js";
    test(`every byte reaches the workers as sent across slab reuse, trims by finals and a failover's replay (${label})`, async () => {
      // Six 1.1 s segments, each sent after the previous one's final: finals trim the replay buffer
      // mid-frame and free its slabs, which the next segments' audio reuses.
      const SEGMENTS = 6;
      const audio = pcm(Array.from({ length: SEGMENTS }, () => [{ speech: 600 }, { silence: 500 }]).flat());
      // Every sample distinct enough that a misplaced or overwritten byte shows (silence stays quiet for the worker's VAD).
      for (let i = 0; i < audio.length / 2; i++) audio.writeInt16LE(Math.max(-32768, Math.min(32767, audio.readInt16LE(i * 2) + ((i * 7919) % 201) - 100)), i * 2);
      const perSegment = audio.length / SEGMENTS;
      // Fails at the end of segment 4's speech, before its final: segment 4 is replayed from its start.
      const mux = path === "mux";
      const bad = await new ScriptedWorker({ mux, failAfterAudioMs: { ms: 4 * 1100 + 600, code: GrpcStatus.UNAVAILABLE, details: "killed" } }).start();
      const good = await new ScriptedWorker({ mux, serving: false }).start();
      const workers = await pool([bad.address, good.address]);
      const r = recordedLink(workers, direct ? undefined : false, direct ? undefined : false, new WriteCoalescer({ delay: coalesceMs }));
      try {
        r.link.open();
        good.setServing(true);
        await r.until(() => workers.servingCount() === 2);
        r.link.beginRound(CONFIG);
        for (let k = 0; k < SEGMENTS; k++) {
          send(r.link, audio.subarray(k * perSegment, (k + 1) * perSegment), frameBytes);
          await r.until(() => r.finals.length === k + 1);
        }
        r.link.endRound();
        await r.until(() => r.acks() === 1);
        assert.equal(r.link.writerPath, path);
        assert.deepEqual(r.failovers.map((f) => [f.from, f.to]), [[bad.address, good.address]]);
        assert.deepEqual(r.finals.map((f) => f.segmentId), [0, 1, 2, 3, 4, 5]);
        // The failed worker got an exact prefix of the audio...
        const first = Buffer.concat(bad.calls[0]!.pcm);
        assert.ok(first.length >= 4 * perSegment, `${first.length} bytes before the failure`);
        assert.ok(first.equals(audio.subarray(0, first.length)), "the first worker's audio differs from what was sent");
        // ...and the next one exactly the rest from the resume offset, trimmed to the sample by the last final: segment 3's
        // (the worker fails after the frame that reaches 5.0 s; a 0.5 s frame also carries segment 4's end).
        const rest = Buffer.concat(good.calls[0]!.pcm);
        const resume = good.calls[0]!.configs[0]!.resume as { audioOffsetMs: number; finalizedSegments: number };
        assert.equal(resume.finalizedSegments, frameBytes <= 1920 ? 4 : 5);
        assert.ok(Math.abs((audio.length - rest.length) / 32 - resume.audioOffsetMs) <= 0.5, `${rest.length} bytes replayed from ${resume.audioOffsetMs} ms`);
        assert.ok(rest.length > perSegment && rest.length < 3 * perSegment, `${rest.length} bytes replayed and sent after the failover`);
        assert.ok(rest.equals(audio.subarray(audio.length - rest.length)), "the second worker's audio differs from what was sent");
        assert.deepEqual(r.failures, []);
      } finally {
        r.link.close();
        workers.close();
        await bad.stop();
        await good.stop();
      }
    });
  }

  test("with no other worker a retryable failure is reported as failed, and a rejection is never retried", async () => {
    for (const [code, expected] of [
      [GrpcStatus.UNAVAILABLE, "WORKER_UNAVAILABLE"],
      [GrpcStatus.INVALID_ARGUMENT, "WORKER_REJECTED"],
    ] as const) {
      const w = await new ScriptedWorker({ failAfterAudioMs: { ms: 500, code, details: "scripted" } }).start();
      const workers = await pool([w.address]);
      const r = recordedLink(workers);
      try {
        r.link.open();
        r.link.beginRound(CONFIG);
        send(r.link, THREE);
        await r.until(() => r.failures.length === 1);
        assert.equal(r.failures[0]![0], expected);
        assert.deepEqual(r.failovers, []);
        assert.equal(workers.status()[0]!.localSessions, 0, "the placement is released");
      } finally {
        r.link.close();
        workers.close();
        await w.stop();
      }
    }
  });

  test("close cancels the call and releases the placement once", async () => {
    const w = await new ScriptedWorker().start();
    const workers = await pool([w.address]);
    const r = recordedLink(workers);
    try {
      r.link.open();
      r.link.beginRound(CONFIG);
      send(r.link, pcm([{ speech: 300 }]));
      await r.until(() => w.calls[0]?.audioBytes === 9600);
      assert.equal(workers.status()[0]!.localSessions, 1);
      r.link.close();
      r.link.close();
      await r.until(() => w.calls[0]!.cancelled);
      assert.equal(workers.status()[0]!.localSessions, 0);
    } finally {
      workers.close();
      await w.stop();
    }
  });
});
