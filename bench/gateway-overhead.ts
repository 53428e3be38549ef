/**
 * Gateway overhead: the same paced load, direct to a worker and through the
 * gateway, in ONE run, at several stream counts. Reports the latency the
 * gateway adds per frame and per result, its CPU (streams per core) and its
 * memory per session.
 *
 *   npm run bench:gateway -- --ns 100,500,1000,2000 [--worker python|stub] [--pin gateway=0,worker=1,load=1]
 *   npm run bench:gateway -- --ns 20 --worker stub            # smoke run
 *   npm run bench:gateway -- --worker stub --ns 500,1000 --gateway-env GATEWAY_PROCESSES=2 --nice=-5
 *   npm run bench:gateway -- --worker stub --ns 300 --gateway-root /tmp/gw-old   # another checkout's gateway
 *   npm run bench:gateway -- --worker stub --ns 500 --worker-node-arg=--import=./bench/lib/h2-window.ts   # stub with large HTTP/2 windows
 *
 * With GATEWAY_PROCESSES=N the gateway's CPU is the sum over its primary and
 * every child process. `--nice=-N` runs the gateway, worker and load
 * generator at that priority, so a bounded benchmark run on a shared, busy
 * machine measures its own processes rather than everyone else's load.
 *
 * Added latency is measured two ways:
 *  - per result: for every final (and first partial) the latency from sending
 *    the audio that completed the segment (started it) to receiving the result,
 *    via gateway minus direct, compared at the same quantile and also paired
 *    event by event (same session index, same segment, same schedule);
 *  - per frame, uplink (stub worker only, which records receipt times):
 *    client send -> worker receipt of each 60 ms frame, via gateway minus direct.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import os from "node:os";
import { REPO_ROOT } from "./lib/audio.js";
import { printSummary } from "./lib/report.js";
import { calibrate, DEFAULTS, runLoad, type LoadResult } from "./lib/run.js";
import { pinned, pinSelf, spawnListening, startGateway, waitServing, type Server } from "./lib/procs.js";
import { dist, fmt, percentile } from "./lib/stats.js";

const { values } = parseArgs({
  options: {
    ns: { type: "string", default: "100,500,1000,2000" },
    worker: { type: "string", default: "python" },
    files: { type: "string", default: "synth/three_utterances.wav,zh/binhai.wav*4,zh/damo.wav*4,zh/long.wav*3,zh/mid.wav*4" },
    "ramp-ms-per-stream": { type: "string", default: "10" },
    "fake-base-ms": { type: "string", default: "5" },
    "fake-per-item-ms": { type: "string", default: "0.1" },
    "max-batch-size": { type: "string", default: "64" },
    "batch-window-ms": { type: "string", default: "5" },
    "worker-arg": { type: "string", multiple: true, default: [] },
    "gateway-env": { type: "string", multiple: true, default: [] },
    "gateway-node-arg": { type: "string", multiple: true, default: [] },
    "worker-node-arg": { type: "string", multiple: true, default: [] },
    channels: { type: "string", default: "1" },
    pin: { type: "string", default: "" },
    out: { type: "string" },
    "max-seconds": { type: "string", default: "120" },
    nice: { type: "string", default: "" },
    "gateway-root": { type: "string", default: REPO_ROOT },
  },
});

const ns = values.ns.split(",").map(Number);
const files = values.files.split(",");
const pins = Object.fromEntries(
  values.pin
    .split(",")
    .filter(Boolean)
    .map((kv) => kv.split("=") as [string, string]),
) as Record<string, string>;
const log = (s: string): void => void process.stderr.write(`[overhead] ${s}\n`);
const stamp = new Date().toISOString().replace(/[:.]/g, "-");
const outDir = path.join(REPO_ROOT, "bench-results");
mkdirSync(outDir, { recursive: true });
const outFile = values.out ?? path.join(outDir, `gateway-overhead-${stamp}.json`);
const traceFile = path.join(outDir, `uplink-${stamp}.jsonl`);

async function startWorker(): Promise<Server> {
  if (values.worker === "stub") {
    const [cmd, args] = pinned(pins.worker, process.execPath, [
      "--import",
      "tsx",
      ...(values["worker-node-arg"] as string[]),
      "bench/stub-worker.ts",
      "--listen",
      "127.0.0.1:0",
      "--cost-ms",
      String(Number(values["fake-base-ms"]) + Number(values["fake-per-item-ms"])),
      "--trace-file",
      traceFile,
    ]);
    return spawnListening("stub worker", cmd, args);
  }
  const py = path.join(REPO_ROOT, "worker-py/.venv/bin/python");
  const [cmd, args] = pinned(pins.worker, py, [
    "-m",
    "asr_worker",
    "serve",
    "--listen",
    "127.0.0.1:0",
    "--engine",
    "fake",
    "--fake-base-ms",
    values["fake-base-ms"],
    "--fake-per-item-ms",
    values["fake-per-item-ms"],
    "--max-batch-size",
    values["max-batch-size"],
    "--batch-window-ms",
    values["batch-window-ms"],
    "--max-streams",
    String(Math.max(...ns) + 16),
    "--log-level",
    "warning",
    ...(values["worker-arg"] as string[]).flatMap((a) => a.split(" ")),
  ]);
  const env = { PYTHONPATH: path.join(REPO_ROOT, "worker-py") };
  return spawnListening("worker", cmd, args, env);
}

interface Row {
  n: number;
  direct: Omit<LoadResult, "traces" | "metrics" | "keyed">;
  gateway: Omit<LoadResult, "traces" | "metrics" | "keyed">;
  added: Record<string, number | null>;
}

function paired(a: Record<string, number>, b: Record<string, number>): number[] {
  const out: number[] = [];
  for (const [k, v] of Object.entries(b)) {
    const d = a[k];
    if (d !== undefined) out.push(v - d);
  }
  return out;
}

const strip = (r: LoadResult): Row["direct"] => {
  const { traces: _t, metrics: _m, keyed: _k, ...rest } = r;
  return rest;
};

/** Every process of a (possibly multi-process) gateway: the pid and its children, recursively. */
function processTree(pid: number): number[] {
  let kids: number[] = [];
  try {
    kids = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    // Not Linux or already gone: the pid alone.
  }
  return [pid, ...kids.flatMap(processTree)];
}

