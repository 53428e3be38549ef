/**
 * The gateway's HTTP(S) server: /healthz and /readyz, the OpenAI-compatible
 * POST /v1/audio/transcriptions (openai.ts), the browser page at /ui/
 * (ui.ts), Prometheus metrics at /metrics (metrics.ts), and the WebSocket
 * upgrade on every other path (FunASR clients use "/", some proxies "/wss/").
 *
 * Upgrade rules (see PROTOCOL.md): echo the `binary` subprotocol when it is
 * offered and accept clients that offer none; answer pings (ws does) and
 * never close a healthy connection for missing pongs; refuse with 503 and
 * Retry-After before upgrading when no worker can take the session or the
 * session limit is reached, so that load balancers and clients can retry.
 */
import { readFileSync } from "node:fs";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import { WebSocketServer, type WebSocket } from "ws";
import type { FileDecoder } from "./audio.js";
import type { GatewayConfig } from "./config.js";
import { meteredSocket, type GatewayMetrics, type RefusalReason, type SessionMeter } from "./metrics.js";
import { OpenAiTranscriptions, TRANSCRIPTIONS_PATH } from "./openai.js";
import { Session } from "./session.js";
import { UI_PREFIX, type UiSite } from "./ui.js";
import type { WorkerLease, WorkerSource } from "./workers.js";
import { WriteCoalescer } from "./write-coalescer.js";

/** What the server is built from (the composition root passes these). */
export interface GatewayServerDeps {
  /** Validated configuration. */
  config: GatewayConfig;
  /** Worker placement. */
  workers: WorkerSource;
  /** Decoder for offline files. */
  decoder: FileDecoder;
  /** Root logger. */
  logger: Logger;
  /** The browser page (ui.ts); absent: no page. */
  ui?: UiSite;
  /** Prometheus metrics (metrics.ts), served at /metrics; absent: no metrics. */
  metrics?: GatewayMetrics;
  /** Groups sessions' audio to the workers into few writes; absent: one built from config.workerWriteCoalesceMs. */
  coalescer?: WriteCoalescer;
}

/** Headroom over MAX_FRAME_BYTES at which ws itself closes with 1009 (below it, the session answers with a JSON error first). */
const WS_PAYLOAD_HEADROOM = 1024 * 1024;

/** The HTTP + WebSocket front of the gateway. */
export class GatewayServer {
  /** The underlying http(s) server. */
  readonly server: http.Server | https.Server;
  /** Open sessions (the registry used for limits and shutdown). */
  readonly sessions = new Set<Session>();
  private readonly wss: WebSocketServer;
  private readonly d: GatewayServerDeps;
  /** POST /v1/audio/transcriptions (openai.ts). */
  private readonly openai: OpenAiTranscriptions;
  private draining = false;
  /** Shared by every session of this process, so that all their audio goes out in the same loop turns. */
  private readonly coalescer: WriteCoalescer;

