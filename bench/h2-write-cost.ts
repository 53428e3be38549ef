/**
 * What one held flush of the write coalescer costs per frame, by how each
 * call's bytes reach the HTTP/2 stream — the call writer's layer alone, with
 * no WebSocket, gRPC or gateway code around it.
 *
 *   node --import tsx bench/h2-write-cost.ts --streams 500 --seconds 10 --rounds 3 --hold-ms 4
 *   node --import tsx bench/h2-write-cost.ts --modes none,stream-write --hold-ms 2,4,8
 *
 * Why: in the gateway's profile at 500 paced streams the coalescer's flush is
 * ~9 % of the busy time, most of it one `Http2Stream.write` per call
 * (Writable.write -> Http2Stream._write -> writeGeneric -> the native
 * handle's writeBuffer, and a write completion back into JavaScript per
 * write). Whether skipping the Writable layer (writing on the stream's native
 * handle with our own byte accounting) or a longer hold would pay is a
 * question about this layer, and the whole-gateway benchmark's ±5 µs spread
 * cannot resolve a 1-2 µs answer. Here one writer process (pinned like the
 * gateway) holds S streams on one HTTP/2 session to a sink process (16 MiB
 * windows, pinned to the other core) and paces one 1,925-byte framed audio
 * request per stream per 60 ms (phases spread by the golden ratio, as the
 * gateway benchmarks' clients), held by the gateway's own WriteCoalescer.
 * Only what the coalescer's sink does with each call's bytes differs:
 *
 *   none          drops them (pacing + coalescer: the baseline to subtract);
 *   stream-write  Http2Stream.write, as call-writer.ts does;
 *   handle-write  the stream's native handle's writeBuffer with a WriteWrap
 *                 (process.binding("stream_wrap"), Node 20 internals) and
 *                 one shared completion callback that counts bytes: the
 *                 Writable layer, its closures and nextTick skipped;
 *   one-stream    the flush's bytes written to ONE stream, corked, so one
 *                 native writev request per flush: what the same bytes cost
 *                 without a native write request and DATA frame per call.
 *
 * The sink counts the bytes each writer's session delivered and a run fails
 * unless they are all the bytes the writer wrote (so a write path that lost
 * data cannot look cheap). CPU is the writer's /proc utime+stime (all threads, kernel included) over
 * the steady window, divided by the frames written; modes and holds alternate
 * within each round. Not a test: numbers go to docs/benchmarks.md.
 */
import { spawn } from "node:child_process";
import http2 from "node:http2";
import { loadavg } from "node:os";
import { parseArgs } from "node:util";
import { snapshot } from "./lib/proc.js";
import { pinned, spawnListening, type Server } from "./lib/procs.js";
import { framedAudioRequest } from "../gateway/src/wire.js";
import { WriteCoalescer, type HeldQueue } from "../gateway/src/write-coalescer.js";

const { values } = parseArgs({
  options: {
    role: { type: "string", default: "main" },
    mode: { type: "string", default: "stream-write" },
    modes: { type: "string", default: "none,stream-write,handle-write,one-stream" },
    "hold-ms": { type: "string", default: "4" },
    upstream: { type: "string", default: "" },
    streams: { type: "string", default: "500" },
    seconds: { type: "string", default: "10" },
    rounds: { type: "string", default: "3" },
    "warmup-s": { type: "string", default: "2" },
    pin: { type: "string", default: "writer=0,sink=1" },
  },
});

const FRAME_MS = 60;
const WINDOW = 16 * 1024 * 1024;

// ---------------------------------------------------------------------------
// sink: an HTTP/2 server that reads and drops every stream's DATA, and
// prints how many bytes each session (one writer run) delivered

function runSink(): void {
  const server = http2.createServer({ settings: { initialWindowSize: WINDOW, maxConcurrentStreams: 100_000 } });
  const received = new WeakMap<http2.Http2Session, number>();
  server.on("session", (s) => {
    s.setLocalWindowSize(WINDOW);
    received.set(s, 0);
    s.on("close", () => process.stdout.write(`RECEIVED ${received.get(s)}\n`));
  });
  server.on("stream", (st) => {
    st.respond({ ":status": 200 });
    st.on("data", (d: Buffer) => void received.set(st.session!, received.get(st.session!)! + d.length));
    st.on("end", () => st.end());
    st.on("error", () => {});
  });
  server.listen(0, "127.0.0.1", () => {
    const a = server.address();
    process.stdout.write(`LISTENING 127.0.0.1:${typeof a === "object" && a !== null ? a.port : 0}\n`);
  });
}

// ---------------------------------------------------------------------------
// writer: S paced streams through a WriteCoalescer; prints one RESULT line

/** The Node 20 internals handle-write uses (lib/internal/stream_base_commons.js's writeGeneric, without the Writable). */
interface NativeHandle {
  writeBuffer(req: object, data: Buffer): number;
}
type WriteWrapCtor = new () => { handle?: NativeHandle; oncomplete?: (status: number) => void; bytes?: number; buffer?: Buffer | null };

