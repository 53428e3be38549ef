/**
 * The audio a session has sent since its last delivered final.
 *
 * Why: when a worker stream fails, a gateway can re-open the session on
 * another worker with StreamingConfig.resume { audio_offset_ms,
 * finalized_segments } and replay exactly this audio, so that the client sees
 * no duplicate and no missing final. Bounded by REPLAY_BUFFER_SECONDS (a
 * segment is capped at 30 s by the worker, so the default 60 s holds the
 * whole open segment plus slack); when the bound is hit the oldest audio is
 * dropped and `complete` turns false, which tells a replayer that it would
 * lose audio.
 */

/** One retained chunk on the session timeline. */
export interface ReplayChunk {
  /** Session-timeline start of the chunk in ms. */
  startMs: number;
  /** Session-timeline end of the chunk in ms. */
  endMs: number;
  /** Sample rate of the chunk. */
  sampleRateHz: number;
  /** PCM16LE mono. */
  pcm: Buffer;
}

/** Audio since the last delivered final, with session-timeline offsets. */
export class ReplayBuffer {
  private chunks: ReplayChunk[] = [];
  private bytes = 0;
  private timelineMs = 0;
  private truncated = false;
  private finalized = 0;
  private readonly maxMs: number;

  /** Creates a buffer holding at most `maxSeconds` of audio. */
  constructor(maxSeconds: number) {
    this.maxMs = maxSeconds * 1000;
  }

  /** Appends audio that was sent to the worker; returns its session-timeline start. */
  push(pcm: Buffer, sampleRateHz: number): number {
    const startMs = this.timelineMs;
    const endMs = startMs + (pcm.length / 2 / sampleRateHz) * 1000;
    this.timelineMs = endMs;
    this.chunks.push({ startMs, endMs, sampleRateHz, pcm });
    this.bytes += pcm.length;
    while (this.chunks.length > 0 && endMs - this.chunks[0]!.startMs > this.maxMs) {
      this.bytes -= this.chunks.shift()!.pcm.length;
      this.truncated = true;
    }
    return startMs;
  }

  /** Records a delivered final: audio before `endMs` is no longer needed. */
  finalDelivered(segmentId: number, endMs: number): void {
    this.finalized = Math.max(this.finalized, segmentId + 1);
    while (this.chunks.length > 0 && this.chunks[0]!.endMs <= endMs) {
      this.bytes -= this.chunks.shift()!.pcm.length;
    }
    // A chunk that straddles the final's end (large frames, whole files) keeps only its tail.
    const c = this.chunks[0];
    if (c !== undefined && c.startMs < endMs) {
      const samples = Math.floor(((endMs - c.startMs) / 1000) * c.sampleRateHz);
      if (samples > 0) {
        this.bytes -= samples * 2;
        c.pcm = c.pcm.subarray(samples * 2);
        c.startMs += (samples / c.sampleRateHz) * 1000;
      }
    }
    // A final covers everything before its end, so earlier truncation no longer matters.
    if (this.chunks.length === 0 || this.chunks[0]!.startMs >= endMs) this.truncated = false;
  }

  /** Everything a replay needs: the chunks, where they start and how many segments were delivered. */
  snapshot(): { chunks: readonly ReplayChunk[]; audioOffsetMs: number; finalizedSegments: number; complete: boolean } {
    return {
      chunks: this.chunks,
      audioOffsetMs: this.chunks[0]?.startMs ?? this.timelineMs,
      finalizedSegments: this.finalized,
      complete: !this.truncated,
    };
  }

  /** Session-timeline length of all audio sent so far, in ms. */
  get audioMs(): number {
    return this.timelineMs;
  }

  /** Bytes currently retained. */
  get retainedBytes(): number {
    return this.bytes;
  }
}
