/**
 * Composition root of the gateway: the only place that reads the environment
 * and wires config, logger, worker pool, file decoder and server together.
 *
 *   WORKER_ADDRESSES=127.0.0.1:50051 npm run gateway
 *
 * Exit codes: 0 after a graceful shutdown (SIGTERM/SIGINT), 1 when the port
 * cannot be bound, 2 on a bad configuration (one line on stderr says which).
 */
import { setFlagsFromString } from "node:v8";
import { Registry } from "prom-client";
import { createFileDecoder, findFfmpeg } from "./audio.js";
import { CHILD_READY_WAIT_MS, isClusterChild, isClusterPrimary, processCount, reportListening, runPrimary } from "./cluster.js";
import { ConfigError, loadConfig, type GatewayConfig } from "./config.js";
import { GatewayServer } from "./http.js";
import { systemResolver, WorkerDiscovery } from "./discovery.js";
import { createLogger } from "./log.js";
import { GatewayMetrics, serveClusterMetrics } from "./metrics.js";
import { DEFAULT_UI_DIR, UiSite } from "./ui.js";
import { WorkerPool } from "./workers.js";

/**
 * V8's old-generation growth over the live heap after a full GC, in percent.
 *
 * Why: the gateway's live heap is small (20-40 MB at 500 sessions) while it
 * allocates garbage per frame at a high rate, and V8 sizes the next full GC's
 * limit from the live size: at 500 paced streams it started incremental
 * marking every ~0.5 s (47 mark-compacts in 66 s, pauses and marking steps
 * of 5-24 ms — the p99 tail of the latency the gateway adds). With 300 %
 * the limit sits far enough above the live heap that full GCs come every
 * ~8 s: 8 mark-compacts in the same run, heap peak unchanged at ~43 MB,
 * ~20 % less CPU per frame and the uplink p99 at the direct path's
 * (docs/benchmarks.md). V8 reads the flag whenever it recomputes a limit,
 * so setting it at start-up works; an explicit --heap-growing-percent on the
 * command line wins.
 */
const HEAP_GROWING_PERCENT = 300;

async function main(): Promise<void> {
  if (!process.execArgv.some((a) => a.startsWith("--heap-growing-percent"))) setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  let config: GatewayConfig;
  try {
    config = loadConfig(process.env);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`gateway: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  const logger = createLogger(config.logLevel);
  const processes = processCount(config.processes);
  if (isClusterPrimary(processes)) {
    // GATEWAY_PROCESSES > 1: this process only supervises (and sums the children's metrics); each child runs the code below.
    serveClusterMetrics();
    runPrimary({ count: processes, logger, exit: (code) => process.exit(code) });
    return;
  }
  const ffmpeg = config.ffmpegEnabled ? findFfmpeg() : null;
  const pool = new WorkerPool([], logger, { mux: config.workerMux !== "off" });
  pool.start();
  // WORKER_ADDRESSES names may stand for many workers (headless Service, compose --scale): see discovery.ts.
  const discovery = new WorkerDiscovery({
    targets: config.workerAddresses,
    resolve: systemResolver,
    refreshMs: config.workerDnsRefreshSeconds * 1000,
    onAddresses: (addresses) => pool.setAddresses(addresses),
    logger,
  });
  await discovery.start();
  // In a GATEWAY_PROCESSES group the primary hands connections to a process as soon as it
  // listens, whatever its /readyz says: give it a few seconds to see a SERVING worker first.
  if (isClusterChild()) await pool.waitForServing(CHILD_READY_WAIT_MS);
  const metrics = new GatewayMetrics({
    registry: new Registry(),
    servingWorkers: () => pool.servingCount(),
    workerTransport: pool,
    clusterChild: processes > 1,
  });
  const server = new GatewayServer({ config, workers: pool, decoder: createFileDecoder(ffmpeg), logger, ui: new UiSite(DEFAULT_UI_DIR), metrics });
  let addr;
  try {
    addr = await server.listen();
  } catch (e) {
    logger.fatal({ err: e }, "cannot listen");
    discovery.stop();
    pool.close();
    process.exit(1);
  }
  logger.info(
    {
      host: addr.address,
      port: addr.port,
      pid: process.pid,
      tls: config.tlsCert !== undefined,
      workers: config.workerAddresses,
      is_final_mode: config.isFinalMode,
      online_mode: config.onlineMode,
      auth: config.authToken !== undefined,
      ffmpeg: ffmpeg !== null,
    },
    "gateway listening",
  );
  reportListening();

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, sessions: server.sessions.size, grace_s: config.shutdownGraceSeconds }, "draining");
    void server
      .shutdown(config.shutdownGraceSeconds * 1000)
      .then(() => {
        discovery.stop();
        pool.close();
        logger.info({ pid: process.pid }, "stopped");
        logger.flush?.();
        process.exit(0);
      });
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

void main();
