/**
 * Configuration from the environment: defaults, every variable, and bad
 * values stopping the start with one clear line and exit status 2.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { ConfigError, loadConfig } from "../../gateway/src/config.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");

describe("loadConfig", () => {
  test("defaults", () => {
    const c = loadConfig({});
    assert.equal(c.port, 10095);
    assert.equal(c.host, "0.0.0.0");
    assert.deepEqual(c.workerAddresses, ["127.0.0.1:50051"]);
    assert.equal(c.isFinalMode, "seed");
    assert.equal(c.onlineMode, "upgrade");
    assert.equal(c.authToken, undefined);
    assert.equal(c.tlsCert, undefined);
    assert.equal(c.maxHotwords, 256);
    assert.equal(c.workerDnsRefreshSeconds, 10);
    assert.equal(c.processes, 1);
    assert.equal(c.workerDirectWrites, true);
    assert.equal(c.workerDirectReads, true);
  });

  test("every variable is read", () => {
    const c = loadConfig({
      GATEWAY_PORT: "8080",
      GATEWAY_HOST: "127.0.0.1",
      WORKER_ADDRESSES: " w1:50051 , w2:50052 ,",
      MAX_SESSIONS: "5",
      MAX_FRAME_BYTES: "65536",
      MAX_FILE_BYTES: "2048",
      MAX_SESSION_SECONDS: "60",
      IDLE_TIMEOUT_SECONDS: "9",
      MAX_HOTWORDS: "10",
      MAX_HOTWORD_CHARS: "8",
      MAX_HOTWORDS_BYTES: "100",
      REPLAY_BUFFER_SECONDS: "30",
      LOG_LEVEL: "debug",
      IS_FINAL_MODE: "cpp",
      ONLINE_MODE: "strict",
      TLS_CERT: "/c.pem",
      TLS_KEY: "/k.pem",
      AUTH_TOKEN: "s3cret-token",
      SHUTDOWN_GRACE_SECONDS: "3",
      RETRY_AFTER_SECONDS: "7",
      FFMPEG_ENABLED: "false",
      WORKER_DNS_REFRESH_SECONDS: "0",
      GATEWAY_PROCESSES: "4",
      WORKER_DIRECT_WRITES: "false",
      WORKER_DIRECT_READS: "false",
      WORKER_MUX: "off",
    });
    assert.equal(c.workerMux, "off");
    assert.equal(loadConfig({}).workerMux, "auto");
    assert.equal(c.workerDirectWrites, false);
    assert.equal(c.workerDirectReads, false);
    assert.equal(c.workerDnsRefreshSeconds, 0);
    assert.equal(c.processes, 4);
    assert.equal(loadConfig({ GATEWAY_PROCESSES: "AUTO" }).processes, "auto");
    assert.deepEqual(c.workerAddresses, ["w1:50051", "w2:50052"]);
    assert.equal(c.port, 8080);
    assert.equal(c.maxSessions, 5);
    assert.equal(c.isFinalMode, "cpp");
    assert.equal(c.onlineMode, "strict");
    assert.equal(c.authToken, "s3cret-token");
    assert.equal(c.ffmpegEnabled, false);
    assert.equal(c.retryAfterSeconds, 7);
  });

  const BAD: Array<[Record<string, string>, RegExp]> = [
    [{ GATEWAY_PORT: "abc" }, /GATEWAY_PORT: must be an integer/],
    [{ GATEWAY_PORT: "70000" }, /GATEWAY_PORT/],
    [{ WORKER_ADDRESSES: "localhost" }, /WORKER_ADDRESSES: each address must be host:port/],
    [{ WORKER_ADDRESSES: " , " }, /WORKER_ADDRESSES/],
    [{ MAX_SESSIONS: "0" }, /MAX_SESSIONS/],
    [{ MAX_FRAME_BYTES: "1.5" }, /MAX_FRAME_BYTES/],
    [{ MAX_HOTWORDS: "1000" }, /MAX_HOTWORDS/],
    [{ LOG_LEVEL: "loud" }, /LOG_LEVEL/],
    [{ IS_FINAL_MODE: "sometimes" }, /IS_FINAL_MODE/],
    [{ ONLINE_MODE: "maybe" }, /ONLINE_MODE/],
    [{ TLS_CERT: "/c.pem" }, /TLS_CERT and TLS_KEY must be set together/],
    [{ AUTH_TOKEN: "short" }, /AUTH_TOKEN: must be at least 8/],
    [{ FFMPEG_ENABLED: "perhaps" }, /FFMPEG_ENABLED/],
    [{ WORKER_DIRECT_WRITES: "sometimes" }, /WORKER_DIRECT_WRITES/],
    [{ WORKER_DIRECT_READS: "maybe" }, /WORKER_DIRECT_READS/],
    [{ WORKER_MUX: "on" }, /WORKER_MUX/],
    [{ GATEWAY_PROCESSES: "0" }, /GATEWAY_PROCESSES/],
    [{ GATEWAY_PROCESSES: "many" }, /GATEWAY_PROCESSES/],
    [{ WORKER_DNS_REFRESH_SECONDS: "-1" }, /WORKER_DNS_REFRESH_SECONDS/],
  ];
  for (const [env, re] of BAD) {
    test(`refuses ${JSON.stringify(env)}`, () => {
      assert.throws(() => loadConfig(env), (e: unknown) => e instanceof ConfigError && re.test(e.message) && !e.message.includes("\n"));
    });
  }

  test("the auth token is never echoed in the error", () => {
    assert.throws(() => loadConfig({ AUTH_TOKEN: "short" }), (e: unknown) => e instanceof Error && !e.message.includes("short\""));
  });
});

describe("gateway start with a bad environment", () => {
  test("prints one line and exits with status 2", () => {
    const r = spawnSync(process.execPath, ["--import", "tsx", "gateway/src/main.ts"], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? "", GATEWAY_PORT: "not-a-port" },
      encoding: "utf8",
      timeout: 30_000,
    });
    assert.equal(r.status, 2);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1);
    assert.match(lines[0]!, /^gateway: invalid configuration: GATEWAY_PORT: must be an integer \(got "not-a-port"\)$/);
    assert.equal(r.stdout, "");
  });
});
