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
 *
 * Why small frames are copied into slabs: a received frame is a view of the
 * socket read's own ArrayBuffer. Holding it for the seconds until the next
 * final makes every frame (and a chunk object per frame) outlive two
 * scavenges, so V8 promotes them all to the old generation, and the
 * gateway's GC turns into frequent mark-compacts with pauses that every
 * session waits behind. Frames of up to COPY_MAX_BYTES (a streaming client's
 * 60-600 ms) are therefore copied (a memcpy of about 2 KB) into the session's
 * slabs: consecutive frames extend one chunk, the received frame dies young,
 * and a slab freed by a final is kept for the session's next audio. Slabs
 * are never handed back to the GC while the session lives: in a paced
 * 200-stream run, keeping at most 4 spare slabs per session and dropping the
 * rest caused twice the mark-compacts of holding frames, while keeping them
 * all cut promotion fivefold and mark-compacts by a third
 * (docs/benchmarks.md). A session's slab memory is therefore the most audio
 * it ever retained (at most REPLAY_BUFFER_SECONDS, typically a few seconds),
 * rounded up to 32 KiB. Larger frames (whole files, a C++ client's 200 KB
 * frames) are held as received.
 */

/** Bytes of one slab: about 1 s of 16 kHz PCM. */
const SLAB_BYTES = 32 * 1024;
/** Frames up to this size are copied into slabs; larger ones are held as received. */
const COPY_MAX_BYTES = 8 * 1024;

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

/** A retained chunk as stored: a byte range of a slab or of a frame held as received. */
interface StoredChunk {
  startMs: number;
  endMs: number;
  sampleRateHz: number;
  buf: Buffer;
  from: number;
  to: number;
}

/** Audio since the last delivered final, with session-timeline offsets. */
export class ReplayBuffer {
  private chunks: StoredChunk[] = [];
  private bytes = 0;
  private timelineMs = 0;
  private truncated = false;
  private finalized = 0;
  private readonly maxMs: number;
  /** Slabs holding copied frames, oldest first; the last one is being filled. */
  private readonly slabs: Buffer[] = [];
  /** Bytes used in the last slab. */
  private slabUsed = 0;
  /** Freed slabs, reused before any new one is allocated (see module comment). */
  private readonly spares: Buffer[] = [];
  /** The next push starts a new chunk (see mark()). */
  private boundary = true;

  /** Creates a buffer holding at most `maxSeconds` of audio. */
  constructor(maxSeconds: number) {
    this.maxMs = maxSeconds * 1000;
  }

  /**
   * Appends audio that was sent to the worker; returns its session-timeline
   * start. `pcm` is copied when small (see module comment), else held.
   */
  push(pcm: Buffer, sampleRateHz: number): number {
    const startMs = this.timelineMs;
    const endMs = startMs + (pcm.length / 2 / sampleRateHz) * 1000;
    this.timelineMs = endMs;
    this.bytes += pcm.length;
    if (pcm.length > COPY_MAX_BYTES || pcm.length === 0) {
      this.chunks.push({ startMs, endMs, sampleRateHz, buf: pcm, from: 0, to: pcm.length });
      this.boundary = true;
    } else {
      this.pushCopy(pcm, startMs, endMs, sampleRateHz);
    }
    if (endMs - this.chunks[0]!.startMs > this.maxMs) {
      while (this.chunks.length > 0 && endMs - this.chunks[0]!.startMs > this.maxMs) {
        const c = this.chunks.shift()!;
        this.bytes -= c.to - c.from;
        this.truncated = true;
      }
      this.releaseSlabs();
    }
    return startMs;
  }

  /**
   * Starts a new chunk at the current position: a replayer that selects
   * chunks by start time (rounds) can then cut exactly here.
   */
  mark(): void {
    this.boundary = true;
  }

  private pushCopy(pcm: Buffer, startMs: number, endMs: number, sampleRateHz: number): void {
    let slab = this.slabs[this.slabs.length - 1];
    if (slab === undefined || this.slabUsed + pcm.length > SLAB_BYTES) {
      slab = this.spares.pop() ?? Buffer.allocUnsafeSlow(SLAB_BYTES);
      this.slabs.push(slab);
      this.slabUsed = 0;
      this.boundary = true;
    }
    const at = this.slabUsed;
    pcm.copy(slab, at);
    this.slabUsed = at + pcm.length;
    const last = this.chunks[this.chunks.length - 1];
    // The frame continues the newest chunk (same slab, same rate): extend its range. No object
    // is allocated per frame, so nothing per frame can be promoted or pretenured.
    if (!this.boundary && last !== undefined && last.buf === slab && last.to === at && last.sampleRateHz === sampleRateHz) {
      last.to = this.slabUsed;
      last.endMs = endMs;
      return;
    }
    this.boundary = false;
    this.chunks.push({ startMs, endMs, sampleRateHz, buf: slab, from: at, to: this.slabUsed });
  }

  /** Frees the slabs no retained chunk uses any more (never the one being filled). */
  private releaseSlabs(): void {
    if (this.slabs.length < 2) return;
    // Chunks are dropped oldest first, so the oldest slab a chunk still uses bounds the free ones.
    let inUse: Buffer | null = null;
    for (const c of this.chunks) {
      if (this.slabs.includes(c.buf)) {
        inUse = c.buf;
        break;
      }
    }
    while (this.slabs.length > 1 && this.slabs[0] !== inUse) this.spares.push(this.slabs.shift()!);
  }

  /** Records a delivered final: audio before `endMs` is no longer needed. */
  finalDelivered(segmentId: number, endMs: number): void {
    this.finalized = Math.max(this.finalized, segmentId + 1);
    while (this.chunks.length > 0 && this.chunks[0]!.endMs <= endMs) {
      const c = this.chunks.shift()!;
      this.bytes -= c.to - c.from;
    }
    // A chunk that straddles the final's end keeps only its tail.
    const c = this.chunks[0];
    if (c !== undefined && c.startMs < endMs) {
      const samples = Math.floor(((endMs - c.startMs) / 1000) * c.sampleRateHz);
      if (samples > 0) {
        this.bytes -= samples * 2;
        c.from += samples * 2;
        c.startMs += (samples / c.sampleRateHz) * 1000;
      }
    }
    this.releaseSlabs();
    // A final covers everything before its end, so earlier truncation no longer matters.
    if (this.chunks.length === 0 || this.chunks[0]!.startMs >= endMs) this.truncated = false;
  }

  /**
   * Everything a replay needs: the chunks, where they start and how many
   * segments were delivered. The chunks' PCM are views valid until the next
   * push or final (slabs are reused): replay them at once.
   */
  snapshot(): { chunks: readonly ReplayChunk[]; audioOffsetMs: number; finalizedSegments: number; complete: boolean } {
    return {
      chunks: this.chunks.map((c) => ({ startMs: c.startMs, endMs: c.endMs, sampleRateHz: c.sampleRateHz, pcm: c.buf.subarray(c.from, c.to) })),
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
