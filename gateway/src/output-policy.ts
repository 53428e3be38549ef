/**
 * Output policies: how one speaking round's worker results become FunASR
 * messages. A round picks its policy ONCE, from its settings, when it opens:
 *
 *   offline        one `offline` message joining the round's finals, at end of input
 *   seed 2pass     `2pass-online` deltas; every `2pass-offline` final is_final true
 *   cpp 2pass      the same, but finals is_final false and exactly one is_final
 *                  true after end of input (FunASR's C++ runtime)
 *   strict online  `online` deltas; a final adds only what the deltas did not
 *                  cover; exactly one is_final true after end of input
 *
 * Why: these rules used to be branches spread over every result handler; a
 * policy keeps each behaviour in one place, so a new client family is a new
 * class, not a new branch everywhere (PROTOCOL.md, "is_final in 2pass and
 * online").
 *
 * "Exactly one is_final true after end of input" needs the last final of the
 * round, which is only known when the worker acknowledges END_OF_INPUT: finals
 * that arrive after the round's END_OF_INPUT was sent are held one-deep, and
 * the acknowledgement releases the held one with is_final true (or an empty
 * final when nothing was held).
 */
import {
  joinedOfflineMessage,
  resultMessage,
  type OutputMode,
  type ServerMessage,
  type TimedToken,
} from "./protocol.js";
import type { Settings } from "./settings.js";

/** Where a policy's messages go (the client socket, as the session exposes it). */
export interface OutputSink {
  /** Sends one message to the client. */
  send(m: ServerMessage): void;
  /** Whether the client is reading slowly (partials are then merged instead of queued). */
  congested(): boolean;
}

/** A partial result as the worker link delivers it (deltas already de-duplicated after a failover). */
export interface PartialUpdate {
  /** The full newest hypothesis of the open segment. */
  text: string;
  /** Newly stable text since the previous partial of the segment. */
  delta: string;
}

/** A segment's final result. */
export interface FinalUpdate {
  /** The segment's corrected text. */
  text: string;
  /** Tokens with session-timeline times. */
  tokens: TimedToken[];
}

/** How one round's results are delivered (see module comment). */
export interface OutputPolicy {
  /** The `mode` of this round's finals, errors and acknowledgement. */
  readonly finalMode: OutputMode;
  /** A partial of the open segment. */
  partial(p: PartialUpdate): void;
  /** A segment's final. */
  final(f: FinalUpdate): void;
  /** The round's END_OF_INPUT was sent: finals from now on may be the round's last. */
  inputEnded(): void;
  /** The worker acknowledged the round's END_OF_INPUT: deliver what is held. */
  endOfInput(): void;
}

/** The `mode` of finals, errors and acknowledgements under these settings. */
export function finalModeOf(s: Settings): OutputMode {
  return s.kind === "offline" ? "offline" : s.kind === "online" ? "online" : "2pass-offline";
}

/** Chooses the policy of a round from its settings. */
export function outputPolicyFor(s: Settings, sink: OutputSink): OutputPolicy {
  switch (s.kind) {
    case "offline":
      return new OfflinePolicy(s.wavName, sink);
    case "online":
      return new HeldFinalPolicy(s, sink, "online");
    case "2pass":
      return s.isFinalMode === "seed" ? new SeedTwoPassPolicy(s, sink) : new HeldFinalPolicy(s, sink, "2pass-offline");
  }
}

/**
 * Partials of one round: deltas (or full hypotheses), merged while the client
 * is slow so that it gets the newest text rather than a backlog (DESIGN.md §3).
 */
class PartialWriter {
  /** Deltas or hypothesis not sent yet (client congested). */
  private pending: string | null = null;
  /** Concatenated delta text the client has of the open segment. */
  private sent = "";

  constructor(
    private readonly mode: OutputMode,
    private readonly wavName: string,
    private readonly full: boolean,
    private readonly sink: OutputSink,
  ) {}

