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
 *   ws-grpc-hold  the same with the gateway's WriteCoalescer at its default
 *             hold (write-coalescer.ts): each call's audio held and every
 *             call's written in one loop turn, as the gateway does;
 *   ws-raw, ws-direct, ws-paused, ws-onread, ws-onread-copy, ws-onread-raw, ws-nobu
 *             what the WebSocket receive itself costs, layer by layer (not in
 *             the default --modes; see receiveVariant below): the same ws
 *             server with its socket read another way, every frame dropped;
 *   gateway   the real gateway (gateway/src/main.ts) in front of the stub
 *             worker, for the same load (results flow back to the clients);
 *   gateway-old  the same with another checkout's gateway (`--old-root DIR`,
 *             e.g. `git archive <sha> | tar -x -C DIR` plus a node_modules
 *             link), alternating with `gateway` for same-window pairs.
 *
 * `--pairs A+B,...` runs two fronts at once on the front core instead, half
 * the streams each, measured over the same window (runPairs): differences of
 * 1-2 µs that sequential runs cannot resolve (see docs/benchmarks.md, "The
 * WebSocket receive path under the gateway").
 *
 * CPU is the front process's /proc utime+stime (all its threads, kernel
 * included) over a steady window in which every stream sends, divided by the
 * frames the clients sent in that window. The sink (a grpc-js server with
 * 16 MiB HTTP/2 windows, see lib/h2-window.ts) and the load generator run on
 * the other core. Not a test: numbers go to docs/benchmarks.md.
 */
import http2 from "node:http2";
import type net from "node:net";
import type { Writable } from "node:stream";
import { parseArgs } from "node:util";
import { credentials, Server as GrpcServer, ServerCredentials, type ServerDuplexStream } from "@grpc/grpc-js";
import WebSocket, { WebSocketServer } from "ws";
import { AsrService, type StreamingRecognizeRequest, type StreamingRecognizeResponse } from "../gateway/src/gen/asr/v1/asr.js";
import { CallWriter } from "../gateway/src/call-writer.js";
import { DEFAULT_COALESCE_DELAY, WriteCoalescer } from "../gateway/src/write-coalescer.js";
import { encodeAudioRequest, FastAsrClient, framedAudioRequest } from "../gateway/src/wire.js";
import { snapshot } from "./lib/proc.js";
import { pinned, spawnListening, startGateway, waitServing, type Server } from "./lib/procs.js";
import type { RecognizeCall } from "../gateway/src/workers.js";

