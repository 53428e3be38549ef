/**
 * The floor under the gateway's paced CPU per frame: what Node pays for the
 * layers the gateway is built on, with no gateway code at all.
 *
 *   node --import tsx bench/gateway-floor.ts --streams 500 --seconds 15 --rounds 2 --pin front=0,load=1
 *
 * Why: bench:gateway measures the whole gateway (~55-60 µs of CPU per paced
 * 60 ms frame at 500 streams) against a target of 30 µs; profiles put most of
 * it in ws, grpc-js, Node streams, the kernel and GC, not in gateway modules.
 * This harness measures those layers alone, under the same paced load
 * (N WebSocket clients, one 1,920-byte binary frame each per 60 ms, phases
 * spread by the golden ratio), each "front" pinned to one core like the
 * gateway in `--pin gateway=0`:
 *
 *   ws        a ws server (the gateway's options) that drops every frame;
 *   ws-grpc   + one grpc-js bidi call per connection, each frame written as the
 *             gateway writes it (wire.ts's pre-encoded request through
 *             FastAsrClient, retries off) to a sink server that discards it;
 *   ws-h2     the same bytes as gRPC messages on a plain node:http2 stream per
 *             connection, without grpc-js (what grpc-js's per-message
 *             machinery costs is ws-grpc minus ws-h2);
 *   ws-grpc-direct  a grpc-js call per connection as in ws-grpc, its requests
 *             written by the gateway's CallWriter (call-writer.ts: framed
 *             bytes straight onto the call's HTTP/2 stream);
 *   gateway   the real gateway (gateway/src/main.ts) in front of the stub
 *             worker, for the same load (results flow back to the clients);
 *   gateway-old  the same with another checkout's gateway (`--old-root DIR`,
 *             e.g. `git archive <sha> | tar -x -C DIR` plus a node_modules
 *             link), alternating with `gateway` for same-window pairs.
 *
 * CPU is the front process's /proc utime+stime (all its threads, kernel
 * included) over a steady window in which every stream sends, divided by the
 * frames the clients sent in that window. The sink (a grpc-js server with
 * 16 MiB HTTP/2 windows, see lib/h2-window.ts) and the load generator run on
 * the other core. Not a test: numbers go to docs/benchmarks.md.
 */
import http2 from "node:http2";
import { parseArgs } from "node:util";
import { credentials, Server as GrpcServer, ServerCredentials, type ServerDuplexStream } from "@grpc/grpc-js";
import WebSocket, { WebSocketServer } from "ws";
import { AsrService, type StreamingRecognizeRequest, type StreamingRecognizeResponse } from "../gateway/src/gen/asr/v1/asr.js";
import { CallWriter } from "../gateway/src/call-writer.js";
import { encodeAudioRequest, FastAsrClient, framedAudioRequest } from "../gateway/src/wire.js";
import { snapshot } from "./lib/proc.js";
import { pinned, spawnListening, startGateway, waitServing, type Server } from "./lib/procs.js";
import type { RecognizeCall } from "../gateway/src/workers.js";

const { values } = parseArgs({
  options: {
    role: { type: "string", default: "main" },
    mode: { type: "string", default: "ws" },
    modes: { type: "string", default: "ws,ws-grpc,ws-h2,ws-grpc-direct,gateway" },
    upstream: { type: "string", default: "" },
    target: { type: "string", default: "" },
    streams: { type: "string", default: "500" },
    seconds: { type: "string", default: "15" },
    rounds: { type: "string", default: "2" },
    "ramp-ms-per-stream": { type: "string", default: "10" },
    pin: { type: "string", default: "front=0,load=1" },
    "old-root": { type: "string", default: "" },
  },
});

const FRAME_MS = 60;
const FRAME_BYTES = 1920;
const RATE = 16000;

// ---------------------------------------------------------------------------
// sink: a gRPC server that reads every request and answers nothing

function runSink(): void {
  const server = new GrpcServer({ "grpc.max_concurrent_streams": 100_000 } as Record<string, unknown>);
  server.addService(AsrService, {
    streamingRecognize: (call: ServerDuplexStream<StreamingRecognizeRequest, StreamingRecognizeResponse>) => {
      call.on("data", () => {});
      call.on("end", () => call.end());
      call.on("error", () => {});
    },
    watchLoad: () => {},
  });
  server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (err, port) => {
    if (err) throw err;
    process.stdout.write(`LISTENING 127.0.0.1:${port}\n`);
  });
}

