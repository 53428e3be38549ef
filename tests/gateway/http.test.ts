/**
 * The HTTP side: /healthz, /readyz, upgrade refusal with 503 + Retry-After
 * when no worker serves, MAX_SESSIONS, token auth, the `binary` subprotocol
 * echo, pings, and TLS.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, test } from "node:test";
import { startGateway, TestClient } from "./helpers/harness.js";
import { ScriptedWorker } from "./helpers/scripted-worker.js";

async function get(url: string): Promise<{ status: number; body: any }> {
  const r = await fetch(url);
  return { status: r.status, body: await r.json() };
}

async function waitFor(pred: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error("condition not reached");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("health, readiness and upgrade refusal", () => {
  test("/healthz is 200 while /readyz follows worker health; upgrades get 503 + Retry-After while none serves", async () => {
    const worker = await new ScriptedWorker({ serving: false }).start();
    const gw = await startGateway([worker.address], { RETRY_AFTER_SECONDS: "7" }, { waitServing: false });
    try {
      assert.deepEqual((await get(`${gw.http}/healthz`)).status, 200);
      const notReady = await get(`${gw.http}/readyz`);
      assert.equal(notReady.status, 503);
      assert.equal(notReady.body.ready, false);
      await assert.rejects(TestClient.connect(gw.url), (e: any) => e.status === 503 && e.headers["retry-after"] === "7");
      worker.setServing(true);
      await waitFor(() => gw.pool.servingCount() === 1);
      const ready = await get(`${gw.http}/readyz`);
      assert.equal(ready.status, 200);
      assert.equal(ready.body.serving_workers, 1);
      const c = await TestClient.connect(gw.url);
      c.close();
      // Draining: the worker says NOT_SERVING again.
      worker.setServing(false);
      await waitFor(() => gw.pool.servingCount() === 0);
      assert.equal((await get(`${gw.http}/readyz`)).status, 503);
    } finally {
      await gw.stop();
      await worker.stop();
    }
  });

  test("an unreachable worker address: not ready and 503, no crash", async () => {
    const gw = await startGateway(["127.0.0.1:1"], {}, { waitServing: false });
    try {
      await new Promise((r) => setTimeout(r, 200));
      assert.equal((await get(`${gw.http}/readyz`)).status, 503);
      await assert.rejects(TestClient.connect(gw.url), (e: any) => e.status === 503);
      assert.equal((await fetch(`${gw.http}/other`)).status, 426);
    } finally {
      await gw.stop();
    }
  });

  test("a worker that goes away and comes back on the same port is watched again", async () => {
    const w = await new ScriptedWorker().start();
    const port = Number(w.address.split(":")[1]);
    const gw = await startGateway([w.address]);
    try {
      assert.equal(gw.pool.servingCount(), 1);
      await w.stop();
      await waitFor(() => gw.pool.servingCount() === 0);
      const w2 = await new ScriptedWorker().start(port);
      await waitFor(() => gw.pool.servingCount() === 1, 8000);
      await w2.stop();
    } finally {
      await gw.stop();
    }
  });

  test("MAX_SESSIONS refuses further upgrades with 503", async () => {
    const worker = await new ScriptedWorker().start();
    const gw = await startGateway([worker.address], { MAX_SESSIONS: "1" });
    try {
      const a = await TestClient.connect(gw.url);
      await assert.rejects(TestClient.connect(gw.url), (e: any) => e.status === 503 && e.headers["retry-after"] !== undefined);
      a.close();
      await waitFor(() => gw.server.sessions.size === 0);
      const b = await TestClient.connect(gw.url);
      b.close();
    } finally {
      await gw.stop();
      await worker.stop();
    }
  });
});

describe("upgrade details", () => {
  test("echoes the binary subprotocol when offered and accepts clients offering none; answers pings", async () => {
    const worker = await new ScriptedWorker().start();
    const gw = await startGateway([worker.address]);
    try {
      const py = await TestClient.connect(gw.url, ["binary"]);
      assert.equal(py.ws.protocol, "binary");
      const h5 = await TestClient.connect(gw.url);
      assert.equal(h5.ws.protocol, "");
      const pong = new Promise<void>((resolve) => h5.ws.once("pong", () => resolve()));
      h5.ws.ping();
      await pong;
      py.close();
      h5.close();
    } finally {
      await gw.stop();
      await worker.stop();
    }
  });

  test("AUTH_TOKEN: 401 without a token, accepted with ?token= or Authorization: Bearer", async () => {
    const worker = await new ScriptedWorker().start();
    const gw = await startGateway([worker.address], { AUTH_TOKEN: "correct-horse" });
    try {
      await assert.rejects(TestClient.connect(gw.url), (e: any) => e.status === 401);
      await assert.rejects(TestClient.connect(`${gw.url}/?token=wrong-horse`), (e: any) => e.status === 401);
      const a = await TestClient.connect(`${gw.url}/?token=correct-horse`);
      const b = await TestClient.connect(gw.url, undefined, { headers: { Authorization: "Bearer correct-horse" } });
      a.close();
      b.close();
      // Probes need no token.
      assert.equal((await fetch(`${gw.http}/healthz`)).status, 200);
    } finally {
      await gw.stop();
      await worker.stop();
    }
  });

  test("TLS_CERT/TLS_KEY serve wss", { skip: !hasOpenssl() && "openssl not on PATH" }, async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "gw-tls-"));
    const cert = path.join(dir, "cert.pem");
    const key = path.join(dir, "key.pem");
    execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"], { stdio: "ignore" });
    const worker = await new ScriptedWorker().start();
    const gw = await startGateway([worker.address], { TLS_CERT: cert, TLS_KEY: key });
    try {
      assert.ok(gw.url.startsWith("wss://"), "gw.url.startsWith(\"wss://\")");
      const c = await TestClient.connect(gw.url, ["binary"], { rejectUnauthorized: false });
      c.json({ mode: "2pass", wav_name: "tls" });
      c.json({ is_speaking: false });
      await c.until((m) => m.length === 1);
      assert.equal(c.messages[0]!.wav_name, "tls");
      c.close();
    } finally {
      await gw.stop();
      await worker.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

function hasOpenssl(): boolean {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}
