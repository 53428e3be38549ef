/**
 * Faults in CI, through the external interfaces only (the serve CLI, the gateway's
 * WebSocket, process signals): two fake-engine workers behind a gateway, real-time
 * sessions, one worker crashed or hung mid-run, every session's finals checked
 * exactly-once against a direct reference run (bench/chaos/lib/check.ts). The full
 * measurements (more streams, the link cut in a network namespace, timings) are
 * bench/chaos/worker-faults.ts; docs/reliability.md has the figures.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { DEFAULTS, runLoad } from "../../bench/lib/run.js";
import { checkAll, referenceRun, type TextReference } from "../../bench/chaos/lib/check.js";
import { engineProcess, signalTree, startGateway, startWorker, type GatewayProc, type Proc } from "../../bench/chaos/lib/cluster.js";
import type { Trace } from "../../bench/lib/sessions.js";
import { AUDIO_SKIP_REASON, SKIP_REASON as WORKER_SKIP } from "../e2e/helpers/real-worker.js";

const SKIP_REASON = WORKER_SKIP || AUDIO_SKIP_REASON;
/** ~16 s sessions with several segments each: a fault at 5 s lands mid-session. */
const FILES = ["synth/three_utterances.wav", "zh/long.wav*2", "zh/binhai.wav*3"];

