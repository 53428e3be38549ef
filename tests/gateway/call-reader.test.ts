/**
 * The call reader takes a grpc-js call's responses straight off its HTTP/2
 * stream (or, when it cannot, leaves them to grpc-js's 'data' events), and
 * either way the link gets every response a real grpc-js worker sent, byte
 * for byte and in order, followed by the call's status; cancellation and
 * malformed responses end the call as grpc-js would.
 */
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { credentials, Metadata, Server, status as GrpcStatus, type ServerDuplexStream, type StatusObject } from "@grpc/grpc-js";
import { CallReader, type ReaderPath } from "../../gateway/src/call-reader.js";
import { CallWriter } from "../../gateway/src/call-writer.js";
import { http2StreamOf, StreamLocator } from "../../gateway/src/call-stream.js";
import { AsrService, ControlType, EndpointReason, ErrorCode, RecognitionMode, StreamingRecognizeRequest, StreamingRecognizeResponse } from "../../gateway/src/gen/asr/v1/asr.js";
import { FastAsrClient, framedRequest } from "../../gateway/src/wire.js";
import type { RecognizeCall } from "../../gateway/src/workers.js";
import { until, listenOnFreePort } from "./helpers/grpc-test.js";

const CHANNEL = { "grpc.enable_retries": 0 };
const config = framedRequest(
  StreamingRecognizeRequest.fromPartial({ streamingRequest: { $case: "config", value: { sessionId: "r", sampleRateHz: 16000, mode: RecognitionMode.RECOGNITION_MODE_TWO_PASS } } }),
);
const eoi = framedRequest({ streamingRequest: { $case: "control", value: { type: ControlType.CONTROL_TYPE_END_OF_INPUT } } });

/** What the worker sends on each call, encoded: every response kind, an empty message, and texts that span HTTP/2 DATA frames. */
const SCRIPT: Buffer[] = (() => {
  const out: StreamingRecognizeResponse[] = [];
  let text = "";
  for (let i = 0; i < 40; i++) {
    const delta = i % 7 === 3 ? "" : `词${i}`;
    text += delta;
    out.push({ streamingResponse: { $case: "partial", value: { segmentId: 0, text, delta, stability: 0.5, audioEndMs: 60 * i } } });
  }
  out.push({ streamingResponse: { $case: "final", value: { segmentId: 0, text, startMs: 0, endMs: 2400, tokens: [{ text: "词", startMs: 0, endMs: 60 }], reason: EndpointReason.ENDPOINT_REASON_VAD } } });
  // 100 KB: several 16 KiB DATA frames, so a message arrives in pieces.
  out.push({ streamingResponse: { $case: "partial", value: { segmentId: 1, text: "长".repeat(35_000), delta: "", stability: 0, audioEndMs: 3000 } } });
  out.push({ streamingResponse: undefined });
  out.push({ streamingResponse: { $case: "error", value: { code: ErrorCode.ERROR_CODE_INVALID_AUDIO, message: "segment too long", retryable: false, segmentId: 1 } } });
  out.push({ streamingResponse: { $case: "endOfInput", value: { finalizedSegments: 1, audioReceivedMs: 3000 } } });
  return out.map((r) => Buffer.from(StreamingRecognizeResponse.encode(r).finish()));
})();

/** A worker that answers each call's first request with SCRIPT (raw bytes: the test also sends undecodable ones), then a status. */
class RawWorker {
  address = "";
  /** Per call: what to write after SCRIPT, then the status to end with (null: leave the call open). */
  tail: { extra: Buffer[]; status: { code: GrpcStatus; details: string } | null } = { extra: [], status: { code: GrpcStatus.INVALID_ARGUMENT, details: "bad input" } };
  cancelled = 0;
  private readonly server = new Server();

