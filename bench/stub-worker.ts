/**
 * A cheap asr.v1 worker in Node for isolating the gateway in load tests (and
 * for developing the harness without the Python worker): energy VAD on 60 ms
 * windows, partials every `--partial-ms` of segment audio and finals after a
 * fixed `--cost-ms` delay, grpc.health.v1 SERVING and WatchLoad. It serves
 * StreamingRecognizeMux too (bench/lib/mux-server.ts runs the same per-call
 * handler per session) and says so in its load reports, unless `--no-mux`.
 * NOT a product component; the real worker with `--engine fake` is the
 * reference.
 *
 *   node --import tsx bench/stub-worker.ts --listen 127.0.0.1:0 [--cost-ms 5]
 * prints `LISTENING host:port`.
 */
import { Server, ServerCredentials, status, type ServerDuplexStream, type ServerWritableStream } from "@grpc/grpc-js";
import { appendFileSync } from "node:fs";
import { parseArgs } from "node:util";
import {
  AsrService,
  ControlType,
  EndpointReason,
  SpeechEventType,
  type LoadReport,
  type StreamingRecognizeRequest,
  type StreamingRecognizeResponse,
  type WatchLoadRequest,
} from "../gateway/src/gen/asr/v1/asr.js";
import {
  HealthCheckResponse_ServingStatus,
  HealthService,
  type HealthCheckRequest,
  type HealthCheckResponse,
} from "../gateway/src/gen/grpc/health/v1/health.js";
import { perCallCodec, serveMux, withRawMux } from "./lib/mux-server.js";

const { values } = parseArgs({
  options: {
    listen: { type: "string", default: "127.0.0.1:0" },
    "cost-ms": { type: "string", default: "5" },
    "partial-ms": { type: "string", default: "600" },
    "hangover-ms": { type: "string", default: "600" },
    threshold: { type: "string", default: "300" },
    "trace-file": { type: "string" },
    "no-mux": { type: "boolean", default: false },
  },
});
const COST = Number(values["cost-ms"]);
const PARTIAL = Number(values["partial-ms"]);
const HANGOVER = Number(values["hangover-ms"]);
const THRESH = Number(values.threshold);
const TRACE = values["trace-file"];
const MUX = !values["no-mux"];
const WIN = 960; // samples = 60 ms at 16 kHz
let active = 0;

type Call = ServerDuplexStream<StreamingRecognizeRequest, StreamingRecognizeResponse>;