describe("worker faults under load", { skip: SKIP_REASON, timeout: 240_000 }, () => {
  // Four workers started at once: A stays healthy, B is hung, C is killed, D's engine hangs.
  let a: Proc;
  let b: Proc;
  let c: Proc;
  let d: Proc;
  let ref: TextReference;
  before(async () => {
    const started = await Promise.all(["worker-a", "worker-b", "worker-c", "worker-d"].map((label) => startWorker({ label, fronts: 1 })));
    [a, b, c, d] = [started[0]!, started[1]!, started[2]!, started[3]!];
    ref = await referenceRun(a.address, FILES, 60);
  });
  after(async () => {
    if (b) signalTree(b.pid, "SIGCONT");
    if (d) signalTree(d.pid, "SIGCONT");
    await Promise.all([a, b, c, d].filter(Boolean).map((p) => p.stop(3000)));
  });

  /**
   * Sessions through a gateway on [A, victim]; `fault` hits the victim 5 s in (`faultAt`,
   * epoch ms); a stopped engine gets SIGCONT `resumeAfterMs` later when given.
   */
  async function faultRun(
    victim: Proc,
    fault: "SIGSTOP" | "SIGKILL" | "SIGSTOP engine",
    streams: number,
    resumeAfterMs?: number,
  ): Promise<{ gw: GatewayProc; traces: Trace[]; faultAt: number }> {
    // Info logs when the victim comes back: its return to placement is logged at info.
    const gw = await startGateway("gateway", [a.address, victim.address], resumeAfterMs === undefined ? {} : { LOG_LEVEL: "info" });
    const engine = engineProcess(victim.pid);
    let faultAt = 0;
    let resume: NodeJS.Timeout | undefined;
    try {
      const timer = setTimeout(() => {
        faultAt = Date.now();
        if (fault === "SIGSTOP engine") process.kill(engine!, "SIGSTOP");
        else signalTree(victim.pid, fault);
        if (resumeAfterMs !== undefined) resume = setTimeout(() => process.kill(engine!, "SIGCONT"), resumeAfterMs);
      }, 5000);
      const r = await runLoad({ ...DEFAULTS, target: gw.url, streams, files: FILES, rampMs: 1000, maxSeconds: 60, quiet: true, tag: `ci-${fault.replace(" ", "-")}` });
      clearTimeout(timer);
      return { gw, traces: r.traces, faultAt };
    } finally {
      clearTimeout(resume);
      await gw.stop();
    }
  }

  test("a worker hung by SIGSTOP is taken out when its load reports stop, and its sessions fail over with every final exactly once", async () => {
    const { gw, traces } = await faultRun(b, "SIGSTOP", 8);
    const { totals } = checkAll(traces, ref);
    assert.deepEqual(totals.errors, []);
    assert.equal(totals.lost, 0, "finals lost");
    assert.equal(totals.duplicates, 0, "finals duplicated");
    // A hang ends no call by itself: the stall watch (load reports silent) must have acted,
    // not TCP keepalive, and the sessions on the hung worker failed over.
    const stalls = gw.logs.filter((l) => String(l.msg).startsWith("worker stopped reporting load"));
    assert.equal(stalls.length, 1, JSON.stringify(gw.logs.slice(-5)));
    const failovers = gw.logs.filter((l) => l.msg === "failing over to another worker");
    assert.ok(failovers.length > 0 && failovers.length <= Number(stalls[0]!.sessions), `${failovers.length} failovers`);
  });

  test("a worker whose engine hangs (its front still accepts and reports load) says so within 5 s, its sessions fail over with every final exactly once, and it is placed on again once the engine resumes", async () => {
    // The engine resumes 6 s after the hang, while sessions are still running.
    const { gw, traces, faultAt } = await faultRun(d, "SIGSTOP engine", 8, 6000);
    const { totals } = checkAll(traces, ref);
    assert.deepEqual(totals.errors, []);
    assert.equal(totals.lost, 0, "finals lost");
    assert.equal(totals.duplicates, 0, "finals duplicated");
    // The front reported its engine stalled (the cheap reaction), the gateway failed the
    // sessions over at once, within the 5 s hang target, without waiting for its stall watch.
    const stalls = gw.logs.filter((l) => l.msg === "worker reports its engine stalled; treating it as hung");
    assert.equal(stalls.length, 1, JSON.stringify(gw.logs.slice(-5)));
    assert.equal(stalls[0]!.failing_over, true);
    assert.ok(!gw.logs.some((l) => String(l.msg).startsWith("worker stopped reporting load")), "the front stopped reporting load");
    const failovers = gw.logs.filter((l) => l.msg === "failing over to another worker");
    assert.ok(failovers.length > 0 && failovers.length <= Number(stalls[0]!.sessions), `${failovers.length} failovers`);
    const detectMs = Math.max(...failovers.map((l) => Number(l.time) - faultAt));
    assert.ok(detectMs <= 5000, `failover began ${detectMs} ms after the hang`);
    // Reversible: once the engine answered again the gateway placed on the worker again,
    // and the worker did not end itself (the last resort waits ENGINE_STALL_S).
    assert.ok(gw.logs.some((l) => l.msg === "worker reporting load again; placing on it" && l.worker === d.address), "never placed on again");
    assert.equal(d.proc.exitCode, null, "the worker ended itself");
  });

  test("a worker killed with SIGKILL loses no final and duplicates none", async () => {
    const { gw, traces } = await faultRun(c, "SIGKILL", 8);
    const { totals } = checkAll(traces, ref);
    assert.deepEqual(totals.errors, []);
    assert.equal(totals.lost, 0, "finals lost");
    assert.equal(totals.duplicates, 0, "finals duplicated");
    assert.ok(gw.logs.some((l) => l.msg === "failing over to another worker"));
  });
  test("the exactly-once check flags a dropped final as lost and a repeated one as a duplicate", async () => {
    const r = await runLoad({ ...DEFAULTS, target: `grpc://${a.address}`, streams: 1, files: [FILES[0]!], pace: 0, rampMs: 0, quiet: true, tag: "self" });
    // The direct run reports segment spans as start/end; give its finals the spans a gateway's carry.
    const t = r.traces[0]!;
    for (const e of t.events) if (e.kind === "final") e.span = [e.startMs ?? 0, e.endMs ?? 0];
    assert.equal(checkAll([t], ref).totals.lost, 0);
    const finals = t.events.filter((e) => e.kind === "final" && e.text);
    assert.ok(finals.length >= 3);
    t.events.splice(t.events.indexOf(finals[1]!), 1);
    t.events.push({ ...finals[2]!, t: finals[2]!.t + 1 });
    const { totals } = checkAll([t], ref);
    assert.equal(totals.lost, 1);
    assert.equal(totals.duplicates, 1);
  });
  test("a lone worker that stalls for a few seconds keeps its sessions: with nowhere to fail over, nothing is cancelled", async () => {
    // This and the next run last: they pause worker A, which the tests above use as the healthy one.
    const gw = await startGateway("gateway", [a.address]);
    try {
      const timer = setTimeout(() => {
        signalTree(a.pid, "SIGSTOP");
        setTimeout(() => signalTree(a.pid, "SIGCONT"), 4500);
      }, 5000);
      const r = await runLoad({ ...DEFAULTS, target: gw.url, streams: 4, files: FILES, rampMs: 1000, maxSeconds: 60, quiet: true, tag: "ci-lone-stall" });
      clearTimeout(timer);
      const { totals } = checkAll(r.traces, ref);
      assert.deepEqual(totals.errors, []);
      assert.equal(totals.lost, 0);
      assert.equal(totals.duplicates, 0);
      const stalls = gw.logs.filter((l) => String(l.msg).startsWith("worker stopped reporting load"));
      assert.ok(stalls.length >= 1, "the stall went unnoticed");
      assert.ok(stalls.every((l) => l.failing_over === false), JSON.stringify(stalls));
    } finally {
      signalTree(a.pid, "SIGCONT");
      await gw.stop();
    }
  });
  test("a lone worker whose engine stalls for a few seconds keeps its sessions: reported stalled, nothing is cancelled, and it serves on", async () => {
    const gw = await startGateway("gateway", [a.address]);
    const engine = engineProcess(a.pid)!;
    try {
      const timer = setTimeout(() => {
        process.kill(engine, "SIGSTOP");
        setTimeout(() => process.kill(engine, "SIGCONT"), 4500);
      }, 5000);
      const r = await runLoad({ ...DEFAULTS, target: gw.url, streams: 4, files: FILES, rampMs: 1000, maxSeconds: 60, quiet: true, tag: "ci-lone-engine-stall" });
      clearTimeout(timer);
      const { totals } = checkAll(r.traces, ref);
      assert.deepEqual(totals.errors, []);
      assert.equal(totals.lost, 0);
      assert.equal(totals.duplicates, 0);
      const stalls = gw.logs.filter((l) => l.msg === "worker reports its engine stalled; treating it as hung");
      assert.equal(stalls.length, 1, JSON.stringify(gw.logs.slice(-5)));
      assert.equal(stalls[0]!.failing_over, false);
    } finally {
      process.kill(engine, "SIGCONT");
      await gw.stop();
    }
  });
});
