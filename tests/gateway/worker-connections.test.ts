/**
 * Streams one gateway places on one worker address spread over the worker's
 * front processes: the real Python worker (fake engine, two fronts sharing
 * its port) over real sockets, and WorkerConnections in front of it.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { credentials } from "@grpc/grpc-js";
import { createLogger } from "../../gateway/src/log.js";
import { StreamingRecognizeRequest, type AsrClient, type LoadReport } from "../../gateway/src/gen/asr/v1/asr.js";
import { FastAsrClient, framedRequest } from "../../gateway/src/wire.js";
import { WorkerConnections } from "../../gateway/src/worker-connections.js";
import { WorkerPool } from "../../gateway/src/workers.js";
import { SKIP_REASON, startRealWorker, type RealWorker } from "../e2e/helpers/real-worker.js";

const logger = createLogger("silent");

async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function report(client: AsrClient): Promise<LoadReport> {
  return new Promise((resolve, reject) => {
    const call = client.watchLoad({ intervalMs: 100 });
    call.on("data", (r: LoadReport) => {
      call.cancel();
      resolve(r);
    });
    call.on("error", (e: Error & { code?: number }) => {
      if (e.code !== 1) reject(e); // 1 = CANCELLED by us
    });
  });
}

describe("worker connections", { skip: SKIP_REASON }, () => {
  let worker: RealWorker;
  before(async () => {
    worker = await startRealWorker(["--engine", "fake", "--front-processes", "2"]);
  });
  after(async () => {
    await worker?.stop();
  });

  test("the streams of one gateway channel spread evenly over the worker's fronts", { timeout: 120_000 }, async () => {
    const own = () => new FastAsrClient(worker.address, credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 });
    const primary = own();
    const spread = new WorkerConnections(primary, own, logger, { loadIntervalMs: 100 });
    const probe = own();
    try {
      await until(async () => (await report(probe)).accepting, 60_000, "the worker to accept streams");
      spread.start();
      await until(() => spread.coveredFronts().length === 2, 30_000, "connections to both fronts");
      const calls = [];
      const errors: string[] = [];
      for (let i = 0; i < 20; i++) {
        const call = spread.streamingRecognize();
        call.on("error", (e: Error) => errors.push(e.message));
        call.write(StreamingRecognizeRequest.fromPartial({ streamingRequest: { $case: "config", value: { sampleRateHz: 16000 } } }));
        calls.push(call);
      }
      let last: LoadReport | null = null;
      await until(async () => {
        last = await report(probe);
        return last.activeStreams === 20;
      }, 20_000, "20 open streams").catch((e) => assert.fail(`${e} last=${JSON.stringify(last)} errors=${errors.slice(0, 3).join("; ")}`));
      const perFront = [...last!.frontStreams];
      assert.equal(perFront.length, 2, `two fronts: ${JSON.stringify(perFront)}`);
      assert.ok(Math.abs(perFront[0]! - perFront[1]!) <= 2, `even spread: ${JSON.stringify(perFront)}`);
      for (const c of calls) c.end();
      await until(async () => (await report(probe)).activeStreams === 0, 20_000, "streams to end");
    } finally {
      spread.close();
      primary.close();
      probe.close();
    }
  });

  for (const mux of [false, true]) {
  test(`a gateway's worker pool places the sessions it sends to one worker evenly on its fronts (${mux ? "sessions of one mux call per connection" : "a call per session"})`, { timeout: 120_000 }, async () => {
    const pool = new WorkerPool([worker.address], logger, { loadIntervalMs: 100, minBackoffMs: 50, maxBackoffMs: 300 });
    const probe = new FastAsrClient(worker.address, credentials.createInsecure(), { "grpc.use_local_subchannel_pool": 1 });
    pool.start();
    try {
      await until(() => pool.servingCount() === 1, 60_000, "the worker to be serving");
      // Give the pool time to reach both fronts (it opens extra connections as reports come in).
      await new Promise((r) => setTimeout(r, 1500));
      const calls: Array<{ end(): void }> = [];
      const config = StreamingRecognizeRequest.fromPartial({ streamingRequest: { $case: "config", value: { sampleRateHz: 16000 } } });
      for (let i = 0; i < 30; i++) {
        const lease = pool.acquire();
        assert.ok(lease !== null, "a lease");
        if (mux) {
          const t = lease.openSession({ onResponse: () => {}, onEnd: () => {}, onDrain: () => {} });
          assert.equal(t.writerPath, "mux");
          t.request(framedRequest(config));
          calls.push({ end: () => t.close() });
        } else {
          const call = lease.open();
          call.on("error", () => {});
          call.write(config);
          calls.push(call);
        }
      }
      let last: LoadReport | null = null;
      await until(async () => {
        last = await report(probe);
        return last.activeStreams === 30;
      }, 20_000, "30 open streams");
      const perFront = [...last!.frontStreams];
      assert.ok(Math.abs(perFront[0]! - perFront[1]!) <= 3, `even spread: ${JSON.stringify(perFront)}`);
      // One mux call on each of the two connections, none for the per-call sessions.
      assert.deepEqual(pool.muxStats(worker.address).map((m) => m.calls), mux ? [1, 1] : []);
      for (const c of calls) c.end();
    } finally {
      pool.close();
      probe.close();
    }
  });
  }
});
