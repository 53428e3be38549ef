/**
 * Gateway configuration from environment variables, validated once at start.
 *
 * Misconfiguration must fail fast with one clear line (the composition root
 * prints it and exits with status 2) rather than surface as odd behaviour
 * under load. Every variable is documented in docs/gateway.md.
 */
import { z } from "zod";
import { DEFAULT_COALESCE_DELAY, WriteCoalescer, type CoalesceDelay } from "./write-coalescer.js";

/** Accepts an integer written in an environment variable. */
function intVar(def: number, min: number, max: number) {
  return z
    .string()
    .trim()
    .regex(/^-?\d+$/, "must be an integer")
    .transform(Number)
    .pipe(z.number().int().min(min).max(max))
    .optional()
    .transform((v) => v ?? def);
}

/** Accepts a boolean written as 1/0/true/false/yes/no. */
function boolVar(def: boolean) {
  return z
    .string()
    .trim()
    .toLowerCase()
    .pipe(z.enum(["1", "0", "true", "false", "yes", "no", "on", "off"]))
    .transform((v) => ["1", "true", "yes", "on"].includes(v))
    .optional()
    .transform((v) => v ?? def);
}

const HOST_PORT = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$/;

const envSchema = z
  .object({
    GATEWAY_PORT: intVar(10095, 0, 65535),
    GATEWAY_HOST: z.string().trim().min(1).default("0.0.0.0"),
    WORKER_ADDRESSES: z
      .string()
      .default("127.0.0.1:50051")
      .transform((s) =>
        s
          .split(",")
          .map((a) => a.trim())
          .filter((a) => a.length > 0),
      )
      .pipe(
        z
          .array(
            z.string().refine((a) => {
              const m = HOST_PORT.exec(a);
              return m !== null && Number(m[2]) > 0 && Number(m[2]) <= 65535;
            }, "each address must be host:port"),
          )
          .min(1, "must list at least one host:port"),
      ),
    WORKER_DNS_REFRESH_SECONDS: intVar(10, 0, 3600),
    GATEWAY_PROCESSES: z
      .string()
      .trim()
      .toLowerCase()
      .regex(/^(auto|\d{1,3})$/, 'must be a number of processes or "auto"')
      .refine((v) => v === "auto" || (Number(v) >= 1 && Number(v) <= 256), "must be 1..256 or auto")
      .optional()
      .transform((v) => (v === undefined ? 1 : v === "auto" ? ("auto" as const) : Number(v))),
    MAX_SESSIONS: intVar(1000, 1, 1_000_000),
    MAX_FRAME_BYTES: intVar(1_048_576, 1024, 64 * 1_048_576),
    MAX_FILE_BYTES: intVar(100 * 1_048_576, 1024, 2048 * 1_048_576),
    MAX_SESSION_SECONDS: intVar(4 * 3600, 1, 7 * 24 * 3600),
    IDLE_TIMEOUT_SECONDS: intVar(120, 1, 24 * 3600),
    MAX_HOTWORDS: intVar(256, 0, 256),
    MAX_HOTWORD_CHARS: intVar(64, 1, 64),
    MAX_HOTWORDS_BYTES: intVar(16_384, 16, 1_048_576),
    REPLAY_BUFFER_SECONDS: intVar(60, 1, 3600),
    WORKER_DIRECT_WRITES: boolVar(true),
    WORKER_DIRECT_READS: boolVar(true),
    WORKER_MUX: z.enum(["auto", "off"]).default("auto"),
    WORKER_WRITE_COALESCE_MS: z
      .string()
      .optional()
      .transform((v, ctx): CoalesceDelay => {
        if (v === undefined) return DEFAULT_COALESCE_DELAY;
        try {
          return WriteCoalescer.parseDelay(v);
        } catch (e) {
          ctx.addIssue({ code: "custom", message: (e as Error).message });
          return z.NEVER;
        }
      }),
    LOG_LEVEL: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
    IS_FINAL_MODE: z.enum(["seed", "cpp"]).default("seed"),
    ONLINE_MODE: z.enum(["upgrade", "strict"]).default("upgrade"),
    TLS_CERT: z.string().trim().min(1).optional(),
    TLS_KEY: z.string().trim().min(1).optional(),
    AUTH_TOKEN: z.string().min(8, "must be at least 8 characters").optional(),
    SHUTDOWN_GRACE_SECONDS: intVar(30, 0, 3600),
    RETRY_AFTER_SECONDS: intVar(5, 1, 3600),
    FFMPEG_ENABLED: boolVar(true),
  })
  .refine((e) => (e.TLS_CERT === undefined) === (e.TLS_KEY === undefined), {
    message: "TLS_CERT and TLS_KEY must be set together",
    path: ["TLS_CERT"],
  });

