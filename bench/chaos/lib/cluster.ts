/**
 * The system under test, started through its external interfaces only: fake-engine
 * workers via `python -m asr_worker serve` (optionally inside a network namespace),
 * gateways via `gateway/src/main.ts` with their JSON logs captured, and faults
 * delivered as signals to whole process trees (a worker is a supervisor plus its
 * engine and front processes). Nothing here imports gateway or worker internals,
 * so the harness keeps working while their insides change.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, readdirSync, readFileSync, readlinkSync } from "node:fs";
import path from "node:path";
import { REPO_ROOT } from "../../lib/audio.js";
import { freePort, waitServing } from "../../lib/procs.js";
import type { Netns } from "./netns.js";

/** A started server process (worker or gateway). */
export interface Proc {
  readonly label: string;
  readonly proc: ChildProcess;
  readonly pid: number;
  /** host:port it serves on. */
  readonly address: string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when it exited (idempotent). */
  stop(graceMs?: number): Promise<void>;
}

/** A gateway with its captured log lines (pino JSON, parsed). */
export interface GatewayProc extends Proc {
  /** Every log line at the level it was started with, parsed. */
  readonly logs: Record<string, unknown>[];
  readonly url: string;
}

/** Every descendant of `pid` (children first found through /proc/PID/task/TID/children). */
export function descendants(pid: number): number[] {
  const out: number[] = [];
  const walk = (p: number): void => {
    let tids: string[] = [];
    try {
      tids = readdirSync(`/proc/${p}/task`);
    } catch {
      return;
    }
    for (const tid of tids) {
      let kids = "";
      try {
        kids = readFileSync(`/proc/${p}/task/${tid}/children`, "utf8");
      } catch {
        continue;
      }
      for (const k of kids.split(/\s+/).filter(Boolean).map(Number)) {
        out.push(k);
        walk(k);
      }
    }
  };
  walk(pid);
  return out;
}

/** Sends `signal` to `pid` and all its descendants (leaves first, so none respawns a child). */
export function signalTree(pid: number, signal: NodeJS.Signals): number[] {
  const all = [pid, ...descendants(pid)];
  for (const p of [...all].reverse()) {
    try {
      process.kill(p, signal);
    } catch {
      /* already gone */
    }
  }
  return all;
}

/**
 * The engine process of a worker started with `--front-processes 1`: the supervisor
 * starts front 0 first, then the engine (worker-py/asr_worker/supervisor.py), so it is
 * the second child by start time that is not multiprocessing's resource tracker.
 */
export function engineProcess(workerPid: number): number | null {
  const kids = descendants(workerPid).filter((p) => {
    try {
      return !readFileSync(`/proc/${p}/cmdline`, "utf8").includes("resource_tracker");
    } catch {
      return false;
    }
  });
  const started = (p: number): number => {
    const stat = readFileSync(`/proc/${p}/stat`, "utf8");
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19]);
  };
  const sorted = kids.map((p) => [p, started(p)] as const).sort((x, y) => x[1] - y[1]);
  return sorted.length >= 2 ? sorted[1]![0] : null;
}

/** Open file descriptors of a process (null when it is gone). */
export function fdCount(pid: number): number | null {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return null;
  }
}

/** Open sockets among a process's file descriptors. */
export function socketCount(pid: number): number | null {
  try {
    let n = 0;
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith("socket:")) n++;
      } catch {
        /* closed meanwhile */
      }
    }
    return n;
  } catch {
    return null;
  }
}

/** Resident set size in KiB (null when gone). */
export function rssKiB(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

function stopper(proc: ChildProcess): (graceMs?: number) => Promise<void> {
  return (graceMs = 10_000) =>
    new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
      const t = setTimeout(() => proc.kill("SIGKILL"), graceMs);
      proc.once("exit", () => {
        clearTimeout(t);
        resolve();
      });
      proc.kill("SIGTERM");
    });
}

