/**
 * The call writer puts requests straight onto a grpc-js call's HTTP/2 stream
 * (or, when grpc-js is laid out differently, back through call.write), and
 * either way a real grpc-js worker receives every request, in order, while
 * the call's responses, status and backpressure keep working.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { credentials, Server, type ServerDuplexStream } from "@grpc/grpc-js";
import { CallWriter, type WriterPath } from "../../gateway/src/call-writer.js";
import { AsrService, ControlType, RecognitionMode, StreamingRecognizeRequest, type StreamingRecognizeResponse } from "../../gateway/src/gen/asr/v1/asr.js";
import { FastAsrClient, framedAudioRequest, framedRequest } from "../../gateway/src/wire.js";
import type { RecognizeCall } from "../../gateway/src/workers.js";
import { pcm } from "./helpers/harness.js";
import { ScriptedWorker } from "./helpers/scripted-worker.js";
import { until, listenOnFreePort } from "./helpers/grpc-test.js";

const CHANNEL = { "grpc.enable_retries": 0 };
const config = framedRequest(
  StreamingRecognizeRequest.fromPartial({ streamingRequest: { $case: "config", value: { sessionId: "w", sampleRateHz: 16000, mode: RecognitionMode.RECOGNITION_MODE_TWO_PASS } } }),
);
const eoi = framedRequest({ streamingRequest: { $case: "control", value: { type: ControlType.CONTROL_TYPE_END_OF_INPUT } } });

describe("call writer against a real grpc-js worker", () => {
  let worker: ScriptedWorker;
  before(async () => {
    worker = await new ScriptedWorker().start();
  });
  after(async () => {
    await worker.stop();
  });

  for (const path of ["direct", "grpc-js"] as WriterPath[]) {
    test(`${path} path: requests queued before placement and written after it arrive in order, and the final comes back`, async () => {
      const client = new FastAsrClient(worker.address, credentials.createInsecure(), CHANNEL);
      const call = client.streamingRecognize() as RecognizeCall;
      const responses: StreamingRecognizeResponse[] = [];
      call.on("data", (r: StreamingRecognizeResponse) => responses.push(r));
      call.on("error", () => {});
      const status = new Promise<number>((resolve) => call.on("status", (s: { code: number }) => resolve(s.code)));
      // The fallback variant finds "not placed yet" twice, then an unknown layout.
      let looks = 0;
      const writer = path === "direct" ? new CallWriter(call, () => {}) : new CallWriter(call, () => {}, () => (looks++ < 2 ? undefined : null));
      const before = worker.calls.length;
      // Speech then silence: the scripted worker closes the segment with a final.
      const audio = pcm([{ speech: 600 }, { silence: 600 }]);
      const frames: Buffer[] = [];
      for (let off = 0; off < audio.length; off += 1920) frames.push(audio.subarray(off, off + 1920));
      // Written at once: the call is not placed yet, so these wait in the writer.
      assert.equal(writer.write(config), true);
      for (const f of frames.slice(0, 5)) writer.write(framedAudioRequest(f, 16000));
      assert.equal(writer.path, "pending");
      await until(() => writer.path !== "pending", "placement");
      assert.equal(writer.path, path);
      for (const f of frames.slice(5)) writer.write(framedAudioRequest(f, 16000));
      writer.write(eoi);
      await until(() => worker.calls.length > before && worker.calls[before]!.eois === 1, "END_OF_INPUT at the worker");
      const rec = worker.calls[before]!;
      assert.equal(rec.audioBytes, audio.length);
      assert.equal(rec.configs.length, 1);
      assert.equal(rec.order[0], "config");
      assert.equal(rec.order[rec.order.length - 1], "control");
      assert.equal(rec.order.filter((k) => k === "audio").length, frames.length);
      await until(() => responses.some((r) => r.streamingResponse?.$case === "endOfInput"), "the end-of-input acknowledgement");
      assert.ok(responses.some((r) => r.streamingResponse?.$case === "final"), "a final came back on the same call");
      call.cancel();
      writer.close();
      assert.equal(await status, 1, "cancelled");
      client.close();
    });
  }

  test("on a channel with retries on (a call may start a second attempt) the writer takes the grpc-js path", async () => {
    const client = new FastAsrClient(worker.address, credentials.createInsecure());
    const call = client.streamingRecognize() as RecognizeCall;
    call.on("error", () => {});
    const writer = new CallWriter(call, () => {});
    writer.write(config);
    await until(() => writer.path !== "pending", "placement");
    assert.equal(writer.path, "grpc-js");
    call.cancel();
    writer.close();
    client.close();
  });
});

describe("call writer backpressure on the direct path", () => {
  let server: Server;
  let address = "";
  const calls: ServerDuplexStream<StreamingRecognizeRequest, StreamingRecognizeResponse>[] = [];
  let received = 0;
  before(async () => {
    server = new Server();
    server.addService(AsrService, {
      streamingRecognize: (call: ServerDuplexStream<StreamingRecognizeRequest, StreamingRecognizeResponse>) => {
        calls.push(call);
        // A worker that stops reading: HTTP/2 flow control fills, the gateway side must feel it.
        call.pause();
        call.on("data", () => received++);
        call.on("error", () => {});
      },
      watchLoad: () => {},
    });
    address = await listenOnFreePort(server);
  });
  after(() => {
    server.forceShutdown();
  });

  test("write() returns false while the worker reads nothing, and onDrain comes once after it reads again", async () => {
    const client = new FastAsrClient(address, credentials.createInsecure(), CHANNEL);
    const call = client.streamingRecognize() as RecognizeCall;
    call.on("error", () => {});
    let drains = 0;
    const writer = new CallWriter(call, () => drains++);
    writer.write(config);
    await until(() => writer.path === "direct" && calls.length === 1, "placement");
    const frame = framedAudioRequest(Buffer.alloc(1920, 1), 16000);
    let written = 0;
    // Node's default HTTP/2 windows are 64 KiB: far fewer than 1,000 frames of 1.9 KB fit.
    while (written < 1000 && writer.write(frame)) written++;
    assert.ok(written < 1000, "write() said false before 1,000 unread frames");
    assert.equal(drains, 0);
    calls[0]!.resume();
    await until(() => drains === 1, "onDrain");
    await until(() => received === written + 2, "every frame read by the worker");
    call.cancel();
    writer.close();
    client.close();
  });
});