  /** Queues and, unless the client is congested, sends a partial. */
  write(p: PartialUpdate): void {
    if (this.full) {
      this.pending = p.text;
    } else {
      if (p.delta === "" && this.pending === null) return;
      this.pending = (this.pending ?? "") + p.delta;
    }
    if (this.sink.congested()) return;
    const text = this.pending;
    this.pending = null;
    if (text === "" && !this.full) return;
    if (!this.full) this.sent += text;
    this.sink.send(resultMessage({ mode: this.mode, wavName: this.wavName, text, isFinal: false }));
  }

  /**
   * The segment ended: drops merged partials (the final supersedes them) and
   * returns the delta text the client has, for policies that send only the rest.
   */
  segmentEnded(): string {
    const had = this.sent;
    this.pending = null;
    this.sent = "";
    return had;
  }
}

/** Offline: no partials; one message joining every final of the round. */
class OfflinePolicy implements OutputPolicy {
  readonly finalMode = "offline" as const;
  private readonly finals: FinalUpdate[] = [];

  constructor(
    private readonly wavName: string,
    private readonly sink: OutputSink,
  ) {}

  partial(): void {
    // Offline clients get the whole input's text at once (PROTOCOL.md: exactly ONE offline message).
  }

  final(f: FinalUpdate): void {
    this.finals.push(f);
  }

  inputEnded(): void {}

  endOfInput(): void {
    this.sink.send(joinedOfflineMessage({ wavName: this.wavName, segments: this.finals }));
  }
}

/** Seed 2pass (the default): every final is_final true, sent at once. */
class SeedTwoPassPolicy implements OutputPolicy {
  readonly finalMode = "2pass-offline" as const;
  private readonly partials: PartialWriter;

  constructor(
    private readonly s: Settings,
    private readonly sink: OutputSink,
  ) {
    this.partials = new PartialWriter("2pass-online", s.wavName, s.fullHypothesis, sink);
  }

  partial(p: PartialUpdate): void {
    this.partials.write(p);
  }

  final(f: FinalUpdate): void {
    this.partials.segmentEnded();
    this.sink.send(resultMessage({ mode: "2pass-offline", wavName: this.s.wavName, text: f.text, isFinal: true, tokens: f.tokens }));
  }

  inputEnded(): void {}

  endOfInput(): void {}
}

/**
 * cpp 2pass and strict online: segment finals is_final false; the round's last
 * final (or an empty one) carries the single is_final true. Strict online
 * finals are `online` messages holding only what the partials did not cover
 * (clients concatenate), and empty ones are not sent.
 */
class HeldFinalPolicy implements OutputPolicy {
  readonly finalMode: OutputMode;
  private readonly partials: PartialWriter;
  private readonly strictOnline: boolean;
  private ended = false;
  private held: ServerMessage | null = null;

  constructor(
    private readonly s: Settings,
    private readonly sink: OutputSink,
    finalMode: "online" | "2pass-offline",
  ) {
    this.finalMode = finalMode;
    this.strictOnline = finalMode === "online";
    this.partials = new PartialWriter(this.strictOnline ? "online" : "2pass-online", s.wavName, s.fullHypothesis, sink);
  }

  partial(p: PartialUpdate): void {
    this.partials.write(p);
  }

  final(f: FinalUpdate): void {
    const had = this.partials.segmentEnded();
    const msg = this.strictOnline
      ? resultMessage({ mode: "online", wavName: this.s.wavName, text: f.text.startsWith(had) ? f.text.slice(had.length) : "", isFinal: false })
      : resultMessage({ mode: "2pass-offline", wavName: this.s.wavName, text: f.text, isFinal: false, tokens: f.tokens });
    if (!this.ended) {
      this.sendSegmentFinal(msg);
      return;
    }
    if (this.held !== null) this.sendSegmentFinal(this.held);
    this.held = msg;
  }

  inputEnded(): void {
    this.ended = true;
  }

  endOfInput(): void {
    const last = this.held ?? resultMessage({ mode: this.finalMode, wavName: this.s.wavName, text: "", isFinal: true });
    this.held = null;
    last.is_final = true;
    this.sink.send(last);
  }

  private sendSegmentFinal(m: ServerMessage): void {
    // An empty strict-online remainder adds nothing a concatenating client could use.
    if (!this.strictOnline || m.text !== "") this.sink.send(m);
  }
}