/** Applies --nice to the given pids (needs privileges for negative values). */
function renice(pids: number[]): void {
  if (values.nice === "") return;
  for (const pid of pids) {
    try {
      os.setPriority(pid, Number(values.nice));
    } catch (e) {
      log(`cannot renice ${pid}: ${(e as Error).message}`);
    }
  }
}

async function main(): Promise<void> {
  pinSelf(pins.load);
  renice([process.pid]);
  rmSync(traceFile, { force: true });
  log(`starting ${values.worker} worker${pins.worker ? ` on cpu ${pins.worker}` : ""}`);
  const worker = await startWorker();
  await waitServing(worker.address);
  const gwEnv = {
    MAX_SESSIONS: String(Math.max(...ns) * 2 + 16),
    ...Object.fromEntries((values["gateway-env"] as string[]).map((kv) => kv.split("=", 2) as [string, string])),
  };
  log(`worker ${worker.address} SERVING; starting gateway${pins.gateway ? ` on cpu ${pins.gateway}` : ""}`);
  const gateway = await startGateway(worker.address, pins.gateway, gwEnv, values["gateway-node-arg"] as string[], values["gateway-root"]);
  // A multi-process gateway (GATEWAY_PROCESSES) is measured as all of its processes together.
  const gatewayPids = processTree(gateway.pid);
  renice([...gatewayPids, ...processTree(worker.pid)]);
  log(`gateway ${gateway.address} ready (${gatewayPids.length} process${gatewayPids.length > 1 ? "es" : ""})`);
  const rows: Row[] = [];
  try {
    const refs = new Map<number, Awaited<ReturnType<typeof calibrate>>>();
    for (const n of ns) {
      // Sessions connect at a fixed rate (default 100/s), and play long enough that every
      // session streams together for at least ~15 s after the ramp.
      const rampMs = n * Number(values["ramp-ms-per-stream"]);
      const loops = Math.max(1, Math.ceil((rampMs + 15_000) / 24_000));
      const common = {
        ...DEFAULTS,
        streams: n,
        files,
        loops,
        rampMs,
        channels: Number(values.channels),
        maxSeconds: Number(values["max-seconds"]),
        uplinkTrace: values.worker === "stub" ? traceFile : undefined,
        // Every worker partial reaches the client on both paths, so events pair one to one.
        fullHypothesis: true,
      };
      if (!refs.has(loops)) refs.set(loops, await calibrate(worker.address, files, loops, 60));
      const reference = refs.get(loops)!;
      const runDirect = async (): Promise<LoadResult> => {
        log(`N=${n}: direct`);
        const r = await runLoad({
          ...common,
          target: `grpc://${worker.address}`,
          tag: `d${n}`,
          // The direct reference writes every frame at once: the gateway's coalescing is its added latency.
          coalesceMs: 0,
          pids: [{ pid: worker.pid, label: "worker" }],
        });
        printSummary(r, (s) => process.stderr.write(s + "\n"));
        return r;
      };
      const runGateway = async (): Promise<LoadResult> => {
        log(`N=${n}: via gateway`);
        const r = await runLoad({
          ...common,
          target: `ws://${gateway.address}`,
          tag: `g${n}`,
          reference,
          pids: [...gatewayPids.map((pid, i) => ({ pid, label: i === 0 ? "gateway" : `gateway#${i}` })), { pid: worker.pid, label: "worker" }],
        });
        printSummary(r, (s) => process.stderr.write(s + "\n"));
        return r;
      };
      const pause = (): Promise<void> => new Promise((r) => setTimeout(r, 3000));
      // Alternate the order from one N to the next so that drift on a shared machine does not
      // always favour the same path.
      let direct: LoadResult;
      let gw: LoadResult;
      if (rows.length % 2 === 0) {
        direct = await runDirect();
        await pause();
        gw = await runGateway();
      } else {
        gw = await runGateway();
        await pause();
        direct = await runDirect();
      }
      // Steady state (every session streaming) when both runs have such a window; whole run otherwise.
      const useSteady = direct.steady !== null && gw.steady !== null;
      const dS = useSteady ? direct.steady! : { ...direct.summary, uplinkMs: direct.uplinkMs, keyed: direct.keyed };
      const gS = useSteady ? gw.steady! : { ...gw.summary, uplinkMs: gw.uplinkMs, keyed: gw.keyed };
      const pf = paired(dS.keyed.finalAfterSpeechEnd, gS.keyed.finalAfterSpeechEnd);
      const pp = paired(dS.keyed.firstPartial, gS.keyed.firstPartial);
      const q = (a: number | null, b: number | null): number | null => (a === null || b === null ? null : a - b);
      const gwProcs = gw.procs.filter((p) => p.label.startsWith("gateway"));
      const gwCpuSec = gwProcs.reduce((a, p) => a + p.cpuSec, 0);
      const gwCores = gwProcs.length > 0 ? gwProcs.reduce((a, p) => a + (p.steadyCores ?? p.cores), 0) : null;
      rows.push({
        n,
        direct: strip(direct),
        gateway: strip(gw),
        added: {
          steady: useSteady ? 1 : 0,
          finalP50: q(gS.finalAfterSpeechEndMs.p50, dS.finalAfterSpeechEndMs.p50),
          finalP99: q(gS.finalAfterSpeechEndMs.p99, dS.finalAfterSpeechEndMs.p99),
          finalWholeRunP99: q(gw.summary.finalAfterSpeechEndMs.p99, direct.summary.finalAfterSpeechEndMs.p99),
          finalPairedP50: percentile(pf, 50),
          finalPairedP99: percentile(pf, 99),
          firstPartialP50: q(gS.firstPartialMs.p50, dS.firstPartialMs.p50),
          firstPartialP99: q(gS.firstPartialMs.p99, dS.firstPartialMs.p99),
          firstPartialPairedP50: percentile(pp, 50),
          firstPartialPairedP99: percentile(pp, 99),
          uplinkP50: dS.uplinkMs && gS.uplinkMs ? q(gS.uplinkMs.p50, dS.uplinkMs.p50) : null,
          uplinkP99: dS.uplinkMs && gS.uplinkMs ? q(gS.uplinkMs.p99, dS.uplinkMs.p99) : null,
          uplinkWholeRunP99: direct.uplinkMs && gw.uplinkMs ? q(gw.uplinkMs.p99, direct.uplinkMs.p99) : null,
          ratioFinalP99: gS.finalAfterSpeechEndMs.p99 && dS.finalAfterSpeechEndMs.p99 ? gS.finalAfterSpeechEndMs.p99 / dS.finalAfterSpeechEndMs.p99 : null,
          directFinalP50: dS.finalAfterSpeechEndMs.p50,
          directFinalP99: dS.finalAfterSpeechEndMs.p99,
          gatewayFinalP50: gS.finalAfterSpeechEndMs.p50,
          gatewayFinalP99: gS.finalAfterSpeechEndMs.p99,
          gatewayCores: gwCores,
          streamsPerGatewayCore: gwCores ? n / gwCores : null,
          // Gateway CPU per forwarded 60 ms frame (uplink frame + its share of results), in µs.
          gatewayCpuUsPerFrame: gwCores ? (gwCores / (n * (1000 / 60))) * 1e6 : null,
          gatewayKernelShare: gwCpuSec > 0 ? gwProcs.reduce((a, p) => a + p.sysShare * p.cpuSec, 0) / gwCpuSec : null,
          gatewayRssPerSessionKiB: gwProcs.length > 0 ? (gwProcs.reduce((a, p) => a + p.rssPeakMiB - p.rssStartMiB, 0) * 1024) / n : null,
          gatewayRssPeakMiB: gwProcs.length > 0 ? gwProcs.reduce((a, p) => a + p.rssPeakMiB, 0) : null,
          pairedFinals: pf.length,
        },
      });
      writeFileSync(outFile, JSON.stringify({ machine: machine(), args: values, rows }, null, 2));
      await new Promise((r) => setTimeout(r, 3000));
    }
  } finally {
    await gateway.stop();
    await worker.stop();
  }
  printTable(rows);
  log(`results: ${outFile}`);
}