  async start(): Promise<this> {
    const service = { ...AsrService, streamingRecognize: { ...AsrService.streamingRecognize, responseSerialize: (b: Buffer) => b } };
    this.server.addService(service, {
      streamingRecognize: (call: ServerDuplexStream<StreamingRecognizeRequest, Buffer>) => {
        const tail = this.tail;
        let answered = false;
        call.on("cancelled", () => this.cancelled++);
        call.on("error", () => {});
        call.on("data", () => {
          if (answered) return;
          answered = true;
          for (const b of [...SCRIPT, ...tail.extra]) call.write(b);
          if (tail.status !== null) call.emit("error", { ...tail.status, metadata: new Metadata() });
        });
      },
      watchLoad: () => {},
    });
    this.address = await listenOnFreePort(this.server);
    return this;
  }

  stop(): void {
    this.server.forceShutdown();
  }
}

/** Opens a call the way the link does (writer first, then reader, sharing one locator unless `find` is given) and records what the reader delivers. */
function openCall(
  address: string,
  find?: (call: RecognizeCall) => ReturnType<typeof http2StreamOf>,
  maxMessageBytes?: number,
) {
  const client = new FastAsrClient(address, credentials.createInsecure(), CHANNEL);
  const call = client.streamingRecognize() as RecognizeCall;
  const got: Buffer[] = [];
  const statusOf = new Promise<StatusObject>((resolve) => call.on("status", resolve));
  call.on("error", () => {});
  const locator = new StreamLocator(call);
  const writer = new CallWriter(call, () => {}, locator);
  const reader = new CallReader(call, (r) => got.push(Buffer.from(StreamingRecognizeResponse.encode(r).finish())), find ?? locator, maxMessageBytes);
  writer.write(config);
  return { client, call, got, statusOf, writer, reader };
}