function handleWriter(sample: http2.ClientHttp2Stream): (st: http2.ClientHttp2Stream, bytes: Buffer) => void {
  const kHandle = Object.getOwnPropertySymbols(sample).find((s) => s.description === "kHandle");
  const binding = (process as unknown as { binding(name: string): { WriteWrap?: WriteWrapCtor } }).binding("stream_wrap");
  const WriteWrap = binding.WriteWrap;
  if (kHandle === undefined || WriteWrap === undefined) throw new Error("handle-write: this Node has no kHandle / WriteWrap");
  let inFlight = 0;
  // One function for every completion: no closure per write (the Writable path makes three).
  function oncomplete(this: { bytes: number }): void {
    inFlight -= this.bytes;
  }
  return (st, bytes) => {
    const handle = (st as unknown as Record<symbol, NativeHandle | undefined>)[kHandle];
    if (handle === undefined) throw new Error("handle-write: stream has no native handle");
    const req = new WriteWrap();
    req.handle = handle;
    req.oncomplete = oncomplete;
    req.bytes = bytes.length;
    req.buffer = bytes; // kept alive until the native write completes
    const err = handle.writeBuffer(req, bytes);
    if (err !== 0) throw new Error(`writeBuffer: ${err}`);
    inFlight += bytes.length;
  };
}

function runWriter(mode: string, holdMs: number, upstream: string, n: number, seconds: number, warmupS: number): void {
  const session = http2.connect(`http://${upstream}`, { settings: { initialWindowSize: WINDOW } });
  session.on("error", (e) => process.stderr.write(`h2: ${e.message}\n`));
  const frame = framedAudioRequest(Buffer.alloc(1920, 7), 16000);
  const streams = Array.from({ length: n }, () => {
    const st = session.request({ ":method": "POST", ":path": "/asr.v1.Asr/StreamingRecognize", "content-type": "application/grpc", te: "trailers" });
    st.on("error", () => {});
    st.on("data", () => {});
    return st;
  });
  const coalescer = new WriteCoalescer({ delay: holdMs });
  let frames = 0;
  /** Bytes handed to the writes (all but `none`): the sink must report as many. */
  let written = 0;
  let start: ReturnType<typeof snapshot> = null;
  let startFrames = 0;
  // Every stream has an id (and a native handle) once all are 'ready'.
  let ready = 0;
  const go = (): void => {
    let write: (st: http2.ClientHttp2Stream, bytes: Buffer) => void;
    const first = streams[0]!;
    if (mode === "none") write = () => {};
    else if (mode === "stream-write") write = (st, bytes) => void st.write(bytes);
    else if (mode === "handle-write") write = handleWriter(first);
    else if (mode === "one-stream") {
      // All calls' bytes of one flush go to one stream, corked: one native writev request per flush.
      let corked = false;
      write = (_st, bytes) => {
        if (!corked) {
          corked = true;
          first.cork();
          queueMicrotask(() => {
            corked = false;
            first.uncork();
          });
        }
        first.write(bytes);
      };
    } else throw new Error(`unknown mode ${mode}`);
    const queues: HeldQueue[] = streams.map((st) =>
      coalescer.queue((bytes) => {
        if (mode !== "none") written += bytes.length;
        write(st, bytes);
      }),
    );
    // The schedule: each stream's next due time, visited in due order by a 1 ms tick.
    const golden = 0.6180339887;
    const t0 = performance.now();
    const order = streams.map((_, i) => ({ i, due: t0 + ((i * golden) % 1) * FRAME_MS })).sort((a, b) => a.due - b.due);
    let cursor = 0;
    const tick = (): void => {
      const now = performance.now();
      while (order[cursor]!.due <= now) {
        const slot = order[cursor]!;
        queues[slot.i]!.push(frame);
        frames++;
        slot.due += FRAME_MS;
        cursor = (cursor + 1) % order.length;
      }
      if (start === null && now - t0 > warmupS * 1000) {
        start = snapshot(process.pid);
        startFrames = frames;
      } else if (start !== null && now - start.t >= seconds * 1000) {
        const end = snapshot(process.pid)!;
        const f = frames - startFrames;
        const cpu = end.cpuSec - start.cpuSec;
        const result = { usPerFrame: (cpu / f) * 1e6, sysUsPerFrame: ((end.sysSec - start.sysSec) / f) * 1e6, framesPerSec: f / ((end.t - start.t) / 1000) };
        // Stop pacing, write what is held, and close the session once it has sent everything
        // (close() waits for the streams), so the sink can report what arrived.
        coalescer.flushPending();
        process.stdout.write(`RESULT ${JSON.stringify({ ...result, written })}\n`);
        for (const st of streams) st.end();
        session.close(() => process.exit(0));
        return;
      }
      setTimeout(tick, 1);
    };
    tick();
  };
  for (const st of streams)
    st.once("ready", () => {
      if (++ready === n) go();
    });
}