  /** Builds the server; nothing listens before listen(). */
  constructor(deps: GatewayServerDeps) {
    this.d = deps;
    const { config } = deps;
    this.coalescer = deps.coalescer ?? new WriteCoalescer({ delay: config.workerWriteCoalesceMs });
    const handler = (req: IncomingMessage, res: ServerResponse): void => this.onRequest(req, res);
    this.server =
      config.tlsCert !== undefined && config.tlsKey !== undefined
        ? https.createServer({ cert: readFileSync(config.tlsCert), key: readFileSync(config.tlsKey) }, handler)
        : http.createServer(handler);
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: config.maxFrameBytes + WS_PAYLOAD_HEADROOM,
      perMessageDeflate: false,
      handleProtocols: (protocols) => (protocols.has("binary") ? "binary" : false),
    });
    this.server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => this.onUpgrade(req, socket, head));
    this.openai = new OpenAiTranscriptions({
      workers: deps.workers,
      decoder: deps.decoder,
      limits: config,
      retryAfterSeconds: config.retryAfterSeconds,
      authorize: (req) => config.authToken === undefined || authorized(req, config.authToken),
      // HTTP transcriptions share MAX_SESSIONS with WebSocket sessions: both hold a worker stream.
      refusal: () =>
        this.draining
          ? "the gateway is shutting down; retry"
          : this.sessions.size + this.openai.inFlight > config.maxSessions
            ? "the gateway is at its session limit (MAX_SESSIONS); retry later"
            : null,
      logger: deps.logger,
    });
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  listen(): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(this.d.config.port, this.d.config.host, () => {
        this.server.off("error", reject);
        resolve(this.server.address() as AddressInfo);
      });
    });
  }

  private onRequest(req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? "/").split("?")[0];
    if (path === "/healthz") {
      json(res, 200, { status: "ok" });
    } else if (path === "/readyz") {
      const serving = this.d.workers.servingCount();
      const ready = serving > 0 && !this.draining;
      json(res, ready ? 200 : 503, { ready, serving_workers: serving, sessions: this.sessions.size, draining: this.draining });
    } else if (path === TRANSCRIPTIONS_PATH) {
      void this.openai.handle(req, res);
    } else if (path === "/metrics" && this.d.metrics !== undefined) {
      this.serveMetrics(this.d.metrics, res);
    } else if (this.d.ui !== undefined && path === `${UI_PREFIX}admission`) {
      this.admissionProbe(req, res);
    } else if (this.d.ui?.handle(req, res, path ?? "/") === true) {
      // served by the page
    } else {
      res.setHeader("Connection", "close");
      json(res, 426, { error: "this endpoint speaks the FunASR WebSocket protocol; connect with ws:// or wss://" });
    }
  }

  /**
   * Whether a new session may start now: the one set of rules for WebSocket
   * upgrades and for the page's probe (GET /ui/admission, which tells a
   * browser why its upgrade was refused: browsers never see the status of a
   * failed handshake). Admitted, it holds a worker placement for the caller.
   */
  private admit(req: IncomingMessage): { lease: WorkerLease } | { refusal: Refusal } {
    const { config, logger } = this.d;
    const busy = (cause: RefusalReason, detail: string): { refusal: Refusal } => ({
      refusal: { status: 503, reason: "Service Unavailable", cause, detail, headers: { "Retry-After": String(config.retryAfterSeconds) } },
    });
    if (config.authToken !== undefined && !authorized(req, config.authToken)) {
      logger.info({ remote: req.socket.remoteAddress }, "session refused: unauthorized");
      return { refusal: { status: 401, reason: "Unauthorized", cause: "unauthorized", detail: "a valid token is required (?token= or Authorization: Bearer)", headers: { "WWW-Authenticate": "Bearer" } } };
    }
    if (this.draining) return busy("draining", "the gateway is shutting down");
    if (this.sessions.size + this.openai.inFlight >= config.maxSessions) {
      logger.warn({ sessions: this.sessions.size }, "session refused: MAX_SESSIONS reached");
      return busy("max_sessions", "the gateway is at its session limit (MAX_SESSIONS)");
    }
    const lease = this.d.workers.acquire();
    if (lease === null) {
      logger.warn("session refused: no worker serving");
      return busy("no_worker", "no recognition worker is available");
    }
    return { lease };
  }

  /** GET /ui/admission: 200 when an upgrade would be accepted now, else the status, headers and reason it would get. */
  private admissionProbe(req: IncomingMessage, res: ServerResponse): void {
    const a = this.admit(req);
    if ("lease" in a) {
      a.lease.release();
      json(res, 200, { admitted: true });
      return;
    }
    const r = a.refusal;
    const retry = r.headers["Retry-After"];
    for (const [k, v] of Object.entries(r.headers)) res.setHeader(k, v);
    json(res, r.status, { admitted: false, status: r.status, error: r.detail, ...(retry !== undefined ? { retry_after_seconds: Number(retry) } : {}) });
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on("error", () => socket.destroy());
    const { config, logger } = this.d;
    const admission = this.admit(req);
    if ("refusal" in admission) {
      const r = admission.refusal;
      this.d.metrics?.refused(r.cause);
      refuse(socket, r.status, r.reason, r.headers);
      return;
    }
    const lease = admission.lease;
    // ws answers a malformed handshake itself and never calls back: give the placement back then.
    let adopted = false;
    socket.once("close", () => {
      if (!adopted) lease.release();
    });
    this.wss.handleUpgrade(req, socket, head, (ws: WebSocket) => {
      adopted = true;
      const metrics = this.d.metrics;
      // The meter needs the session and the session its socket: the wrapper reads the meter late.
      let meter: SessionMeter | undefined;
      const session = new Session({
        socket: metrics === undefined ? ws : meteredSocket(ws, () => meter?.messageOut()),
        workers: this.d.workers,
        initialLease: lease,
        decoder: this.d.decoder,
        limits: config,
        logger,
        onClosed: (s) => this.sessions.delete(s),
        coalescer: this.coalescer,
      });
      meter = metrics?.track(session);
      this.sessions.add(session);
      ws.on("message", (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
        const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
        if (isBinary) {
          meter?.frameIn(buf.length);
          session.onBinary(buf);
        }
        else session.onText(buf.toString("utf8"));
      });
      ws.on("close", () => session.onSocketClosed());
      ws.on("error", () => {
        // ws closes the socket itself (e.g. 1009 above the payload cap); the close event ends the session.
      });
    });
  }

  /** GET /metrics: the Prometheus text format (every gateway process's numbers when GATEWAY_PROCESSES > 1). */
  private serveMetrics(metrics: GatewayMetrics, res: ServerResponse): void {
    metrics.scrape().then(
      (text) => {
        res.writeHead(200, { "Content-Type": metrics.contentType, "Content-Length": Buffer.byteLength(text) });
        res.end(text);
      },
      (e: unknown) => {
        this.d.logger.error({ err: e }, "metrics scrape failed");
        json(res, 500, { error: "metrics unavailable" });
      },
    );
  }

  /**
   * Graceful shutdown: refuse new upgrades, let sessions with pending results
   * finish for `graceMs`, then close the rest and the listener.
   */
  async shutdown(graceMs: number): Promise<void> {
    this.draining = true;
    for (const s of [...this.sessions]) s.shutdown();
    const deadline = Date.now() + graceMs;
    while ((this.sessions.size > 0 || this.openai.inFlight > 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    for (const s of [...this.sessions]) s.forceClose();
    for (const c of this.wss.clients) c.terminate();
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      // Keep-alive HTTP connections would hold close() open.
      (this.server as http.Server).closeAllConnections?.();
    });
  }
}