/** Options of one fake-engine worker. */
export interface WorkerOptions {
  label: string;
  /** Run it inside this namespace (listening on its address) instead of on 127.0.0.1. */
  netns?: Netns;
  maxStreams?: number;
  /** Front processes beside the engine process (the serve CLI's --front-processes). */
  fronts?: number;
  /** Extra `serve` flags. */
  args?: string[];
  env?: Record<string, string>;
  /** Append the worker's stderr (its log) to this file. */
  logFile?: string;
}

/** Starts `python -m asr_worker serve --engine fake` and waits until it is SERVING. */
export async function startWorker(o: WorkerOptions): Promise<Proc> {
  const py = path.join(REPO_ROOT, "worker-py", ".venv", "bin", "python");
  const host = o.netns ? o.netns.nsIp : "127.0.0.1";
  const serve = [
    "-m", "asr_worker", "serve", "--engine", "fake", "--listen", `${host}:0`,
    "--max-streams", String(o.maxStreams ?? 400), "--log-level", "warning",
    ...(o.fronts !== undefined ? ["--front-processes", String(o.fronts)] : []),
    ...(o.args ?? []),
  ];
  // `ip netns exec` execs the command after entering the namespace: the pid stays the worker's.
  const [cmd, args] = o.netns ? ["ip", ["netns", "exec", o.netns.name, py, ...serve]] : [py, serve];
  const proc = spawn(cmd, args as string[], { cwd: REPO_ROOT, env: { ...process.env, ...(o.env ?? {}) }, stdio: ["ignore", "pipe", "pipe"] });
  const logFile = o.logFile ? createWriteStream(o.logFile, { flags: "a" }) : undefined;
  let tail = "";
  proc.stderr!.on("data", (d: Buffer) => {
    tail = (tail + d.toString()).slice(-4000);
    logFile?.write(d);
  });
  proc.once("exit", () => logFile?.end());
  const address = await new Promise<string>((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`${o.label}: no LISTENING line within 120 s\n${tail}`));
    }, 120_000);
    const onExit = (code: number | null): void => {
      clearTimeout(timer);
      reject(new Error(`${o.label} exited with ${code}\n${tail}`));
    };
    proc.once("exit", onExit);
    proc.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = /LISTENING (\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        proc.off("exit", onExit);
        proc.stdout!.removeAllListeners("data");
        proc.stdout!.resume();
        resolve(m[1]!);
      }
    });
  });
  await waitServing(address, 120_000);
  return { label: o.label, proc, pid: proc.pid!, address, stop: stopper(proc) };
}

/** Starts a gateway (`node --import tsx gateway/src/main.ts`) and waits for /readyz. */
export async function startGateway(label: string, workers: string[], env: Record<string, string> = {}): Promise<GatewayProc> {
  const port = await freePort();
  const proc = spawn(process.execPath, ["--import", "tsx", "gateway/src/main.ts"], {
    cwd: REPO_ROOT,
    env: { ...process.env, GATEWAY_HOST: "127.0.0.1", GATEWAY_PORT: String(port), WORKER_ADDRESSES: workers.join(","), LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: Record<string, unknown>[] = [];
  let tail = "";
  const take = (d: Buffer): void => {
    tail += d.toString();
    const lines = tail.split("\n");
    tail = lines.pop() ?? "";
    for (const l of lines) {
      if (!l.startsWith("{")) continue;
      try {
        logs.push(JSON.parse(l) as Record<string, unknown>);
      } catch {
        /* not a log line */
      }
    }
  };
  proc.stdout!.on("data", take);
  proc.stderr!.on("data", take);
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`${label} exited with ${proc.exitCode}: ${JSON.stringify(logs.slice(-3))}`);
    try {
      if ((await fetch(`http://127.0.0.1:${port}/readyz`)).ok) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`${label} not ready on ${port} within 60 s`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const address = `127.0.0.1:${port}`;
  return { label, proc, pid: proc.pid!, address, url: `ws://${address}/`, logs, stop: stopper(proc) };
}
