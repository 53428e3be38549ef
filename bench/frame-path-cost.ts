/**
 * CPU per paced frame of the gateway's own audio path alone: what the worker
 * link does with each client frame before the call writer gets it — the
 * replay buffer's copy and the framed gRPC request (gateway/src/replay.ts,
 * wire.ts) — for several gateway checkouts, alternating in one process.
 *
 * Why a separate benchmark: that path is a few µs of the gateway's ~35 µs
 * per paced frame, well inside the ±3-5 µs that whole-gateway runs
 * (bench/gateway-overhead.ts) spread from run to run (docs/benchmarks.md).
 * Here S sessions each get one 1,920-byte frame in turn, as S paced clients'
 * frames arrive, so each session's slab is as cold as in the gateway; every
 * request is held until S more frames were pushed (as a writer holds it for a
 * few ms) and each session gets a final every 3 s of its audio, 0.6 s behind
 * its newest frame, so slabs are freed and reused as in a paced run. CPU is
 * the process's (user + system, GC included) over the timed frames.
 *
 *   node --import tsx bench/frame-path-cost.ts --roots OLD_ROOT,NEW_ROOT [--sessions 500] [--frames 2000000] [--rounds 3]
 *
 * A root is a checkout (or `git archive` of one) with node_modules beside it;
 * its gateway/src/replay.ts push() either returns the framed request (frames
 * in the slab) or not (then wire.ts framedAudioRequest frames a copy, as the
 * link did before).
 */
import path from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    roots: { type: "string", default: "." },
    sessions: { type: "string", default: "500" },
    frames: { type: "string", default: "2000000" },
    rounds: { type: "string", default: "3" },
  },
});

const FRAME_BYTES = 1920;
const RATE = 16000;
/** Frames per session between finals: 3 s of 60 ms frames. */
const FINAL_EVERY = 50;

interface Replay {
  push(pcm: Buffer, rate: number): unknown;
  finalDelivered(segmentId: number, endMs: number): void;
  readonly audioMs: number;
}

interface Impl {
  root: string;
  newReplay: () => Replay;
  /** One frame through the path: the request the writer would get. */
  frame: (r: Replay, pcm: Buffer) => Buffer;
}

async function load(root: string): Promise<Impl> {
  const abs = path.resolve(root);
  const replay = (await import(pathToFileURL(path.join(abs, "gateway/src/replay.ts")).href)) as {
    ReplayBuffer: new (seconds: number) => Replay;
  };
  const wire = (await import(pathToFileURL(path.join(abs, "gateway/src/wire.ts")).href)) as {
    framedAudioRequest: (pcm: Uint8Array, rate: number) => Buffer;
  };
  const probe = new replay.ReplayBuffer(60).push(Buffer.alloc(FRAME_BYTES), RATE);
  const framesInSlab = Buffer.isBuffer(probe);
  return {
    root,
    newReplay: () => new replay.ReplayBuffer(60),
    frame: framesInSlab
      ? (r, pcm) => r.push(pcm, RATE) as Buffer
      : (r, pcm) => {
          r.push(pcm, RATE);
          return wire.framedAudioRequest(pcm, RATE);
        },
  };
}

function run(impl: Impl, sessions: number, frames: number): number {
  const replays = Array.from({ length: sessions }, () => impl.newReplay());
  // Received frames: a few warm buffers, as a ws read's frames are warm when the handler runs.
  const received = Array.from({ length: 64 }, (_, i) => Buffer.alloc(FRAME_BYTES, i));
  const held: Buffer[] = new Array<Buffer>(sessions);
  const counts = new Int32Array(sessions);
  const step = (i: number): void => {
    const s = i % sessions;
    const r = replays[s]!;
    held[s] = impl.frame(r, received[i & 63]!);
    if (++counts[s]! % FINAL_EVERY === 0) r.finalDelivered(counts[s]!, r.audioMs - 600);
  };
  // Warm-up: every session past its first finals, so slabs are being reused.
  const warm = sessions * FINAL_EVERY * 3;
  for (let i = 0; i < warm; i++) step(i);
  const t0 = process.cpuUsage();
  for (let i = warm; i < warm + frames; i++) step(i);
  const d = process.cpuUsage(t0);
  if (held.length !== sessions) throw new Error("unreachable");
  return ((d.user + d.system) * 1000) / frames;
}

async function main(): Promise<void> {
  const impls = await Promise.all(args.roots.split(",").map(load));
  const sessions = Number(args.sessions);
  const frames = Number(args.frames);
  const results = new Map<string, number[]>(impls.map((i) => [i.root, []]));
  for (let round = 0; round < Number(args.rounds); round++) {
    // Alternate the order from round to round so neither side always runs on a fresh heap.
    const order = round % 2 === 0 ? impls : [...impls].reverse();
    for (const impl of order) {
      const ns = run(impl, sessions, frames);
      results.get(impl.root)!.push(ns);
      console.error(`round ${round + 1} ${impl.root}: ${ns.toFixed(0)} ns per frame`);
    }
  }
  for (const [root, ns] of results) {
    const sorted = [...ns].sort((a, b) => a - b);
    console.log(`${root}\t${sessions} sessions\tns per frame: ${ns.map((n) => n.toFixed(0)).join(", ")}\tmedian ${sorted[Math.floor(sorted.length / 2)]!.toFixed(0)}`);
  }
}

await main();
