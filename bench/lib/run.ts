/**
 * Runs one load: N sessions against one target, real-time paced, staggered,
 * bounded in time; returns traces, metrics and server process usage.
 */
import { frames as splitFrames, loadAudio } from "./audio.js";
import { keyedIn, summarize, traceMetrics, segmentsOf, type Reference, type Summary, type TraceMetrics } from "./metrics.js";
import { Pacer } from "./pacer.js";
import { ProcSampler, type ProcUsage } from "./proc.js";
import { GrpcPool, GrpcSession, RecognitionMode, WsSession, setTag, type BenchSession, type Trace } from "./sessions.js";
import { dist, percentile, type Dist } from "./stats.js";
import type { CoalesceDelay } from "../../gateway/src/write-coalescer.js";

export interface LoadOptions {
  /** ws://host:port[/path] (gateway) or grpc://host:port (worker). */
  target: string;
  streams: number;
  files: string[];
  /** Times each session plays its file back to back before end of input. */
  loops: number;
  frameMs: number;
  /** Sessions start evenly spread over this many ms. */
  rampMs: number;
  /**
   * Sustained mode when > 0: `streams` slots, each live from its ramp start until rampMs +
   * sustainMs after the run began, each playing session after session back to back (the next
   * opens in the frame period the previous one ended in); every session plays `sessionFiles`
   * different recordings back to back, and slot i starts at recording i, so segment and session
   * boundaries are staggered over the slots. 0 (default): one session per stream playing one
   * recording `loops` times, so concurrency falls off as the shorter recordings end.
   */
  sustainMs?: number;
  /** Recordings per session in sustained mode (default 2). */
  sessionFiles?: number;
  /** 1 = real time; 2 = twice as fast; 0 = as fast as possible. */
  pace: number;
  /**
   * Direct runs: how long audio is held so that all streams' frames go out in one loop turn, as
   * the gateway's WORKER_WRITE_COALESCE_MS does (write-coalescer.ts); default: the gateway's default.
   */
  coalesceMs?: CoalesceDelay;
  /** gRPC channels for direct runs (the gateway uses one per worker). */
  channels: number;
  partialIntervalMs: number;
  stopTimeoutMs: number;
  /** Hard bound on the whole run. */
  maxSeconds: number;
  pids: { pid: number; label: string }[];
  /** For ws targets: segmentation from a direct run of the same files. */
  reference?: Reference;
  quiet?: boolean;
  /** wav_name prefix, unique per run when a worker trace file is shared. */
  tag?: string;
  /** A worker receipt trace file (stub worker) to compute per-frame uplink latency. */
  uplinkTrace?: string;
  /** FunASR sessions ask for full hypotheses (config extension `full_hypothesis`), so every
   * worker partial reaches the client; default false = deltas, as FunASR clients get them. */
  fullHypothesis?: boolean;
}

export const DEFAULTS: Omit<LoadOptions, "target" | "streams"> = {
  files: [],
  loops: 1,
  frameMs: 60,
  rampMs: 3000,
  pace: 1,
  channels: 1,
  partialIntervalMs: 600,
  stopTimeoutMs: 30_000,
  maxSeconds: 600,
  pids: [],
};

export interface LoadResult {
  target: string;
  path: "ws" | "grpc";
  options: Omit<LoadOptions, "reference" | "pids">;
  summary: Summary;
  procs: ProcUsage[];
  loadgenCores: number;
  traces: Trace[];
  metrics: TraceMetrics[];
  /** Client send -> worker receipt per frame (only with uplinkTrace). */
  uplinkMs?: Dist;
  /** Uplink latency over the run: p50/p99 per 2 s of send time (does a backlog build up?). */
  uplinkTimeline?: { t: number; p50: number | null; p99: number | null }[];
  /** The same latencies restricted to the window in which every session was streaming. */
  steady: {
    windowSec: [number, number];
    firstPartialMs: Dist;
    finalAfterSpeechEndMs: Dist;
    uplinkMs?: Dist | undefined;
    keyed: { firstPartial: Record<string, number>; finalAfterSpeechEnd: Record<string, number> };
  } | null;
  /** Keyed per-segment latencies, for pairing a gateway run with a direct run. */
  keyed: { firstPartial: Record<string, number>; finalAfterSpeechEnd: Record<string, number> };
  /** How many streams were live (sending audio), so "N streams" says what the run measured. */
  liveStreams: LiveStreams;
}

