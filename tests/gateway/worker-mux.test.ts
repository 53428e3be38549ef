/**
 * Sessions carried over one StreamingRecognizeMux call per worker connection
 * (worker-mux.ts), through the real WorkerPool and WorkerLink, against
 * scripted workers on port 0 that serve the mux with their per-call logic
 * (bench/lib/mux-server.ts): sharing, batching, per-session ends, failover
 * when the call dies, flow control, the per-call fallbacks and re-opening.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { status as GrpcStatus } from "@grpc/grpc-js";
import type { ErrorCode } from "../../gateway/src/errors.js";
import { createLogger } from "../../gateway/src/log.js";
import { defaultSettings, workerConfig } from "../../gateway/src/settings.js";
import { WorkerLink } from "../../gateway/src/worker-link.js";
import { WorkerPool } from "../../gateway/src/workers.js";
import { WriteCoalescer } from "../../gateway/src/write-coalescer.js";
import { pcm } from "./helpers/harness.js";
import { ScriptedWorker } from "./helpers/scripted-worker.js";

const logger = createLogger("silent");
const CONFIG = workerConfig("mux-test", defaultSettings({ isFinalMode: "seed", onlineMode: "upgrade", maxHotwords: 8, maxHotwordChars: 16, maxHotwordsBytes: 256 }));
const FRAME = 1920; // 60 ms at 16 kHz

async function until(pred: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A started pool that has every worker's health and first load report (which says whether it serves the mux). */
async function pool(addresses: string[], opts: { mux?: boolean; serving?: number } = {}): Promise<WorkerPool> {
  const p = new WorkerPool(addresses, logger, { minBackoffMs: 50, maxBackoffMs: 300, loadIntervalMs: 200, ...(opts.mux !== undefined ? { mux: opts.mux } : {}) });
  p.start();
  await until(() => p.servingCount() >= (opts.serving ?? 1) && p.status().every((s) => s.load !== null), "serving workers with load reports");
  return p;
}

/** A link with what the tests look at recorded. */
function link(workers: WorkerPool, coalescer?: WriteCoalescer) {
  const flow = { pauses: 0, resumes: 0 };
  const l = new WorkerLink({
    sessionId: "mux-test",
    workers,
    initialLease: null,
    replayBufferSeconds: 60,
    ...(coalescer !== undefined ? { coalescer } : {}),
    input: { pause: () => void flow.pauses++, resume: () => void flow.resumes++ },
    logger,
  });
  const r = { link: l, flow, acks: 0, finals: [] as string[], failures: [] as Array<[ErrorCode, string | undefined]>, failovers: [] as Array<[string, string]> };
  l.on("endOfInput", () => void r.acks++);
  l.on("final", (f) => void r.finals.push(f.text));
  l.on("failed", (code, detail) => void r.failures.push([code, detail]));
  l.on("failover", (f) => void r.failovers.push([f.from, f.to]));
  return r;
}

/** A link and what the tests record of it. */
type Recorded = ReturnType<typeof link>;

/** `n` links on `workers`, each opened with a round begun, once worker `w` has every session. */
async function begun(w: ScriptedWorker, workers: WorkerPool, n: number): Promise<Recorded[]> {
  const rs = Array.from({ length: n }, () => link(workers));
  for (const r of rs) {
    r.link.open();
    r.link.beginRound(CONFIG);
  }
  await until(() => w.calls.length === n, "every session at the worker");
  return rs;
}

function send(l: WorkerLink, audio: Buffer): void {
  for (let off = 0; off < audio.length; off += FRAME) l.audio(audio.subarray(off, off + FRAME), 16000);
}

const SPEECH = pcm([{ speech: 600 }, { silence: 400 }]);

