/**
 * Subtitle renderings of timed transcript cues: SubRip (SRT) and WebVTT, as
 * OpenAI's `response_format=srt|vtt` return them (one cue per VAD segment).
 */

/** One subtitle cue. */
export interface Cue {
  /** Start in ms. */
  startMs: number;
  /** End in ms. */
  endMs: number;
  /** The cue's text (a line break inside is kept; blank lines would end the cue, so they are squeezed). */
  text: string;
}

/** `HH:MM:SS<sep>mmm` for a time in ms. */
export function clockTime(ms: number, sep: "," | "."): string {
  const t = Math.max(0, Math.round(ms));
  const h = Math.floor(t / 3_600_000);
  const m = Math.floor((t % 3_600_000) / 60_000);
  const s = Math.floor((t % 60_000) / 1000);
  const f = t % 1000;
  return `${pad(h, 2)}:${pad(m, 2)}:${pad(s, 2)}${sep}${pad(f, 3)}`;
}

function pad(n: number, w: number): string {
  return String(n).padStart(w, "0");
}

/** A blank line ends a cue in both formats: keep text on non-empty lines. */
function cueText(text: string): string {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== "")
    .join("\n");
}

/** SubRip: numbered cues from 1, `00:00:01,000 --> 00:00:02,500`, a blank line after each. */
export function toSrt(cues: readonly Cue[]): string {
  return cues.map((c, i) => `${i + 1}\n${clockTime(c.startMs, ",")} --> ${clockTime(c.endMs, ",")}\n${cueText(c.text)}\n\n`).join("");
}

/** WebVTT: the `WEBVTT` header, then `00:00:01.000 --> 00:00:02.500` cues. */
export function toVtt(cues: readonly Cue[]): string {
  return `WEBVTT\n\n${cues.map((c) => `${clockTime(c.startMs, ".")} --> ${clockTime(c.endMs, ".")}\n${cueText(c.text)}\n\n`).join("")}`;
}