/** Concurrency of a run: streams sending audio, from each session's first to its last frame. */
export interface LiveStreams {
  /** Time-weighted mean over [first frame sent, last frame's end]. */
  mean: number;
  peak: number;
  /** Length of that window, s. */
  windowSeconds: number;
}

/** Time-weighted mean and peak number of sessions between their first frame and their last frame's end. */
export function liveStreams(traces: Trace[]): LiveStreams {
  const edges: [number, number][] = [];
  for (const t of traces) {
    let last = -1;
    for (let j = t.sentAt.length - 1; j >= 0; j--) {
      if (!Number.isNaN(t.sentAt[j]!)) {
        last = j;
        break;
      }
    }
    if (last < 0 || Number.isNaN(t.sentAt[0]!)) continue;
    // Scheduled times where paced (t0 = the first frame's due time), so that a late send of a
    // session's last frame does not overlap the next session of its slot.
    const start = Math.min(t.t0 || t.sentAt[0]!, t.sentAt[0]!);
    edges.push([start, 1], [Math.min(t.sentAt[last]! + t.frameMs, start + (last + 1) * t.frameMs), -1]);
  }
  if (edges.length === 0) return { mean: 0, peak: 0, windowSeconds: 0 };
  // Ends before starts at the same instant: a slot's next session does not count twice.
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let live = 0;
  let peak = 0;
  let area = 0;
  let prev = edges[0]![0];
  for (const [t, d] of edges) {
    area += live * (t - prev);
    prev = t;
    live += d;
    if (live > peak) peak = live;
  }
  const span = edges[edges.length - 1]![0] - edges[0]![0];
  return { mean: span > 0 ? area / span : live, peak, windowSeconds: span / 1000 };
}

interface Prepared {
  name: string;
  frames: Buffer[];
  audioMs: number;
}

/** Files as "name" or "name*K" (K plays back to back, times the global loops). */
function prepare(files: string[], loops: number, frameMs: number): Prepared[] {
  const specs = files.map((f) => {
    const m = /^(.*)\*(\d+)$/.exec(f);
    return m ? { name: m[1]!, k: Number(m[2]) } : { name: f, k: 1 };
  });
  const audio = loadAudio(specs.map((s) => s.name));
  return audio.map((a, i) => {
    const k = specs[i]!.k * loops;
    const one = splitFrames(a, frameMs);
    const fr: Buffer[] = [];
    for (let l = 0; l < k; l++) fr.push(...one);
    return { name: files[i]!, frames: fr, audioMs: a.durationMs * k };
  });
}

function makeSession(o: LoadOptions, idx: number, p: Prepared, pool: GrpcPool | undefined): BenchSession {
  if (o.target.startsWith("ws://") || o.target.startsWith("wss://")) {
    return new WsSession(idx, p.name, o.frameMs, p.frames.length, p.audioMs, {
      url: o.target,
      mode: "2pass",
      chunkSize: [5, Math.round(o.partialIntervalMs / 60), 5],
      itn: true,
      hotwords: "",
      connectTimeoutMs: 10_000,
      fullHypothesis: o.fullHypothesis === true,
    });
  }
  return new GrpcSession(idx, p.name, o.frameMs, p.frames.length, p.audioMs, pool!.pick(), {
    partialIntervalMs: o.partialIntervalMs,
    mode: RecognitionMode.RECOGNITION_MODE_TWO_PASS,
  });
}

const log = (o: { quiet?: boolean }, msg: string): void => {
  if (!o.quiet) process.stderr.write(`[load] ${msg}\n`);
};

