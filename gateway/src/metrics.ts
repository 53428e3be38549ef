/**
 * Prometheus metrics of one gateway process, served as text on GET /metrics.
 *
 * The registry is created by the composition root and passed in (no global
 * registry): tests build as many gateways as they like in one process, each
 * with its own numbers. Sessions are observed through the events they emit
 * (session.ts) plus two hooks the HTTP layer calls, one per binary frame in
 * and one per message out; nothing here changes what a session does.
 *
 * With GATEWAY_PROCESSES > 1 (cluster.ts) each process counts its own
 * sessions, and a scrape lands on whichever process the connection was handed
 * to. That process asks the primary (IPC), which gathers every process's
 * numbers with prom-client's AggregatorRegistry and answers with the sum, so
 * every scrape sees the whole gateway.
 *
 * Every metric is listed, with its labels and meaning, in docs/operations.md
 * ("Metrics"); keep the two in step.
 */
import cluster from "node:cluster";
import { AggregatorRegistry, collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { ClientSocket, Session } from "./session.js";
import type { MuxTotals } from "./worker-mux.js";
import type { WorkerTransportSource } from "./workers.js";

/** Why an upgrade was refused (label `reason` of asr_gateway_refusals_total). */
export type RefusalReason = "unauthorized" | "draining" | "max_sessions" | "no_worker";

/** Per-connection hooks the HTTP layer calls. */
export interface SessionMeter {
  /** One binary frame of `bytes` arrived from the client. */
  frameIn(bytes: number): void;
  /** One message was sent to the client. */
  messageOut(): void;
}

/** What the metrics read at scrape time. */
export interface GatewayMetricsDeps {
  /** The registry to register in (created by the composition root). */
  registry: Registry;
  /** Workers currently SERVING (read at scrape time). */
  servingWorkers?: () => number;
  /** How sessions reach their workers and the mux traffic so far (the worker pool; read at scrape time). */
  workerTransport?: WorkerTransportSource;
  /** Also export Node's process metrics (CPU, memory, event-loop lag); default true. */
  processMetrics?: boolean;
  /** This process is one of GATEWAY_PROCESSES children: scrapes are answered by the primary's aggregate. */
  clusterChild?: boolean;
}

/** IPC: a child asks its primary for the aggregate text. */
const SCRAPE_REQUEST = "gateway:metrics-scrape";
/** IPC: the primary's answer. */
const SCRAPE_REPLY = "gateway:metrics-text";
/** How long a child waits for its primary's aggregate (prom-client gives each child 5 s). */
const CLUSTER_SCRAPE_TIMEOUT_MS = 6000;

interface ScrapeMessage {
  type: typeof SCRAPE_REQUEST | typeof SCRAPE_REPLY;
  id: number;
  text?: string;
  error?: string;
}

function isScrapeMessage(m: unknown, type: ScrapeMessage["type"]): m is ScrapeMessage {
  return typeof m === "object" && m !== null && (m as ScrapeMessage).type === type && typeof (m as ScrapeMessage).id === "number";
}

/**
 * In the cluster primary: answers children's scrape requests with the sum of
 * every child's metrics (see module comment). Call once, before forking.
 */
export function serveClusterMetrics(): void {
  const aggregator = new AggregatorRegistry();
  cluster.on("message", (worker, m: unknown) => {
    if (!isScrapeMessage(m, SCRAPE_REQUEST)) return;
    aggregator.clusterMetrics().then(
      (text) => worker.send({ type: SCRAPE_REPLY, id: m.id, text } satisfies ScrapeMessage),
      (e: unknown) => worker.send({ type: SCRAPE_REPLY, id: m.id, error: String(e) } satisfies ScrapeMessage),
    );
  });
}

/** Seconds: from tens of milliseconds (a short final) to the 30 s a force-closed segment can take. */
const LATENCY_BUCKETS = [0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30];

/** The gateway's metrics (see module comment). */
export class GatewayMetrics {
  /** The registry these metrics live in. */
  readonly registry: Registry;
  private readonly sessionsOpen: Gauge<"mode">;
  private readonly sessionsTotal: Counter<"mode">;
  private readonly errors: Counter<"code" | "fatal">;
  private readonly failovers: Counter;
  private readonly refusals: Counter<"reason">;
  private readonly finalAfterEnd: Histogram<"mode">;
  private readonly firstPartial: Histogram;
  private readonly clusterChild: boolean;
  private scrapeSeq = 0;
  /** Hot-path totals, read by their counters at scrape time. */
  private readonly counts = { framesIn: 0, bytesIn: 0, messagesOut: 0 };

  /** Registers every metric in `deps.registry`. */
  constructor(deps: GatewayMetricsDeps) {
    const registers = [deps.registry];
    this.registry = deps.registry;
    this.clusterChild = deps.clusterChild === true;
    this.sessionsOpen = new Gauge({
      name: "asr_gateway_sessions_open",
      help: "WebSocket sessions open now, by mode (pending = no config yet; 2pass includes online served as 2pass)",
      labelNames: ["mode"],
      registers,
    });
    this.sessionsTotal = new Counter({
      name: "asr_gateway_sessions_total",
      help: "WebSocket sessions configured since start, by mode",
      labelNames: ["mode"],
      registers,
    });
    // Per-frame and per-message counts are plain numbers, handed to prom-client only at
    // scrape time: an inc() per frame (thousands a second per core) costs label hashing
    // and a map lookup each time, for a total nobody reads between scrapes.
    const counts = this.counts;
    lazyCounter("asr_gateway_frames_received_total", "Binary (audio) frames received from clients", () => counts.framesIn, registers);
    lazyCounter("asr_gateway_bytes_received_total", "Bytes of binary (audio) frames received from clients", () => counts.bytesIn, registers);
    lazyCounter(
      "asr_gateway_messages_sent_total",
      "JSON messages sent to clients (partials, finals, acknowledgements, errors)",
      () => counts.messagesOut,
      registers,
    );
    this.errors = new Counter({
      name: "asr_gateway_errors_total",
      help: "Errors sent to clients, by error code (docs/gateway.md) and whether they ended the session",
      labelNames: ["code", "fatal"],
      registers,
    });
    this.failovers = new Counter({ name: "asr_gateway_failovers_total", help: "Sessions re-opened on another worker after their worker failed (replay)", registers });
    this.refusals = new Counter({
      name: "asr_gateway_refusals_total",
      help: "WebSocket upgrades refused before a session started, by reason (401 unauthorized; 503 draining, max_sessions, no_worker)",
      labelNames: ["reason"],
      registers,
    });
    this.finalAfterEnd = new Histogram({
      name: "asr_gateway_final_after_end_of_input_seconds",
      help: "From a round's end of input (is_speaking false) to its last final (the worker's acknowledgement), by output mode",
      labelNames: ["mode"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.firstPartial = new Histogram({
      name: "asr_gateway_first_partial_seconds",
      help: "From a session's first audio frame to the first partial the worker produced for it",
      buckets: LATENCY_BUCKETS,
      registers,
    });
    const serving = deps.servingWorkers;
    if (serving !== undefined) {
      new Gauge({
        name: "asr_gateway_workers_serving",
        help: "Workers this gateway sees SERVING (health Watch)",
        registers,
        // Every process of a gateway watches the same workers: the cluster aggregate is their max, not their sum.
        aggregator: "max",
        collect() {
          this.set(serving());
        },
      });
    }
    const transport = deps.workerTransport;
    if (transport !== undefined) registerTransportMetrics(transport, registers);
    if (deps.processMetrics !== false) collectDefaultMetrics({ register: deps.registry });
    if (this.clusterChild) {
      // prom-client answers the primary's AggregatorRegistry from these registries (its listener
      // is installed by constructing one).
      AggregatorRegistry.setRegistries([deps.registry]);
      new AggregatorRegistry();
    }
  }

  /** The Prometheus text exposition of every metric (of every gateway process, in a cluster). */
  scrape(): Promise<string> {
    return this.clusterChild ? this.clusterScrape() : this.registry.metrics();
  }

  private clusterScrape(): Promise<string> {
    const id = ++this.scrapeSeq;
    return new Promise((resolve, reject) => {
      const onMessage = (m: unknown): void => {
        if (!isScrapeMessage(m, SCRAPE_REPLY) || m.id !== id) return;
        done();
        if (m.error !== undefined || m.text === undefined) reject(new Error(`cluster metrics: ${m.error ?? "no text"}`));
        else resolve(m.text);
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error("cluster metrics: the primary did not answer"));
      }, CLUSTER_SCRAPE_TIMEOUT_MS);
      const done = (): void => {
        clearTimeout(timer);
        process.off("message", onMessage);
      };
      process.on("message", onMessage);
      process.send?.({ type: SCRAPE_REQUEST, id } satisfies ScrapeMessage);
    });
  }

  /** The Content-Type of scrape()'s text. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** Counts an upgrade refused for `reason`. */
  refused(reason: RefusalReason): void {
    this.refusals.inc({ reason });
  }

  /** Observes a new session through its events; returns the hooks for its frames and messages. */
  track(session: Session): SessionMeter {
    const counts = this.counts;
    let mode = "pending";
    this.sessionsOpen.inc({ mode });
    let firstAudioAt: number | null = null;
    let partialSeen = false;
    session.on("state", (to, from) => {
      if (from === "awaiting_config" && to === "streaming") {
        this.sessionsOpen.dec({ mode });
        mode = session.mode;
        this.sessionsOpen.inc({ mode });
        this.sessionsTotal.inc({ mode });
      }
    });
    session.on("clientError", (code, fatal) => this.errors.inc({ code, fatal: String(fatal) }));
    session.on("failover", () => this.failovers.inc());
    session.on("roundDone", (r) => this.finalAfterEnd.observe({ mode: r.mode }, r.ms / 1000));
    session.on("workerOutput", (kind) => {
      if (kind !== "partial" || partialSeen || firstAudioAt === null) return;
      partialSeen = true;
      this.firstPartial.observe((performance.now() - firstAudioAt) / 1000);
    });
    session.once("closed", () => this.sessionsOpen.dec({ mode }));
    return {
      frameIn: (bytes) => {
        if (firstAudioAt === null && bytes > 0) firstAudioAt = performance.now();
        counts.framesIn++;
        counts.bytesIn += bytes;
      },
      messageOut: () => {
        counts.messagesOut++;
      },
    };
  }
}

/**
 * The worker-side transport: streams by transport (gauge) and the mux traffic
 * (counters of totals the pool keeps). Frames per message show how much the
 * write hold batches; congestions and flow pauses show backpressure from the
 * workers; a fallback means a worker said it serves the mux and did not.
 */
function registerTransportMetrics(source: WorkerTransportSource, registers: Registry[]): void {
  new Gauge({
    name: "asr_gateway_worker_streams",
    help: "Sessions on workers now, by transport (mux: carried by a StreamingRecognizeMux call; call: a StreamingRecognize call each)",
    labelNames: ["transport"],
    registers,
    collect() {
      const n = source.streamsByTransport();
      this.set({ transport: "mux" }, n.mux);
      this.set({ transport: "call" }, n.call);
    },
  });
  const totals: Array<[string, string, (t: Readonly<MuxTotals>) => number]> = [
    ["asr_gateway_worker_mux_calls_total", "StreamingRecognizeMux calls opened (one per worker connection, again after one ended)", (t) => t.calls],
    ["asr_gateway_worker_mux_messages_total", "StreamingRecognizeMux messages written to workers", (t) => t.messages],
    ["asr_gateway_worker_mux_frames_total", "Session frames (audio, requests, cancels) carried in those messages", (t) => t.frames],
    ["asr_gateway_worker_mux_congestions_total", "Times a mux call's writes backed up and paused every session on it until it drained", (t) => t.congestions],
    ["asr_gateway_worker_mux_flow_pauses_total", "Times a worker paused one session's input (flow control)", (t) => t.flowPauses],
    ["asr_gateway_worker_mux_fallbacks_total", "Workers that reported the mux but answered UNIMPLEMENTED (their sessions then get a call each)", (t) => t.fallbacks],
  ];
  // The pool's live totals: each counter reads its number, without walking any session.
  const mux = source.muxTotals();
  for (const [name, help, pick] of totals) lazyCounter(name, help, () => pick(mux), registers);
}

/**
 * A counter whose total lives in a plain number (`read`) and is brought up to
 * date only when the registry is collected (see the constructor's comment).
 */
function lazyCounter(name: string, help: string, read: () => number, registers: Registry[]): Counter {
  let reported = 0;
  return new Counter({
    name,
    help,
    registers,
    collect() {
      const now = read();
      if (now > reported) this.inc(now - reported);
      reported = now;
    },
  });
}

/** `socket` with `onSend` called for every message (what the session is given instead of the raw socket). */
export function meteredSocket(socket: ClientSocket, onSend: () => void): ClientSocket {
  return {
    send(data: string): void {
      onSend();
      socket.send(data);
    },
    close: (code, reason) => socket.close(code, reason),
    get bufferedAmount(): number {
      return socket.bufferedAmount;
    },
    get readyState(): number {
      return socket.readyState;
    },
    pause: () => socket.pause?.(),
    resume: () => socket.resume?.(),
  };
}
