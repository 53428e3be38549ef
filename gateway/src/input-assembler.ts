/**
 * The input assembler: turns a client's binary frames into what the worker
 * takes — PCM16LE chunks for streams, one whole file for offline file mode.
 *
 * Why here and not in the session: the rules are about bytes, not states.
 * The html5 page's file mode sends a whole WAV (header included) labelled
 * "PCM", so the first frame of a round is sniffed for a RIFF header; offline
 * clients with a container wav_format send a file in frames of any size,
 * buffered (bounded by MAX_FILE_BYTES) until end of input. Each frame is
 * validated once here (size, sample alignment, WAV format).
 */
import { looksLikeWav, parseWavHeader } from "./audio.js";
import { GatewayError } from "./errors.js";

/** Caps the assembler enforces. */
export interface InputLimits {
  /** Largest binary frame. */
  maxFrameBytes: number;
  /** Largest whole file in offline file mode. */
  maxFileBytes: number;
}

/** PCM ready to stream, and the rate a WAV header declared (null: keep the session's audio_fs). */
export interface PcmInput {
  /** PCM16LE mono; may be a view of the received frame (never modified). */
  pcm: Buffer;
  /** 8000/16000 from a sniffed WAV header, else null. */
  headerRateHz: number | null;
}

/** Frames -> PCM or a buffered file, one session at a time (see module comment). */
export class InputAssembler {
  private fileParts: Buffer[] = [];
  private fileBytes = 0;

  /** Creates an assembler enforcing `limits`. */
  constructor(private readonly limits: InputLimits) {}

  /** Throws FRAME_TOO_LARGE for a frame above MAX_FRAME_BYTES (the session then closes with 1009). */
  checkFrame(data: Buffer): void {
    if (data.length > this.limits.maxFrameBytes) {
      throw new GatewayError("FRAME_TOO_LARGE", `binary frame of ${data.length} bytes exceeds MAX_FRAME_BYTES (${this.limits.maxFrameBytes})`);
    }
  }

  /**
   * A frame of a PCM stream. `roundStart`: no audio of the current round came
   * yet, so the frame may begin with the html5 page's WAV header. Returns
   * null when nothing audible is in the frame (a header split over frames).
   * Throws ODD_FRAME_BYTES (frame dropped, session goes on) or
   * UNSUPPORTED_FORMAT.
   */
  pcmFrame(data: Buffer, roundStart: boolean): PcmInput | null {
    let pcm = data;
    let headerRateHz: number | null = null;
    if (roundStart && looksLikeWav(pcm)) {
      const info = parseWavHeader(pcm);
      if (info === null) return null;
      if (info.format !== 1 || info.bitsPerSample !== 16 || info.channels !== 1) {
        throw new GatewayError("UNSUPPORTED_FORMAT", 'WAV sent as PCM must be 16-bit mono; use wav_format "wav" in offline mode');
      }
      if (info.sampleRateHz === 8000 || info.sampleRateHz === 16000) headerRateHz = info.sampleRateHz;
      pcm = pcm.subarray(info.dataOffset);
    }
    if (pcm.length % 2 !== 0) {
      throw new GatewayError("ODD_FRAME_BYTES", `PCM frame of ${pcm.length} bytes is not a whole number of 16-bit samples; frame dropped`);
    }
    return { pcm, headerRateHz };
  }

  /** A frame of a whole file (offline file mode). Throws FILE_TOO_LARGE above MAX_FILE_BYTES. */
  fileFrame(data: Buffer): void {
    this.fileBytes += data.length;
    if (this.fileBytes > this.limits.maxFileBytes) {
      throw new GatewayError("FILE_TOO_LARGE", `offline file exceeds MAX_FILE_BYTES (${this.limits.maxFileBytes})`);
    }
    this.fileParts.push(data);
  }

  /** The buffered file (possibly empty); the assembler is ready for the next one. */
  takeFile(): Buffer {
    const file = this.fileParts.length === 1 ? this.fileParts[0]! : Buffer.concat(this.fileParts);
    this.fileParts = [];
    this.fileBytes = 0;
    return file;
  }
}