export async function runLoad(o: LoadOptions): Promise<LoadResult> {
  const files = o.files.length ? o.files : (await import("./audio.js")).DEFAULT_FILES;
  const prepared = prepare(files, o.loops, o.frameMs);
  const isWs = o.target.startsWith("ws");
  setTag(o.tag ?? "bench");
  const pool = isWs ? undefined : new GrpcPool(o.target.replace(/^grpc:\/\//, ""), o.channels, o.coalesceMs);
  await pool?.settle();
  const pacer = new Pacer();
  const sampler = new ProcSampler(o.pids);
  const sessions: BenchSession[] = [];
  const cpu0 = process.cpuUsage();
  const wall0 = performance.now();
  sampler.start();
  const deadline = wall0 + o.maxSeconds * 1000;
  log(o, `${o.streams} sessions -> ${o.target} (${files.length} files, ramp ${o.rampMs} ms, pace ${o.pace || "max"})`);

  const done: Promise<void>[] = [];
  // Stream i starts at its point of the ramp, plus a golden-ratio phase within one frame period
  // so that frame sends are spread evenly over the 60 ms period (a ramp step that divides the
  // period would line sessions up in a few synchronized bursts, unlike real clients).
  const startOf = (i: number): number => {
    const phase = o.streams > 1 && o.pace > 0 ? ((i * 0.6180339887) % 1) * (o.frameMs / o.pace) : 0;
    return wall0 + (o.streams > 1 ? (i * o.rampMs) / o.streams : 0) + phase;
  };
  const sustainMs = o.sustainMs ?? 0;
  if (sustainMs > 0) {
    const base = prepare(files, 1, o.frameMs);
    const perSession = Math.max(1, Math.min(o.sessionFiles ?? 2, base.length));
    const endAt = wall0 + o.rampMs + sustainMs;
    let nextIdx = 0;
    const newSession = (slot: number, k: number): { s: BenchSession; p: Prepared } => {
      // Session k of slot `slot` plays recordings slot+k*perSession, ... (mod the set): different
      // recordings back to back, and a different first recording per slot.
      const parts = Array.from({ length: perSession }, (_, m) => base[(slot + k * perSession + m) % base.length]!);
      const p: Prepared = {
        name: parts.map((x) => x.name).join("+"),
        frames: parts.flatMap((x) => x.frames),
        audioMs: parts.reduce((a, x) => a + x.audioMs, 0),
      };
      const s = makeSession(o, nextIdx++, p, pool);
      sessions.push(s);
      return { s, p };
    };
    for (let i = 0; i < o.streams; i++) done.push(runSlot(o, pacer, i, startOf(i), endAt, deadline, newSession));
  } else {
    for (let i = 0; i < o.streams; i++) {
      const p = prepared[i % prepared.length]!;
      const s = makeSession(o, i, p, pool);
      sessions.push(s);
      const startAt = startOf(i);
      done.push(
        new Promise<void>((resolve) => {
          const begin = async (): Promise<void> => {
            try {
              await s.open();
            } catch {
              resolve();
              return;
            }
            const first = Math.max(performance.now(), startAt);
            const period = o.pace > 0 ? o.frameMs / o.pace : 0;
            pacer.add(first, (now, due) => {
              // Frame index from the schedule, so one late wake-up does not shift the timeline.
              const j = period > 0 ? Math.round((due - first) / period) : (s.trace.sentAt.findIndex(Number.isNaN) as number);
              const fr = p.frames[j];
              if (fr === undefined || now > deadline) {
                s.stop(o.stopTimeoutMs).then(() => {
                  s.close();
                  resolve();
                });
                return null;
              }
              s.sendFrame(j, fr, now);
              if (j === 0 && period > 0) s.trace.t0 = first; // audio clock origin = scheduled first frame
              return period > 0 ? first + (j + 1) * period : now;
            });
          };
          setTimeout(() => void begin(), Math.max(0, startAt - performance.now()));
        }),
      );
    }
  }
  await Promise.all(done);
  // Steady window: every session has started (ramp over) and none has finished yet.
  const minDur = Math.min(...prepared.slice(0, o.streams).map((p) => p.audioMs)) / (o.pace > 0 ? o.pace : Infinity);
  const tA = wall0 + o.rampMs + 1000;
  const tB = sustainMs > 0 ? wall0 + o.rampMs + sustainMs - 1000 : wall0 + minDur - 1000;
  const procs = sampler.stop();
  for (const p of procs) p.steadyCores = tB - tA >= 3000 ? sampler.coresBetween(p.pid, tA, tB) : null;
  const wallSeconds = (performance.now() - wall0) / 1000;
  const c = process.cpuUsage(cpu0);
  pool?.close();
  const traces = sessions.map((s) => s.trace);
  const metrics = traces.map((t) => traceMetrics(t, o.reference, o.fullHypothesis !== true));
  const summary = summarize(traces, metrics, pacer.lateness, wallSeconds);
  log(o, `done in ${wallSeconds.toFixed(1)} s, ${summary.sessionsWithErrors} sessions with errors`);
  let uplinkMs: Dist | undefined;
  let uplinkTimeline: LoadResult["uplinkTimeline"];
  let uplinkAll: [number, number][] | undefined;
  if (o.uplinkTrace) {
    const u = await uplinkLatencies(traces, o.uplinkTrace);
    uplinkMs = dist(u.lat);
    uplinkTimeline = u.timeline;
    uplinkAll = u.latAt;
    log(o, `uplink trace: ${u.matched}/${traces.length} sessions matched`);
  }
  const keyed = keyedIn(metrics, null);
  // Steady state: every session connected and streaming (session setup excluded).
  const window: [number, number] | null = tB - tA >= 3000 ? [tA, tB] : null;
  let steady: LoadResult["steady"] = null;
  if (window) {
    const k = keyedIn(metrics, window);
    steady = {
      windowSec: [(tA - wall0) / 1000, (tB - wall0) / 1000],
      firstPartialMs: dist(Object.values(k.firstPartial)),
      finalAfterSpeechEndMs: dist(Object.values(k.finalAfterSpeechEnd)),
      uplinkMs: uplinkAll ? dist(uplinkAll.filter(([at]) => at >= tA && at <= tB).map(([, v]) => v)) : undefined,
      keyed: k,
    };
  }
  const { reference: _r, pids: _p, ...options } = o;
  return {
    liveStreams: liveStreams(traces),
    uplinkMs,
    uplinkTimeline,
    keyed,
    steady,
    target: o.target,
    path: isWs ? "ws" : "grpc",
    options,
    summary,
    procs,
    loadgenCores: (c.user + c.system) / 1e6 / wallSeconds,
    traces,
    metrics,
  };
}

/**
 * One sustained slot: sessions back to back on one frame grid (startAt + j * period) until
 * endAt; the last one is cut there (its trace's audioMs becomes the audio it sent). Resolves
 * when every session of the slot has been stopped and closed.
 */
async function runSlot(
  o: LoadOptions,
  pacer: Pacer,
  slot: number,
  startAt: number,
  endAt: number,
  deadline: number,
  newSession: (slot: number, k: number) => { s: BenchSession; p: Prepared },
): Promise<void> {
  const period = o.frameMs / o.pace;
  if (!(period > 0 && Number.isFinite(period))) throw new Error("sustained mode needs a real-time pace (--pace > 0)");
  const stops: Promise<void>[] = [];
  await new Promise((r) => setTimeout(r, Math.max(0, startAt - performance.now())));
  let due = startAt;
  for (let k = 0; due < endAt && due < deadline; k++) {
    const { s, p } = newSession(slot, k);
    try {
      await s.open();
    } catch {
      break;
    }
    // The next grid point from now: a session that took long to open skips frames, not phase.
    const now = performance.now();
    if (now > due + period / 2) due += Math.ceil((now - due - period / 2) / period) * period;
    const first = due;
    due = await new Promise<number>((resolve) => {
      pacer.add(first, (t, at) => {
        const j = Math.round((at - first) / period);
        const fr = p.frames[j];
        if (fr === undefined || at >= endAt || t > deadline) {
          if (fr !== undefined) s.trace.audioMs = j * o.frameMs; // cut at the end of the run
          resolve(at);
          return null;
        }
        s.sendFrame(j, fr, t);
        if (j === 0) s.trace.t0 = first;
        return first + (j + 1) * period;
      });
    });
    stops.push(s.stop(o.stopTimeoutMs).then(() => s.close()));
  }
  await Promise.all(stops);
}

/** Segmentation of each file from one unpaced direct session per file (deterministic VAD). */
export async function calibrate(worker: string, files: string[], loops: number, frameMs: number): Promise<Reference> {
  const r = await runLoad({
    ...DEFAULTS,
    target: `grpc://${worker.replace(/^grpc:\/\//, "")}`,
    streams: files.length,
    files,
    loops,
    frameMs,
    rampMs: 0,
    pace: 0,
    quiet: true,
  });
  const ref: Reference = new Map();
  for (const t of r.traces) {
    if (t.errors.length) throw new Error(`calibration of ${t.file} failed: ${t.errors.join("; ")}`);
    ref.set(t.file, segmentsOf(t));
  }
  return ref;
}

/**
 * Per-frame uplink latency: client send time of each frame -> the worker's
 * receipt of the chunk that completed it, joined by wav_name and byte offset
 * (works whatever re-chunking happens in between). Needs a worker that writes
 * receipt traces (bench/stub-worker.ts --trace-file). Both processes use
 * performance.timeOrigin + performance.now(), one machine, one clock.
 */
export async function uplinkLatencies(
  traces: Trace[],
  traceFile: string,
  waitMs = 5000,
): Promise<{
  lat: number[];
  latAt: [number, number][];
  matched: number;
  timeline: { t: number; p50: number | null; p99: number | null }[];
}> {
  const { readFileSync, existsSync } = await import("node:fs");
  const want = new Map(traces.map((t) => [t.wavName, t]));
  const deadline = performance.now() + waitMs;
  let lines: string[] = [];
  for (;;) {
    lines = existsSync(traceFile) ? readFileSync(traceFile, "utf8").split("\n").filter(Boolean) : [];
    const seen = lines.filter((l) => want.has((JSON.parse(l) as { wav_name: string }).wav_name)).length;
    if (seen >= traces.length || performance.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 250));
  }
  const lat: number[] = [];
  const latAt: [number, number][] = [];
  const buckets = new Map<number, number[]>(); // 2 s buckets of send time since the first frame
  const tFirst = Math.min(...traces.map((t) => t.sentAt[0] ?? Infinity));
  let matched = 0;
  const origin = performance.timeOrigin;
  for (const l of lines) {
    const rec = JSON.parse(l) as { wav_name: string; recv: number[] };
    const t = want.get(rec.wav_name);
    if (!t) continue;
    matched++;
    let k = 0;
    let end = 0;
    for (let j = 0; j < t.sentAt.length; j++) {
      if (Number.isNaN(t.sentAt[j]!)) break;
      end += t.frameBytes[j]!;
      while (k < rec.recv.length && rec.recv[k]! < end) k += 2;
      if (k >= rec.recv.length) break;
      const v = rec.recv[k + 1]! - (origin + t.sentAt[j]!);
      lat.push(v);
      latAt.push([t.sentAt[j]!, v]);
      const b = Math.floor((t.sentAt[j]! - tFirst) / 2000) * 2;
      let arr = buckets.get(b);
      if (!arr) buckets.set(b, (arr = []));
      arr.push(v);
    }
  }
  const timeline = [...buckets.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([t, v]) => ({ t, p50: percentile(v, 50), p99: percentile(v, 99) }));
  return { lat, latAt, matched, timeline };
}
