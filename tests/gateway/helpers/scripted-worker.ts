/**
 * A scripted asr.v1 worker for gateway tests: a real grpc-js server on port 0
 * that loads proto/asr/v1/asr.proto and the health proto dynamically with
 * @grpc/proto-loader, so it also proves the contract independently of the
 * generated TypeScript the gateway uses.
 *
 * Its "engine" is deterministic and audio-driven: 10 ms windows whose mean
 * |sample| exceeds 500 are speech; a segment closes after 300 ms of silence
 * (or at END_OF_INPUT); segment N's text is "S{N}" followed by one "w" per
 * 200 ms of segment audio; partials come every 200 ms of segment audio with
 * `delta` = the new characters. Tests steer health, load and failures.
 *
 * It serves StreamingRecognizeMux as well (bench/lib/mux-server.ts: each mux
 * session runs the same per-call logic and gets its own CallRecord) and says
 * `mux: true` in its load reports, unless `mux: false` (then it answers the
 * mux RPC with UNIMPLEMENTED, like a worker that predates it).
 */
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { perCallCodec, serveMux, withRawMux, type MuxServerCall, type VirtualCall } from "../../../bench/lib/mux-server.js";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** What the worker saw on one call (for assertions). */
export interface CallRecord {
  /** Configs received, in order. */
  configs: Array<Record<string, unknown>>;
  /** PCM bytes received. */
  audioBytes: number;
  /** The PCM received, in order (copies: byte-exactness checks). */
  pcm: Buffer[];
  /** END_OF_INPUT controls received. */
  eois: number;
  /** Whether the gateway cancelled the call. */
  cancelled: boolean;
  /** Whether the call has ended. */
  ended: boolean;
  /** Request kinds in arrival order ("config" | "audio" | "control"). */
  order: string[];
  /** The calling channel's address (one per gateway process). */
  peer: string;
  /** The mux call carrying it (index into ScriptedWorker.muxCalls), or null for its own StreamingRecognize call. */
  mux: number | null;
}

/** Options of the scripted worker. */
export interface ScriptedWorkerOptions {
  /** Initial health (default SERVING). */
  serving?: boolean;
  /** max_streams in load reports (default 100). */
  maxStreams?: number;
  /** Extra delay before each final, ms (default 0). */
  finalDelayMs?: number;
  /** End the call with this status once this much audio (ms) arrived. */
  failAfterAudioMs?: { ms: number; code: grpc.status; details: string };
  /** Attach tokens (timestamps) to finals (default true). */
  tokens?: boolean;
  /** End the call with this status when an END_OF_INPUT arrives (before finalizing). */
  failOnEndOfInput?: grpc.status;
  /** Serve StreamingRecognizeMux and report `mux: true` (default true). */
  mux?: boolean;
  /** What load reports say about the mux (default: whether it is served); true with `mux: false` = a worker that lies. */
  reportMux?: boolean;
}

type Json = Record<string, any>;

/** A running scripted worker. */
export class ScriptedWorker {
  /** host:port it listens on. */
  address = "";
  /** One record per StreamingRecognize call or mux session. */
  readonly calls: CallRecord[] = [];
  /** Every StreamingRecognizeMux call served (counters of messages, frames, sessions). */
  readonly muxCalls: Array<MuxServerCall<Json, Json>> = [];
  /** The virtual call of each mux session, by CallRecord index (flow control in tests). */
  private readonly virtual = new Map<number, VirtualCall<Json, Json>>();
  private readonly server = new grpc.Server();
  private serving: boolean;
  private readonly healthWatchers = new Set<grpc.ServerWritableStream<Json, Json>>();
  private readonly loadWatchers = new Set<grpc.ServerWritableStream<Json, Json>>();
  private active = 0;
  private engineStalled = false;
  private readonly opts: ScriptedWorkerOptions;

  /** Creates the worker; call start(). */
  constructor(opts: ScriptedWorkerOptions = {}) {
    this.opts = opts;
    this.serving = opts.serving ?? true;
    const loaderOpts = { keepCase: false, longs: Number, enums: Number, defaults: true, oneofs: true };
    const asrDef = protoLoader.loadSync(path.join(ROOT, "proto/asr/v1/asr.proto"), { ...loaderOpts, includeDirs: [path.join(ROOT, "proto")] });
    const healthDef = protoLoader.loadSync(path.join(ROOT, "proto/grpc/health/v1/health.proto"), loaderOpts);
    const asr = (grpc.loadPackageDefinition(asrDef) as any).asr.v1.Asr;
    const health = (grpc.loadPackageDefinition(healthDef) as any).grpc.health.v1.Health;
    const mux = opts.mux !== false;
    this.server.addService(mux ? withRawMux(asr.service) : asr.service, {
      streamingRecognize: (call: grpc.ServerDuplexStream<Json, Json>) => this.recognize(call, null),
      watchLoad: (call: grpc.ServerWritableStream<Json, Json>) => this.watchLoad(call),
      ...(mux
        ? {
            streamingRecognizeMux: serveMux<Json, Json>(
              perCallCodec(asr.service),
              (call) => {
                this.virtual.set(this.calls.length, call as unknown as VirtualCall<Json, Json>);
                this.recognize(call, this.muxCalls.length - 1);
              },
              (m) => this.muxCalls.push(m),
            ),
          }
        : {}),
    });
    this.server.addService(health.service, {
      check: (_call: unknown, cb: grpc.sendUnaryData<Json>) => cb(null, { status: this.serving ? 1 : 2 }),
      watch: (call: grpc.ServerWritableStream<Json, Json>) => {
        this.healthWatchers.add(call);
        call.write({ status: this.serving ? 1 : 2 });
        call.on("cancelled", () => this.healthWatchers.delete(call));
      },
    });
  }

