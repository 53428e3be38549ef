/**
 * A diagnostic preload for the gateway under benchmark: what blocks its event
 * loop. Loaded with
 *
 *   npm run bench:gateway -- ... --gateway-node-arg=--import=tsx --gateway-node-arg=--import=./bench/lib/loop-probe.ts \
 *       --gateway-env LOOP_PROBE_FILE=/tmp/probe.jsonl
 *
 * it appends one JSON line per LOOP_PROBE_INTERVAL_MS (default 5000) with the
 * event-loop delay distribution of that interval (perf_hooks
 * monitorEventLoopDelay, 1 ms resolution: how late a timer that should fire
 * now actually runs, i.e. how long the loop was busy without a break) and the
 * garbage collections of that interval by kind (count, total and longest
 * pause). Comparing these with the uplink latency the gateway adds tells
 * whether a tail comes from the loop being blocked (GC, a long synchronous
 * burst) or from queueing outside it (sockets, HTTP/2 flow control).
 *
 * Why a preload and not gateway code: it is a measuring instrument of the
 * benchmark only; production exports the same event-loop lag through
 * prom-client's default metrics.
 */
import { appendFileSync } from "node:fs";
import { constants, monitorEventLoopDelay, PerformanceObserver, type PerformanceEntry } from "node:perf_hooks";
import { setFlagsFromString } from "node:v8";

const file = process.env.LOOP_PROBE_FILE;
const intervalMs = Number(process.env.LOOP_PROBE_INTERVAL_MS ?? 5000);

/** GC kind names as V8 reports them in `detail.kind`. */
const GC_KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: "scavenge",
  [constants.NODE_PERFORMANCE_GC_MAJOR]: "mark_compact",
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: "incremental",
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: "weak_cb",
};

// LOOP_PROBE_TRACE_GC=1: V8 prints a line per collection with its reason on stdout
// (kept with BENCH_GATEWAY_STDOUT=FILE, see procs.ts).
if (process.env.LOOP_PROBE_TRACE_GC === "1") setFlagsFromString("--trace-gc");

if (file !== undefined && file !== "") {
  const eld = monitorEventLoopDelay({ resolution: 1 });
  eld.enable();
  let gc: Record<string, { n: number; ms: number; maxMs: number }> = {};
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries() as (PerformanceEntry & { detail?: { kind?: number } })[]) {
      const kind = GC_KINDS[e.detail?.kind ?? -1] ?? String(e.detail?.kind);
      const g = (gc[kind] ??= { n: 0, ms: 0, maxMs: 0 });
      g.n++;
      g.ms += e.duration;
      g.maxMs = Math.max(g.maxMs, e.duration);
    }
  });
  obs.observe({ entryTypes: ["gc"] });
  let last = process.cpuUsage();
  const t = setInterval(() => {
    const cpu = process.cpuUsage(last);
    last = process.cpuUsage();
    const ms = (v: number): number => Math.round(v / 1e4) / 100;
    const line = {
      t: new Date().toISOString(),
      pid: process.pid,
      cwd: process.cwd(),
      cpuCores: Math.round(((cpu.user + cpu.system) / 1000 / intervalMs) * 1000) / 1000,
      eldMs: { p50: ms(eld.percentile(50)), p99: ms(eld.percentile(99)), max: ms(eld.max), mean: ms(eld.mean) },
      gc: Object.fromEntries(Object.entries(gc).map(([k, v]) => [k, { n: v.n, ms: Math.round(v.ms * 10) / 10, maxMs: Math.round(v.maxMs * 10) / 10 }])),
      heapMiB: Math.round(process.memoryUsage().heapUsed / 2 ** 20),
    };
    appendFileSync(file, JSON.stringify(line) + "\n");
    eld.reset();
    gc = {};
  }, intervalMs);
  t.unref();
}
