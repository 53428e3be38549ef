/**
 * The write coalescer holds plain audio of many calls and writes each call's
 * held audio as one HTTP/2 write in one loop turn; a real grpc-js worker still
 * receives every request byte for byte and in order, controls overtake
 * nothing, nothing is held longer than the delay, backpressure still reaches
 * the caller, and a delay of 0 writes every request at once.
 */
import assert from "node:assert/strict";
import type { Http2Stream } from "node:http2";
import { after, before, describe, test } from "node:test";
import { credentials, Server, type ServerDuplexStream } from "@grpc/grpc-js";
import { CallWriter } from "../../gateway/src/call-writer.js";
import { http2StreamOf } from "../../gateway/src/call-stream.js";
import { loadConfig } from "../../gateway/src/config.js";
import { AsrService, ControlType, RecognitionMode, StreamingRecognizeRequest, type StreamingRecognizeResponse } from "../../gateway/src/gen/asr/v1/asr.js";
import { FastAsrClient, framedAudioRequest, framedRequest } from "../../gateway/src/wire.js";
import type { RecognizeCall } from "../../gateway/src/workers.js";
import { DEFAULT_COALESCE_DELAY, WriteCoalescer } from "../../gateway/src/write-coalescer.js";
import { until, listenOnFreePort } from "./helpers/grpc-test.js";

const CHANNEL = { "grpc.enable_retries": 0 };
const config = framedRequest(
  StreamingRecognizeRequest.fromPartial({ streamingRequest: { $case: "config", value: { sessionId: "c", sampleRateHz: 16000, mode: RecognitionMode.RECOGNITION_MODE_TWO_PASS } } }),
);
const eoi = framedRequest({ streamingRequest: { $case: "control", value: { type: ControlType.CONTROL_TYPE_END_OF_INPUT } } });

/** What the worker got on one call, in arrival order: "config", "eoi" or the audio's bytes. */
type Got = Array<"config" | "eoi" | Buffer>;

/** A frame whose bytes say which call and which frame it is (so reordering or mixing would show). */
function frame(callIdx: number, j: number): Buffer {
  const b = Buffer.alloc(1920);
  for (let i = 0; i < b.length; i += 2) b.writeUInt16LE((callIdx * 1000 + j + i) & 0xffff, i);
  return b;
}

/** A real grpc-js worker that records every request of every call; `paused` calls read nothing until resumed. */
class RecordingWorker {
  readonly calls: { got: Got; call: ServerDuplexStream<StreamingRecognizeRequest, StreamingRecognizeResponse> }[] = [];
  address = "";
  pauseNew = false;
  private readonly server = new Server();