describe("worker mux", () => {
  test("many sessions on one worker connection share one mux call, each a session of its own at the worker", async () => {
    const w = await new ScriptedWorker().start();
    const workers = await pool([w.address]);
    const links = Array.from({ length: 6 }, () => link(workers));
    try {
      for (const r of links) {
        r.link.open();
        r.link.beginRound(CONFIG);
        send(r.link, SPEECH);
        r.link.endRound();
      }
      await until(() => links.every((r) => r.acks === 1), "every session's acknowledgement");
      assert.equal(w.muxCalls.length, 1, "one mux call for all sessions");
      assert.equal(w.calls.length, 6);
      for (const c of w.calls) {
        assert.equal(c.mux, 0);
        assert.equal(c.audioBytes, SPEECH.length);
        assert.deepEqual(c.order.slice(0, 2), ["config", "audio"]);
      }
      assert.deepEqual(links.map((r) => r.finals), links.map(() => ["S0wwww"]));
      assert.equal(links[0]!.link.writerPath, "mux");
      assert.deepEqual(workers.muxStats(w.address).map((s) => s.calls), [1]);
    } finally {
      for (const r of links) r.link.close();
      workers.close();
      await w.stop();
    }
  });

  test("held audio of many sessions leaves as one message; configs are not held, and a burst of them is one message", async () => {
    const w = await new ScriptedWorker().start();
    const workers = await pool([w.address]);
    const coalescer = new WriteCoalescer({ delay: 4 });
    const links = Array.from({ length: 10 }, () => link(workers, coalescer));
    try {
      for (const r of links) {
        r.link.open();
        r.link.beginRound(CONFIG);
      }
      // Configs are never held: the ten written in one turn went out together when it ended.
      await until(() => w.calls.length === 10 && w.calls.every((c) => c.configs.length === 1), "every config");
      const mux = w.muxCalls[0]!;
      assert.equal(mux.stats.messages, 1, "ten sessions' configs in one message");
      // One 60 ms frame per session in one loop turn: held, then one flush, one message.
      for (const r of links) r.link.audio(SPEECH.subarray(0, FRAME), 16000);
      await until(() => w.calls.every((c) => c.audioBytes === FRAME), "every session's frame");
      assert.equal(mux.stats.messages, 2, "ten sessions' frames in one message");
      assert.equal(mux.stats.frames, 20);
      // A config written in a later turn does not wait for the coalescer's timer.
      const extra = link(workers, coalescer);
      links.push(extra);
      extra.link.open();
      extra.link.beginRound(CONFIG);
      const sent = (): number => workers.muxStats(w.address).reduce((n, m) => n + m.messages, 0);
      assert.equal(sent(), 2);
      await Promise.resolve(); // the end of this turn's synchronous work, long before the 4 ms hold
      assert.equal(sent(), 3, "the config was written at the end of its turn, not held");
      await until(() => mux.stats.messages === 3, "the config at the worker");
    } finally {
      for (const r of links) r.link.close();
      workers.close();
      await w.stop();
    }
  });

  test("a session the worker ends with INVALID_ARGUMENT fails alone; the others on the call go on", async () => {
    const w = await new ScriptedWorker().start();
    const workers = await pool([w.address]);
    const good = [link(workers), link(workers)];
    const bad = link(workers);
    try {
      for (const r of [good[0]!, bad, good[1]!]) {
        r.link.open();
        r.link.beginRound(r === bad ? { ...CONFIG, sampleRateHz: 44100 } : CONFIG);
      }
      await until(() => bad.failures.length === 1, "the rejected session's failure");
      assert.equal(bad.failures[0]![0], "WORKER_REJECTED");
      assert.deepEqual(bad.failovers, []);
      for (const r of good) {
        send(r.link, SPEECH);
        r.link.endRound();
      }
      await until(() => good.every((r) => r.acks === 1), "the other sessions' acknowledgements");
      assert.deepEqual(good.map((r) => r.failures), [[], []]);
      assert.equal(w.muxCalls.length, 1);
    } finally {
      for (const r of [...good, bad]) r.link.close();
      workers.close();
      await w.stop();
    }
  });

  test("a session the worker ends with UNAVAILABLE fails over by replay, byte-exact, while the others stay on the call", async () => {
    // Sessions fail once 1.8 s of their audio arrived: the long one does, the short one never gets there.
    const a = await new ScriptedWorker({ failAfterAudioMs: { ms: 1800, code: GrpcStatus.UNAVAILABLE, details: "killed" } }).start();
    const b = await new ScriptedWorker({ serving: false }).start();
    const workers = await pool([a.address, b.address]);
    const long = link(workers);
    const short = link(workers);
    const audio = pcm([{ speech: 600 }, { silence: 500 }, { speech: 1000 }, { silence: 500 }]);
    for (let i = 0; i < audio.length / 2; i++) audio.writeInt16LE(Math.max(-32768, Math.min(32767, audio.readInt16LE(i * 2) + ((i * 7919) % 201) - 100)), i * 2);
    try {
      long.link.open();
      short.link.open();
      assert.equal(long.link.worker, a.address);
      assert.equal(short.link.worker, a.address);
      b.setServing(true);
      await until(() => workers.servingCount() === 2, "both workers serving");
      short.link.beginRound(CONFIG);
      send(short.link, SPEECH);
      long.link.beginRound(CONFIG);
      send(long.link, audio);
      long.link.endRound();
      await until(() => long.acks === 1, "the long session's acknowledgement");
      assert.deepEqual(long.failovers, [[a.address, b.address]]);
      // The replacement got exactly the tail of what was sent, from the resume offset on.
      const rest = Buffer.concat(b.calls[0]!.pcm);
      const resume = b.calls[0]!.configs[0]!.resume as { audioOffsetMs: number };
      assert.ok(Math.abs((audio.length - rest.length) / 32 - resume.audioOffsetMs) <= 0.5, `${rest.length} bytes from ${resume.audioOffsetMs} ms`);
      assert.ok(rest.equals(audio.subarray(audio.length - rest.length)), "the replayed audio differs from what was sent");
      // The short session is still on the first worker's mux call.
      short.link.endRound();
      await until(() => short.acks === 1, "the short session's acknowledgement");
      assert.deepEqual(short.failovers, []);
      assert.equal(short.link.worker, a.address);
      assert.equal(a.muxCalls.length, 1);
    } finally {
      long.link.close();
      short.link.close();
      workers.close();
      await a.stop();
      await b.stop();
    }
  });

  test("every session on a mux call fails over when the worker goes away", async () => {
    const a = await new ScriptedWorker().start();
    const b = await new ScriptedWorker({ serving: false }).start();
    const workers = await pool([a.address, b.address]);
    const links = Array.from({ length: 4 }, () => link(workers));
    try {
      for (const r of links) {
        r.link.open();
        r.link.beginRound(CONFIG);
        send(r.link, pcm([{ speech: 300 }]));
      }
      await until(() => a.calls.length === 4 && a.calls.every((c) => c.audioBytes > 0), "audio of every session on the first worker");
      b.setServing(true);
      await until(() => workers.servingCount() === 2, "both workers serving");
      await a.stop();
      await until(() => links.every((r) => r.failovers.length === 1), "every session's failover");
      for (const r of links) {
        send(r.link, pcm([{ speech: 300 }, { silence: 400 }]));
        r.link.endRound();
      }
      await until(() => links.every((r) => r.acks === 1), "every acknowledgement from the second worker");
      assert.equal(b.muxCalls.length, 1);
      assert.equal(b.calls.length, 4);
      assert.ok(b.calls.every((c) => c.configs[0]!.resume != null), "each session resumed");
      assert.deepEqual(links.map((r) => r.failures), links.map(() => []));
    } finally {
      for (const r of links) r.link.close();
      workers.close();
      await b.stop();
    }
  });

  test("a worker whose engine stalls: its mux sessions are cancelled at the worker and fail over", async () => {
    const a = await new ScriptedWorker().start();
    const b = await new ScriptedWorker().start();
    const workers = await pool([a.address, b.address], { serving: 2 });
    const links = Array.from({ length: 2 }, () => link(workers));
    try {
      for (const r of links) r.link.open();
      // Least-loaded placement spreads them: the ones on `a` are the ones at stake.
      const onA = links.filter((r) => r.link.worker === a.address);
      assert.ok(onA.length >= 1);
      for (const r of onA) {
        r.link.beginRound(CONFIG);
        send(r.link, pcm([{ speech: 300 }]));
      }
      await until(() => a.calls.length === onA.length && a.calls.every((c) => c.audioBytes > 0), "audio on the first worker");
      a.setEngineStalled(true);
      await until(() => onA.every((r) => r.failovers.length === 1), "failover of the stalled worker's sessions");
      await until(() => a.calls.every((c) => c.cancelled), "the cancel frames at the stalled worker");
      for (const r of onA) {
        assert.equal(r.link.worker, b.address);
        r.link.endRound();
      }
      await until(() => onA.every((r) => r.acks === 1), "acknowledgements from the second worker");
      assert.equal(a.muxCalls.length, 1, "the mux call itself stays");
    } finally {
      for (const r of links) r.link.close();
      workers.close();
      await a.stop();
      await b.stop();
    }
  });

  test("a paused session pauses its client's input until the worker resumes it", async () => {
    const w = await new ScriptedWorker().start();
    const workers = await pool([w.address]);
    const [r, other] = (await begun(w, workers, 2)) as [Recorded, Recorded];
    try {
      w.setFlow(0, true);
      // Frames until a write reports the pause (the flow event is on its way).
      const frames = pcm([{ speech: 3000 }]);
      let off = 0;
      while (r.flow.pauses === 0) {
        assert.ok(off < frames.length, "no pause before the audio ran out");
        r.link.audio(frames.subarray(off, off + FRAME), 16000);
        off += FRAME;
        await new Promise((res) => setTimeout(res, 5));
      }
      assert.equal(r.flow.resumes, 0);
      // The other session is not paused.
      send(other.link, SPEECH);
      other.link.endRound();
      await until(() => other.acks === 1, "the other session's acknowledgement");
      // (Not by the call's own buffer: the frames of one turn are one message.)
      assert.equal(other.flow.resumes, other.flow.pauses);
      assert.equal(w.calls[0]!.audioBytes, 0, "held at the worker while paused");
      w.setFlow(0, false);
      await until(() => r.flow.resumes === 1, "the client's input resumed");
      r.link.endRound();
      await until(() => r.acks === 1, "the paused session's acknowledgement");
      assert.equal(w.calls[0]!.audioBytes, off, "every frame arrived, in order, after the resume");
    } finally {
      r.link.close();
      other.link.close();
      workers.close();
      await w.stop();
    }
  });

  test("a mux call grpc-js reports full pauses every session's client input, and the drain resumes them all", async () => {
    const w = await new ScriptedWorker().start();
    const workers = await pool([w.address]);
    const [a, b] = (await begun(w, workers, 2)) as [Recorded, Recorded];
    try {
      // A client streaming a file far faster than real time: 20 MiB in one turn is 20 messages of
      // 1 MiB, past grpc-js's 16 buffered writes.
      a.link.audio(pcm([{ speech: 700_000 }]), 16000);
      assert.equal(a.flow.pauses, 1, "the writer's client paused");
      // Another session writing while the call is full is told to pause as well: it shares the call.
      b.link.audio(SPEECH.subarray(0, FRAME), 16000);
      assert.equal(b.flow.pauses, 1, "the other client paused");
      await until(() => a.flow.resumes === 1 && b.flow.resumes === 1, "both clients resumed by the drain", 20_000);
      a.link.endRound();
      b.link.endRound();
      await until(() => a.acks === 1 && b.acks === 1, "both acknowledgements", 20_000);
      assert.equal(w.calls[1]!.audioBytes, FRAME);
    } finally {
      a.link.close();
      b.link.close();
      workers.close();
      await w.stop();
    }
  });

  for (const [label, workerMux, poolMux] of [
    ["WORKER_MUX=off", true, false],
    ["a worker whose load report says mux: false", false, true],
  ] as const) {
    test(`sessions get a StreamingRecognize call each with ${label}`, async () => {
      const w = await new ScriptedWorker({ mux: workerMux }).start();
      const workers = await pool([w.address], { mux: poolMux });
      const links = [link(workers), link(workers)];
      try {
        for (const r of links) {
          r.link.open();
          r.link.beginRound(CONFIG);
          send(r.link, SPEECH);
          r.link.endRound();
        }
        await until(() => links.every((r) => r.acks === 1), "both acknowledgements");
        assert.equal(links[0]!.link.writerPath, "direct");
        assert.equal(w.muxCalls.length, 0);
        assert.deepEqual(w.calls.map((c) => c.mux), [null, null]);
      } finally {
        for (const r of links) r.link.close();
        workers.close();
        await w.stop();
      }
    });
  }

  test("a worker that reports mux but answers UNIMPLEMENTED gets a call per session from then on", async () => {
    const w = await new ScriptedWorker({ mux: false, reportMux: true }).start();
    const workers = await pool([w.address]);
    const first = link(workers);
    const second = link(workers);
    try {
      first.link.open();
      assert.equal(first.link.writerPath, "mux");
      first.link.beginRound(CONFIG);
      // Nowhere else to go: the session on the mux that never was fails (retryably).
      await until(() => first.failures.length === 1, "the first session's failure");
      assert.equal(first.failures[0]![0], "WORKER_FAILED");
      second.link.open();
      second.link.beginRound(CONFIG);
      send(second.link, SPEECH);
      second.link.endRound();
      await until(() => second.acks === 1, "the second session's acknowledgement");
      assert.equal(second.link.writerPath, "direct");
      assert.deepEqual(w.calls.map((c) => c.mux), [null]);
    } finally {
      first.link.close();
      second.link.close();
      workers.close();
      await w.stop();
    }
  });

  test("after its mux call ended, the next session opens a new one, numbered from 1 again", async () => {
    const w = await new ScriptedWorker().start();
    const workers = await pool([w.address]);
    const first = link(workers);
    const second = link(workers);
    try {
      first.link.open();
      first.link.beginRound(CONFIG);
      await until(() => w.calls.length === 1, "the first session");
      w.endMuxCalls(GrpcStatus.UNAVAILABLE, "worker stopping");
      // Nowhere to fail over to: the session fails, retryably.
      await until(() => first.failures.length === 1, "the first session's failure");
      assert.equal(first.failures[0]![0], "WORKER_UNAVAILABLE");
      second.link.open();
      second.link.beginRound(CONFIG);
      send(second.link, SPEECH);
      second.link.endRound();
      await until(() => second.acks === 1, "the second session's acknowledgement");
      assert.equal(w.muxCalls.length, 2);
      assert.equal(w.muxCalls[1]!.stats.sessions, 1);
      assert.deepEqual(workers.muxStats(w.address).map((s) => s.calls), [2]);
    } finally {
      first.link.close();
      second.link.close();
      workers.close();
      await w.stop();
    }
  });
});
