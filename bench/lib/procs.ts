/** Starting and stopping the servers under test (worker, stub worker, gateway). */
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { createServer } from "node:net";
import { credentials, Metadata } from "@grpc/grpc-js";
import { REPO_ROOT } from "./audio.js";
import { HealthCheckResponse_ServingStatus, HealthClient } from "../../gateway/src/gen/grpc/health/v1/health.js";

export interface Server {
  proc: ChildProcess;
  pid: number;
  address: string;
  stop(): Promise<void>;
}

/** Wraps a command in `taskset -c CPUS` when cpus is given. */
export function pinned(cpus: string | undefined, cmd: string, args: string[]): [string, string[]] {
  return cpus ? ["taskset", ["-c", cpus, cmd, ...args]] : [cmd, args];
}

/** Pins this process (the load generator) to CPUS. */
export function pinSelf(cpus: string | undefined): void {
  if (cpus) execFileSync("taskset", ["-cp", cpus, String(process.pid)], { stdio: "ignore" });
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      const port = typeof a === "object" && a ? a.port : 0;
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

function stopper(proc: ChildProcess): () => Promise<void> {
  return () =>
    new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
      const t = setTimeout(() => proc.kill("SIGKILL"), 10_000);
      proc.once("exit", () => {
        clearTimeout(t);
        resolve();
      });
      proc.kill("SIGTERM");
    });
}

/** Spawns a server that prints `LISTENING host:port` on stdout; resolves once it has. */
export function spawnListening(label: string, cmd: string, args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 120_000): Promise<Server> {
  return new Promise((resolve, reject) => {
    const proc = spawn(cmd, args, { cwd: REPO_ROOT, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let buf = "";
    let err = "";
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`${label}: no LISTENING line within ${timeoutMs} ms\n${err.slice(-2000)}`));
    }, timeoutMs);
    proc.stderr!.on("data", (d: Buffer) => {
      err = (err + d.toString()).slice(-8000);
    });
    proc.stdout!.on("data", (d: Buffer) => {
      buf += d.toString();
      const m = /LISTENING (\S+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        proc.stdout!.removeAllListeners("data");
        proc.stdout!.resume();
        resolve({ proc, pid: proc.pid!, address: m[1]!, stop: stopper(proc) });
      }
    });
    proc.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${label} exited with ${code}\n${err.slice(-2000)}`));
    });
  });
}

/** Waits until grpc.health.v1 reports SERVING for the overall service. */
export async function waitServing(address: string, timeoutMs = 300_000): Promise<void> {
  const client = new HealthClient(address, credentials.createInsecure());
  const deadline = Date.now() + timeoutMs;
  try {
    for (;;) {
      const ok = await new Promise<boolean>((resolve) =>
        client.check({ service: "" }, new Metadata(), { deadline: Date.now() + 2000 }, (e, r) =>
          resolve(!e && r?.status === HealthCheckResponse_ServingStatus.SERVING),
        ),
      );
      if (ok) return;
      if (Date.now() > deadline) throw new Error(`worker ${address} not SERVING after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 250));
    }
  } finally {
    client.close();
  }
}

/** Starts the gateway (`gateway/src/main.ts` of `root`, default this checkout) and waits for /readyz. */
export async function startGateway(
  workers: string,
  cpus: string | undefined,
  extraEnv: Record<string, string>,
  nodeArgs: string[] = [],
  root: string = REPO_ROOT,
): Promise<Server> {
  const port = await freePort();
  const [cmd, args] = pinned(cpus, process.execPath, [...nodeArgs, "--import", "tsx", "gateway/src/main.ts"]);
  const env = { GATEWAY_PORT: String(port), WORKER_ADDRESSES: workers, LOG_LEVEL: "warn", ...extraEnv };
  // BENCH_GATEWAY_STDOUT=FILE keeps what the gateway prints on stdout, e.g. V8's --trace-gc lines
  // (--gateway-node-arg=--trace-gc), which say why each collection ran.
  const stdoutFile = process.env.BENCH_GATEWAY_STDOUT;
  const stdout = stdoutFile ? openSync(stdoutFile, "a") : "ignore";
  const proc = spawn(cmd, args, { cwd: root, env: { ...process.env, ...env }, stdio: ["ignore", stdout, "pipe"] });
  if (typeof stdout === "number") closeSync(stdout);
  let err = "";
  proc.stderr!.on("data", (d: Buffer) => {
    err = (err + d.toString()).slice(-8000);
  });
  const deadline = Date.now() + 60_000;
  // Several ready answers in a row: with GATEWAY_PROCESSES=N, connections go round-robin to
  // N processes, and every one of them must be ready.
  let oks = 0;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`gateway exited with ${proc.exitCode}\n${err}`);
    try {
      const r = await fetch(`http://127.0.0.1:${port}/readyz`, { headers: { Connection: "close" } });
      oks = r.ok ? oks + 1 : 0;
      if (oks >= 8) break;
      if (oks > 0) continue;
    } catch {
      oks = 0;
    }
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`gateway not ready on ${port} within 60 s\n${err}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  // With taskset the child is taskset, which execs node: same pid.
  return { proc, pid: proc.pid!, address: `127.0.0.1:${port}`, stop: stopper(proc) };
}