  /** Binds 127.0.0.1:0 (or a given port, or another loopback address such as 127.0.0.2 for DNS tests). */
  async start(port = 0, host = "127.0.0.1"): Promise<this> {
    const bound = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    this.address = `${host}:${bound}`;
    return this;
  }

  /** Changes health; every watcher hears it at once. */
  setServing(serving: boolean): void {
    this.serving = serving;
    for (const w of this.healthWatchers) w.write({ status: serving ? 1 : 2 });
    this.pushLoad();
  }

  /** Says `engine_stalled` in load reports from now on (true) or no longer (false); reports go out at once. */
  setEngineStalled(stalled: boolean): void {
    this.engineStalled = stalled;
    this.pushLoad();
  }

  /** Ends every mux call now with `code`, as a worker that stops (its sessions are lost with it). */
  endMuxCalls(code: grpc.status, details: string): void {
    for (const m of this.muxCalls) m.abort(code, details);
  }

  /** Pauses (true) or resumes (false) the input of the mux session recorded as calls[index] (MuxEvent.flow). */
  setFlow(index: number, paused: boolean): void {
    const vc = this.virtual.get(index);
    if (vc === undefined) throw new Error(`calls[${index}] is not a mux session`);
    vc.flow(paused);
  }

  /** Stops the server at once (open calls fail with UNAVAILABLE/CANCELLED). */
  async stop(): Promise<void> {
    for (const w of [...this.healthWatchers, ...this.loadWatchers]) w.end();
    this.server.forceShutdown();
  }

  private report(): Json {
    return {
      workerId: this.address,
      activeStreams: this.active,
      maxStreams: this.opts.maxStreams ?? 100,
      queuedAudioSeconds: 0,
      accepting: this.serving,
      engine: "scripted",
      recentRtf: 0,
      mux: this.opts.reportMux ?? this.opts.mux !== false,
      engineStalled: this.engineStalled,
    };
  }

  private pushLoad(): void {
    for (const w of this.loadWatchers) w.write(this.report());
  }

  private watchLoad(call: grpc.ServerWritableStream<Json, Json>): void {
    this.loadWatchers.add(call);
    call.write(this.report());
    const t = setInterval(() => call.write(this.report()), Math.max(100, Number(call.request.intervalMs) || 1000));
    call.on("cancelled", () => {
      clearInterval(t);
      this.loadWatchers.delete(call);
    });
  }

