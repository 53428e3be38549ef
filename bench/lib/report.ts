/** Human-readable output of load results. */
import type { LoadResult } from "./run.js";
import { fmt, type Dist } from "./stats.js";

const d = (x: Dist): string => `p50 ${fmt(x.p50)} / p95 ${fmt(x.p95)} / p99 ${fmt(x.p99)} / max ${fmt(x.max)} ms (n=${x.n})`;

export function printSummary(r: LoadResult, out: (s: string) => void = (s) => process.stdout.write(s + "\n")): void {
  const s = r.summary;
  out(`== ${r.path} ${r.target}: ${s.sessions} sessions, ${s.audioSeconds.toFixed(0)} s audio in ${s.wallSeconds.toFixed(1)} s wall`);
  const l = r.liveStreams;
  out(`  live streams: mean ${l.mean.toFixed(1)} (time-weighted over ${l.windowSeconds.toFixed(1)} s of audio), peak ${l.peak}`);
  out(`  first partial after speech start  ${d(s.firstPartialMs)}`);
  if (r.path === "grpc") out(`  first partial event (any delta)   ${d(s.firstPartialEventMs)}`);
  out(`  partial cadence                   ${d(s.cadenceMs)}`);
  out(`  final after speech end (audio)    ${d(s.finalAfterSpeechEndMs)}`);
  out(`  final after VAD end event         ${d(s.finalAfterVadEndMs)}`);
  out(`  final after is_speaking=false     ${d(s.finalAfterStopMs)}`);
  out(`  end-of-input ack after stop       ${d(s.ackAfterStopMs)}`);
  out(`  first update after first audio    ${d(s.firstUpdateMs)}`);
  out(`  response lag (partials)           ${d(s.lagMs)}; max per-client p95 ${fmt(s.lagP95MaxPerClientMs)}`);
  out(`  load generator pacing lateness    ${d(s.pacerLatenessMs)}; loadgen ${r.loadgenCores.toFixed(2)} cores`);
  if (r.uplinkMs) out(`  uplink per frame (send -> worker)   ${d(r.uplinkMs)}`);
  if (r.uplinkTimeline)
    out(`  uplink p50/p99 per 2 s: ${r.uplinkTimeline.map((b) => `${b.t}s ${fmt(b.p50, 0)}/${fmt(b.p99, 0)}`).join(", ")}`);
  if (r.steady) {
    const w = r.steady.windowSec;
    out(`  steady window ${w[0].toFixed(1)}-${w[1].toFixed(1)} s (all sessions streaming):`);
    out(`    first partial after speech start ${d(r.steady.firstPartialMs)}`);
    out(`    final after speech end (audio)   ${d(r.steady.finalAfterSpeechEndMs)}`);
    if (r.steady.uplinkMs) out(`    uplink per frame                 ${d(r.steady.uplinkMs)}`);
  }
  out(`  partials ${s.partials}, finals ${s.finals}, segment mismatches ${s.segmentMismatches}, sessions with errors ${s.sessionsWithErrors}`);
  for (const p of r.procs) {
    out(
      `  ${p.label} pid ${p.pid}: ${p.cores.toFixed(3)} cores (steady ${p.steadyCores?.toFixed(3) ?? "-"}, ${(p.sysShare * 100).toFixed(0)}% kernel), RSS ${p.rssStartMiB.toFixed(0)} -> peak ${p.rssPeakMiB.toFixed(0)} MiB` +
        ` (${(((p.rssPeakMiB - p.rssStartMiB) * 1024) / Math.max(1, s.sessions)).toFixed(1)} KiB/session)`,
    );
  }
  for (const e of s.errors.slice(0, 5)) out(`  error ${e}`);
}