// ---------------------------------------------------------------------------
// main: sink once, then a writer per (mode, hold), alternating within rounds

interface Row {
  mode: string;
  hold: number;
  usPerFrame: number;
  sysUsPerFrame: number;
}

async function runOnce(pins: Record<string, string>, sink: Server, sinkOut: (consume?: number) => string, mode: string, hold: number): Promise<Row> {
  const [cmd, args] = pinned(pins.writer, process.execPath, ["--import", "tsx", "bench/h2-write-cost.ts", "--role", "writer", "--mode", mode, "--hold-ms", String(hold), "--upstream", sink.address, "--streams", values.streams, "--seconds", values.seconds, "--warmup-s", values["warmup-s"]]);
  const proc = spawn(cmd, args, { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  proc.stdout.on("data", (d: Buffer) => void (out += d.toString()));
  const code = await new Promise<number | null>((resolve) => proc.on("exit", resolve));
  const m = /RESULT (.*)/.exec(out);
  if (m === null) throw new Error(`writer ${mode} exited with ${code} and no result`);
  const r = JSON.parse(m[1]!) as { usPerFrame: number; sysUsPerFrame: number; written: number };
  // A way of writing that lost bytes would look cheap: the sink must have received every one.
  const deadline = Date.now() + 10_000;
  let got: RegExpExecArray | null = null;
  while ((got = /RECEIVED (\d+)\n/.exec(sinkOut())) === null && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
  if (got === null) throw new Error(`sink reported nothing for ${mode}`);
  sinkOut(got.index + got[0].length);
  if (Number(got[1]) !== r.written) throw new Error(`${mode}: wrote ${r.written} bytes, the sink received ${got[1]}`);
  return { mode, hold, usPerFrame: r.usPerFrame, sysUsPerFrame: r.sysUsPerFrame };
}

async function main(): Promise<void> {
  const pins = Object.fromEntries(values.pin.split(",").filter(Boolean).map((kv) => kv.split("=") as [string, string])) as Record<string, string>;
  const modes = values.modes.split(",");
  const holds = values["hold-ms"].split(",").map(Number);
  const sink = await spawnListening("sink", ...pinned(pins.sink, process.execPath, ["--import", "tsx", "bench/h2-write-cost.ts", "--role", "sink"]));
  let sinkText = "";
  sink.proc.stdout!.on("data", (d: Buffer) => void (sinkText += d.toString()));
  /** The sink's output not consumed yet; consume(n) drops its first n characters. */
  const sinkOut = (consume = 0): string => (sinkText = sinkText.slice(consume));
  const rows: Row[] = [];
  try {
    for (let round = 0; round < Number(values.rounds); round++) {
      const combos = holds.flatMap((hold) => modes.map((mode) => ({ mode, hold })));
      for (const { mode, hold } of round % 2 === 0 ? combos : combos.reverse()) {
        const r = await runOnce(pins, sink, sinkOut, mode, hold);
        rows.push(r);
        process.stderr.write(`[h2-write] round ${round} ${mode} hold ${hold}: ${r.usPerFrame.toFixed(2)} µs/frame (kernel ${r.sysUsPerFrame.toFixed(2)})\n`);
      }
    }
  } finally {
    await sink.stop();
  }
  console.log(`\n${values.streams} paced streams, ${values.seconds} s steady window, pin ${values.pin}; load average ${loadavg().map((x) => x.toFixed(2)).join(" ")}\n`);
  console.log("| mode | hold (ms) | µs per frame, each round | median | minus `none` (median) | kernel µs per frame (median) |");
  console.log("|---|---|---|---|---|---|");
  const median = (xs: number[]): number => (xs.length === 0 ? NaN : [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!);
  for (const hold of holds) {
    const base = median(rows.filter((r) => r.mode === "none" && r.hold === hold).map((r) => r.usPerFrame));
    for (const mode of modes) {
      const rs = rows.filter((r) => r.mode === mode && r.hold === hold);
      const med = median(rs.map((r) => r.usPerFrame));
      console.log(`| ${mode} | ${hold} | ${rs.map((r) => r.usPerFrame.toFixed(2)).join(", ")} | ${med.toFixed(2)} | ${Number.isNaN(base) ? "—" : (med - base).toFixed(2)} | ${median(rs.map((r) => r.sysUsPerFrame)).toFixed(2)} |`);
    }
  }
}

if (values.role === "sink") runSink();
else if (values.role === "writer") runWriter(values.mode, Number(values["hold-ms"]), values.upstream, Number(values.streams), Number(values.seconds), Number(values["warmup-s"]));
else
  main().then(
    () => process.exit(0),
    (e: unknown) => {
      process.stderr.write(`${String(e)}\n`);
      process.exit(1);
    },
  );