  private recognize(call: grpc.ServerDuplexStream<Json, Json>, mux: number | null): void {
    const rec: CallRecord = { configs: [], audioBytes: 0, pcm: [], eois: 0, cancelled: false, ended: false, order: [], peer: call.getPeer(), mux };
    this.calls.push(rec);
    this.active++;
    this.pushLoad();
    const released = (): void => {
      if (rec.ended) return;
      rec.ended = true;
      this.active--;
      this.pushLoad();
    };
    let rate = 0;
    let mode = 3;
    let configAllowed = true;
    let configured = false;
    let samples = 0; // samples received at `rate`
    let offsetMs = 0; // StreamingConfig.resume.audio_offset_ms
    let timelineMs = 0;
    let seg: { id: number; startMs: number; speechMs: number; lastSpeechMs: number; sentText: string; nextPartialMs: number } | null = null;
    let nextId = 0;
    let roundSegments = 0;
    let done = false;
    const chain: Array<() => void> = [];
    let flushing = false;
    // Emit in order, optionally delaying finals, without reordering later messages.
    const emit = (msg: Json, delay = 0): void => {
      chain.push(() => {
        if (!done) call.write(msg);
      });
      if (delay > 0 && !flushing) {
        flushing = true;
        setTimeout(() => {
          flushing = false;
          while (chain.length) chain.shift()!();
        }, delay);
      } else if (!flushing) {
        while (chain.length) chain.shift()!();
      }
    };
    const finish = (s: grpc.status, details: string): void => {
      if (done) return;
      done = true;
      call.emit("error", { code: s, details });
      released();
    };
    const textOf = (s: NonNullable<typeof seg>): string => `S${s.id}` + "w".repeat(Math.floor(s.speechMs / 200));
    const closeSeg = (reason: number): void => {
      if (seg === null) return;
      const s = seg;
      seg = null;
      roundSegments++;
      const text = textOf(s);
      emit({ speechEvent: { type: 2, segmentId: s.id, offsetMs: timelineMs } });
      const tokens =
        this.opts.tokens === false
          ? []
          : [...text].map((ch, i) => ({ text: ch, startMs: s.startMs + i * 50, endMs: s.startMs + i * 50 + 40 }));
      emit({ final: { segmentId: s.id, text, startMs: s.startMs, endMs: timelineMs, tokens, reason } }, this.opts.finalDelayMs ?? 0);
    };
    const onAudio = (pcm: Buffer): void => {
      const win = Math.max(1, Math.round(rate / 100)); // 10 ms
      for (let off = 0; off + 2 <= pcm.length; off += win * 2) {
        const end = Math.min(pcm.length, off + win * 2);
        let acc = 0;
        let n = 0;
        for (let i = off; i + 1 < end; i += 2) {
          acc += Math.abs(pcm.readInt16LE(i));
          n++;
        }
        samples += n;
        timelineMs = offsetMs + (samples / rate) * 1000;
        const speech = n > 0 && acc / n > 500;
        if (speech && seg === null) {
          seg = { id: nextId++, startMs: timelineMs, speechMs: 0, lastSpeechMs: timelineMs, sentText: "", nextPartialMs: 200 };
          emit({ speechEvent: { type: 1, segmentId: seg.id, offsetMs: timelineMs } });
        }
        if (seg !== null) {
          seg.speechMs += (n / rate) * 1000;
          if (speech) seg.lastSpeechMs = timelineMs;
          if (mode !== 1 && seg.speechMs >= seg.nextPartialMs) {
            seg.nextPartialMs += 200;
            const text = textOf(seg);
            const delta = text.slice(seg.sentText.length);
            seg.sentText = text;
            emit({ partial: { segmentId: seg.id, text, delta, stability: 0.9, audioEndMs: timelineMs } });
          }
          if (!speech && timelineMs - seg.lastSpeechMs >= 300) closeSeg(1);
        }
      }
      const f = this.opts.failAfterAudioMs;
      if (f !== undefined && timelineMs >= f.ms) finish(f.code, f.details);
    };
    call.on("data", (req: Json) => {
      if (done) return;
      const kind = req.streamingRequest as string;
      rec.order.push(kind);
      if (kind === "config") {
        if (!configAllowed) return finish(grpc.status.INVALID_ARGUMENT, "config is allowed only first or directly after END_OF_INPUT");
        const c = req.config as Json;
        rec.configs.push(c);
        if (c.sampleRateHz !== 8000 && c.sampleRateHz !== 16000) return finish(grpc.status.INVALID_ARGUMENT, "sample_rate_hz must be 8000 or 16000");
        if (c.resume != null) {
          offsetMs = Number(c.resume.audioOffsetMs);
          nextId = Number(c.resume.finalizedSegments);
          timelineMs = offsetMs;
        } else if (rate !== 0 && rate !== c.sampleRateHz) {
          samples = Math.round(((timelineMs - offsetMs) / 1000) * c.sampleRateHz);
        }
        rate = c.sampleRateHz;
        mode = c.mode || 3;
        configured = true;
        configAllowed = false;
        return;
      }
      if (!configured) return finish(grpc.status.INVALID_ARGUMENT, "the first request must carry config");
      configAllowed = false;
      if (kind === "audio") {
        const pcm = req.audio.pcm16le as Buffer;
        if (pcm.length % 2 !== 0) return finish(grpc.status.INVALID_ARGUMENT, "odd byte count");
        rec.audioBytes += pcm.length;
        rec.pcm.push(Buffer.from(pcm));
        onAudio(pcm);
      } else if (kind === "control") {
        if (req.control.type === 1) {
          rec.eois++;
          if (this.opts.failOnEndOfInput !== undefined) return finish(this.opts.failOnEndOfInput, "scripted failure at end of input");
          closeSeg(2);
          if (roundSegments === 0) {
            const id = nextId++;
            emit({ final: { segmentId: id, text: "", startMs: timelineMs, endMs: timelineMs, tokens: [], reason: 2 } });
          }
          roundSegments = 0;
          emit({ endOfInput: { finalizedSegments: nextId, audioReceivedMs: Math.round(timelineMs) } });
          configAllowed = true;
        }
      }
    });
    call.on("end", () => {
      closeSeg(2);
      setTimeout(() => {
        if (!done) {
          done = true;
          call.end();
          released();
        }
      }, (this.opts.finalDelayMs ?? 0) + 5);
    });
    call.on("cancelled", () => {
      rec.cancelled = true;
      done = true;
      released();
    });
    call.on("error", () => {});
  }
}
