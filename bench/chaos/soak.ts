/**
 * Soak: one fake-engine worker behind one gateway, N real-time FunASR sessions
 * kept open back to back for M minutes; 0 errors and exactly-once finals
 * expected; reports RSS slope (MiB/hour), file descriptors and sockets at the
 * end for the gateway and the worker (all its processes).
 *
 *   node --import tsx bench/chaos/soak.ts --streams 200 --minutes 30 --json soak.json
 *
 * Bounded: it stops by itself after --minutes (plus the last sessions' tails),
 * with a hard limit of --minutes + 5; loopback only. Exit 1 on any error, lost or
 * duplicated final.
 */
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { fmt } from "../lib/stats.js";
import { referenceRun } from "./lib/check.js";
import { startGateway, startWorker } from "./lib/cluster.js";
import { runSoak } from "./lib/soak.js";
import { CHAOS_FILES } from "./lib/files.js";

const { values } = parseArgs({
  options: {
    streams: { type: "string", default: "200" },
    minutes: { type: "string", default: "30" },
    "sample-s": { type: "string", default: "10" },
    fronts: { type: "string", default: "auto" },
    // The fake engine's costs: a batch of 32 in ~26 ms stands in for a GPU worker with room for
    // the load (the serve defaults, 8 per 60 ms, saturate near 130 decodes/s: an overload test).
    "worker-args": { type: "string", default: "--max-batch-size 32 --fake-base-ms 10 --fake-per-item-ms 0.5" },
    json: { type: "string" },
    "worker-log": { type: "string" },
    help: { type: "boolean", default: false },
  },
});
if (values.help) {
  process.stdout.write("usage: soak [--streams 200] [--minutes 30] [--sample-s 10] [--fronts N|auto] [--worker-args 'SERVE FLAGS'] [--json OUT] [--worker-log FILE]\n");
  process.exit(0);
}
const streams = Number(values.streams);
const minutes = Number(values.minutes);
if (!(streams >= 1 && streams <= 5000) || !(minutes > 0 && minutes <= 24 * 60)) throw new Error("--streams 1..5000, --minutes > 0");
const log = (m: string): void => void process.stderr.write(`[soak] ${new Date().toISOString().slice(11, 19)} ${m}\n`);

const stops: (() => Promise<void>)[] = [];
const stopAll = async (): Promise<void> => {
  for (const f of stops.reverse()) await f().catch(() => undefined);
  stops.length = 0;
};
for (const sig of ["SIGINT", "SIGTERM"] as const) process.once(sig, () => void stopAll().then(() => process.exit(130)));
setTimeout(() => {
  log("hard time limit reached");
  void stopAll().then(() => process.exit(3));
}, (minutes + 5) * 60_000).unref();

try {
  const fronts = values.fronts === "auto" ? undefined : Number(values.fronts);
  const worker = await startWorker({ label: "worker", ...(fronts !== undefined ? { fronts } : {}), maxStreams: Math.max(400, streams * 2), args: values["worker-args"].split(/\s+/).filter(Boolean), ...(values["worker-log"] ? { logFile: values["worker-log"] } : {}) });
  stops.push(() => worker.stop());
  const ref = await referenceRun(worker.address, CHAOS_FILES, 60);
  const gw = await startGateway("gateway", [worker.address]);
  stops.push(() => gw.stop());
  log(`${streams} streams for ${minutes} min: gateway ${gw.url} pid ${gw.pid}, worker ${worker.address} pid ${worker.pid}`);
  const r = await runSoak({
    url: gw.url,
    streams,
    durationMs: minutes * 60_000,
    files: CHAOS_FILES,
    ref,
    procs: [
      { label: "gateway", pid: gw.pid },
      { label: "worker", pid: worker.pid },
    ],
    rampMs: Math.min(20_000, streams * 100),
    sampleMs: Number(values["sample-s"]) * 1000,
    log,
  });
  const gwErrors = gw.logs.filter((l) => Number(l.level) >= 50).length;
  // Warnings that mean a session was disturbed even if its client saw nothing.
  const failovers = gw.logs.filter((l) => l.msg === "failing over to another worker").length;
  const stalls = gw.logs.filter((l) => String(l.msg).startsWith("worker stopped reporting load")).length;
  console.log(`== soak: ${r.streams} streams, ${(r.seconds / 60).toFixed(1)} min, ${r.sessions} sessions`);
  console.log(`  sessions with errors ${r.sessionsWithErrors}, finals expected ${r.expectedFinals}, lost ${r.lost}, duplicates ${r.duplicates}; gateway error log lines ${gwErrors}, failovers ${failovers}, stalls ${stalls}`);
  console.log(`  end-of-input acknowledgements later than 5 s: ${r.slowAcks}, latest ${fmt(r.ackMaxMs / 1000)} s`);
  console.log(`  load generator lateness p99 (worst interval) ${fmt(r.pacerLatenessP99Ms)} ms`);
  for (const p of r.procs) {
    console.log(
      `  ${p.label}: RSS ${p.rssStartMiB.toFixed(0)} -> ${p.rssEndMiB.toFixed(0)} MiB (peak ${p.rssPeakMiB.toFixed(0)}), slope ${fmt(p.rssSlopeMiBPerHour)} MiB/h; fds ${p.fdsStart} -> ${p.fdsEnd}, sockets at end ${p.socketsEnd}`,
    );
  }
  for (const e of r.errors.slice(0, 5)) console.log(`  error ${e}`);
  if (values.json) writeFileSync(values.json, JSON.stringify({ ...r, gatewayErrorLogLines: gwErrors, failovers, stalls }, null, 2));
  await stopAll();
  process.exit(r.sessionsWithErrors + r.lost + r.duplicates > 0 ? 1 : 0);
} catch (e) {
  log(`failed: ${(e as Error).stack ?? String(e)}`);
  await stopAll();
  process.exit(2);
}
