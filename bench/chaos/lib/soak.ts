/**
 * A soak: `streams` slots, each running real-time FunASR sessions back to back
 * through a gateway for `durationMs`, so that the gateway and the worker see
 * steady concurrency AND a steady churn of sessions opening and closing (where
 * leaks of memory, file descriptors, timers and gRPC calls show). Every session
 * is checked exactly-once against the reference as it ends and then dropped, so
 * the harness's own memory stays flat however long it runs.
 *
 * Server processes (whole trees) are sampled every `sampleMs`: RSS, open fds and
 * sockets; the RSS slope is a least-squares fit over the samples after the
 * first fifth of the run (warm-up: allocators and JIT settling).
 */
import { frames as splitFrames, loadAudio } from "../../lib/audio.js";
import { Pacer } from "../../lib/pacer.js";
import { setTag, WsSession } from "../../lib/sessions.js";
import { percentile } from "../../lib/stats.js";
import { checkSession, type TextReference } from "./check.js";
import { descendants, fdCount, rssKiB, socketCount } from "./cluster.js";

/** What to soak. */
export interface SoakOptions {
  url: string;
  streams: number;
  durationMs: number;
  files: string[];
  ref: TextReference;
  /** Server process trees to sample (label -> root pid). */
  procs: { label: string; pid: number }[];
  frameMs?: number;
  /** Slots start evenly spread over this long. */
  rampMs?: number;
  sampleMs?: number;
  /** How long a session waits for its end-of-input acknowledgement before it counts as an error. */
  stopTimeoutMs?: number;
  /** Progress lines (one per sample). */
  log?: (line: string) => void;
}

/** One sample of one process tree. */
export interface TreeSample {
  tSec: number;
  rssMiB: number;
  fds: number;
  sockets: number;
  processes: number;
}

/** Result of a soak. */
export interface SoakResult {
  streams: number;
  seconds: number;
  sessions: number;
  sessionsWithErrors: number;
  errors: string[];
  expectedFinals: number;
  lost: number;
  duplicates: number;
  /** End-of-input acknowledgements later than 5 s after {"is_speaking": false}, and the latest. */
  slowAcks: number;
  ackMaxMs: number;
  /** Load generator lateness: the worst per-interval p99 (is the harness itself keeping up?). */
  pacerLatenessP99Ms: number | null;
  /** Per process tree: samples, RSS slope and the figures at start and end. */
  procs: {
    label: string;
    rssSlopeMiBPerHour: number | null;
    rssStartMiB: number;
    rssEndMiB: number;
    rssPeakMiB: number;
    fdsStart: number;
    fdsEnd: number;
    socketsEnd: number;
    samples: TreeSample[];
  }[];
}

/** Sums RSS, fds and sockets over `pid` and its descendants. */
export function sampleTree(pid: number, tSec: number): TreeSample | null {
  const pids = [pid, ...descendants(pid)];
  let rss = 0;
  let fds = 0;
  let sockets = 0;
  let n = 0;
  for (const p of pids) {
    const r = rssKiB(p);
    if (r === null) continue;
    n++;
    rss += r;
    fds += fdCount(p) ?? 0;
    sockets += socketCount(p) ?? 0;
  }
  return n === 0 ? null : { tSec, rssMiB: rss / 1024, fds, sockets, processes: n };
}

