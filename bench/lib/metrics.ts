/**
 * Latency metrics from session traces, defined once for both paths.
 *
 * Times are client-side (performance.now) and measured against the moment the
 * client SENT the relevant audio, so that gateway and direct runs of the same
 * schedule are comparable and their difference is the gateway's added latency.
 *
 * - first_partial: first partial of a segment - send time of the frame holding the segment's start
 * - cadence: interval between consecutive partials of one segment
 * - final_after_speech_end: a VAD final - send time of the frame holding the segment's end
 *   (includes the VAD's end-of-speech silence hangover, a worker setting)
 * - final_after_vad_end: a VAD final - receipt of the worker's SPEECH_EVENT_TYPE_END (direct only:
 *   FunASR messages carry no speech events)
 * - final_after_stop: last final after end of input - send time of {"is_speaking": false}
 *   (FunASR's "final after STOP"); ack_after_stop: the is_end / EndOfInputAck acknowledgement
 * - first_update: first result message - first audio frame (FunASR's first_update_ms)
 * - lag: partial receipt - send time of the audio it covers (FunASR's response lag; direct only,
 *   FunASR partials carry no audio position)
 */
import type { Trace } from "./sessions.js";
import { dist, type Dist } from "./stats.js";

/** A file's segmentation, from a direct (worker) run of the same audio. */
export interface RefSegment {
  startMs: number;
  endMs: number;
  /** Closed by end of input rather than by the VAD. */
  atStop: boolean;
}
export type Reference = Map<string, RefSegment[]>; // file -> every final of a direct run, in order

export interface TraceMetrics {
  firstPartial: Map<string, number>; // key `${idx}:${seg}`
  /** Direct only: first partial EVENT of a segment (even with an empty delta). */
  firstPartialEvent: number[];
  finalAfterSpeechEnd: Map<string, number>;
  /** Send time (performance.now) of the reference frame of each keyed value above. */
  refAt: Map<string, number>;
  cadence: number[];
  finalAfterVadEnd: number[];
  lag: number[];
  finalAfterStop: number | null;
  ackAfterStop: number | null;
  firstUpdate: number | null;
  partials: number;
  finalsBeforeStop: number;
  finalsAfterStop: number;
  segmentMismatch: boolean;
}

function sentAtEnd(tr: Trace, posMs: number): number {
  const n = tr.sentAt.length;
  const j = Math.min(n - 1, Math.max(0, Math.ceil(posMs / tr.frameMs) - 1));
  return tr.sentAt[j]!;
}

function sentAtStart(tr: Trace, posMs: number): number {
  const n = tr.sentAt.length;
  const j = Math.min(n - 1, Math.max(0, Math.floor(posMs / tr.frameMs)));
  return tr.sentAt[j]!;
}

/** The segmentation a direct trace observed (every final, in order). */
export function segmentsOf(tr: Trace): RefSegment[] {
  // Closed by end of input = reason END_OF_INPUT (2); by arrival time only when no reason.
  return tr.events
    .filter((e) => e.kind === "final")
    .map((e) => ({
      startMs: e.startMs ?? 0,
      endMs: e.endMs ?? 0,
      atStop: e.reason !== undefined && e.reason !== 0 ? e.reason === 2 : e.afterStop === true,
    }));
}

/**
 * visibleOnly: count only partials a FunASR client would see (non-empty delta): the gateway
 * drops empty deltas unless the session asked for full hypotheses.
 */
export function traceMetrics(tr: Trace, ref: Reference | undefined, visibleOnly = true): TraceMetrics {
  const m: TraceMetrics = {
    firstPartial: new Map(),
    firstPartialEvent: [],
    finalAfterSpeechEnd: new Map(),
    refAt: new Map(),
    cadence: [],
    finalAfterVadEnd: [],
    lag: [],
    finalAfterStop: null,
    ackAfterStop: null,
    firstUpdate: null,
    partials: 0,
    finalsBeforeStop: 0,
    finalsAfterStop: 0,
    segmentMismatch: false,
  };
  const segs = tr.path === "grpc" ? segmentsOf(tr) : ref?.get(tr.file);
  let finalsSeen = 0;
  const lastPartialAt = new Map<number, number>();
  const firstEventSeen = new Set<number>();
  const endEventAt = new Map<number, number>();
  let lastFinalAfterStop: number | null = null;
  for (const e of tr.events) {
    if (m.firstUpdate === null && (e.kind === "partial" || e.kind === "final")) m.firstUpdate = e.t - tr.t0;
    if (e.kind === "end" && e.seg !== undefined) endEventAt.set(e.seg, e.t);
    if (e.kind === "partial") {
      const k = tr.path === "grpc" ? (e.seg ?? finalsSeen) : finalsSeen;
      if (tr.path === "grpc" && !firstEventSeen.has(k)) {
        firstEventSeen.add(k);
        const seg = segs?.[k];
        if (seg && !e.afterStop) m.firstPartialEvent.push(e.t - sentAtStart(tr, seg.startMs));
      }
      if (e.audioEndMs !== undefined && e.audioEndMs > 0) m.lag.push(e.t - sentAtEnd(tr, e.audioEndMs));
      if (tr.path === "grpc" && visibleOnly && !e.textLen) continue;
      m.partials++;
      const prev = lastPartialAt.get(k);
      if (prev === undefined) {
        const seg = segs?.[k];
        if (seg && !e.afterStop) {
          const at = sentAtStart(tr, seg.startMs);
          m.firstPartial.set(`${tr.idx}:${k}`, e.t - at);
          m.refAt.set(`p${tr.idx}:${k}`, at);
        }
      } else {
        m.cadence.push(e.t - prev);
      }
      lastPartialAt.set(k, e.t);
    } else if (e.kind === "final") {
      if (e.afterStop) {
        m.finalsAfterStop++;
        lastFinalAfterStop = e.t;
      } else {
        m.finalsBeforeStop++;
      }
      // The i-th final is the i-th segment of the reference (same audio, deterministic VAD).
      const k = tr.path === "grpc" ? (e.seg ?? finalsSeen) : finalsSeen;
      const seg = segs?.[finalsSeen];
      if (seg && !seg.atStop) {
        const at = sentAtEnd(tr, seg.endMs);
        m.finalAfterSpeechEnd.set(`${tr.idx}:${k}`, e.t - at);
        m.refAt.set(`f${tr.idx}:${k}`, at);
        const endAt = e.seg !== undefined ? endEventAt.get(e.seg) : undefined;
        if (endAt !== undefined) m.finalAfterVadEnd.push(e.t - endAt);
      }
      finalsSeen++;
    }
  }
  if (tr.stopAt !== undefined) {
    if (lastFinalAfterStop !== null) m.finalAfterStop = lastFinalAfterStop - tr.stopAt;
    else if (tr.ackAt !== undefined) m.finalAfterStop = tr.ackAt - tr.stopAt;
    if (tr.ackAt !== undefined) m.ackAfterStop = tr.ackAt - tr.stopAt;
  }
  // The gateway may add an empty final at end of input; fewer finals than the reference is a mismatch.
  if (segs && tr.path === "ws" && m.finalsBeforeStop + m.finalsAfterStop < segs.length) m.segmentMismatch = true;
  return m;
}

