/**
 * Workers found by DNS: a name in WORKER_ADDRESSES stands for every address
 * it resolves to, re-resolved periodically. The resolver is the test's own;
 * the workers are real grpc-js servers on 127.0.0.1 and 127.0.0.2 sharing
 * one port, as replicas behind a headless Service would.
 */
import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import { describe, test } from "node:test";
import { createFileDecoder } from "../../gateway/src/audio.js";
import { loadConfig } from "../../gateway/src/config.js";
import { WorkerDiscovery, splitTarget, type Resolver } from "../../gateway/src/discovery.js";
import { GatewayServer } from "../../gateway/src/http.js";
import { createLogger } from "../../gateway/src/log.js";
import { WorkerPool } from "../../gateway/src/workers.js";
import { finals, pcm, TestClient } from "./helpers/harness.js";
import { ScriptedWorker } from "./helpers/scripted-worker.js";
import { until } from "./helpers/grpc-test.js";

const logger = createLogger("silent");

/** A resolver whose answers the test sets, counting lookups. */
function controlledResolver(initial: Record<string, string[]>): Resolver & { set(host: string, ips: string[] | Error): void; lookups: number } {
  const table = new Map<string, string[] | Error>(Object.entries(initial));
  const r = (async (host: string) => {
    r.lookups++;
    const v = table.get(host);
    if (v === undefined) throw new Error(`ENOTFOUND ${host}`);
    if (v instanceof Error) throw v;
    return v;
  }) as Resolver & { set(host: string, ips: string[] | Error): void; lookups: number };
  r.lookups = 0;
  r.set = (host, ips) => void table.set(host, ips);
  return r;
}

describe("worker discovery", () => {
  test("names expand to one address per answer, IP literals pass through, and only changes are reported", async () => {
    const resolve = controlledResolver({ "asr-worker.svc": ["10.0.0.2", "10.0.0.1"], v6only: ["fd00::1"] });
    const seen: string[][] = [];
    const d = new WorkerDiscovery({
      targets: ["asr-worker.svc:50051", "192.168.1.9:50052", "[::1]:50053", "v6only:7"],
      resolve,
      refreshMs: 0,
      onAddresses: (a) => void seen.push([...a]),
      logger,
    });
    await d.start();
    await d.refresh();
    assert.deepEqual(seen, [["10.0.0.1:50051", "10.0.0.2:50051", "192.168.1.9:50052", "[::1]:50053", "[fd00::1]:7"]]);
    resolve.set("asr-worker.svc", ["10.0.0.3"]);
    await d.refresh();
    assert.deepEqual(seen[1], ["10.0.0.3:50051", "192.168.1.9:50052", "[::1]:50053", "[fd00::1]:7"]);
    assert.deepEqual(splitTarget("[fd00::1]:7"), { host: "fd00::1", port: "7" });
  });

  test("a failed lookup keeps the name's previous addresses instead of emptying the pool", async () => {
    const resolve = controlledResolver({ w: ["10.0.0.1"] });
    const seen: string[][] = [];
    const d = new WorkerDiscovery({ targets: ["w:1"], resolve, refreshMs: 0, onAddresses: (a) => void seen.push([...a]), logger });
    await d.start();
    resolve.set("w", new Error("EAI_AGAIN"));
    await d.refresh();
    resolve.set("w", []);
    await d.refresh();
    assert.deepEqual(seen, [["10.0.0.1:1"]]);
  });

  test("re-resolves every refresh interval", async () => {
    const resolve = controlledResolver({ w: ["10.0.0.1"] });
    const d = new WorkerDiscovery({ targets: ["w:1"], resolve, refreshMs: 30, onAddresses: () => {}, logger });
    await d.start();
    await until(() => resolve.lookups >= 4, "periodic lookups");
    d.stop();
  });

  test("a worker that appears gets sessions; one that vanishes leaves placement and its session fails over with nothing lost", async () => {
    const a = await new ScriptedWorker().start(0, "127.0.0.1");
    const port = Number(a.address.split(":")[1]);
    const b = await new ScriptedWorker().start(port, "127.0.0.2");
    const resolve = controlledResolver({ "asr-worker.test": ["127.0.0.1"] });
    const config = loadConfig({ GATEWAY_PORT: "0", GATEWAY_HOST: "127.0.0.1", WORKER_ADDRESSES: `asr-worker.test:${port}`, LOG_LEVEL: "silent" });
    const pool = new WorkerPool([], logger, { minBackoffMs: 50, maxBackoffMs: 300, loadIntervalMs: 200 });
    pool.start();
    const discovery = new WorkerDiscovery({
      targets: config.workerAddresses,
      resolve,
      refreshMs: 50,
      onAddresses: (addresses) => pool.setAddresses(addresses),
      logger,
    });
    await discovery.start();
    const server = new GatewayServer({ config, workers: pool, decoder: createFileDecoder(null), logger });
    const { port: gwPort } = (await server.listen()) as AddressInfo;
    const url = `ws://127.0.0.1:${gwPort}`;
    try {
      await until(() => pool.servingCount() === 1, "the first worker serving");
      const first = await TestClient.connect(url);
      first.json({ mode: "2pass", wav_name: "moves" });
      await first.audio(pcm([{ speech: 600 }, { silence: 400 }, { speech: 400 }]));
      await until(() => a.calls.length === 1 && a.calls[0]!.audioBytes > 0, "audio on the first worker");

      // Scale up: the second replica appears in DNS and takes the next session (least loaded).
      resolve.set("asr-worker.test", ["127.0.0.1", "127.0.0.2"]);
      await until(() => pool.servingCount() === 2, "the new worker serving");
      const second = await TestClient.connect(url);
      second.json({ mode: "2pass", wav_name: "new" });
      await second.audio(pcm([{ speech: 400 }]));
      second.json({ is_speaking: false, is_end: true });
      await second.until((m) => m.some((x) => x.is_end === true));
      assert.equal(b.calls.length, 1, "the session went to the new worker");

      // Scale down: the first replica vanishes; its open session fails over to the second.
      resolve.set("asr-worker.test", ["127.0.0.2"]);
      await until(() => pool.status().length === 1, "the vanished worker retired");
      assert.deepEqual(pool.status().map((s) => s.address), [`127.0.0.2:${port}`]);
      await until(() => b.calls.length === 2, "the failed-over call");
      await first.audio(pcm([{ silence: 400 }]));
      first.json({ is_speaking: false, is_end: true });
      const msgs = await first.until((m) => m.some((x) => x.is_end === true));
      assert.ok(msgs.every((m) => m.error === undefined), JSON.stringify(msgs));
      assert.deepEqual(finals(msgs).map((f) => f.text), ["S0wwww", "S1www"]);
      assert.ok(a.calls[0]!.cancelled, "the vanished worker's call was cancelled");
      first.close();
      second.close();
    } finally {
      await server.shutdown(0);
      discovery.stop();
      pool.close();
      await a.stop();
      await b.stop();
    }
  });
});