/** The gateway's validated configuration. */
export interface GatewayConfig {
  /** TCP port for ws(s), /healthz and /readyz (0 = any free port). */
  readonly port: number;
  /** Interface to bind. */
  readonly host: string;
  /** WORKER_ADDRESSES entries: host:port; a DNS name stands for every address it resolves to. */
  readonly workerAddresses: readonly string[];
  /** How often DNS names in workerAddresses are re-resolved, seconds (0 = only at start). */
  readonly workerDnsRefreshSeconds: number;
  /** Gateway processes sharing the port (node:cluster); "auto" = one per CPU core. */
  readonly processes: number | "auto";
  /** Concurrent client sessions before upgrades are refused with 503. */
  readonly maxSessions: number;
  /** Largest accepted binary frame in bytes. */
  readonly maxFrameBytes: number;
  /** Largest whole file accepted in offline file mode (wav_format not pcm). */
  readonly maxFileBytes: number;
  /** Wall-clock limit of one connection. */
  readonly maxSessionSeconds: number;
  /** A connection with no client frame for this long is closed. */
  readonly idleTimeoutSeconds: number;
  /** Hotword phrases per session at most. */
  readonly maxHotwords: number;
  /** Characters per hotword phrase at most. */
  readonly maxHotwordChars: number;
  /** Bytes of the raw `hotwords` string at most. */
  readonly maxHotwordsBytes: number;
  /** Seconds of audio kept since the last delivered final (for replay on failover). */
  readonly replayBufferSeconds: number;
  /**
   * Audio goes straight onto each worker call's HTTP/2 stream (call-writer.ts) instead of
   * through grpc-js's call.write(); false is the operator's way back to the plain grpc-js path.
   */
  readonly workerDirectWrites: boolean;
  /**
   * Worker responses read straight off each call's HTTP/2 stream (call-reader.ts); false reads
   * them through grpc-js's 'data' events, the operator's way back to the plain grpc-js path.
   */
  readonly workerDirectReads: boolean;
  /**
   * Longest hold of audio on its way to the workers, so that all calls' frames go out in one loop
   * turn (write-coalescer.ts): ms, 0 = every frame at once, "turn" = only frames of the same loop turn.
   */
  readonly workerWriteCoalesceMs: CoalesceDelay;
  /**
   * "auto": sessions on a worker that serves StreamingRecognizeMux (its load report says `mux`)
   * share one mux call per connection (worker-mux.ts); "off": one StreamingRecognize call per session.
   */
  readonly workerMux: "auto" | "off";
  /** pino level. */
  readonly logLevel: "fatal" | "error" | "warn" | "info" | "debug" | "trace" | "silent";
  /** Deployment default of the is_final behaviour (see docs/gateway.md). */
  readonly isFinalMode: "seed" | "cpp";
  /** What `mode: "online"` means: upgraded to 2pass (default) or strict online. */
  readonly onlineMode: "upgrade" | "strict";
  /** PEM certificate path; with tlsKey the server speaks wss/https. */
  readonly tlsCert: string | undefined;
  /** PEM private key path. */
  readonly tlsKey: string | undefined;
  /** When set, upgrades must carry `?token=` or `Authorization: Bearer`. */
  readonly authToken: string | undefined;
  /** Time sessions get to finish after SIGTERM before they are closed. */
  readonly shutdownGraceSeconds: number;
  /** Retry-After value on 503 refusals. */
  readonly retryAfterSeconds: number;
  /** Whether non-WAV files may be decoded by an ffmpeg found on PATH. */
  readonly ffmpegEnabled: boolean;
}

/** A bad environment variable; its message is the one line printed at start. */
export class ConfigError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "ConfigError";
  }
}

/**
 * Parses the gateway configuration from an environment (normally
 * `process.env`). Throws ConfigError naming the first bad variable.
 */
export function loadConfig(env: Record<string, string | undefined>): GatewayConfig {
  // Empty strings count as unset: `FOO=` in a compose file means "default".
  const cleaned: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined && v !== "") cleaned[k] = v;
  const r = envSchema.safeParse(cleaned);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    const name = String(issue.path[0] ?? "environment");
    const value = cleaned[name];
    const shown = value === undefined || name === "AUTH_TOKEN" ? "" : ` (got ${JSON.stringify(value)})`;
    throw new ConfigError(`invalid configuration: ${name}: ${issue.message}${shown}`);
  }
  const e = r.data;
  return {
    port: e.GATEWAY_PORT,
    host: e.GATEWAY_HOST,
    workerAddresses: e.WORKER_ADDRESSES,
    workerDnsRefreshSeconds: e.WORKER_DNS_REFRESH_SECONDS,
    processes: e.GATEWAY_PROCESSES,
    maxSessions: e.MAX_SESSIONS,
    maxFrameBytes: e.MAX_FRAME_BYTES,
    maxFileBytes: e.MAX_FILE_BYTES,
    maxSessionSeconds: e.MAX_SESSION_SECONDS,
    idleTimeoutSeconds: e.IDLE_TIMEOUT_SECONDS,
    maxHotwords: e.MAX_HOTWORDS,
    maxHotwordChars: e.MAX_HOTWORD_CHARS,
    maxHotwordsBytes: e.MAX_HOTWORDS_BYTES,
    replayBufferSeconds: e.REPLAY_BUFFER_SECONDS,
    workerDirectWrites: e.WORKER_DIRECT_WRITES,
    workerDirectReads: e.WORKER_DIRECT_READS,
    workerWriteCoalesceMs: e.WORKER_WRITE_COALESCE_MS,
    workerMux: e.WORKER_MUX,
    logLevel: e.LOG_LEVEL,
    isFinalMode: e.IS_FINAL_MODE,
    onlineMode: e.ONLINE_MODE,
    tlsCert: e.TLS_CERT,
    tlsKey: e.TLS_KEY,
    authToken: e.AUTH_TOKEN,
    shutdownGraceSeconds: e.SHUTDOWN_GRACE_SECONDS,
    retryAfterSeconds: e.RETRY_AFTER_SECONDS,
    ffmpegEnabled: e.FFMPEG_ENABLED,
  };
}