export interface Summary {
  sessions: number;
  sessionsWithErrors: number;
  errors: string[];
  segmentMismatches: number;
  partials: number;
  finals: number;
  firstPartialMs: Dist;
  firstPartialEventMs: Dist;
  cadenceMs: Dist;
  finalAfterSpeechEndMs: Dist;
  finalAfterVadEndMs: Dist;
  finalAfterStopMs: Dist;
  ackAfterStopMs: Dist;
  firstUpdateMs: Dist;
  lagMs: Dist;
  lagP95MaxPerClientMs: number | null;
  pacerLatenessMs: Dist;
  connectMs: Dist;
  audioSeconds: number;
  wallSeconds: number;
}

export function summarize(traces: Trace[], all: TraceMetrics[], lateness: number[], wallSeconds: number): Summary {
  const cat = (f: (m: TraceMetrics) => Iterable<number>): number[] => all.flatMap((m) => [...f(m)]);
  const one = (f: (m: TraceMetrics) => number | null): number[] =>
    all.map(f).filter((v): v is number => v !== null);
  const errors = traces.flatMap((t) => t.errors.map((e) => `#${t.idx}: ${e}`));
  const lagP95 = all
    .map((m) => dist(m.lag).p95)
    .filter((v): v is number => v !== null);
  return {
    sessions: traces.length,
    sessionsWithErrors: traces.filter((t) => t.errors.length > 0).length,
    errors: errors.slice(0, 20),
    segmentMismatches: all.filter((m) => m.segmentMismatch).length,
    partials: all.reduce((a, m) => a + m.partials, 0),
    finals: all.reduce((a, m) => a + m.finalsBeforeStop + m.finalsAfterStop, 0),
    firstPartialMs: dist(cat((m) => m.firstPartial.values())),
    firstPartialEventMs: dist(cat((m) => m.firstPartialEvent)),
    cadenceMs: dist(cat((m) => m.cadence)),
    finalAfterSpeechEndMs: dist(cat((m) => m.finalAfterSpeechEnd.values())),
    finalAfterVadEndMs: dist(cat((m) => m.finalAfterVadEnd)),
    finalAfterStopMs: dist(one((m) => m.finalAfterStop)),
    ackAfterStopMs: dist(one((m) => m.ackAfterStop)),
    firstUpdateMs: dist(one((m) => m.firstUpdate)),
    lagMs: dist(cat((m) => m.lag)),
    lagP95MaxPerClientMs: lagP95.length ? Math.max(...lagP95) : null,
    pacerLatenessMs: dist(lateness),
    connectMs: dist(traces.map((t) => t.connectMs ?? Number.NaN).filter((v) => !Number.isNaN(v))),
    audioSeconds: traces.reduce((a, t) => a + t.audioMs / 1000, 0),
    wallSeconds,
  };
}

/** Keyed per-segment latencies whose reference frame was sent inside [tA, tB] (all when no window). */
export function keyedIn(
  all: TraceMetrics[],
  window: [number, number] | null,
): { firstPartial: Record<string, number>; finalAfterSpeechEnd: Record<string, number> } {
  const inside = (m: TraceMetrics, key: string): boolean => {
    if (!window) return true;
    const at = m.refAt.get(key);
    return at !== undefined && at >= window[0] && at <= window[1];
  };
  return {
    firstPartial: Object.fromEntries(all.flatMap((m) => [...m.firstPartial].filter(([k]) => inside(m, `p${k}`)))),
    finalAfterSpeechEnd: Object.fromEntries(all.flatMap((m) => [...m.finalAfterSpeechEnd].filter(([k]) => inside(m, `f${k}`)))),
  };
}
