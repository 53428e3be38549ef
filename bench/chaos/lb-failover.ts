/**
 * How long the compose load balancer keeps sending clients to a dead gateway:
 * the shipped deploy/haproxy/haproxy.cfg (its own health-check settings, only the
 * server list made static and the bind moved to loopback) in front of two gateway
 * processes; gateway 1 is SIGKILLed and a new WebSocket session is attempted
 * through haproxy every 100 ms until 20 in a row succeed. Reported: how long after
 * the kill attempts still failed, and how many did.
 *
 *   node --import tsx bench/chaos/lb-failover.ts        (needs `haproxy` on PATH)
 */
import { spawn } from "node:child_process";
import { readFileSync, writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import WebSocket from "ws";
import { REPO_ROOT } from "../lib/audio.js";
import { freePort } from "../lib/procs.js";
import { startGateway, startWorker } from "./lib/cluster.js";

/** One session attempt through the balancer: upgrade, config, end of input, acknowledgement. */
function attempt(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, handshakeTimeout: 3000 });
    const t = setTimeout(() => {
      ws.terminate();
      resolve(false);
    }, 4000);
    ws.on("error", () => {
      clearTimeout(t);
      resolve(false);
    });
    ws.on("open", () => {
      ws.send(JSON.stringify({ mode: "2pass", wav_name: "lb", audio_fs: 16000 }));
      ws.send(JSON.stringify({ is_speaking: false, is_end: true }));
    });
    ws.on("message", (d) => {
      if ((JSON.parse(d.toString()) as { is_end?: boolean }).is_end) {
        clearTimeout(t);
        ws.close();
        resolve(true);
      }
    });
  });
}

const worker = await startWorker({ label: "worker", fronts: 1 });
const g1 = await startGateway("gateway-1", [worker.address]);
const g2 = await startGateway("gateway-2", [worker.address]);
const lbPort = await freePort();
const dir = mkdtempSync(path.join(tmpdir(), "lb-"));
let cfg = readFileSync(path.join(REPO_ROOT, "deploy/haproxy/haproxy.cfg"), "utf8");
const tmpl = /^\s*server-template gw \d+ gateway:10095 (check .*) resolvers docker init-addr none$/m.exec(cfg);
if (!tmpl) throw new Error("haproxy.cfg: server-template line not found");
const checks = tmpl[1]!;
cfg = cfg.replace(tmpl[0], [`    server gw1 ${g1.address} ${checks}`, `    server gw2 ${g2.address} ${checks}`].join("\n"));
cfg = cfg.replace(/^\s*bind :10095\s*$/m, `    bind 127.0.0.1:${lbPort}`);
cfg = cfg.replace(/^resolvers docker[\s\S]*?(?=^frontend)/m, "");
writeFileSync(path.join(dir, "haproxy.cfg"), cfg);
const lb = spawn("haproxy", ["-db", "-f", path.join(dir, "haproxy.cfg")], { stdio: "ignore" });
const url = `ws://127.0.0.1:${lbPort}/`;
try {
  for (let i = 0; i < 100 && !(await attempt(url)); i++) await new Promise((r) => setTimeout(r, 200));
  await new Promise((r) => setTimeout(r, 5000)); // both servers checked UP (rise 2)
  const t0 = performance.now();
  g1.proc.kill("SIGKILL");
  let failed = 0;
  let lastFailAt = 0;
  let okRun = 0;
  let tries = 0;
  while (okRun < 20 && performance.now() - t0 < 60_000) {
    tries++;
    if (await attempt(url)) okRun++;
    else {
      failed++;
      okRun = 0;
      lastFailAt = performance.now() - t0;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  console.log(`== haproxy (${checks}) in front of 2 gateways, gateway 1 SIGKILLed`);
  console.log(`  ${failed} of ${tries} new sessions failed; the last failure ${(lastFailAt / 1000).toFixed(2)} s after the kill`);
} finally {
  lb.kill("SIGTERM");
  await g2.stop();
  await worker.stop();
}
process.exit(0);
