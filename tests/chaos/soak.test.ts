/**
 * The short soak in CI: 100 real-time FunASR sessions at a time, opened back to back
 * for 80 s through a gateway process and a fake-engine worker (serve CLI), every
 * session checked exactly-once against a direct reference run; afterwards neither
 * process holds more file descriptors than before (leaked sockets, gRPC calls or
 * timers show up here first). The 30-minute, 200-stream version with the RSS slope
 * is bench/chaos/soak.ts; its figures are in docs/reliability.md.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { referenceRun, type TextReference } from "../../bench/chaos/lib/check.js";
import { startGateway, startWorker, type GatewayProc, type Proc } from "../../bench/chaos/lib/cluster.js";
import { CHAOS_FILES } from "../../bench/chaos/lib/files.js";
import { runSoak } from "../../bench/chaos/lib/soak.js";
import { AUDIO_SKIP_REASON, SKIP_REASON as WORKER_SKIP } from "../e2e/helpers/real-worker.js";

const SKIP_REASON = WORKER_SKIP || AUDIO_SKIP_REASON;
const STREAMS = Number(process.env.ASR_SOAK_STREAMS ?? 100);
const SECONDS = Number(process.env.ASR_SOAK_SECONDS ?? 80);

describe("short soak", { skip: SKIP_REASON, timeout: 400_000 }, () => {
  let worker: Proc;
  let gw: GatewayProc;
  let ref: TextReference;
  before(async () => {
    worker = await startWorker({ label: "worker", fronts: 1, maxStreams: 400, args: ["--max-batch-size", "32", "--fake-base-ms", "10", "--fake-per-item-ms", "0.5"] });
    ref = await referenceRun(worker.address, CHAOS_FILES, 60);
    gw = await startGateway("gateway", [worker.address]);
  });
  after(async () => {
    await gw?.stop();
    await worker?.stop();
  });

  test(`${STREAMS} sessions at a time for ${SECONDS} s: no error, every final exactly once, no descriptor left behind`, async () => {
    const r = await runSoak({
      url: gw.url,
      streams: STREAMS,
      durationMs: SECONDS * 1000,
      files: CHAOS_FILES,
      ref,
      procs: [
        { label: "gateway", pid: gw.pid },
        { label: "worker", pid: worker.pid },
      ],
      rampMs: 5000,
      sampleMs: 5000,
    });
    assert.ok(r.sessions >= STREAMS, `${r.sessions} sessions`);
    assert.deepEqual(r.errors, []);
    assert.equal(r.lost, 0);
    assert.equal(r.duplicates, 0);
    for (const p of r.procs) {
      // Every session closed: what is open now is what was open before the first one (± a
      // few for channels and lazily opened files).
      assert.ok(p.fdsEnd <= p.fdsStart + 4, `${p.label}: ${p.fdsStart} fds before, ${p.fdsEnd} after`);
    }
    assert.ok(!gw.logs.some((l) => Number(l.level) >= 50), JSON.stringify(gw.logs.filter((l) => Number(l.level) >= 50).slice(0, 3)));
  });
});
