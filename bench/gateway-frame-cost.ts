/**
 * Gateway CPU per frame, saturated: S FunASR sessions push 60 ms frames of
 * real speech through the gateway to the stub worker as fast as the
 * gateway takes them (each client keeps ≤ 64 KiB queued), and the gateway's
 * CPU time (utime + stime of all its processes, from /proc) is divided by
 * the frames it forwarded. Results (partials, finals) flow back as usual.
 *
 * Why besides bench:gateway: paced runs read CPU over wall time, and on a
 * shared, busy machine a starved gateway batches more work per wake-up, so
 * its per-frame cost moves with everyone else's load. Saturated, the gateway
 * is always batching as much as it can, whatever share of a core it gets,
 * so two gateways (this checkout and `--gateway-root` another) compare
 * fairly even here. It is a lower bound of the paced per-frame cost.
 *
 *   node --import tsx bench/gateway-frame-cost.ts [--sessions 50] [--seconds 20] [--rounds 3] [--gateway-root /tmp/gw-old]
 *   node --import tsx bench/gateway-frame-cost.ts --compare-env GATEWAY_PROCESSES=2
 *
 * With --gateway-root (another checkout) or --compare-env (this checkout with
 * more environment), each round measures both variants, alternating order.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import WebSocket from "ws";
import { frames, loadAudio, REPO_ROOT } from "./lib/audio.js";
import { pinned, spawnListening, startGateway, waitServing, type Server } from "./lib/procs.js";

const { values } = parseArgs({
  options: {
    sessions: { type: "string", default: "50" },
    seconds: { type: "string", default: "20" },
    rounds: { type: "string", default: "3" },
    "gateway-root": { type: "string" },
    "gateway-env": { type: "string", multiple: true, default: [] },
    "compare-env": { type: "string", multiple: true, default: [] },
    file: { type: "string", default: "zh/long.wav" },
    pin: { type: "string", default: "" },
  },
});
const S = Number(values.sessions);
const SECONDS = Number(values.seconds);
const pins = Object.fromEntries(values.pin.split(",").filter(Boolean).map((kv) => kv.split("=") as [string, string])) as Record<string, string>;
const log = (s: string): void => void process.stderr.write(`[frame-cost] ${s}\n`);

/** CPU seconds of a process and its children (a GATEWAY_PROCESSES cluster). */
function treeCpu(pid: number): number {
  let kids: number[] = [];
  try {
    kids = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    // gone or not Linux
  }
  let cpu = 0;
  try {
    const rest = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = rest.slice(rest.lastIndexOf(")") + 2).split(" ");
    cpu = (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    // gone
  }
  return cpu + kids.reduce((a, k) => a + treeCpu(k), 0);
}

/** One session pushing frames until `stopAt`; resolves with frames sent once its round is acknowledged. */
function pushSession(url: string, audio: Buffer[], stopAt: number, offset: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    let sent = 0;
    let i = offset;
    const pump = (): void => {
      while (ws.readyState === WebSocket.OPEN && ws.bufferedAmount < 64 * 1024) {
        if (performance.now() >= stopAt) {
          ws.send(JSON.stringify({ is_speaking: false, is_end: true }));
          ws.off("drain", pump);
          return;
        }
        ws.send(audio[i % audio.length]!);
        i++;
        sent++;
      }
      setImmediate(pump);
    };
    ws.on("open", () => {
      ws.send(JSON.stringify({ mode: "2pass", wav_name: "cost", chunk_size: [5, 10, 5], itn: true }));
      pump();
    });
    ws.on("message", (d: Buffer) => {
      const m = JSON.parse(d.toString()) as { is_end?: boolean; error?: string };
      if (m.error !== undefined) reject(new Error(m.error));
      if (m.is_end === true) {
        ws.close();
        resolve(sent);
      }
    });
    ws.on("error", reject);
  });
}

async function measure(label: string, gateway: Server, audio: Buffer[]): Promise<number> {
  const url = `ws://${gateway.address}/`;
  const stopAt = performance.now() + SECONDS * 1000;
  const cpu0 = treeCpu(gateway.pid);
  const counts = await Promise.all(Array.from({ length: S }, (_, k) => pushSession(url, audio, stopAt, k * 37)));
  const cpu = treeCpu(gateway.pid) - cpu0;
  const framesSent = counts.reduce((a, b) => a + b, 0);
  const us = (cpu / framesSent) * 1e6;
  log(`${label}: ${framesSent} frames in ${SECONDS} s (${Math.round(framesSent / SECONDS)}/s), gateway CPU ${cpu.toFixed(2)} s (${(cpu / SECONDS).toFixed(2)} cores) -> ${us.toFixed(1)} µs/frame`);
  return us;
}

async function main(): Promise<void> {
  const audio = frames(loadAudio([values.file])[0]!, 60);
  const [cmd, args] = pinned(pins.worker, process.execPath, ["--import", "tsx", "bench/stub-worker.ts", "--listen", "127.0.0.1:0", "--cost-ms", "5"]);
  const worker = await spawnListening("stub worker", cmd, args);
  await waitServing(worker.address);
  const kv = (xs: string[]): Record<string, string> => Object.fromEntries(xs.map((x) => x.split("=", 2) as [string, string]));
  const env = { MAX_SESSIONS: String(S * 2 + 16), ...kv(values["gateway-env"] as string[]) };
  const compare = values["compare-env"] as string[];
  const roots: Array<[string, string, Record<string, string>]> = [["this checkout", REPO_ROOT, env]];
  if (values["gateway-root"] !== undefined) roots.push([values["gateway-root"], values["gateway-root"], env]);
  if (compare.length > 0) roots.push([`this checkout, ${compare.join(" ")}`, REPO_ROOT, { ...env, ...kv(compare) }]);
  const results = new Map<string, number[]>(roots.map(([l]) => [l, []]));
  try {
    for (let r = 0; r < Number(values.rounds); r++) {
      const order = r % 2 === 0 ? roots : [...roots].reverse();
      for (const [label, root, gwEnv] of order) {
        const gw = await startGateway(worker.address, pins.gateway, gwEnv, [], root);
        try {
          results.get(label)!.push(await measure(`round ${r + 1}, ${label}`, gw, audio));
        } finally {
          await gw.stop();
        }
      }
    }
  } finally {
    await worker.stop();
  }
  process.stdout.write(`| gateway | sessions | µs/frame per round | median |\n|---|---|---|---|\n`);
  for (const [label, xs] of results) {
    const sorted = [...xs].sort((a, b) => a - b);
    process.stdout.write(`| ${label} | ${S} | ${xs.map((x) => x.toFixed(1)).join(", ")} | ${sorted[Math.floor(sorted.length / 2)]!.toFixed(1)} |\n`);
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`gateway-frame-cost: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
