/**
 * Exactly-once finals, checked against a direct reference run.
 *
 * The reference is one unpaced asr.v1 stream per file straight to a worker
 * (bench/lib/run.ts, the same segment matching the load benchmark uses): its
 * non-empty finals and the audio span of each. A session through the gateway
 * must cover every one of those spans with a final, and no two of its finals may
 * cover the same audio:
 *
 * - LOST: a reference segment that no final of the session overlaps in time;
 * - DUPLICATE: a final whose token span overlaps an earlier final's span (the same
 *   audio delivered twice, e.g. replayed after a failover and sent again).
 *
 * Spans, not texts, are compared because a failover legitimately re-segments: the
 * new worker's VAD starts at the replay point, its windows fall elsewhere, and the
 * fake engine's text (a hash of 200 ms frames from the segment start) changes with
 * the alignment. Identical texts are counted too, as information. Empty finals are
 * left out on both sides: the gateway adds one at end of input in some modes, and
 * they carry nothing a client could lose.
 */
import { runLoad, DEFAULTS } from "../../lib/run.js";
import { segmentsOf, type Reference } from "../../lib/metrics.js";
import type { Trace } from "../../lib/sessions.js";

/** A non-empty final of the reference run. */
export interface RefFinal {
  text: string;
  startMs: number;
  endMs: number;
}

/** Per file: the non-empty finals of a direct run, in order, and its segmentation. */
export interface TextReference {
  finals: Map<string, RefFinal[]>;
  segments: Reference;
}

/** One direct, unpaced stream per file to `worker` (host:port). */
export async function referenceRun(worker: string, files: string[], frameMs: number): Promise<TextReference> {
  const r = await runLoad({ ...DEFAULTS, target: `grpc://${worker}`, streams: files.length, files, frameMs, rampMs: 0, pace: 0, quiet: true, tag: "ref" });
  const finals = new Map<string, RefFinal[]>();
  const segments: Reference = new Map();
  for (const t of r.traces) {
    if (t.errors.length) throw new Error(`reference run of ${t.file} failed: ${t.errors.join("; ")}`);
    finals.set(
      t.file,
      t.events
        .filter((e) => e.kind === "final" && (e.text ?? "") !== "")
        .map((e) => ({ text: e.text!, startMs: e.startMs ?? 0, endMs: e.endMs ?? 0 })),
    );
    segments.set(t.file, segmentsOf(t));
  }
  return { finals, segments };
}

/** What one session got compared with the reference. */
export interface SessionCheck {
  idx: number;
  wavName: string;
  expected: number;
  lost: number;
  duplicates: number;
  /** Finals whose text is exactly the reference's (information: re-segmentation changes it). */
  identicalTexts: number;
  /** Non-empty finals without timestamps (cannot be placed; counted, never matched). */
  unplaced: number;
  errors: string[];
}

const overlaps = (a: [number, number], b: [number, number]): boolean => a[0] < b[1] && b[0] < a[1];

/** Compares one session's finals with the reference finals of its file. */
export function checkSession(t: Trace, ref: TextReference): SessionCheck {
  const want = ref.finals.get(t.file) ?? [];
  const got = t.events.filter((e) => e.kind === "final" && (e.text ?? "") !== "");
  const spans = got.filter((e) => e.span !== undefined).map((e) => e.span!);
  let lost = 0;
  for (const w of want) if (!spans.some((s) => overlaps(s, [w.startMs, w.endMs]))) lost++;
  let duplicates = 0;
  for (let i = 1; i < spans.length; i++) if (spans.slice(0, i).some((s) => overlaps(s, spans[i]!))) duplicates++;
  const wantTexts = new Set(want.map((w) => w.text));
  return {
    idx: t.idx,
    wavName: t.wavName,
    expected: want.length,
    lost,
    duplicates,
    identicalTexts: got.filter((e) => wantTexts.has(e.text!)).length,
    unplaced: got.length - spans.length,
    errors: t.errors,
  };
}

/** Totals over sessions. */
export interface CheckTotals {
  sessions: number;
  expectedFinals: number;
  lost: number;
  duplicates: number;
  /** Delivered finals, and how many of them have exactly the reference's text. */
  delivered: number;
  identicalTexts: number;
  unplaced: number;
  sessionsWithErrors: number;
  errors: string[];
}

/** Sums checkSession over every trace. */
export function checkAll(traces: Trace[], ref: TextReference): { totals: CheckTotals; sessions: SessionCheck[] } {
  const sessions = traces.map((t) => checkSession(t, ref));
  const totals: CheckTotals = {
    sessions: sessions.length,
    expectedFinals: sessions.reduce((a, s) => a + s.expected, 0),
    lost: sessions.reduce((a, s) => a + s.lost, 0),
    duplicates: sessions.reduce((a, s) => a + s.duplicates, 0),
    delivered: traces.reduce((a, t) => a + t.events.filter((e) => e.kind === "final" && (e.text ?? "") !== "").length, 0),
    identicalTexts: sessions.reduce((a, s) => a + s.identicalTexts, 0),
    unplaced: sessions.reduce((a, s) => a + s.unplaced, 0),
    sessionsWithErrors: sessions.filter((s) => s.errors.length > 0).length,
    errors: sessions.flatMap((s) => s.errors.map((e) => `${s.wavName}: ${e}`)).slice(0, 10),
  };
  return { totals, sessions };
}
