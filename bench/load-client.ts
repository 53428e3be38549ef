/**
 * Load client: N concurrent FunASR sessions through the gateway (ws://) or
 * direct asr.v1 streams to a worker (grpc://), real-time paced 60 ms frames,
 * staggered starts, bounded in count and time. Prints a summary (and writes
 * JSON with --json).
 *
 *   npm run bench:load -- --target ws://127.0.0.1:10095 --streams 50 \
 *       --reference-worker 127.0.0.1:50051 --pid gateway=1234 --pid worker=5678
 *
 * Methodology follows FunASR's realtime WebSocket benchmark
 * (docs/benchmark/realtime_ws_benchmark.md in modelscope/FunASR): paced
 * replay of real recordings, first update, final after STOP, response lag;
 * plus per-segment metrics against the worker's VAD segmentation (see
 * bench/lib/metrics.ts and docs/benchmarks.md).
 */
import { writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { DEFAULT_FILES } from "./lib/audio.js";
import { printSummary } from "./lib/report.js";
import { calibrate, DEFAULTS, runLoad } from "./lib/run.js";
import { DEFAULT_COALESCE_DELAY, WriteCoalescer } from "../gateway/src/write-coalescer.js";

const { values } = parseArgs({
  options: {
    target: { type: "string" },
    streams: { type: "string", default: "10" },
    files: { type: "string", default: DEFAULT_FILES.join(",") },
    loops: { type: "string", default: "1" },
    "frame-ms": { type: "string", default: "60" },
    "coalesce-ms": { type: "string", default: String(DEFAULT_COALESCE_DELAY) },
    "ramp-ms": { type: "string", default: "3000" },
    "sustain-s": { type: "string", default: "0" },
    "session-files": { type: "string", default: "2" },
    pace: { type: "string", default: "1" },
    channels: { type: "string", default: "1" },
    "partial-interval-ms": { type: "string", default: "600" },
    "max-seconds": { type: "string", default: "600" },
    "reference-worker": { type: "string" },
    pid: { type: "string", multiple: true, default: [] },
    json: { type: "string" },
    tag: { type: "string", default: "bench" },
    "full-hypothesis": { type: "boolean", default: false },
    "uplink-trace": { type: "string" },
    help: { type: "boolean", default: false },
  },
});

if (values.help || !values.target) {
  process.stderr.write(
    "usage: load-client --target ws://HOST:PORT | grpc://HOST:PORT [--streams N] [--files a.wav,b.wav]\n" +
      "  [--loops L] [--ramp-ms MS] [--pace 1] [--channels K] [--reference-worker HOST:PORT]\n" +
      "  [--sustain-s S [--session-files K]]  (every stream live S s after the ramp, sessions of K\n" +
      "   different recordings back to back; default 0: one session per stream)\n" +
      "  [--coalesce-ms MS|turn]  (grpc targets: hold audio as the gateway's WORKER_WRITE_COALESCE_MS;\n" +
      `   default ${DEFAULT_COALESCE_DELAY}, 0 = every frame written at once)\n` +
      "  [--pid label=PID ...] [--max-seconds S] [--json OUT.json]\n",
  );
  process.exit(values.help ? 0 : 2);
}

const streams = Number(values.streams);
if (!(streams >= 1 && streams <= 10_000)) throw new Error("--streams must be 1..10000");
const files = values.files.split(",").filter(Boolean);
const loops = Number(values.loops);
const frameMs = Number(values["frame-ms"]);
const pids = (values.pid as string[]).map((p) => {
  const [label, pid] = p.includes("=") ? p.split("=") : ["server", p];
  return { label: label!, pid: Number(pid) };
});

const reference =
  values["reference-worker"] !== undefined
    ? await calibrate(values["reference-worker"], files, loops, frameMs)
    : undefined;

const result = await runLoad({
  ...DEFAULTS,
  target: values.target,
  streams,
  files,
  loops,
  frameMs,
  coalesceMs: WriteCoalescer.parseDelay(values["coalesce-ms"]),
  rampMs: Number(values["ramp-ms"]),
  sustainMs: Number(values["sustain-s"]) * 1000,
  sessionFiles: Number(values["session-files"]),
  pace: Number(values.pace),
  channels: Number(values.channels),
  partialIntervalMs: Number(values["partial-interval-ms"]),
  maxSeconds: Number(values["max-seconds"]),
  pids,
  reference,
  tag: values.tag,
  fullHypothesis: values["full-hypothesis"],
  uplinkTrace: values["uplink-trace"],
});
printSummary(result);
if (values.json) {
  const { traces: _t, metrics: _m, ...rest } = result;
  writeFileSync(values.json, JSON.stringify(rest, null, 2));
}
process.exit(result.summary.sessionsWithErrors > 0 ? 1 : 0);