const { values } = parseArgs({
  options: {
    role: { type: "string", default: "main" },
    mode: { type: "string", default: "ws" },
    modes: { type: "string", default: "ws,ws-grpc,ws-h2,ws-grpc-direct,ws-grpc-hold,gateway" },
    upstream: { type: "string", default: "" },
    target: { type: "string", default: "" },
    streams: { type: "string", default: "500" },
    seconds: { type: "string", default: "15" },
    rounds: { type: "string", default: "2" },
    "ramp-ms-per-stream": { type: "string", default: "10" },
    pin: { type: "string", default: "front=0,load=1" },
    "old-root": { type: "string", default: "" },
    // e.g. --pairs ws+ws-onread,ws+ws: two fronts side by side instead of --modes in turn (runPairs)
    pairs: { type: "string", default: "" },
    // e.g. --front-node-arg=--cpu-prof --front-node-arg=--cpu-prof-dir=DIR (profiles the non-gateway fronts)
    "front-node-arg": { type: "string", multiple: true, default: [] },
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
  const client = mode === "ws-grpc" || mode === "ws-grpc-direct" || mode === "ws-grpc-hold" ? new FastAsrClient(upstream, credentials.createInsecure(), { "grpc.enable_retries": 0 }) : null;
  const h2 = mode === "ws-h2" ? http2.connect(`http://${upstream}`) : null;
  h2?.on("error", (e) => process.stderr.write(`h2: ${e.message}\n`));
  // One per front, as one per gateway process.
  const coalescer = mode === "ws-grpc-hold" ? new WriteCoalescer({ delay: DEFAULT_COALESCE_DELAY }) : undefined;
  let received = 0;
  wss.on("connection", (ws) => {
    let forward: (pcm: Buffer) => void = () => {};
    if (client !== null) {
      const call = client.streamingRecognize() as RecognizeCall;
      call.on("error", () => {});
      call.on("data", () => {});
      if (mode === "ws-grpc-direct" || mode === "ws-grpc-hold") {
        const writer = new CallWriter(call, () => {}, undefined, coalescer);
        forward = (pcm) => void writer.write(framedAudioRequest(pcm, RATE), true);
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
      if (isBinary) {
        received++;
        forward(data);
      }
    });
    ws.on("error", () => {});
    receiveVariant(ws, mode, () => void received++);
  });
  // The harness stops fronts with SIGTERM: report what arrived (a variant that lost frames
  // would look cheap), and exit cleanly so that --cpu-prof writes its profile.
  process.on("SIGTERM", () => {
    process.stdout.write(`RECEIVED ${received}\n`);
    process.exit(0);
  });
  wss.on("listening", () => {
    const a = wss.address();
    process.stdout.write(`LISTENING 127.0.0.1:${typeof a === "object" && a !== null ? a.port : 0}\n`);
  });
}

// ---------------------------------------------------------------------------
// receive variants: the ws connection's socket read another way (bench only;
// they reach into ws's and Node's internals, so each checks what it needs)

const sharedReadBuffer = Buffer.allocUnsafeSlow(64 * 1024);

/** The parts of ws's WebSocket (8.x) and Node's net.Socket the variants use. */
interface WsInternals {
  _socket: net.Socket & { _handle?: { useUserBuffer?: (b: Buffer) => void } };
  _receiver: Writable & { _write(chunk: Buffer, enc: null, cb: (err?: Error | null) => void): void };
}

/**
 * Rewires one accepted connection's receive path for `mode` (plain `ws` and
 * the other fronts keep ws's own): ws-raw drops the socket's chunks before
 * ws's Receiver (the cost of Node's socket Readable alone); ws-direct hands
 * each 'data' chunk to the Receiver's _write, skipping its Writable layer
 * (backpressure: pause until the Receiver calls back); ws-paused reads in
 * paused mode ('readable' + read()) into Receiver.write; ws-onread switches the
 * handle to reads into user buffers (net.Socket's `onread` option, set after
 * the fact: no Readable.push, no nextTick per read) fed to _write as ws-direct;
 * ws-onread-copy the same into one shared read buffer, each read copied out
 * (Buffer.from: Node's pool); ws-onread-raw the shared-buffer reads dropped
 * (the floor of a JS socket read). The
 * raw variants count socket reads as received frames (one read per paced frame).
 */
function receiveVariant(ws: WebSocket, mode: string, onRawChunk: () => void): void {
  if (!["ws-raw", "ws-direct", "ws-paused", "ws-onread", "ws-onread-copy", "ws-onread-raw"].includes(mode)) return;
  const { _socket: socket, _receiver: receiver } = ws as unknown as WsInternals;
  const wsOnData = socket.listeners("data");
  if (wsOnData.length !== 1) throw new Error(`expected ws's one 'data' listener, found ${wsOnData.length}`);
  socket.removeListener("data", wsOnData[0] as (c: Buffer) => void);
  if (mode === "ws-raw") {
    socket.on("data", onRawChunk);
    return;
  }
  if (mode === "ws-paused") {
    socket.pause();
    socket.on("readable", () => {
      let chunk: Buffer | null;
      while ((chunk = socket.read() as Buffer | null) !== null) if (!receiver.write(chunk)) break;
    });
    receiver.on("drain", () => socket.read(0));
    return;
  }
  // The Receiver calls back synchronously unless it defers (inflate, allowSynchronousEvents=false).
  let feeding = false;
  let calledBack = false;
  const done = (err?: Error | null): void => {
    if (err) receiver.destroy(err);
    else if (feeding) calledBack = true;
    else socket.resume();
  };
  const feed = (chunk: Buffer): boolean => {
    feeding = true;
    calledBack = false;
    receiver._write(chunk, null, done);
    feeding = false;
    return calledBack;
  };
  // Anything the Readable already holds (the upgrade's head) still arrives as 'data'.
  socket.on("data", (chunk: Buffer) => {
    if (!feed(chunk)) socket.pause();
  });
  if (mode === "ws-direct") return;
  const sym = (name: string): symbol | undefined => Object.getOwnPropertySymbols(socket).find((s) => s.description === name);
  const [kBuffer, kBufferCb, kBufferGen] = [sym("kBuffer"), sym("kBufferCb"), sym("kBufferGen")];
  const handle = socket._handle;
  if (kBuffer === undefined || kBufferCb === undefined || kBufferGen === undefined || typeof handle?.useUserBuffer !== "function") {
    throw new Error("this Node has no net.Socket user-buffer reads (kBuffer/useUserBuffer)");
  }
  const s = socket as unknown as Record<symbol, unknown>;
  if (mode === "ws-onread-copy" || mode === "ws-onread-raw") {
    // One read buffer for the process (reads run one at a time on this thread); each read
    // copied out into Node's buffer pool, since ws keeps views of what it is given.
    s[kBuffer] = sharedReadBuffer;
    s[kBufferCb] = mode === "ws-onread-raw" ? (): boolean => (onRawChunk(), true) : (nread: number, buf: Buffer): boolean => feed(Buffer.from(buf.subarray(0, nread)));
    handle.useUserBuffer(sharedReadBuffer);
    return;
  }
  // Reads land in a slab one after the other (ws keeps views of them as messages); a new slab when < 1/4 is left.
  // 256 KiB slabs are mmap'd by malloc, and their page faults cost more than the reads save; 64 KiB come from the heap.
  const SLAB = Number(process.env.FLOOR_SLAB_KB ?? 64) * 1024;
  let slab = Buffer.allocUnsafeSlow(SLAB);
  let used = 0;
  const next = (): Buffer => {
    if (SLAB - used < SLAB / 4) {
      slab = Buffer.allocUnsafeSlow(SLAB);
      used = 0;
    }
    return slab.subarray(used);
  };
  s[kBufferGen] = next;
  s[kBufferCb] = (nread: number, buf: Buffer): boolean => {
    used += nread;
    return feed(buf.subarray(0, nread));
  };
  const first = next();
  s[kBuffer] = first;
  handle.useUserBuffer(first);
}

// ---------------------------------------------------------------------------
// load: N paced WebSocket clients (client i on target i mod the number of
// targets); prints STEADY, then END frames=<sent in the window> total=<sent in
// all>, each a comma-separated list by target

async function runLoad(targetList: string, n: number, seconds: number, rampMs: number): Promise<void> {
  const targets = targetList.split(",");
  const frame = Buffer.alloc(FRAME_BYTES);
  for (let i = 0; i < FRAME_BYTES; i += 2) frame.writeInt16LE(Math.round(3000 * Math.sin(i / 7)), i);
  const golden = 0.6180339887;
  const sent = targets.map(() => 0);
  const sockets: WebSocket[] = [];
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const t = i % targets.length;
    const ws = new WebSocket(targets[t]!, { perMessageDeflate: false });
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
      sent[t]!++;
      k++;
      setTimeout(tick, Math.max(0, start + k * FRAME_MS - performance.now()));
    };
    setTimeout(tick, phase);
    const due = t0 + (i + 1) * rampMs;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  await new Promise((r) => setTimeout(r, 2000));
  const before = [...sent];
  process.stdout.write("STEADY\n");
  await new Promise((r) => setTimeout(r, seconds * 1000));
  process.stdout.write(`END frames=${sent.map((x, j) => x - before[j]!).join(",")} total=${sent.join(",")}\n`);
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

/** One front's CPU over the steady window, per frame its clients sent then. */
interface Measured {
  cores: number;
  usPerFrame: number;
  kernelShare: number;
  framesPerSec: number;
  /** Frames its clients sent over the whole run (to check what the front received). */
  totalSent: number;
}

/** Runs the paced load against the fronts (clients spread over them in turn); one result per front. */
async function measure(fronts: Server[], pins: Record<string, string>): Promise<Measured[]> {
  const [cmd, args] = pinned(pins.load, process.execPath, [
    "--import",
    "tsx",
    "bench/gateway-floor.ts",
    "--role",
    "load",
    "--target",
    fronts.map((f) => `ws://${f.address}`).join(","),
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
  let start: ReturnType<typeof snapshot>[] | null = null;
  const list = (re: RegExp): number[] => (re.exec(buf)?.[1] ?? "").split(",").map(Number);
  return new Promise((resolve, reject) => {
    load.stdout!.on("data", (d: Buffer) => {
      buf += d.toString();
      if (start === null && buf.includes("STEADY")) start = fronts.map((f) => snapshot(f.pid));
      if (/END frames=[\d,]+ total=[\d,]+\n/.test(buf) && start !== null) {
        const frames = list(/END frames=([\d,]+)/);
        const totals = list(/total=([\d,]+)/);
        resolve(
          fronts.map((f, j) => {
            const s0 = start![j]!;
            const end = snapshot(f.pid)!;
            const wall = (end.t - s0.t) / 1000;
            const cpu = end.cpuSec - s0.cpuSec;
            return { totalSent: totals[j]!, cores: cpu / wall, usPerFrame: (cpu / frames[j]!) * 1e6, kernelShare: (end.sysSec - s0.sysSec) / cpu, framesPerSec: frames[j]! / wall };
          }),
        );
      }
    });
    load.on("exit", (code) => {
      if (!/END frames=/.test(buf)) reject(new Error(`load exited with ${code}`));
    });
  });
}

/** Starts a non-gateway front of `mode` in front of `sink`. */
function startFront(mode: string, sink: Server, pins: Record<string, string>): Promise<Server> {
  return spawnListening(
    "front",
    ...pinned(pins.front, process.execPath, [...values["front-node-arg"], "--import", "tsx", "bench/gateway-floor.ts", "--role", "front", "--mode", mode, "--upstream", sink.address]),
    // ws-nobu: plain ws with its JavaScript unmask (ws reads WS_NO_BUFFER_UTIL when it loads).
    mode === "ws-nobu" ? { WS_NO_BUFFER_UTIL: "1" } : {},
  );
}

/** Stops a non-gateway front and checks that it received what its clients sent (a variant that lost frames would look cheap). */
async function stopFront(front: Server, mode: string, totalSent: number, log: (s: string) => void): Promise<void> {
  let out = "";
  front.proc.stdout!.on("data", (d: Buffer) => void (out += d.toString()));
  await front.stop();
  const got = Number(/RECEIVED (\d+)/.exec(out)?.[1] ?? -1);
  log(`${mode}: ${got} of ${totalSent} frames received`);
  if (!mode.endsWith("-raw") && got < totalSent * 0.99) throw new Error(`${mode}: the front received ${got} of ${totalSent} frames`);
}

/**
 * --pairs A+B,...: two fronts at once on the same pinned core, half the
 * streams each, measured over the same window — the two sides of a pair see
 * the same box, so a small difference shows where sequential runs (±3 µs
 * from run to run) cannot resolve it. Which side gets the even clients swaps
 * every round. `ws+ws` is the null pair that shows the method's own spread.
 */
async function runPairs(pins: Record<string, string>, log: (s: string) => void): Promise<void> {
  const pairs = values.pairs.split(",").map((p) => p.split("+") as [string, string]);
  const rows: { pair: string; round: number; a: Measured; b: Measured }[] = [];
  for (let round = 0; round < Number(values.rounds); round++) {
    for (const [ma, mb] of round % 2 === 0 ? pairs : [...pairs].reverse()) {
      const sink = await spawnListening("sink", ...pinned(pins.load, process.execPath, ["--import", "tsx", "--import", "./bench/lib/h2-window.ts", "bench/gateway-floor.ts", "--role", "sink"]));
      const fa = await startFront(ma, sink, pins);
      const fb = await startFront(mb, sink, pins);
      try {
        const order = round % 2 === 0 ? [fa, fb] : [fb, fa];
        const got = await measure(order, pins);
        const [a, b] = round % 2 === 0 ? [got[0]!, got[1]!] : [got[1]!, got[0]!];
        rows.push({ pair: `${ma}+${mb}`, round, a, b });
        await stopFront(fa, ma, a.totalSent, log);
        await stopFront(fb, mb, b.totalSent, log);
        log(`round ${round} ${ma} ${a.usPerFrame.toFixed(2)} vs ${mb} ${b.usPerFrame.toFixed(2)} µs/frame (kernel ${(100 * a.kernelShare).toFixed(0)} / ${(100 * b.kernelShare).toFixed(0)} %)`);
      } finally {
        await fa.stop();
        await fb.stop();
        await sink.stop();
      }
    }
  }
  console.log(`\n${values.streams} paced streams split over two fronts on one core, ${values.seconds} s steady window, pin ${values.pin}; load average ${(await import("node:os")).loadavg().map((x) => x.toFixed(2)).join(" ")}\n`);
  console.log("| A + B | A µs per frame, rounds | B µs per frame, rounds | B − A, rounds | median B − A |");
  console.log("|---|---|---|---|---|");
  for (const p of pairs) {
    const rs = rows.filter((r) => r.pair === `${p[0]}+${p[1]}`);
    const d = rs.map((r) => r.b.usPerFrame - r.a.usPerFrame);
    const med = [...d].sort((x, y) => x - y)[Math.floor(d.length / 2)]!;
    const f = (xs: number[]): string => xs.map((x) => x.toFixed(1)).join(", ");
    console.log(`| ${p[0]} + ${p[1]} | ${f(rs.map((r) => r.a.usPerFrame))} | ${f(rs.map((r) => r.b.usPerFrame))} | ${f(d)} | ${med.toFixed(1)} |`);
  }
}

async function main(): Promise<void> {
  const pins = Object.fromEntries(values.pin.split(",").filter(Boolean).map((kv) => kv.split("=") as [string, string])) as Record<string, string>;
  const modes = values.modes.split(",");
  const rows: Row[] = [];
  const log = (s: string): void => void process.stderr.write(`[floor] ${s}\n`);
  if (values.pairs !== "") return runPairs(pins, log);
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
        front = await startFront(mode, sink, pins);
      }
      try {
        const [{ totalSent, ...r }] = (await measure([front], pins)) as [Measured];
        rows.push({ round, mode, ...r });
        if (mode !== "gateway" && mode !== "gateway-old") await stopFront(front, mode, totalSent, log);
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
