/**
 * GATEWAY_PROCESSES: one gateway per CPU core on one port, with node:cluster.
 *
 * Why: a gateway process runs all its per-frame work on one JavaScript
 * thread, so one process uses one core of a many-core host. The gateway is
 * stateless across connections, so N identical processes behind the
 * cluster's shared listening socket serve N times the streams. The primary
 * only forks, hands out connections (round-robin, the cluster default on
 * Linux, so sessions spread evenly) and forwards signals; each child is a
 * complete gateway (its own worker pool, discovery, sessions, /readyz) built
 * by the ordinary composition root.
 *
 * Drain: SIGTERM or SIGINT to the primary goes to every child, each drains
 * its own sessions (its /readyz turns 503 at once) and exits; the primary
 * exits when all have, 0 when all exited 0. A child that dies after it was
 * listening is replaced (its clients reconnect, as after any gateway crash);
 * one that dies before it ever listened (port taken) stops the whole group
 * with status 1, instead of a restart loop.
 */
import cluster, { type Worker } from "node:cluster";
import os from "node:os";
import type { Logger } from "pino";

/** The message a child sends its primary once it listens. */
export const LISTENING_MESSAGE = "gateway:listening";

/** Resolves GATEWAY_PROCESSES: "auto" = one per core this process may use. */
export function processCount(setting: number | "auto"): number {
  return setting === "auto" ? Math.max(1, os.availableParallelism()) : setting;
}

/** How long a child waits for a SERVING worker before it listens anyway (then /readyz says 503). */
export const CHILD_READY_WAIT_MS = 10_000;

/** Whether this process is one gateway of a GATEWAY_PROCESSES group. */
export function isClusterChild(): boolean {
  return cluster.isWorker;
}

/** Whether this process should run as the primary of `count` gateway processes. */
export function isClusterPrimary(count: number): boolean {
  return count > 1 && cluster.isPrimary;
}

/** Tells the primary (if any) that this gateway process listens. */
export function reportListening(): void {
  if (cluster.isWorker) process.send?.(LISTENING_MESSAGE);
}

/** What the primary is given. */
export interface PrimaryDeps {
  /** Children to run. */
  count: number;
  /** Logger. */
  logger: Logger;
  /** Ends the primary (process.exit in production). */
  exit: (code: number) => void;
}

/** Forks and supervises the gateway processes (see module comment). */
export function runPrimary(deps: PrimaryDeps): void {
  const { count, logger } = deps;
  const listening = new WeakSet<Worker>();
  const alive = new Set<Worker>();
  let stopping = false;
  let worst = 0;

  const fork = (): void => {
    const w = cluster.fork();
    alive.add(w);
    w.on("message", (m: unknown) => {
      if (m === LISTENING_MESSAGE) listening.add(w);
    });
  };

  cluster.on("exit", (w, code, signal) => {
    const status = code ?? (signal !== null ? 1 : 0);
    alive.delete(w);
    if (stopping) {
      worst = Math.max(worst, status);
      if (alive.size === 0) {
        logger.info({ exit_code: worst }, "all gateway processes stopped");
        deps.exit(worst);
      }
      return;
    }
    if (!listening.has(w)) {
      logger.fatal({ pid: w.process.pid, code, signal }, "a gateway process failed at start; stopping all");
      stop("start failure", 1);
      return;
    }
    logger.error({ pid: w.process.pid, code, signal }, "a gateway process died; starting a replacement");
    fork();
  });

  const stop = (why: string, code = 0): void => {
    if (stopping) return;
    stopping = true;
    worst = code;
    logger.info({ reason: why, processes: alive.size }, "draining every gateway process");
    if (alive.size === 0) deps.exit(worst);
    for (const w of alive) w.process.kill("SIGTERM");
  };

  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  logger.info({ processes: count, pid: process.pid }, "starting gateway processes");
  for (let i = 0; i < count; i++) fork();
}
