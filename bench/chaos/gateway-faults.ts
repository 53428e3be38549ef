/**
 * Gateway faults under load, end to end: one fake-engine worker, gateways as
 * processes, real-time FunASR sessions.
 *
 *   node --import tsx bench/chaos/gateway-faults.ts --fault kill --streams 50
 *
 * Faults:
 *   kill   SIGKILL of gateway 1 under load; what close code its clients see, and how
 *          long until the same number of clients are connected and configured
 *          through gateway 2 (what a client reconnecting through a load balancer
 *          that already dropped the dead gateway gets)
 *   term   SIGTERM of gateway 1 (graceful drain, SHUTDOWN_GRACE_SECONDS=5): close
 *          codes, finals delivered before the close
 *   slow   --slow clients that never read (their sockets paused after the config;
 *          full hypotheses, so every partial is queued) beside --streams healthy ones:
 *          gateway RSS, and the healthy sessions' errors, finals and latency against a
 *          run without the slow ones
 * Bounded (every run stops by itself), loopback only.
 */
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import WebSocket from "ws";
import { loadAudio, frames as splitFrames } from "../lib/audio.js";
import { DEFAULTS, runLoad } from "../lib/run.js";
import { dist, fmt } from "../lib/stats.js";
import { checkAll, referenceRun } from "./lib/check.js";
import { rssKiB, startGateway, startWorker } from "./lib/cluster.js";
import { CHAOS_FILES } from "./lib/files.js";

const { values } = parseArgs({
  options: {
    fault: { type: "string", default: "kill" },
    streams: { type: "string", default: "50" },
    slow: { type: "string", default: "50" },
    "slow-seconds": { type: "string", default: "60" },
    "fault-at-s": { type: "string", default: "10" },
    json: { type: "string" },
    "worker-log": { type: "string" },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  process.stdout.write("usage: gateway-faults --fault kill|term|slow [--streams N] [--slow N] [--slow-seconds S] [--fault-at-s S] [--json OUT]\n");
  process.exit(0);
}
const fault = values.fault;
if (!["kill", "term", "slow"].includes(fault)) throw new Error(`unknown --fault ${fault}`);
const streams = Number(values.streams);
const faultAtMs = Number(values["fault-at-s"]) * 1000;
const log = (m: string): void => void process.stderr.write(`[gw-chaos] ${m}\n`);
const stops: (() => Promise<void>)[] = [];
const stopAll = async (): Promise<void> => {
  for (const f of stops.reverse()) await f().catch(() => undefined);
  stops.length = 0;
};
setTimeout(() => void stopAll().then(() => process.exit(3)), 600_000).unref();

/** Close codes from the traces' "ws closed early: CODE" errors. */
function closeCodes(errors: string[][]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const es of errors) {
    const m = es.map((e) => /ws closed early: (\d+)/.exec(e)?.[1]).find(Boolean);
    const k = m ?? (es.length ? "other error" : "no close");
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}

/** A client that sends paced audio but never reads: its socket is paused after the config. */
function slowClient(url: string, pcm: Buffer[], stopAt: number): Promise<void> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    ws.on("error", () => resolve());
    ws.on("close", () => resolve());
    ws.on("open", () => {
      ws.send(JSON.stringify({ mode: "2pass", wav_name: "slow", wav_format: "pcm", audio_fs: 16000, chunk_size: [5, 10, 5], full_hypothesis: true }));
      (ws as unknown as { _socket: { pause(): void } })._socket.pause();
      let j = 0;
      const t = setInterval(() => {
        if (performance.now() > stopAt || ws.readyState !== WebSocket.OPEN) {
          clearInterval(t);
          ws.terminate();
          return;
        }
        ws.send(pcm[j++ % pcm.length]!);
      }, 60);
    });
  });
}

