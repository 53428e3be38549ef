/**
 * What the optional native `bufferutil` saves `ws` per received client frame:
 * CPU time of unmasking one frame with ws's JavaScript loop vs the native
 * helper, in one process each (ws picks its implementation at load time).
 *
 *   node --import tsx bench/ws-unmask.ts              # both, 1,920-byte (60 ms) and 204,800-byte frames
 */
import { execFileSync } from "node:child_process";
import { createRequire } from "node:module";
import path from "node:path";

const FRAMES = [1920, 204_800];

if (process.argv[2] === "--child") {
  const require = createRequire(import.meta.url);
  // ws does not export its helper module; load it by path, as ws itself does.
  const helper = path.join(path.dirname(require.resolve("ws")), "lib", "buffer-util.js");
  const { unmask } = require(helper) as { unmask: (b: Buffer, m: Buffer) => void };
  const mask = Buffer.from([0x12, 0x34, 0x56, 0x78]);
  const out: Record<number, number> = {};
  for (const size of FRAMES) {
    const buf = Buffer.alloc(size, 7);
    const n = Math.max(200, Math.floor(4e8 / size));
    for (let i = 0; i < n / 10; i++) unmask(buf, mask);
    const t0 = process.cpuUsage();
    for (let i = 0; i < n; i++) unmask(buf, mask);
    const t = process.cpuUsage(t0);
    out[size] = (t.user + t.system) / n;
  }
  process.stdout.write(JSON.stringify(out));
} else {
  const run = (env: NodeJS.ProcessEnv): Record<string, number> =>
    JSON.parse(execFileSync(process.execPath, ["--import", "tsx", new URL(import.meta.url).pathname, "--child"], { env: { ...process.env, ...env } }).toString());
  const js = run({ WS_NO_BUFFER_UTIL: "1" });
  const native = run({});
  process.stdout.write("| frame bytes | ws JavaScript unmask (µs) | bufferutil (µs) |\n|---|---|---|\n");
  for (const size of FRAMES) process.stdout.write(`| ${size} | ${js[size]!.toFixed(2)} | ${native[size]!.toFixed(2)} |\n`);
}