function machine(): Record<string, unknown> {
  return {
    date: new Date().toISOString(),
    nproc: os.cpus().length,
    cpu: os.cpus()[0]?.model,
    memGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
    node: process.version,
    loadavg: os.loadavg(),
  };
}

function printTable(rows: Row[]): void {
  const o = (s: string): void => void process.stdout.write(s + "\n");
  o(`machine: ${JSON.stringify(machine())}`);
  o(`worker: ${values.worker}, fake cost ${values["fake-base-ms"]} ms + ${values["fake-per-item-ms"]} ms/item, pin: ${values.pin || "none"}`);
  o("");
  o("Latencies in the steady window (every session streaming; * = whole run). Whole-run columns include session setup.");
  o("");
  o("| N | final after speech end p50/p99, direct (ms) | via gateway (ms) | added p50/p99 (ms) | added, paired p50/p99 (ms) | first partial added p50/p99 (ms) | uplink per frame added p50/p99 (ms) | whole run: final / uplink added p99 (ms) | p99 ratio | gateway cores | streams per gateway core | gateway CPU µs/frame | gateway RSS/session (KiB) | errors direct/gw | loadgen lateness p99 direct/gw (ms) |");
  o("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const r of rows) {
    const d = r.direct.summary;
    const g = r.gateway.summary;
    const a = r.added;
    o(
      `| ${r.n}${a.steady ? "" : "*"} | ${fmt(a.directFinalP50)} / ${fmt(a.directFinalP99)} | ${fmt(a.gatewayFinalP50)} / ${fmt(a.gatewayFinalP99)}` +
        ` | ${fmt(a.finalP50)} / ${fmt(a.finalP99)} | ${fmt(a.finalPairedP50)} / ${fmt(a.finalPairedP99)} | ${fmt(a.firstPartialP50)} / ${fmt(a.firstPartialP99)}` +
        ` | ${fmt(a.uplinkP50, 2)} / ${fmt(a.uplinkP99, 2)} | ${fmt(a.finalWholeRunP99)} / ${fmt(a.uplinkWholeRunP99)} | ${fmt(a.ratioFinalP99, 3)} | ${fmt(a.gatewayCores, 3)} | ${fmt(a.streamsPerGatewayCore, 0)} | ${fmt(a.gatewayCpuUsPerFrame, 0)} | ${fmt(a.gatewayRssPerSessionKiB, 1)}` +
        ` | ${d.sessionsWithErrors}/${g.sessionsWithErrors} | ${fmt(d.pacerLatenessMs.p99)} / ${fmt(g.pacerLatenessMs.p99)} |`,
    );
  }
  void dist;
}

main().catch((e: unknown) => {
  process.stderr.write(`gateway-overhead: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
