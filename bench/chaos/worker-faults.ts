/**
 * Worker faults under load, measured end to end: two fake-engine workers behind
 * one gateway, N real-time FunASR sessions, one fault injected into worker B
 * mid-run, every session's finals checked exactly-once against a direct
 * reference run (bench/chaos/lib/check.ts).
 *
 *   node --import tsx bench/chaos/worker-faults.ts --fault kill --streams 40
 *
 * Faults (worker B = every process of its tree):
 *   none   baseline
 *   kill   SIGKILL (a crash)
 *   stop   SIGSTOP (a hang: the process is there, nothing answers); SIGCONT at the end
 *   stop-engine  SIGSTOP of B's engine process only: B's front still accepts streams
 *          and reports load, but nothing is ever decoded (a worker that accepts and
 *          never answers) until its front declares the engine stalled
 *          (LoadReport.engine_stalled); SIGCONT at the end
 *   engine-error  B's fake engine raises in every 25th batch from the start
 *          (`serve --fake-fail-every 25`, a test-only flag): engine exceptions mid-batch
 *   cut    B runs in a network namespace; its veth goes down (a partition both ways,
 *          no RST); restored at the end. Needs root and `ip` (see lib/netns.ts).
 *
 * Bounded: the load stops after --max-seconds, every process and namespace it
 * created is removed on exit. Loopback (and the namespace's veth) only.
 * Reported: sessions affected (failed over, from the gateway's warn log), finals
 * lost / duplicated, client errors, detection (fault -> the gateway's hang verdict;
 * fault -> failover, per session) and the client-visible delay of the first final
 * after the fault.
 */
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { runLoad, DEFAULTS } from "../lib/run.js";
import { traceMetrics } from "../lib/metrics.js";
import { dist, fmt } from "../lib/stats.js";
import { checkAll, referenceRun } from "./lib/check.js";
import { engineProcess, signalTree, startGateway, startWorker, type Proc } from "./lib/cluster.js";
import { CHAOS_FILES } from "./lib/files.js";
import { createNetns, type Netns } from "./lib/netns.js";