  async start(): Promise<this> {
    this.server.addService(AsrService, {
      streamingRecognize: (call: ServerDuplexStream<StreamingRecognizeRequest, StreamingRecognizeResponse>) => {
        const got: Got = [];
        this.calls.push({ got, call });
        if (this.pauseNew) call.pause();
        call.on("data", (r: StreamingRecognizeRequest) => {
          const x = r.streamingRequest;
          if (x?.$case === "audio") got.push(Buffer.from(x.value.pcm16le));
          else if (x?.$case === "config") got.push("config");
          else if (x?.$case === "control") got.push("eoi");
        });
        call.on("error", () => {});
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

/** One call with a direct-path writer whose HTTP/2 writes are counted (and timed). */
interface Opened {
  writer: CallWriter;
  call: RecognizeCall;
  /** Sizes and times (performance.now) of the writes that reached the HTTP/2 stream. */
  writes: { bytes: number; at: number }[];
  drains: number;
}

async function openCall(client: InstanceType<typeof FastAsrClient>, coalescer: WriteCoalescer, worker: RecordingWorker): Promise<Opened> {
  const call = client.streamingRecognize() as RecognizeCall;
  call.on("error", () => {});
  const writes: { bytes: number; at: number }[] = [];
  const o = { writes, drains: 0 } as Opened;
  // The real finder; the stream it finds gets its writes counted, nothing else changes.
  const find = (c: RecognizeCall): Http2Stream | null | undefined => {
    const s = http2StreamOf(c);
    if (s) {
      const write = s.write.bind(s) as (chunk: Buffer) => boolean;
      (s as unknown as { write: (chunk: Buffer) => boolean }).write = (chunk: Buffer) => {
        writes.push({ bytes: chunk.length, at: performance.now() });
        return write(chunk);
      };
    }
    return s;
  };
  const before = worker.calls.length;
  o.call = call;
  o.writer = new CallWriter(call, () => o.drains++, find, coalescer);
  o.writer.write(config);
  await until(() => o.writer.path === "direct" && worker.calls.length > before, "placement");
  await until(() => writes.length === 1, "the config written");
  writes.length = 0;
  return o;
}

function expected(callIdx: number, frames: number, end: boolean): Got {
  const g: Got = ["config"];
  for (let j = 0; j < frames; j++) g.push(frame(callIdx, j));
  if (end) g.push("eoi");
  return g;
}

describe("write coalescer against a real grpc-js worker", () => {
  let worker: RecordingWorker;
  let client: InstanceType<typeof FastAsrClient>;
  before(async () => {
    worker = await new RecordingWorker().start();
    client = new FastAsrClient(worker.address, credentials.createInsecure(), CHANNEL);
  });
  after(() => {
    client.close();
    worker.stop();
  });

  test("many calls' audio written within the delay goes out as one HTTP/2 write per call and arrives byte-exact and in order", async () => {
    // Long enough that a loaded CI box cannot fire the flush between the two turns below.
    const coalescer = new WriteCoalescer({ delay: 500 });
    const first = worker.calls.length;
    const calls: Opened[] = [];
    for (let i = 0; i < 8; i++) calls.push(await openCall(client, coalescer, worker));
    // Two loop turns of frames, 3 per call each, all inside one delay.
    for (let j = 0; j < 3; j++) calls.forEach((c, i) => assert.equal(c.writer.write(framedAudioRequest(frame(i, j), 0), true), true));
    await new Promise((r) => setImmediate(r));
    for (let j = 3; j < 6; j++) calls.forEach((c, i) => c.writer.write(framedAudioRequest(frame(i, j), 0), true));
    assert.ok(
      calls.every((c) => c.writes.length === 0),
      "nothing written before the delay",
    );
    await until(() => calls.every((c) => c.writes.length > 0), "the flush");
    const frameBytes = framedAudioRequest(frame(0, 0), 0).length;
    for (const c of calls) assert.deepEqual(c.writes.map((w) => w.bytes), [6 * frameBytes], "six frames in one write");
    for (const c of calls) c.writer.write(eoi);
    await until(() => calls.every((_, i) => worker.calls[first + i]!.got.at(-1) === "eoi"), "every END_OF_INPUT");
    calls.forEach((_, i) => assert.deepEqual(worker.calls[first + i]!.got, expected(i, 6, true)));
    for (const c of calls) {
      c.call.cancel();
      c.writer.close();
    }
  });

  test("a control request writes its call's held audio ahead of itself, at once", async () => {
    const coalescer = new WriteCoalescer({ delay: 10_000 });
    const first = worker.calls.length;
    const c = await openCall(client, coalescer, worker);
    for (let j = 0; j < 4; j++) c.writer.write(framedAudioRequest(frame(0, j), 0), true);
    assert.equal(c.writes.length, 0, "audio held");
    c.writer.write(eoi);
    // Synchronously: the held audio as one write, then the control.
    assert.deepEqual(c.writes.map((w) => w.bytes), [4 * framedAudioRequest(frame(0, 0), 0).length, eoi.length]);
    // A config (any non-audio request) does the same.
    c.writer.write(framedAudioRequest(frame(0, 4), 0), true);
    c.writer.write(config);
    assert.equal(c.writes.length, 4);
    await until(() => worker.calls[first]!.got.length === 8, "every request at the worker");
    assert.deepEqual(worker.calls[first]!.got, [...expected(0, 4, true), frame(0, 4), "config"]);
    c.call.cancel();
    c.writer.close();
  });

  test("held audio is written within the delay (bounded with slack), and a call past the byte bound at once", async () => {
    const delay = 40;
    const coalescer = new WriteCoalescer({ delay, maxHeldBytes: 5 * 1930 });
    const c = await openCall(client, coalescer, worker);
    const t0 = performance.now();
    c.writer.write(framedAudioRequest(frame(0, 0), 0), true);
    await until(() => c.writes.length === 1, "the flush");
    // Generous slack: a busy CI box may run the timer late; the point is that it is bounded.
    assert.ok(c.writes[0]!.at - t0 < delay + 1000, `held ${(c.writes[0]!.at - t0).toFixed(1)} ms`);
    // Five frames reach the bound: written in the same turn, no timer involved.
    for (let j = 1; j <= 5; j++) c.writer.write(framedAudioRequest(frame(0, j), 0), true);
    assert.equal(c.writes.length, 2, "flushed at the byte bound");
    assert.equal(c.writes[1]!.bytes, 5 * framedAudioRequest(frame(0, 0), 0).length);
    c.call.cancel();
    c.writer.close();
  });

  test('"turn" holds audio only until the end of the loop turn', async () => {
    const coalescer = new WriteCoalescer({ delay: "turn" });
    const first = worker.calls.length;
    const c = await openCall(client, coalescer, worker);
    for (let j = 0; j < 3; j++) c.writer.write(framedAudioRequest(frame(0, j), 0), true);
    assert.equal(c.writes.length, 0);
    await new Promise((r) => setImmediate(r));
    assert.equal(c.writes.length, 1, "written at setImmediate");
    c.writer.write(eoi);
    await until(() => worker.calls[first]!.got.at(-1) === "eoi", "END_OF_INPUT");
    assert.deepEqual(worker.calls[first]!.got, expected(0, 3, true));
    c.call.cancel();
    c.writer.close();
  });

  test("a delay of 0 writes every request at once, as without a coalescer", async () => {
    const coalescer = new WriteCoalescer({ delay: 0 });
    assert.equal(coalescer.enabled, false);
    const c = await openCall(client, coalescer, worker);
    for (let j = 0; j < 3; j++) {
      c.writer.write(framedAudioRequest(frame(0, j), 0), true);
      assert.equal(c.writes.length, j + 1);
    }
    c.call.cancel();
    c.writer.close();
  });

  test("closing the writer drops its held audio", async () => {
    const coalescer = new WriteCoalescer({ delay: 10 });
    const c = await openCall(client, coalescer, worker);
    c.writer.write(framedAudioRequest(frame(0, 0), 0), true);
    c.writer.close();
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(c.writes.length, 0);
    c.call.cancel();
  });

  test("backpressure: write() turns false while the worker reads nothing, onDrain comes once it reads, nothing is lost", async () => {
    const coalescer = new WriteCoalescer({ delay: 5 });
    worker.pauseNew = true;
    const first = worker.calls.length;
    const c = await openCall(client, coalescer, worker).finally(() => (worker.pauseNew = false));
    let written = 0;
    // Node's default HTTP/2 windows are 64 KiB: far fewer than 1,000 unread frames of 1.9 KB fit.
    while (written < 1000 && c.writer.write(framedAudioRequest(frame(0, written), 0), true)) written++;
    assert.ok(written < 1000, "write() said false before 1,000 unread frames");
    written++; // the frame that got false was taken too
    assert.equal(c.drains, 0);
    worker.calls[first]!.call.resume();
    await until(() => c.drains === 1, "onDrain");
    c.writer.write(eoi);
    await until(() => worker.calls[first]!.got.at(-1) === "eoi", "END_OF_INPUT");
    assert.deepEqual(worker.calls[first]!.got, expected(0, written, true));
    c.call.cancel();
    c.writer.close();
  });
});

describe("coalesce delay settings", () => {
  test("WORKER_WRITE_COALESCE_MS takes whole ms or turn, defaults to the shared default, and refuses anything else", () => {
    assert.equal(loadConfig({}).workerWriteCoalesceMs, DEFAULT_COALESCE_DELAY);
    assert.equal(loadConfig({ WORKER_WRITE_COALESCE_MS: "0" }).workerWriteCoalesceMs, 0);
    assert.equal(loadConfig({ WORKER_WRITE_COALESCE_MS: "4" }).workerWriteCoalesceMs, 4);
    assert.equal(loadConfig({ WORKER_WRITE_COALESCE_MS: "Turn" }).workerWriteCoalesceMs, "turn");
    for (const bad of ["-1", "2.5", "soon", "5000"]) assert.throws(() => loadConfig({ WORKER_WRITE_COALESCE_MS: bad }), /WORKER_WRITE_COALESCE_MS/);
  });

  test("the load client's --coalesce-ms parses the same forms", () => {
    assert.equal(WriteCoalescer.parseDelay("turn"), "turn");
    assert.equal(WriteCoalescer.parseDelay("2"), 2);
    assert.throws(() => WriteCoalescer.parseDelay("-3"), RangeError);
    assert.throws(() => WriteCoalescer.parseDelay(""), RangeError);
    assert.throws(() => WriteCoalescer.parseDelay("2.5"), RangeError);
    assert.throws(() => WriteCoalescer.parseDelay("5000"), RangeError);
  });
});
