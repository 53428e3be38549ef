/**
 * Test harness: an in-process gateway on 127.0.0.1:0 in front of given worker
 * addresses, WebSocket clients that record every message, and synthetic PCM.
 */
import type { AddressInfo } from "node:net";
import { Registry } from "prom-client";
import WebSocket from "ws";
import { createFileDecoder } from "../../../gateway/src/audio.js";
import { loadConfig, type GatewayConfig } from "../../../gateway/src/config.js";
import { GatewayServer } from "../../../gateway/src/http.js";
import { createLogger } from "../../../gateway/src/log.js";
import { GatewayMetrics } from "../../../gateway/src/metrics.js";
import { DEFAULT_UI_DIR, UiSite } from "../../../gateway/src/ui.js";
import type { ServerMessage } from "../../../gateway/src/protocol.js";
import { WorkerPool } from "../../../gateway/src/workers.js";

/** A running gateway for a test. */
export interface TestGateway {
  /** ws://127.0.0.1:PORT */
  url: string;
  /** http://127.0.0.1:PORT */
  http: string;
  /** The server (sessions registry). */
  server: GatewayServer;
  /** The pool. */
  pool: WorkerPool;
  /** Effective config. */
  config: GatewayConfig;
  /** Stops server and pool. */
  stop(): Promise<void>;
}

/** Starts a gateway; waits until a worker is serving unless `waitServing` is false. */
export async function startGateway(
  workers: string[],
  env: Record<string, string> = {},
  opts: { waitServing?: boolean; ffmpeg?: string | null; ui?: boolean; metrics?: boolean } = {},
): Promise<TestGateway> {
  const config = loadConfig({
    GATEWAY_PORT: "0",
    GATEWAY_HOST: "127.0.0.1",
    WORKER_ADDRESSES: workers.join(","),
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? "silent",
    ...env,
  });
  const logger = createLogger(config.logLevel, process.stderr);
  const pool = new WorkerPool(config.workerAddresses, logger, { minBackoffMs: 50, maxBackoffMs: 300, loadIntervalMs: 200, mux: config.workerMux !== "off" });
  pool.start();
  const server = new GatewayServer({
    config,
    workers: pool,
    decoder: createFileDecoder(opts.ffmpeg ?? null),
    logger,
    ...(opts.ui === true ? { ui: new UiSite(DEFAULT_UI_DIR) } : {}),
    ...(opts.metrics === true
      ? { metrics: new GatewayMetrics({ registry: new Registry(), servingWorkers: () => pool.servingCount(), workerTransport: pool }) }
      : {}),
  });
  const addr: AddressInfo = await server.listen();
  if (opts.waitServing !== false) {
    await pool.waitForServing(10_000);
    // And their first load reports, which say whether a worker serves the mux: the path of every session is then known.
    const deadline = Date.now() + 2000;
    while (pool.status().some((w) => w.serving && w.load === null) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  }
  const scheme = config.tlsCert !== undefined ? "s" : "";
  return {
    url: `ws${scheme}://127.0.0.1:${addr.port}`,
    http: `http${scheme}://127.0.0.1:${addr.port}`,
    server,
    pool,
    config,
    async stop() {
      await server.shutdown(0);
      pool.close();
    },
  };
}

/** A WebSocket client that records every server message. */
export class TestClient {
  /** Parsed JSON messages, in arrival order. */
  readonly messages: ServerMessage[] = [];
  /** Close code once closed. */
  closeCode: number | null = null;
  /** The socket. */
  readonly ws: WebSocket;
  private waiters: Array<() => void> = [];

  private constructor(ws: WebSocket) {
    this.ws = ws;
    ws.on("message", (d: Buffer, isBinary: boolean) => {
      if (!isBinary) this.messages.push(JSON.parse(d.toString("utf8")) as ServerMessage);
      this.wake();
    });
    ws.on("close", (code: number) => {
      this.closeCode = code;
      this.wake();
    });
  }

  /** Connects (optionally offering subprotocols). */
  static connect(url: string, protocols?: string[], options?: WebSocket.ClientOptions): Promise<TestClient> {
    return new Promise((resolve, reject) => {
      const ws = protocols === undefined ? new WebSocket(url, options) : new WebSocket(url, protocols, options);
      const c = new TestClient(ws);
      ws.once("open", () => resolve(c));
      ws.once("error", reject);
      ws.once("unexpected-response", (_req, res) => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode, headers: res.headers })));
    });
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Sends a JSON object. */
  json(o: unknown): void {
    this.ws.send(JSON.stringify(o));
  }

  /** Sends PCM in frames of `frameBytes`, without pacing (or with `delayMs` between frames). */
  async audio(pcm: Buffer, frameBytes = 1920, delayMs = 0): Promise<void> {
    for (let off = 0; off < pcm.length; off += frameBytes) {
      this.ws.send(pcm.subarray(off, Math.min(pcm.length, off + frameBytes)));
      if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
    }
  }

  /** Resolves when `pred` holds over the messages (or rejects after `timeoutMs`). */
  async until(pred: (msgs: ServerMessage[]) => boolean, timeoutMs = 5000): Promise<ServerMessage[]> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this.messages)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out; got ${JSON.stringify(this.messages)} close=${this.closeCode}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return this.messages;
  }

  /** Resolves with the close code. */
  async closed(timeoutMs = 5000): Promise<number> {
    await this.until(() => this.closeCode !== null, timeoutMs);
    return this.closeCode!;
  }

  /** Closes from the client side. */
  close(): void {
    this.ws.close();
  }
}

/** Synthetic PCM16 mono: speech (a loud sine) and silence (zeros), in ms. */
export function pcm(parts: Array<{ speech?: number; silence?: number }>, rate = 16000): Buffer {
  const chunks: Buffer[] = [];
  for (const p of parts) {
    const ms = p.speech ?? p.silence ?? 0;
    const n = Math.round((ms / 1000) * rate);
    const b = Buffer.alloc(n * 2);
    if (p.speech !== undefined) for (let i = 0; i < n; i++) b.writeInt16LE(Math.round(8000 * Math.sin((2 * Math.PI * 220 * i) / rate)), i * 2);
    chunks.push(b);
  }
  return Buffer.concat(chunks);
}

/** A 16-bit mono WAV file around PCM. */
export function wavFile(data: Buffer, rate: number): Buffer {
  const h = Buffer.alloc(44);
  h.write("RIFF", 0, "latin1");
  h.writeUInt32LE(36 + data.length, 4);
  h.write("WAVE", 8, "latin1");
  h.write("fmt ", 12, "latin1");
  h.writeUInt32LE(16, 16);
  h.writeUInt16LE(1, 20);
  h.writeUInt16LE(1, 22);
  h.writeUInt32LE(rate, 24);
  h.writeUInt32LE(rate * 2, 28);
  h.writeUInt16LE(2, 32);
  h.writeUInt16LE(16, 34);
  h.write("data", 36, "latin1");
  h.writeUInt32LE(data.length, 40);
  return Buffer.concat([h, data]);
}

/** Finals of a message list (2pass-offline / offline / online is_final). */
export function finals(msgs: ServerMessage[]): ServerMessage[] {
  return msgs.filter((m) => (m.mode === "2pass-offline" || m.mode === "offline") && m.is_end !== true && m.error === undefined);
}