const { values } = parseArgs({
  options: {
    fault: { type: "string", default: "kill" },
    streams: { type: "string", default: "40" },
    "fault-at-s": { type: "string", default: "12" },
    "ramp-ms": { type: "string", default: "4000" },
    "max-seconds": { type: "string", default: "120" },
    fronts: { type: "string", default: "1" },
    "gateway-env": { type: "string", multiple: true, default: [] },
    json: { type: "string" },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  process.stdout.write("usage: worker-faults --fault none|kill|stop|stop-engine|engine-error|cut [--streams N] [--fault-at-s S] [--gateway-env K=V ...] [--json OUT]\n");
  process.exit(0);
}
const fault = values.fault;
if (!["none", "kill", "stop", "stop-engine", "engine-error", "cut"].includes(fault)) throw new Error(`unknown --fault ${fault}`);
const streams = Number(values.streams);
const faultAtMs = Number(values["fault-at-s"]) * 1000;
const gatewayEnv = Object.fromEntries((values["gateway-env"] as string[]).map((kv) => kv.split("=", 2) as [string, string]));

const cleanups: (() => Promise<void> | void)[] = [];
const cleanup = async (): Promise<void> => {
  for (const f of cleanups.reverse()) {
    try {
      await f();
    } catch {
      /* best effort */
    }
  }
  cleanups.length = 0;
};
for (const sig of ["SIGINT", "SIGTERM"] as const) process.once(sig, () => void cleanup().then(() => process.exit(130)));
// Whatever happens, the harness ends: a hard bound on the whole run.
const hardStop = setTimeout(() => {
  process.stderr.write("[chaos] hard time limit reached\n");
  void cleanup().then(() => process.exit(3));
}, (Number(values["max-seconds"]) + 120) * 1000);
hardStop.unref();

const log = (m: string): void => void process.stderr.write(`[chaos] ${m}\n`);

try {
  let ns: Netns | undefined;
  if (fault === "cut") {
    ns = createNetns(0);
    cleanups.push(() => ns!.remove());
  }
  const fronts = Number(values.fronts);
  const a = await startWorker({ label: "worker-a", fronts });
  cleanups.push(() => a.stop());
  const b: Proc = await startWorker({
    label: "worker-b",
    fronts,
    ...(ns ? { netns: ns } : {}),
    ...(fault === "engine-error" ? { args: ["--fake-fail-every", "25"] } : {}),
  });
  cleanups.push(() => b.stop(3000));
  if (fault === "stop") cleanups.push(() => void signalTree(b.pid, "SIGCONT"));
  const engine = fault === "stop-engine" ? engineProcess(b.pid) : null;
  if (fault === "stop-engine") {
    if (engine === null) throw new Error("worker-b: engine process not found");
    cleanups.push(() => void process.kill(engine, "SIGCONT"));
  }
  if (ns) cleanups.push(() => ns!.heal());
  const ref = await referenceRun(a.address, CHAOS_FILES, 60);
  const gw = await startGateway("gateway", [a.address, b.address], gatewayEnv);
  cleanups.push(() => gw.stop());
  log(`workers ${a.address} ${b.address}, gateway ${gw.url}, ${streams} streams, fault ${fault} at ${faultAtMs / 1000} s`);

  let faultEpoch = 0;
  let faultPerf = 0;
  const timer = setTimeout(() => {
    faultEpoch = Date.now();
    faultPerf = performance.now();
    if (fault === "kill") signalTree(b.pid, "SIGKILL");
    else if (fault === "stop") signalTree(b.pid, "SIGSTOP");
    else if (fault === "stop-engine") process.kill(engine!, "SIGSTOP");
    else if (fault === "cut") ns!.cut();
    log(`fault ${fault} injected`);
  }, faultAtMs);
  const result = await runLoad({
    ...DEFAULTS,
    target: gw.url,
    streams,
    files: CHAOS_FILES,
    rampMs: Number(values["ramp-ms"]),
    maxSeconds: Number(values["max-seconds"]),
    reference: ref.segments,
    pids: [{ label: "gateway", pid: gw.pid }],
    quiet: true,
    tag: `chaos-${fault}`,
  });
  clearTimeout(timer);

  const { totals } = checkAll(result.traces, ref);
  const failovers = gw.logs.filter((l) => l.msg === "failing over to another worker");
  const affected = new Set(failovers.map((l) => String(l.wav_name ?? l.session)));
  // The gateway's verdict on the worker (its stall watch, or the worker's own engine_stalled).
  const verdict = gw.logs.find((l) => String(l.msg).endsWith("treating it as hung"));
  const noticedMs = verdict && faultEpoch ? Number(verdict.time) - faultEpoch : null;
  // Detection: fault -> the gateway starting the failover of each session.
  const detectMs = faultEpoch ? failovers.map((l) => Number(l.time) - faultEpoch) : [];
  // Client view: per affected session, the first final after the fault, minus the time the
  // audio it closes was sent (final after speech end), against the same figure before the fault.
  const after: number[] = [];
  const before: number[] = [];
  for (const t of result.traces) {
    const m = traceMetrics(t, ref.segments);
    for (const [k, v] of m.finalAfterSpeechEnd) {
      const at = m.refAt.get(`f${k}`) ?? 0;
      if (faultPerf && at >= faultPerf) {
        if (affected.has(t.wavName)) after.push(v);
      } else before.push(v);
    }
  }
  const firstAfter = faultPerf
    ? result.traces
        .filter((t) => affected.has(t.wavName))
        .map((t) => {
          const e = t.events.find((x) => x.t >= faultPerf && (x.kind === "final" || x.kind === "partial"));
          return e ? e.t - faultPerf : Number.NaN;
        })
        .filter((v) => !Number.isNaN(v))
    : [];
  const gwProc = result.procs.find((p) => p.label === "gateway");
  const out = {
    fault,
    streams,
    faultAtS: faultAtMs / 1000,
    gatewayEnv,
    totals,
    sessionsAffected: affected.size,
    failovers: failovers.length,
    hangVerdict: verdict ? String(verdict.msg) : null,
    noticedMs,
    detectMs: dist(detectMs),
    firstResultAfterFaultMs: dist(firstAfter),
    finalAfterSpeechEndBeforeMs: dist(before),
    finalAfterSpeechEndAfterFaultAffectedMs: dist(after),
    gatewayRssPeakMiB: gwProc?.rssPeakMiB ?? null,
    wallSeconds: result.summary.wallSeconds,
  };
  const d = (x: ReturnType<typeof dist>): string => `p50 ${fmt(x.p50)} / p95 ${fmt(x.p95)} / max ${fmt(x.max)} ms (n=${x.n})`;
  console.log(`== fault ${fault}: ${streams} streams, fault at ${faultAtMs / 1000} s`);
  console.log(`  sessions affected (failed over) ${affected.size}, failovers ${failovers.length}`);
  console.log(`  finals expected ${totals.expectedFinals}, delivered ${totals.delivered} (${totals.identicalTexts} with the reference's exact text, ${totals.unplaced} without timestamps), lost ${totals.lost}, duplicates ${totals.duplicates}`);
  console.log(`  sessions with client-visible errors ${totals.sessionsWithErrors}${totals.errors.length ? ": " + totals.errors.slice(0, 3).join(" | ") : ""}`);
  if (verdict) console.log(`  fault -> "${String(verdict.msg)}" ${noticedMs} ms`);
  console.log(`  fault -> failover started       ${d(out.detectMs)}`);
  console.log(`  fault -> first result (affected) ${d(out.firstResultAfterFaultMs)}`);
  console.log(`  final after speech end: before fault ${d(out.finalAfterSpeechEndBeforeMs)}`);
  console.log(`                          affected, after fault ${d(out.finalAfterSpeechEndAfterFaultAffectedMs)}`);
  if (values.json) writeFileSync(values.json, JSON.stringify(out, null, 2));
  await cleanup();
  process.exit(totals.lost + totals.duplicates + totals.sessionsWithErrors > 0 ? 1 : 0);
} catch (e) {
  log(`failed: ${(e as Error).stack ?? String(e)}`);
  await cleanup();
  process.exit(2);
}