describe("call reader against a real grpc-js worker", () => {
  let worker: RawWorker;
  before(async () => {
    worker = await new RawWorker().start();
  });
  after(() => {
    worker.stop();
  });

  const variants: Array<[ReaderPath, string, ((call: RecognizeCall) => ReturnType<typeof http2StreamOf>) | undefined]> = [
    ["direct", "the reader takes the stream over", undefined],
    ["grpc-js", "grpc-js is laid out differently", () => null],
  ];
  for (const [path, why, find] of variants) {
    test(`${path} path (${why}): every response byte-exact and in order, then the worker's status`, async () => {
      worker.tail = { extra: [], status: { code: GrpcStatus.INVALID_ARGUMENT, details: "bad input" } };
      const c = openCall(worker.address, find);
      await until(() => c.reader.path !== "pending", "placement");
      assert.equal(c.reader.path, path);
      const status = await c.statusOf;
      assert.equal(status.code, GrpcStatus.INVALID_ARGUMENT);
      assert.equal(status.details, "bad input");
      assert.equal(c.got.length, SCRIPT.length, "every response arrived before the status");
      c.got.forEach((b, i) => assert.ok(b.equals(SCRIPT[i]!), `response ${i} byte-exact`));
      c.writer.close();
      c.reader.close();
      c.client.close();
    });
  }

  test("a stream grpc-js has already read from stays on grpc-js for the whole call, nothing reordered", async () => {
    worker.tail = { extra: [], status: { code: GrpcStatus.OK, details: "" } };
    // The finder reports "not placed yet" until responses are flowing through grpc-js.
    let c: ReturnType<typeof openCall> | null = null;
    c = openCall(worker.address, (call) => (c !== null && c.got.length > 0 ? http2StreamOf(call) : undefined));
    await until(() => c!.reader.path !== "pending", "the reader's decision");
    assert.equal(c.reader.path, "grpc-js");
    const status = await c.statusOf;
    assert.equal(status.code, GrpcStatus.OK);
    assert.equal(c.got.length, SCRIPT.length);
    c.got.forEach((b, i) => assert.ok(b.equals(SCRIPT[i]!), `response ${i} byte-exact`));
    c.reader.close();
    c.writer.close();
    c.client.close();
  });

  test("a reader sharing the writer's locator takes every stream over, even when the loop is busy between the two", async () => {
    worker.tail = { extra: [], status: { code: GrpcStatus.OK, details: "" } };
    const paths: ReaderPath[] = [];
    for (let i = 0; i < 24; i++) {
      const client = new FastAsrClient(worker.address, credentials.createInsecure(), CHANNEL);
      const call = client.streamingRecognize() as RecognizeCall;
      call.on("error", () => {});
      const statusOf = new Promise<StatusObject>((resolve) => call.on("status", resolve));
      const locator = new StreamLocator(call);
      const writer = new CallWriter(call, () => {}, locator);
      writer.write(config);
      // Up to 1.5 ms of other work between the two, as a busy gateway has: locators of their own
      // then drift a loop turn apart and the worker's answer reaches grpc-js before the reader looks.
      const busyUntil = process.hrtime.bigint() + BigInt((i % 4) * 500_000);
      while (process.hrtime.bigint() < busyUntil);
      let got = 0;
      const reader = new CallReader(call, () => got++, locator);
      assert.equal((await statusOf).code, GrpcStatus.OK);
      assert.equal(got, SCRIPT.length);
      paths.push(reader.path);
      writer.close();
      reader.close();
      client.close();
    }
    assert.deepEqual(new Set(paths), new Set(["direct"]));
  });

  test("closing the reader and cancelling the call: nothing is delivered after close, the status is CANCELLED, the worker sees the cancel", async () => {
    worker.tail = { extra: [], status: null };
    const before = worker.cancelled;
    const c = openCall(worker.address);
    await until(() => c.got.length === SCRIPT.length, "the responses");
    assert.equal(c.reader.path, "direct");
    c.reader.close();
    c.writer.close();
    c.call.cancel();
    const status = await c.statusOf;
    assert.equal(status.code, GrpcStatus.CANCELLED);
    await until(() => worker.cancelled > before, "the cancel at the worker");
    assert.equal(c.got.length, SCRIPT.length);
    c.client.close();
  });

  test("a reader closed inside a response handler (a session failing) delivers nothing more, and the call still completes", async () => {
    worker.tail = { extra: [], status: { code: GrpcStatus.OK, details: "" } };
    const client = new FastAsrClient(worker.address, credentials.createInsecure(), CHANNEL);
    const call = client.streamingRecognize() as RecognizeCall;
    const statusOf = new Promise<StatusObject>((resolve) => call.on("status", resolve));
    const locator = new StreamLocator(call);
    const writer = new CallWriter(call, () => {}, locator);
    let got = 0;
    const reader: CallReader = new CallReader(
      call,
      () => {
        if (++got === 3) reader.close();
      },
      locator,
    );
    writer.write(config);
    const status = await statusOf;
    assert.equal(status.code, GrpcStatus.OK, "the stream kept flowing to its end");
    assert.equal(reader.path, "direct");
    assert.equal(got, 3);
    writer.close();
    client.close();
  });

  test("a response over the receive limit ends the call with RESOURCE_EXHAUSTED; the ones before it were delivered", async () => {
    worker.tail = { extra: [Buffer.alloc(300_000, 0x0a)], status: null };
    // SCRIPT's largest message is ~105 KB; the extra one is 300 KB.
    const c = openCall(worker.address, undefined, 200_000);
    const status = await c.statusOf;
    assert.equal(c.reader.path, "direct");
    assert.equal(status.code, GrpcStatus.RESOURCE_EXHAUSTED);
    assert.match(status.details, /larger than max \(300000 vs 200000\)/);
    assert.equal(c.got.length, SCRIPT.length);
    c.writer.close();
    c.client.close();
  });

  for (const [path, find] of [["direct", undefined], ["grpc-js", () => null]] as const) {
    test(`${path} path: an undecodable response ends the call with INTERNAL, as grpc-js does`, async () => {
      // Field 1, wire type 7 (invalid).
      worker.tail = { extra: [Buffer.from([0x0f, 0x01])], status: null };
      const c = openCall(worker.address, find);
      const status = await c.statusOf;
      assert.equal(c.reader.path, path);
      assert.equal(status.code, GrpcStatus.INTERNAL);
      assert.match(status.details, /^Response message parsing error/);
      assert.equal(c.got.length, SCRIPT.length);
      c.writer.close();
      c.client.close();
    });
  }
});