/** Least-squares slope of y over x (null with fewer than 3 points). */
export function slope(points: [number, number][]): number | null {
  if (points.length < 3) return null;
  const n = points.length;
  const mx = points.reduce((a, p) => a + p[0], 0) / n;
  const my = points.reduce((a, p) => a + p[1], 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (const [x, y] of points) {
    sxy += (x - mx) * (y - my);
    sxx += (x - mx) * (x - mx);
  }
  return sxx === 0 ? null : sxy / sxx;
}

/** Runs the soak (see module comment); resolves when every slot's last session ended. */
export async function runSoak(o: SoakOptions): Promise<SoakResult> {
  const frameMs = o.frameMs ?? 60;
  const rampMs = o.rampMs ?? 10_000;
  const sampleMs = o.sampleMs ?? 5000;
  const stopTimeoutMs = o.stopTimeoutMs ?? 60_000;
  const audio = loadAudio(o.files.map((f) => f.replace(/\*\d+$/, "")));
  const prepared = o.files.map((f, i) => {
    const k = Number(/\*(\d+)$/.exec(f)?.[1] ?? 1);
    const one = splitFrames(audio[i]!, frameMs);
    const fr: Buffer[] = [];
    for (let l = 0; l < k; l++) fr.push(...one);
    return { name: f, frames: fr, audioMs: audio[i]!.durationMs * k };
  });
  setTag("soak");
  const pacer = new Pacer();
  const t0 = performance.now();
  const end = t0 + o.durationMs;
  const samples = new Map<string, TreeSample[]>(o.procs.map((p) => [p.label, []]));
  const takeSample = (): void => {
    const tSec = (performance.now() - t0) / 1000;
    for (const p of o.procs) {
      const s = sampleTree(p.pid, tSec);
      if (s) samples.get(p.label)!.push(s);
    }
  };
  let sessions = 0;
  let withErrors = 0;
  let expected = 0;
  let lost = 0;
  let duplicates = 0;
  let open = 0;
  let ackMax = 0;
  let slowAcks = 0;
  const errors: string[] = [];
  // Pacer lateness, summarized per sample interval so that nothing grows with the run's length.
  const lateP99: number[] = [];
  takeSample();
  const sampler = setInterval(() => {
    takeSample();
    const p99 = percentile(pacer.lateness, 99);
    if (p99 !== null) lateP99.push(p99);
    pacer.lateness.length = 0;
    const line = o.procs
      .map((p) => {
        const s = samples.get(p.label)!.at(-1);
        return s ? `${p.label} ${s.rssMiB.toFixed(0)} MiB ${s.fds} fds` : `${p.label} gone`;
      })
      .join(", ");
    o.log?.(`t=${((performance.now() - t0) / 1000).toFixed(0)} s open ${open} done ${sessions} errors ${withErrors} lost ${lost} dup ${duplicates} ack>5s ${slowAcks} (max ${(ackMax / 1000).toFixed(1)} s); ${line}`);
  }, sampleMs);
  sampler.unref();

  const runOne = async (slot: number, k: number): Promise<void> => {
    const p = prepared[(slot + k) % prepared.length]!;
    const s = new WsSession(slot * 100_000 + k, p.name, frameMs, p.frames.length, p.audioMs, {
      url: o.url,
      mode: "2pass",
      chunkSize: [5, 10, 5],
      itn: true,
      hotwords: "",
      connectTimeoutMs: 10_000,
      fullHypothesis: false,
    });
    open++;
    try {
      await s.open();
      await new Promise<void>((resolve) => {
        const first = performance.now();
        pacer.add(first, (now, due) => {
          const j = Math.round((due - first) / frameMs);
          const fr = p.frames[j];
          if (fr === undefined) {
            resolve();
            return null;
          }
          s.sendFrame(j, fr, now);
          return first + (j + 1) * frameMs;
        });
      });
      await s.stop(stopTimeoutMs);
    } catch {
      /* the trace holds the error */
    } finally {
      s.close();
      open--;
    }
    const c = checkSession(s.trace, o.ref);
    const tr = s.trace;
    if (tr.stopAt !== undefined && tr.ackAt !== undefined) {
      const ms = tr.ackAt - tr.stopAt;
      ackMax = Math.max(ackMax, ms);
      if (ms > 5000) slowAcks++;
    }
    sessions++;
    expected += c.expected;
    lost += c.lost;
    duplicates += c.duplicates;
    if (c.errors.length || c.lost || c.duplicates) {
      if (c.errors.length) withErrors++;
      const what = `${s.trace.wavName} (${p.name}): ${c.errors.join("; ")}${c.lost ? ` lost ${c.lost}/${c.expected}` : ""}${c.duplicates ? ` dup ${c.duplicates}` : ""}`;
      if (errors.length < 20) {
        errors.push(what);
        o.log?.(`session problem: ${what}`);
      }
    }
  };

  await Promise.all(
    Array.from({ length: o.streams }, async (_, slot) => {
      await new Promise((r) => setTimeout(r, (slot * rampMs) / o.streams));
      for (let k = 0; performance.now() < end; k++) await runOne(slot, k);
    }),
  );
  clearInterval(sampler);
  // Give the servers a moment to release what the last sessions held, then the final sample.
  await new Promise((r) => setTimeout(r, 3000));
  takeSample();
  const seconds = (performance.now() - t0) / 1000;
  return {
    streams: o.streams,
    seconds,
    sessions,
    sessionsWithErrors: withErrors,
    errors,
    expectedFinals: expected,
    lost,
    duplicates,
    slowAcks,
    ackMaxMs: ackMax,
    pacerLatenessP99Ms: lateP99.length ? Math.max(...lateP99) : percentile(pacer.lateness, 99),
    procs: o.procs.map((p) => {
      const ss = samples.get(p.label)!;
      const warm = ss.filter((s) => s.tSec >= seconds / 5);
      const sl = slope(warm.map((s) => [s.tSec / 3600, s.rssMiB]));
      return {
        label: p.label,
        rssSlopeMiBPerHour: sl,
        rssStartMiB: ss[0]?.rssMiB ?? 0,
        rssEndMiB: ss.at(-1)?.rssMiB ?? 0,
        rssPeakMiB: Math.max(0, ...ss.map((s) => s.rssMiB)),
        fdsStart: ss[0]?.fds ?? 0,
        fdsEnd: ss.at(-1)?.fds ?? 0,
        socketsEnd: ss.at(-1)?.sockets ?? 0,
        samples: ss,
      };
    }),
  };
}