// ---------------------------------------------------------------------------
// front: the layer under measurement

function runFront(mode: string, upstream: string): void {
  const wss = new WebSocketServer({ port: 0, host: "127.0.0.1", perMessageDeflate: false, maxPayload: 2 * 1024 * 1024 });
  const client = mode === "ws-grpc" || mode === "ws-grpc-direct" ? new FastAsrClient(upstream, credentials.createInsecure(), { "grpc.enable_retries": 0 }) : null;
  const h2 = mode === "ws-h2" ? http2.connect(`http://${upstream}`) : null;
  h2?.on("error", (e) => process.stderr.write(`h2: ${e.message}\n`));
  wss.on("connection", (ws) => {
    let forward: (pcm: Buffer) => void = () => {};
    if (client !== null) {
      const call = client.streamingRecognize() as RecognizeCall;
      call.on("error", () => {});
      call.on("data", () => {});
      if (mode === "ws-grpc-direct") {
        const writer = new CallWriter(call, () => {});
        forward = (pcm) => void writer.write(framedAudioRequest(pcm, RATE));
      } else {
        forward = (pcm) => void call.write(encodeAudioRequest(pcm, RATE));
      }
      ws.on("close", () => call.cancel());
    } else if (h2 !== null) {
      const stream = h2.request({ ":method": "POST", ":path": "/asr.v1.Asr/StreamingRecognize", "content-type": "application/grpc", te: "trailers" });
      stream.on("error", () => {});
      stream.on("data", () => {});
      forward = (pcm) => void stream.write(framedAudioRequest(pcm, RATE));
      ws.on("close", () => stream.close(http2.constants.NGHTTP2_CANCEL));
    }
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      if (isBinary) forward(data);
    });
    ws.on("error", () => {});
  });
  wss.on("listening", () => {
    const a = wss.address();
    process.stdout.write(`LISTENING 127.0.0.1:${typeof a === "object" && a !== null ? a.port : 0}\n`);
  });
}

// ---------------------------------------------------------------------------
// load: N paced WebSocket clients; prints STEADY, then END frames=<sent in the window>

async function runLoad(target: string, n: number, seconds: number, rampMs: number): Promise<void> {
  const frame = Buffer.alloc(FRAME_BYTES);
  for (let i = 0; i < FRAME_BYTES; i += 2) frame.writeInt16LE(Math.round(3000 * Math.sin(i / 7)), i);
  const golden = 0.6180339887;
  let sent = 0;
  const sockets: WebSocket[] = [];
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const ws = new WebSocket(target, { perMessageDeflate: false });
    await new Promise<void>((resolve, reject) => {
      ws.once("open", () => resolve());
      ws.once("error", reject);
    });
    // The gateway needs a config before audio; the other fronts ignore text.
    ws.send(JSON.stringify({ mode: "online", wav_name: `s${i}`, is_speaking: true, chunk_size: [5, 10, 5], audio_fs: RATE }));
    ws.on("message", () => {});
    sockets.push(ws);
    const phase = ((i * golden) % 1) * FRAME_MS;
    const start = performance.now() + phase;
    let k = 0;
    const tick = (): void => {
      if (ws.readyState !== WebSocket.OPEN) return;
      ws.send(frame, { binary: true });
      sent++;
      k++;
      setTimeout(tick, Math.max(0, start + k * FRAME_MS - performance.now()));
    };
    setTimeout(tick, phase);
    const due = t0 + (i + 1) * rampMs;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  await new Promise((r) => setTimeout(r, 2000));
  const before = sent;
  process.stdout.write("STEADY\n");
  await new Promise((r) => setTimeout(r, seconds * 1000));
  process.stdout.write(`END frames=${sent - before}\n`);
  for (const ws of sockets) ws.terminate();
  process.exit(0);
}

// ---------------------------------------------------------------------------
// main: each mode in turn, rounds alternating

interface Row {
  round: number;
  mode: string;
  cores: number;
  usPerFrame: number;
  kernelShare: number;
  framesPerSec: number;
}