/** Why a new session is refused. */
interface Refusal {
  /** HTTP status: 401 or 503. */
  status: number;
  /** Status text. */
  reason: string;
  /** The rule that refused (the metrics label). */
  cause: RefusalReason;
  /** What a person can act on. */
  detail: string;
  /** Retry-After or WWW-Authenticate. */
  headers: Record<string, string>;
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(text) });
  res.end(text);
}

function refuse(socket: Duplex, status: number, reason: string, headers: Record<string, string>): void {
  const body = JSON.stringify({ error: reason });
  const lines = [
    `HTTP/1.1 ${status} ${reason}`,
    "Connection: close",
    "Content-Type: application/json",
    `Content-Length: ${Buffer.byteLength(body)}`,
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  socket.end(`${lines.join("\r\n")}\r\n\r\n${body}`);
}

/** `?token=` or `Authorization: Bearer <token>`, compared in constant time. */
function authorized(req: IncomingMessage, token: string): boolean {
  const url = new URL(req.url ?? "/", "http://x");
  const q = url.searchParams.get("token");
  const h = req.headers.authorization;
  const bearer = h !== undefined && /^Bearer\s+/i.test(h) ? h.replace(/^Bearer\s+/i, "").trim() : null;
  return [q, bearer].some((t) => t !== null && safeEqual(t, token));
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  if (x.length !== y.length) return false;
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i]! ^ y[i]!;
  return diff === 0;
}
