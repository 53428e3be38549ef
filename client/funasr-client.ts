/**
 * FunASR-protocol command-line client.
 *
 *   npm run client -- [--host H] [--port P] [--ssl [--insecure]] [--mode 2pass|online|offline]
 *       [--speed N | --no-pace] [--chunk-size 5,10,5] [--chunk-interval 10]
 *       [--hotwords "阿里巴巴 20"] [--itn|--no-itn] [--no-is-end] [--wav-name NAME]
 *       [--concurrency N] [--timeout S] [--json] FILE.wav | --stdin --audio-fs 16000
 *
 * Prints partials updating in place on a terminal and every final as a line
 * ("[wav_name] text"); --json prints every server message as a JSON line.
 * Exit status: 0 all sessions finalized, 1 a server error, 2 bad usage,
 * 3 a session never finalized (timeout). See docs/gateway.md.
 */
import { parseArgs } from "node:util";
import { isFinalMessage, loadAudioFile, runFunasrSession, type AudioSource, type FunasrSessionOptions } from "./funasr-session.js";

const USAGE = `usage: funasr-client [options] FILE | --stdin --audio-fs RATE
  --url URL              ws(s)://host:port/ (overrides --host/--port/--ssl)
  --host HOST            default 127.0.0.1
  --port PORT            default 10095
  --ssl                  use wss://;  --insecure accepts self-signed certificates
  --token TOKEN          bearer token for gateways with AUTH_TOKEN
  --mode MODE            2pass (default) | online | offline
  --speed N              pace audio at N x real time (default 1)
  --no-pace              send as fast as possible
  --chunk-size A,B,C     default 5,10,5 (frame = 60*B/chunk-interval ms)
  --chunk-interval N     default 10
  --hotwords STR         FunASR hotwords ("阿里巴巴 20" lines, words, or a JSON object)
  --itn / --no-itn       inverse text normalization (default on)
  --no-is-end            do not ask for the end-of-input acknowledgement
  --is-final-mode M      seed | cpp (extension field)
  --full-hypothesis      partials carry the whole hypothesis (extension field)
  --wav-name NAME        default: the file name
  --stdin                read raw PCM16LE mono from stdin; needs --audio-fs
  --audio-fs RATE        8000 or 16000 for raw PCM (default 16000)
  --concurrency N        run N parallel sessions of the same audio
  --timeout S            seconds to wait for finals after end of input (default 60)
  --json                 print every server message as a JSON line
`;

