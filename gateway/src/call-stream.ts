/**
 * Finding the HTTP/2 stream under a grpc-js call, for the call writer and the
 * call reader (call-writer.ts, call-reader.ts), which bypass grpc-js's
 * per-message machinery on it.
 *
 * Why one module: both look for the same stream through the same grpc-js 1.14
 * internals, and one call's pair shares one look (StreamLocator) — the reader
 * relies on that: it must own the stream's 'data' before the worker can
 * answer, and the writer writes nothing before the stream is found.
 */
import type { Http2Stream } from "node:http2";
import type { RecognizeCall } from "./workers.js";

/** Locates a call's stream: the stream, `undefined` while the call is being placed, null when it never will be. */
export type StreamFinder = (call: RecognizeCall) => Http2Stream | null | undefined;

/** Longest wait between looks for the stream while the call is being placed. */
const MAX_POLL_MS = 50;

/**
 * Looks for one call's stream now and again until `find` answers (a stream,
 * or null: grpc-js is not laid out as expected), then tells every subscriber
 * in one synchronous turn.
 *
 * The call's writer and reader share one locator (worker-link.ts): with a
 * locator each, their backing-off timers drift apart by a loop turn, the
 * writer can find the stream and send the config first, and the worker's
 * answer can reach grpc-js before the reader looks, which then has to leave
 * the whole call on grpc-js's reads (or finds no stream at all before the
 * call ends). One look that serves both makes that impossible: nothing is
 * read from a socket inside one turn.
 */
export class StreamLocator {
  /** The next look while the call is being placed (null: not looking). */
  private timer: NodeJS.Timeout | null = null;
  private pollMs = 0;
  /** What `find` answered; undefined until it has. */
  private found: Http2Stream | null | undefined = undefined;
  private readonly waiting = new Set<(stream: Http2Stream | null) => void>();

  /** Looks with `find` (default http2StreamOf) once someone subscribes. */
  constructor(
    private readonly call: RecognizeCall,
    private readonly find: StreamFinder = http2StreamOf,
  ) {}

  /**
   * Calls `onFound` once with the stream (null: grpc-js is not laid out as
   * expected, it never will be for this call) — synchronously when it is
   * already known. Returns the unsubscribe; when no one is left waiting the
   * locator stops looking.
   */
  subscribe(onFound: (stream: Http2Stream | null) => void): () => void {
    if (this.found !== undefined) {
      onFound(this.found);
      return () => {};
    }
    this.waiting.add(onFound);
    if (this.timer === null) this.look();
    return () => {
      if (!this.waiting.delete(onFound) || this.waiting.size > 0 || this.timer === null) return;
      clearTimeout(this.timer);
      this.timer = null;
    };
  }

  private look(): void {
    this.timer = null;
    const found = this.find(this.call);
    if (found === undefined) {
      // Placement waits for a connection: look again soon, backing off so a worker that
      // takes seconds to connect costs a few wake-ups, not a busy loop.
      this.pollMs = Math.min(MAX_POLL_MS, Math.max(1, this.pollMs * 2));
      this.timer = setTimeout(() => this.look(), this.pollMs);
      return;
    }
    this.found = found;
    const waiting = [...this.waiting];
    this.waiting.clear();
    for (const onFound of waiting) onFound(found);
  }
}

/** Where a writer or reader learns of its call's stream: a locator it shares, or a finder it looks with alone. */
export type StreamSource = StreamLocator | StreamFinder;

/** Subscribes `onFound` to `source` (a finder gets a locator of its own); returns the unsubscribe. */
export function locateStream(call: RecognizeCall, source: StreamSource, onFound: (stream: Http2Stream | null) => void): () => void {
  const locator = source instanceof StreamLocator ? source : new StreamLocator(call, source);
  return locator.subscribe(onFound);
}

/** What the walk below reads of grpc-js's internal call objects. */
interface Internals {
  call?: Internals | null;
  child?: Internals | null;
  underlyingCalls?: { call?: Internals | null }[];
  state?: string;
  http2Stream?: Http2Stream;
}

/**
 * The HTTP/2 stream under a grpc-js call: the stream, `undefined` while the
 * call is still being placed, or null when grpc-js is not laid out as
 * expected (then it never will be, for this call).
 */
export function http2StreamOf(call: RecognizeCall): Http2Stream | null | undefined {
  const intercepting = (call as unknown as Internals).call;
  if (intercepting === null || typeof intercepting !== "object" || !("call" in intercepting)) return null;
  const resolving = intercepting.call;
  if (resolving === null || typeof resolving !== "object" || !("child" in resolving)) return null;
  const retrying = resolving.child;
  if (retrying === null) return undefined;
  if (typeof retrying !== "object" || !Array.isArray(retrying.underlyingCalls)) return null;
  // Only a call that can never start another attempt: retries off on the channel, or committed.
  if (retrying.state !== "NO_RETRY" && retrying.state !== "COMMITTED") return null;
  const attempts = retrying.underlyingCalls;
  if (attempts.length === 0) return undefined;
  if (attempts.length > 1) return null;
  const balancing = attempts[0]!.call;
  if (balancing === null || typeof balancing !== "object" || !("child" in balancing)) return null;
  const sub = balancing.child;
  if (sub === null) return undefined;
  const stream = typeof sub === "object" ? sub.http2Stream : undefined;
  if (stream === undefined || typeof stream.write !== "function" || typeof stream.once !== "function") return null;
  return stream;
}
