/**
 * Starts the REAL Python worker (worker-py) as a subprocess for end-to-end
 * tests, and locates the shared test audio.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The repository root. */
export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
/** The worker's virtual environment interpreter. */
export const WORKER_PYTHON = path.join(REPO_ROOT, "worker-py", ".venv", "bin", "python");
/** Why e2e tests skip, or false when the worker can run. */
export const SKIP_REASON: string | false = existsSync(WORKER_PYTHON)
  ? false
  : "worker-py/.venv is absent (run scripts/setup.sh): the real worker cannot start";

/** Why tests that need the shared recordings skip, or false when they are present (as the worker tests do). */
export const AUDIO_SKIP_REASON: string | false = existsSync(sharedAudio("MANIFEST.json"))
  ? false
  : `shared audio not found at ${sharedAudio("")} (set ASR_SHARED_AUDIO)`;

/** Shared audio: ../shared/audio next to the checkout, or $ASR_SHARED_AUDIO. */
export function sharedAudio(rel: string): string {
  const base = process.env.ASR_SHARED_AUDIO ?? path.resolve(REPO_ROOT, "..", "shared", "audio");
  return path.join(base, rel);
}

/** A running worker process. */
export interface RealWorker {
  /** host:port from its LISTENING line. */
  address: string;
  /** The process. */
  child: ChildProcess;
  /** SIGTERM, then SIGKILL after 5 s. */
  stop(): Promise<void>;
}

/** Runs `python -m asr_worker <args>` in worker-py/ and resolves when it exits 0. */
export function runWorkerCli(args: string[], timeoutMs = 120_000): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(WORKER_PYTHON, ["-m", "asr_worker", ...args], { cwd: path.join(REPO_ROOT, "worker-py"), stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    const t = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("close", (code) => {
      clearTimeout(t);
      if (code === 0) resolve();
      else reject(new Error(`asr_worker ${args[0]} exited ${code}: ${err}`));
    });
  });
}

/**
 * Starts `asr_worker serve --listen 127.0.0.1:0 <args>` and resolves with the
 * address of its `LISTENING host:port` stdout line (other stdout lines, such
 * as library notices, are ignored).
 */
export function startRealWorker(args: string[], timeoutMs = 120_000): Promise<RealWorker> {
  return new Promise((resolve, reject) => {
    const child = spawn(WORKER_PYTHON, ["-m", "asr_worker", "serve", "--listen", "127.0.0.1:0", "--log-level", "warning", ...args], {
      cwd: path.join(REPO_ROOT, "worker-py"),
      env: { ...process.env, PYTHONUNBUFFERED: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr!.on("data", (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
    const t = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`worker did not print LISTENING within ${timeoutMs} ms: ${err}`));
    }, timeoutMs);
    child.on("exit", (code) => {
      clearTimeout(t);
      reject(new Error(`worker exited (${code}) before listening: ${err}`));
    });
    const rl = createInterface({ input: child.stdout! });
    rl.on("line", (line) => {
      const m = /^LISTENING (\S+:\d+)$/.exec(line.trim());
      if (m === null) return;
      clearTimeout(t);
      const stop = (): Promise<void> =>
        new Promise((res) => {
          if (child.exitCode !== null || child.signalCode !== null) return res();
          const k = setTimeout(() => child.kill("SIGKILL"), 5000);
          child.once("exit", () => {
            clearTimeout(k);
            res();
          });
          child.kill("SIGTERM");
        });
      resolve({ address: m[1]!, child, stop });
    });
  });
}