async function readStdin(): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function fail(msg: string): never {
  process.stderr.write(`funasr-client: ${msg}\n${USAGE}`);
  process.exit(2);
}

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        url: { type: "string" },
        host: { type: "string", default: "127.0.0.1" },
        port: { type: "string", default: "10095" },
        ssl: { type: "boolean", default: false },
        insecure: { type: "boolean", default: false },
        token: { type: "string" },
        mode: { type: "string", default: "2pass" },
        speed: { type: "string", default: "1" },
        "no-pace": { type: "boolean", default: false },
        "chunk-size": { type: "string", default: "5,10,5" },
        "chunk-interval": { type: "string", default: "10" },
        hotwords: { type: "string" },
        itn: { type: "boolean" },
        "no-itn": { type: "boolean", default: false },
        "is-end": { type: "boolean" },
        "no-is-end": { type: "boolean", default: false },
        "is-final-mode": { type: "string" },
        "full-hypothesis": { type: "boolean", default: false },
        "wav-name": { type: "string" },
        stdin: { type: "boolean", default: false },
        "audio-fs": { type: "string", default: "16000" },
        concurrency: { type: "string", default: "1" },
        timeout: { type: "string", default: "60" },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (e) {
    fail((e as Error).message);
  }
  const v = parsed.values;
  if (v.help) {
    process.stdout.write(USAGE);
    return;
  }
  const mode = v.mode;
  if (mode !== "2pass" && mode !== "online" && mode !== "offline") fail(`--mode must be 2pass, online or offline`);
  const chunkSize = v["chunk-size"].split(",").map((x) => Number(x.trim()));
  if (chunkSize.length !== 3 || chunkSize.some((x) => !Number.isInteger(x) || x < 0)) fail("--chunk-size must look like 5,10,5");
  const chunkInterval = Number(v["chunk-interval"]);
  const speed = v["no-pace"] ? 0 : Number(v.speed);
  const concurrency = Number(v.concurrency);
  const audioFs = Number(v["audio-fs"]);
  const timeoutS = Number(v.timeout);
  if (!(chunkInterval >= 1)) fail("--chunk-interval must be >= 1");
  if (!(speed >= 0)) fail("--speed must be a positive number");
  if (!(Number.isInteger(concurrency) && concurrency >= 1 && concurrency <= 10000)) fail("--concurrency must be 1..10000");
  if (audioFs !== 8000 && audioFs !== 16000) fail("--audio-fs must be 8000 or 16000");
  if (!(timeoutS > 0)) fail("--timeout must be > 0");
  const ifm = v["is-final-mode"];
  if (ifm !== undefined && ifm !== "seed" && ifm !== "cpp") fail("--is-final-mode must be seed or cpp");

  let audio: AudioSource;
  let defaultName: string;
  if (v.stdin) {
    audio = { data: await readStdin(), sampleRateHz: audioFs, isFile: false, format: "pcm" };
    if (audio.data.length % 2 !== 0) audio.data = audio.data.subarray(0, audio.data.length - 1);
    defaultName = "stdin";
  } else {
    const file = parsed.positionals[0];
    if (file === undefined) fail("an audio file (or --stdin) is required");
    try {
      audio = loadAudioFile(file, audioFs);
    } catch (e) {
      fail(`cannot read ${file}: ${(e as Error).message}`);
    }
    defaultName = file.split("/").pop()!.replace(/\.[^.]*$/, "") || "audio";
    if (audio.isFile && mode !== "offline") fail(`${file} is not WAV/PCM: whole files need --mode offline`);
  }
  const url = v.url ?? `${v.ssl ? "wss" : "ws"}://${v.host}:${v.port}/`;
  const itn = v["no-itn"] ? false : (v.itn ?? true);
  const isEnd = v["no-is-end"] ? false : (v["is-end"] ?? true);
  const tty = process.stdout.isTTY === true && concurrency === 1 && !v.json;
  const base: Omit<FunasrSessionOptions, "wavName"> = {
    url,
    mode,
    wavFormat: "pcm",
    audioFs: audio.sampleRateHz,
    chunkSize: [chunkSize[0]!, chunkSize[1]!, chunkSize[2]!],
    chunkInterval,
    hotwords: v.hotwords,
    itn,
    isEnd,
    isFinalMode: ifm as "seed" | "cpp" | undefined,
    fullHypothesis: v["full-hypothesis"],
    speed,
    timeoutMs: timeoutS * 1000,
    insecure: v.insecure,
    token: v.token,
  };
  const name = v["wav-name"] ?? defaultName;
  const started = performance.now();
  const results = await Promise.all(
    Array.from({ length: concurrency }, (_, i) => {
      const wavName = concurrency > 1 ? `${name}-${i}` : name;
      return runFunasrSession({ ...base, wavName }, audio, {
        onMessage: (m) => {
          if (v.json) process.stdout.write(`${JSON.stringify(m)}\n`);
        },
        onPartial: (text) => {
          if (tty) process.stdout.write(`\r\x1b[K${text}`);
        },
        onFinal: (m) => {
          if (v.json) return;
          const line = `[${m.wav_name}] ${m.text}`;
          process.stdout.write(tty ? `\r\x1b[K${line}\n` : `${line}\n`);
        },
      });
    }),
  );
  const failed = results.filter((r) => !r.ok);
  for (const [i, r] of results.entries()) {
    if (!r.ok) process.stderr.write(`funasr-client: session ${i}: ${r.error}\n`);
  }
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  const finals = results.reduce((n, r) => n + r.messages.filter(isFinalMessage).length, 0);
  process.stderr.write(`funasr-client: ${results.length - failed.length}/${results.length} sessions ok, ${finals} finals, ${seconds} s\n`);
  if (failed.length > 0) process.exit(failed.some((r) => /^no final/.test(r.error ?? "")) ? 3 : 1);
}

void main();