function handle(call: Call): void {
  active++;
  let configured = false;
  let rate = 16000;
  let pending = Buffer.alloc(0);
  let pos = 0; // ms of audio consumed by the VAD
  let segId = 0;
  let open = false;
  let segStart = 0;
  let lastSpeech = 0;
  let nextPartial = 0;
  let closed = false;
  // Per-frame uplink trace: [bytes received so far, epoch ms at receipt].
  let wavName = "";
  let bytesIn = 0;
  const recv: number[] = [];
  const send = (r: StreamingRecognizeResponse): void => {
    if (!closed) call.write(r);
  };
  const later = (f: () => void): void => void setTimeout(f, COST);
  const finalize = (reason: EndpointReason, endMs: number): void => {
    const id = segId++;
    const start = segStart;
    open = false;
    send({ streamingResponse: { $case: "speechEvent", value: { type: SpeechEventType.SPEECH_EVENT_TYPE_END, segmentId: id, offsetMs: endMs } } });
    later(() =>
      send({
        streamingResponse: {
          $case: "final",
          value: { segmentId: id, text: `seg${id}`, startMs: start, endMs, tokens: [], reason },
        },
      }),
    );
  };
  call.on("data", (req: StreamingRecognizeRequest) => {
    const r = req.streamingRequest;
    if (!r) return;
    if (r.$case === "config") {
      configured = true;
      rate = r.value.sampleRateHz || 16000;
      wavName = r.value.wavName;
      return;
    }
    if (!configured) {
      closed = true;
      call.destroy(Object.assign(new Error("config must come first"), { code: status.INVALID_ARGUMENT }));
      return;
    }
    if (r.$case === "audio") {
      if (TRACE) {
        bytesIn += r.value.pcm16le.length;
        recv.push(bytesIn, performance.timeOrigin + performance.now());
      }
      pending = Buffer.concat([pending, r.value.pcm16le]);
      const win = (WIN * rate) / 16000;
      while (pending.length >= win * 2) {
        let sum = 0;
        for (let i = 0; i < win; i++) {
          const v = pending.readInt16LE(i * 2);
          sum += v * v;
        }
        pending = pending.subarray(win * 2);
        pos += 60;
        const speech = Math.sqrt(sum / win) > THRESH;
        if (speech) {
          lastSpeech = pos;
          if (!open) {
            open = true;
            segStart = pos - 60;
            nextPartial = segStart + PARTIAL;
            send({ streamingResponse: { $case: "speechEvent", value: { type: SpeechEventType.SPEECH_EVENT_TYPE_START, segmentId: segId, offsetMs: segStart } } });
          }
        }
        if (open && pos >= nextPartial) {
          const id = segId;
          const end = pos;
          nextPartial += PARTIAL;
          later(() => {
            if (open && segId === id)
              send({ streamingResponse: { $case: "partial", value: { segmentId: id, text: "x", delta: "x", stability: 0.5, audioEndMs: end } } });
          });
        }
        if (open && pos - lastSpeech >= HANGOVER) finalize(EndpointReason.ENDPOINT_REASON_VAD, lastSpeech);
      }
    } else if (r.$case === "control") {
      if (r.value.type === ControlType.CONTROL_TYPE_END_OF_INPUT || r.value.type === ControlType.CONTROL_TYPE_COMMIT) {
        if (open) finalize(EndpointReason.ENDPOINT_REASON_END_OF_INPUT, pos);
        if (r.value.type === ControlType.CONTROL_TYPE_END_OF_INPUT) {
          const n = segId;
          later(() => setImmediate(() => send({ streamingResponse: { $case: "endOfInput", value: { finalizedSegments: n, audioReceivedMs: pos } } })));
        }
      }
    }
  });
  call.on("end", () => {
    setTimeout(() => {
      closed = true;
      call.end();
    }, COST + 5);
  });
  call.on("cancelled", () => {
    closed = true;
  });
  call.on("close", () => {
    active--;
    if (TRACE && wavName) appendFileSync(TRACE, JSON.stringify({ wav_name: wavName, recv }) + "\n");
  });
  call.on("error", () => {
    closed = true;
  });
}

const health = {
  check: (_c: unknown, cb: (e: null, r: HealthCheckResponse) => void) => cb(null, { status: HealthCheckResponse_ServingStatus.SERVING }),
  watch: (call: ServerWritableStream<HealthCheckRequest, HealthCheckResponse>) => {
    call.write({ status: HealthCheckResponse_ServingStatus.SERVING });
  },
};

const watchLoad = (call: ServerWritableStream<WatchLoadRequest, LoadReport>): void => {
  const every = Math.min(60_000, Math.max(100, call.request.intervalMs || 1000));
  const report = (): void => {
    call.write({ workerId: "stub", activeStreams: active, maxStreams: 100_000, queuedAudioSeconds: 0, accepting: true, engine: "stub", recentRtf: 0, frontId: 0, frontStreams: [], engineStalled: false, mux: MUX });
  };
  report();
  const t = setInterval(report, every);
  call.on("cancelled", () => clearInterval(t));
  call.on("close", () => clearInterval(t));
};

const server = new Server({ "grpc.max_concurrent_streams": 100_000 } as Record<string, unknown>);
server.addService(withRawMux(AsrService), {
  streamingRecognize: handle,
  watchLoad,
  ...(MUX ? { streamingRecognizeMux: serveMux(perCallCodec<StreamingRecognizeRequest, StreamingRecognizeResponse>(AsrService), handle) } : {}),
});
server.addService(HealthService, health);
server.bindAsync(values.listen, ServerCredentials.createInsecure(), (err, port) => {
  if (err) {
    process.stderr.write(`stub-worker: ${err.message}\n`);
    process.exit(1);
  }
  const host = values.listen.slice(0, values.listen.lastIndexOf(":"));
  process.stdout.write(`LISTENING ${host}:${port}\n`);
});
for (const sig of ["SIGTERM", "SIGINT"] as const) process.on(sig, () => {
    server.forceShutdown();
    process.exit(0);
  });
