/**
 * The composition root as a process: `npm run gateway`'s entry point starts,
 * serves the browser page, logs JSON without transcripts or audio, and drains
 * on SIGTERM (exit 0).
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

test("gateway process: serves sessions and the page, logs no transcript text, drains on SIGTERM and exits 0", async () => {
  const worker = await new ScriptedWorker().start();
  const child = spawn(process.execPath, ["--import", "tsx", "gateway/src/main.ts"], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? "", GATEWAY_PORT: "0", GATEWAY_HOST: "127.0.0.1", WORKER_ADDRESSES: worker.address, LOG_LEVEL: "debug", SHUTDOWN_GRACE_SECONDS: "5" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const lines: string[] = [];
  let port = 0;
  const listening = new Promise<void>((resolve) => {
    createInterface({ input: child.stdout }).on("line", (l) => {
      lines.push(l);
      const j = JSON.parse(l) as { msg: string; port?: number };
      if (j.msg === "gateway listening") {
        port = j.port!;
        resolve();
      }
    });
  });
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  try {
    await listening;
    let ready = false;
    for (let i = 0; i < 100 && !ready; i++) {
      ready = (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200;
      if (!ready) await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(ready, "ready");
    // The composition root wires the browser page.
    const page = await fetch(`http://127.0.0.1:${port}/ui/`);
    assert.equal(page.status, 200);
    assert.match(await page.text(), /<script type="module" src="app.js">/);
    const c = await TestClient.connect(`ws://127.0.0.1:${port}/`, ["binary"]);
    c.json({ mode: "2pass", wav_name: "proc", is_speaking: true, hotwords: "秘密热词 30" });
    await c.audio(pcm([{ speech: 600 }]));
    c.json({ is_speaking: false, is_end: true });
    await c.until((m) => m.some((x) => x.is_end === true));
    assert.equal(finals(c.messages)[0]!.text, "S0www");
    child.kill("SIGTERM");
    assert.equal(await c.closed(), 1001);
    assert.equal(await exited, 0);
    const log = lines.join("\n");
    assert.ok(!log.includes("S0w"), "transcript text in logs");
    assert.ok(!log.includes("秘密热词"), "hotwords in logs");
    assert.match(log, /"msg":"session closed"/);
    assert.match(log, /"msg":"stopped"/);
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
    await worker.stop();
  }
});
