/**
 * GATEWAY_PROCESSES=2 as real processes: one port, sessions spread over both
 * processes, and one SIGTERM to the primary drains every process's sessions
 * before all exit 0.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { createInterface } from "node:readline";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { finals, pcm, TestClient } from "./helpers/harness.js";
import { ScriptedWorker } from "./helpers/scripted-worker.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

test("GATEWAY_PROCESSES=2: sessions spread over both processes and SIGTERM drains every one of them", async () => {
  // Finals come 600 ms late, so the drain has results to wait for.
  const worker = await new ScriptedWorker({ finalDelayMs: 600 }).start();
  const child = spawn(process.execPath, ["--import", "tsx", "gateway/src/main.ts"], {
    cwd: ROOT,
    env: {
      PATH: process.env.PATH ?? "",
      GATEWAY_PROCESSES: "2",
      GATEWAY_PORT: "0",
      GATEWAY_HOST: "127.0.0.1",
      WORKER_ADDRESSES: worker.address,
      LOG_LEVEL: "info",
      SHUTDOWN_GRACE_SECONDS: "10",
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: Array<{ msg: string; pid: number; port?: number }> = [];
  const listeners = new Map<number, number>();
  const bothListening = new Promise<void>((resolve) => {
    createInterface({ input: child.stdout }).on("line", (l) => {
      const j = JSON.parse(l) as { msg: string; pid: number; port?: number };
      logs.push(j);
      if (j.msg === "gateway listening") listeners.set(j.pid, j.port!);
      if (listeners.size === 2) resolve();
    });
  });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  try {
    await bothListening;
    const ports = new Set(listeners.values());
    assert.equal(ports.size, 1, "both processes share one port");
    const url = `ws://127.0.0.1:${[...ports][0]}/`;
    for (let i = 0; i < 100 && (await fetch(`${url.replace("ws", "http")}readyz`)).status !== 200; i++) await new Promise((r) => setTimeout(r, 50));

    const clients = await Promise.all([0, 1, 2, 3].map(() => TestClient.connect(url)));
    for (const [i, c] of clients.entries()) {
      c.json({ mode: "2pass", wav_name: `c${i}` });
      await c.audio(pcm([{ speech: 400 }]));
    }
    const deadline = Date.now() + 5000;
    while (worker.calls.filter((c) => c.audioBytes > 0).length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    // Each gateway process has its own channel to the worker: two peers = sessions on both processes.
    assert.equal(new Set(worker.calls.map((c) => c.peer)).size, 2, JSON.stringify(worker.calls.map((c) => c.peer)));

    for (const c of clients) c.json({ is_speaking: false, is_end: true });
    await new Promise((r) => setTimeout(r, 100));
    child.kill("SIGTERM");
    await new Promise((r) => setTimeout(r, 150));
    const ready = await fetch(`${url.replace("ws", "http")}readyz`).then((r) => r.status).catch(() => 0);
    assert.ok(ready === 503 || ready === 0, `readyz while draining: ${ready}`);
    for (const c of clients) {
      assert.equal(await c.closed(8000), 1001);
      assert.deepEqual(finals(c.messages).map((f) => f.text), ["S0ww"]);
      assert.ok(c.messages.some((m) => m.is_end === true && m.is_final === true && m.error === undefined), JSON.stringify(c.messages));
    }
    assert.equal(await exited, 0);
    const stopped = new Set(logs.filter((l) => l.msg === "stopped").map((l) => l.pid));
    assert.deepEqual(stopped, new Set(listeners.keys()), "every process drained and stopped");
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
    await worker.stop();
  }
});
