/**
 * What reading one worker response costs the gateway, through grpc-js's
 * 'data' events vs the call reader (gateway/src/call-reader.ts), with nothing
 * else in the process: C calls ping-pong with a worker process (one framed
 * audio request out through the CallWriter, one partial result back), so
 * every response arrives in its own socket read as a paced partial does, and
 * the process's CPU (utime+stime) is divided by the round trips. The write
 * side is identical in both variants, so the difference is the receive path
 * per response. Variants alternate round by round.
 *
 *   node --import tsx bench/call-reader-cost.ts [--calls 200] [--messages 40000] [--rounds 3]
 *
 * The worker is this file with --serve, in a child process (its CPU is not counted).
 */
import { fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { credentials, Server, ServerCredentials, type ServerDuplexStream } from "@grpc/grpc-js";
import { CallReader } from "../gateway/src/call-reader.js";
import { CallWriter } from "../gateway/src/call-writer.js";
import { StreamLocator } from "../gateway/src/call-stream.js";
import { AsrService, type StreamingRecognizeRequest, type StreamingRecognizeResponse } from "../gateway/src/gen/asr/v1/asr.js";
import { FastAsrClient, framedAudioRequest } from "../gateway/src/wire.js";
import type { RecognizeCall } from "../gateway/src/workers.js";

const { values } = parseArgs({
  options: {
    calls: { type: "string", default: "200" },
    messages: { type: "string", default: "40000" },
    rounds: { type: "string", default: "3" },
    serve: { type: "boolean", default: false },
  },
});

/** The worker: answers every request with one partial of a typical size. */
async function serve(): Promise<void> {
  const server = new Server();
  server.addService(AsrService, {
    streamingRecognize: (call: ServerDuplexStream<StreamingRecognizeRequest, StreamingRecognizeResponse>) => {
      let n = 0;
      call.on("data", () => {
        n++;
        call.write({
          streamingResponse: { $case: "partial", value: { segmentId: 0, text: "今天天气怎么样我们去公园散步吧".slice(0, 4 + (n % 12)), delta: "吧", stability: 0.5, audioEndMs: 60 * n } },
        });
      });
      call.on("end", () => call.end());
      call.on("error", () => {});
    },
    watchLoad: () => {},
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  process.send?.(port);
}

/** One round: `calls` ping-pong calls until `messages` responses arrived; CPU µs per round trip. */
async function round(address: string, direct: boolean, calls: number, messages: number): Promise<{ usPerMessage: number; paths: string }> {
  const client = new FastAsrClient(address, credentials.createInsecure(), { "grpc.enable_retries": 0 });
  const frame = framedAudioRequest(Buffer.alloc(1920, 1), 16000);
  const perCall = Math.ceil(messages / calls);
  const opened: Array<{ call: RecognizeCall; writer: CallWriter; reader: CallReader }> = [];
  let started = 0;
  let cpu0: NodeJS.CpuUsage | null = null;
  const done = new Promise<void>((resolve) => {
    let finished = 0;
    for (let i = 0; i < calls; i++) {
      const call = client.streamingRecognize() as RecognizeCall;
      call.on("error", () => {});
      // The gateway's pairing: writer and reader share one look for the stream.
      const locator = new StreamLocator(call);
      const writer = new CallWriter(call, () => {}, locator);
      let got = 0;
      const reader = new CallReader(
        call,
        () => {
          got++;
          // The first answer of every call is warm-up (placement, stream lookup); timing starts when all calls have one.
          if (got === 1 && ++started === calls) cpu0 = process.cpuUsage();
          if (got < perCall + 1) writer.write(frame);
          else if (++finished === calls) resolve();
        },
        direct ? locator : () => null,
      );
      opened.push({ call, writer, reader });
      writer.write(frame);
    }
  });
  await done;
  const cpu = process.cpuUsage(cpu0 ?? undefined);
  const paths = [...new Set(opened.map((o) => o.reader.path))].join(",");
  for (const o of opened) {
    o.reader.close();
    o.writer.close();
    o.call.cancel();
  }
  client.close();
  return { usPerMessage: (cpu.user + cpu.system) / (perCall * calls), paths };
}

async function main(): Promise<void> {
  if (values.serve) return serve();
  const child = fork(fileURLToPath(import.meta.url), ["--serve"], { execArgv: ["--import", "tsx"] });
  const port = await new Promise<number>((resolve) => child.once("message", (m) => resolve(Number(m))));
  const address = `127.0.0.1:${port}`;
  const calls = Number(values.calls);
  const messages = Number(values.messages);
  await round(address, true, calls, Math.min(messages, 5000)); // warm-up (JIT)
  const rows: string[] = [];
  for (let r = 0; r < Number(values.rounds); r++) {
    for (const direct of r % 2 === 0 ? [false, true] : [true, false]) {
      const res = await round(address, direct, calls, messages);
      rows.push(`round ${r + 1} ${direct ? "call reader" : "grpc-js   "} (${res.paths}): ${res.usPerMessage.toFixed(1)} µs CPU per round trip`);
      process.stderr.write(rows[rows.length - 1] + "\n");
    }
  }
  child.kill();
}

void main();