async function measure(front: Server, target: string, pins: Record<string, string>): Promise<Omit<Row, "round" | "mode">> {
  const [cmd, args] = pinned(pins.load, process.execPath, [
    "--import",
    "tsx",
    "bench/gateway-floor.ts",
    "--role",
    "load",
    "--target",
    target,
    "--streams",
    values.streams,
    "--seconds",
    values.seconds,
    "--ramp-ms-per-stream",
    values["ramp-ms-per-stream"],
  ]);
  const { spawn } = await import("node:child_process");
  const load = spawn(cmd, args, { stdio: ["ignore", "pipe", "inherit"] });
  let buf = "";
  let start: ReturnType<typeof snapshot> = null;
  return new Promise((resolve, reject) => {
    load.stdout!.on("data", (d: Buffer) => {
      buf += d.toString();
      if (start === null && buf.includes("STEADY")) start = snapshot(front.pid);
      const m = /END frames=(\d+)/.exec(buf);
      if (m && start !== null) {
        const end = snapshot(front.pid)!;
        const frames = Number(m[1]);
        const wall = (end.t - start.t) / 1000;
        const cpu = end.cpuSec - start.cpuSec;
        resolve({ cores: cpu / wall, usPerFrame: (cpu / frames) * 1e6, kernelShare: (end.sysSec - start.sysSec) / cpu, framesPerSec: frames / wall });
      }
    });
    load.on("exit", (code) => {
      if (!/END frames=/.test(buf)) reject(new Error(`load exited with ${code}`));
    });
  });
}

async function main(): Promise<void> {
  const pins = Object.fromEntries(values.pin.split(",").filter(Boolean).map((kv) => kv.split("=") as [string, string])) as Record<string, string>;
  const modes = values.modes.split(",");
  const rows: Row[] = [];
  const log = (s: string): void => void process.stderr.write(`[floor] ${s}\n`);
  for (let round = 0; round < Number(values.rounds); round++) {
    const order = round % 2 === 0 ? modes : [...modes].reverse();
    for (const mode of order) {
      let sink: Server;
      let front: Server;
      if (mode === "gateway" || mode === "gateway-old") {
        sink = await spawnListening("stub", ...pinned(pins.load, process.execPath, ["--import", "tsx", "--import", "./bench/lib/h2-window.ts", "bench/stub-worker.ts"]));
        await waitServing(sink.address, 30_000);
        const root = mode === "gateway-old" ? values["old-root"] : undefined;
        if (root === "") throw new Error("gateway-old needs --old-root DIR");
        front = await startGateway(sink.address, pins.front, { MAX_SESSIONS: String(Number(values.streams) + 50) }, [], root);
      } else {
        sink = await spawnListening("sink", ...pinned(pins.load, process.execPath, ["--import", "tsx", "--import", "./bench/lib/h2-window.ts", "bench/gateway-floor.ts", "--role", "sink"]));
        front = await spawnListening("front", ...pinned(pins.front, process.execPath, ["--import", "tsx", "bench/gateway-floor.ts", "--role", "front", "--mode", mode, "--upstream", sink.address]));
      }
      try {
        const r = await measure(front, `ws://${front.address}`, pins);
        rows.push({ round, mode, ...r });
        log(`round ${round} ${mode}: ${r.usPerFrame.toFixed(1)} µs/frame, ${r.cores.toFixed(3)} cores, ${(100 * r.kernelShare).toFixed(0)} % kernel, ${r.framesPerSec.toFixed(0)} frames/s`);
      } finally {
        await front.stop();
        await sink.stop();
      }
    }
  }
  console.log(`\n${values.streams} paced streams, ${values.seconds} s steady window, pin ${values.pin}; load average ${(await import("node:os")).loadavg().map((x) => x.toFixed(2)).join(" ")}\n`);
  console.log("| mode | µs per frame, each round | median | front cores | kernel share |");
  console.log("|---|---|---|---|---|");
  for (const mode of modes) {
    const rs = rows.filter((r) => r.mode === mode);
    const us = rs.map((r) => r.usPerFrame).sort((a, b) => a - b);
    const med = us[Math.floor(us.length / 2)]!;
    console.log(`| ${mode} | ${rs.map((r) => r.usPerFrame.toFixed(1)).join(", ")} | ${med.toFixed(1)} | ${rs.map((r) => r.cores.toFixed(3)).join(", ")} | ${rs.map((r) => (100 * r.kernelShare).toFixed(0) + " %").join(", ")} |`);
  }
}

if (values.role === "sink") runSink();
else if (values.role === "front") runFront(values.mode, values.upstream);
else if (values.role === "load") void runLoad(values.target, Number(values.streams), Number(values.seconds), Number(values["ramp-ms-per-stream"]));
else
  main().then(
    () => process.exit(0),
    (e: unknown) => {
      process.stderr.write(`${String(e)}\n`);
      process.exit(1);
    },
  );