try {
  const worker = await startWorker({ label: "worker", fronts: 1, maxStreams: 800, args: ["--max-batch-size", "32", "--fake-base-ms", "10", "--fake-per-item-ms", "0.5"], ...(values["worker-log"] ? { logFile: values["worker-log"] } : {}) });
  stops.push(() => worker.stop());
  const ref = await referenceRun(worker.address, CHAOS_FILES, 60);
  const gw1 = await startGateway("gateway-1", [worker.address], { SHUTDOWN_GRACE_SECONDS: "5" });
  stops.push(() => gw1.stop(2000));
  let out: Record<string, unknown>;
  if (fault === "kill" || fault === "term") {
    const gw2 = await startGateway("gateway-2", [worker.address]);
    stops.push(() => gw2.stop());
    let faultAt = 0;
    let reconnect: Promise<Awaited<ReturnType<typeof runLoad>>> | undefined;
    const timer = setTimeout(() => {
      faultAt = performance.now();
      gw1.proc.kill(fault === "kill" ? "SIGKILL" : "SIGTERM");
      log(`gateway-1 ${fault === "kill" ? "SIGKILL" : "SIGTERM"}`);
      // Every client reconnects at once through the surviving gateway.
      reconnect = runLoad({ ...DEFAULTS, target: gw2.url, streams, files: ["zh/damo.wav"], rampMs: 0, maxSeconds: 60, quiet: true, tag: "reconnect" });
    }, faultAtMs);
    const r = await runLoad({ ...DEFAULTS, target: gw1.url, streams, files: CHAOS_FILES, rampMs: 3000, maxSeconds: 90, quiet: true, tag: `gw-${fault}` });
    clearTimeout(timer);
    const again = await reconnect!;
    const codes = closeCodes(r.traces.map((t) => t.errors));
    const errorMessages = r.traces.flatMap((t) => t.errors.filter((e) => e.startsWith("server error"))).slice(0, 3);
    const finalsBefore = r.traces.reduce((a, t) => a + t.events.filter((e) => e.kind === "final" && e.text).length, 0);
    // Time from the fault until each reconnecting client was connected and its config sent.
    const reconnectedAt = again.traces.map((t) => t.connectMs ?? Number.NaN);
    out = {
      fault,
      streams,
      closeCodes: codes,
      serverErrorMessages: errorMessages,
      finalsDeliveredBeforeTheFault: finalsBefore,
      reconnectConnectMs: dist(reconnectedAt.filter((v) => !Number.isNaN(v))),
      reconnectSessionsWithErrors: again.summary.sessionsWithErrors,
      reconnectFinals: again.summary.finals,
      reconnectErrors: again.summary.errors.slice(0, 5),
      faultAtS: faultAt ? faultAtMs / 1000 : null,
    };
    const gw2Warnings = gw2.logs.filter((l) => Number(l.level) >= 40).slice(0, 3);
    out.gateway2Warnings = gw2Warnings;
    console.log(`== gateway ${fault}: ${streams} sessions on gateway-1`);
    for (const w of gw2Warnings) console.log(`  gateway-2 log: ${JSON.stringify(w).slice(0, 400)}`);
    console.log(`  close codes seen by its clients: ${JSON.stringify(codes)}${errorMessages.length ? `; messages ${errorMessages.join(" | ")}` : ""}`);
    console.log(`  ${streams} clients reconnecting at once through gateway-2: connect ${fmt(dist(reconnectedAt).p50)} / max ${fmt(dist(reconnectedAt).max)} ms, sessions with errors ${again.summary.sessionsWithErrors}, finals ${again.summary.finals}`);
  } else {
    const slow = Number(values.slow);
    const pcm = splitFrames(loadAudio(["zh/damo.wav"])[0]!, 60);
    const base = await runLoad({ ...DEFAULTS, target: gw1.url, streams, files: CHAOS_FILES, rampMs: 5000, maxSeconds: 120, reference: ref.segments, quiet: true, tag: "base", pids: [{ label: "gateway", pid: gw1.pid }] });
    const rss0 = (rssKiB(gw1.pid) ?? 0) / 1024;
    const stopAt = performance.now() + Number(values["slow-seconds"]) * 1000;
    const slowRuns = Array.from({ length: slow }, () => slowClient(gw1.url, pcm, stopAt));
    let peak = 0;
    const t0 = performance.now();
    const timeline: [number, number][] = [];
    const sampler = setInterval(() => {
      const mib = (rssKiB(gw1.pid) ?? 0) / 1024;
      peak = Math.max(peak, mib);
      const s = Math.round((performance.now() - t0) / 1000);
      if (s % 10 === 0 && timeline.at(-1)?.[0] !== s) timeline.push([s, Math.round(mib)]);
    }, 500);
    const withSlow = await runLoad({ ...DEFAULTS, target: gw1.url, streams, files: CHAOS_FILES, rampMs: 5000, maxSeconds: 120, reference: ref.segments, quiet: true, tag: "healthy" });
    await Promise.all(slowRuns);
    clearInterval(sampler);
    const a = checkAll(base.traces, ref).totals;
    const b = checkAll(withSlow.traces, ref).totals;
    const basePeak = base.procs.find((p) => p.label === "gateway")?.rssPeakMiB ?? 0;
    out = {
      fault,
      healthy: streams,
      slow,
      gatewayRssPeakHealthyOnlyMiB: basePeak,
      gatewayRssBeforeSlowMiB: rss0,
      gatewayRssPeakWithSlowMiB: peak,
      healthyAlone: { errors: a.sessionsWithErrors, lost: a.lost, duplicates: a.duplicates, finalAfterSpeechEndMs: base.summary.finalAfterSpeechEndMs },
      healthyBesideSlow: { errors: b.sessionsWithErrors, lost: b.lost, duplicates: b.duplicates, finalAfterSpeechEndMs: withSlow.summary.finalAfterSpeechEndMs },
      gatewayAlive: gw1.proc.exitCode === null,
      gatewayRssTimelineMiB: timeline,
    };
    const d = (x: { p50: number | null; p95: number | null; max: number | null }): string => `p50 ${fmt(x.p50)} / p95 ${fmt(x.p95)} / max ${fmt(x.max)} ms`;
    console.log(`== ${slow} clients that never read beside ${streams} healthy`);
    console.log(`  gateway RSS peak: healthy alone ${basePeak.toFixed(0)} MiB; with the slow clients ${peak.toFixed(0)} MiB (before them ${rss0.toFixed(0)} MiB)`);
    console.log(`  gateway RSS every 10 s while the slow clients are connected: ${timeline.map(([t, m]) => `${t}s ${m}`).join(", ")}`);
    console.log(`  healthy alone:      errors ${a.sessionsWithErrors}, lost ${a.lost}, dup ${a.duplicates}, final after speech end ${d(base.summary.finalAfterSpeechEndMs)}`);
    console.log(`  healthy beside slow: errors ${b.sessionsWithErrors}, lost ${b.lost}, dup ${b.duplicates}, final after speech end ${d(withSlow.summary.finalAfterSpeechEndMs)}`);
  }
  if (values.json) writeFileSync(values.json, JSON.stringify(out, null, 2));
  await stopAll();
  process.exit(0);
} catch (e) {
  log(`failed: ${(e as Error).stack ?? String(e)}`);
  await stopAll();
  process.exit(2);
}
