/**
 * Serves StreamingRecognizeMux in the Node workers (bench/stub-worker.ts,
 * tests/gateway/helpers/scripted-worker.ts) with their existing per-call
 * StreamingRecognize handlers: each session of a mux call becomes a virtual
 * call with the part of grpc-js's ServerDuplexStream those handlers use —
 * 'data' per request, 'end' on half-close, 'cancelled' and 'close', write(),
 * end(), destroy(err) and emit("error", status) to end it with a status,
 * getPeer().
 *
 * The adapter works on bytes: the mux method's (de)serializers pass Buffers
 * through, MuxFrame/MuxEvent are read and written here with
 * @bufbuild/protobuf's wire reader and writer, and each session's requests
 * and responses go through the worker's own per-call codec (its
 * StreamingRecognize method definition: ts-proto's for the stub worker,
 * proto-loader's for the scripted one), so a handler sees exactly the objects
 * its own call would give it. Events that sessions write in one loop turn
 * leave as one StreamingRecognizeMuxResponse, as the Python worker batches
 * them. Flow control (MuxEvent.flow) is sent on demand (`flow()`, tests);
 * a paused session's requests are held in order and handed over on resume,
 * as the contract says a worker does.
 */
import { EventEmitter } from "node:events";
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { status, type ServerDuplexStream, type ServiceDefinition } from "@grpc/grpc-js";

/** Method paths of the per-call and the mux RPC. */
export const RECOGNIZE_PATH = "/asr.v1.Asr/StreamingRecognize";
/** {@inheritDoc RECOGNIZE_PATH} */
export const MUX_PATH = "/asr.v1.Asr/StreamingRecognizeMux";

/** How one session's requests are decoded and its responses encoded (the per-call method's own codec). */
export interface PerCallCodec<Req, Res> {
  /** StreamingRecognizeRequest bytes to the handler's request object. */
  requestDeserialize(bytes: Buffer): Req;
  /** The handler's response object to StreamingRecognizeResponse bytes. */
  responseSerialize(value: Res): Buffer;
}

/** A status a virtual call ends with. */
interface EndStatus {
  code: number;
  details: string;
}

function findMethod(service: ServiceDefinition, path: string): string {
  const key = Object.keys(service).find((k) => service[k]!.path === path);
  if (key === undefined) throw new Error(`service has no ${path}`);
  return key;
}

/** The per-call codec of a service definition's StreamingRecognize. */
export function perCallCodec<Req, Res>(service: ServiceDefinition): PerCallCodec<Req, Res> {
  const m = service[findMethod(service, RECOGNIZE_PATH)]!;
  return { requestDeserialize: (b) => m.requestDeserialize(b) as Req, responseSerialize: (v) => m.responseSerialize(v) };
}

/** `service` with StreamingRecognizeMux passing Buffers through both ways (the adapter codes them). */
export function withRawMux(service: ServiceDefinition): ServiceDefinition {
  const key = findMethod(service, MUX_PATH);
  return {
    ...service,
    [key]: { ...service[key]!, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b },
  } as ServiceDefinition;
}

/** Counters of one mux call (tests). */
export interface MuxServerStats {
  /** StreamingRecognizeMuxRequest messages received. */
  messages: number;
  /** MuxFrames received. */
  frames: number;
  /** Sessions opened. */
  sessions: number;
}

/** One session of a mux call, shaped like the ServerDuplexStream its per-call handler expects (see module comment). */
export class VirtualCall<Req, Res> extends EventEmitter {
  /** Whether the client cancelled the session (or the whole call went away). */
  cancelled = false;
  /** Requests held while the session is paused (MuxEvent.flow). */
  private held: Req[] | null = null;
  private done = false;

  /** @internal Made by MuxServerCall. */
  constructor(
    private readonly mux: MuxServerCall<Req, Res>,
    /** The session number on its mux call. */
    readonly session: number,
  ) {
    super();
  }

  /** The mux call's peer (the gateway's connection). */
  getPeer(): string {
    return this.mux.peer;
  }

  /** Sends a response (after the session ended: dropped). */
  write(value: Res): boolean {
    if (!this.done) this.mux.send(this.session, 2, this.mux.codec.responseSerialize(value));
    return true;
  }

  /** Ends the session with OK. */
  end(): this {
    this.finish({ code: status.OK, details: "" });
    return this;
  }

  /** Ends the session with the error's status (grpc-js's `destroy(err)` on a server call). */
  destroy(err?: Error & { code?: number; details?: string }): this {
    this.finish({ code: err?.code ?? status.INTERNAL, details: err?.details ?? err?.message ?? "" });
    return this;
  }

  /** As on a grpc-js server call, emitting "error" with a status ends the session with it. */
  override emit(event: string | symbol, ...args: unknown[]): boolean {
    if (event !== "error") return super.emit(event, ...args);
    const had = this.listenerCount("error") > 0 && super.emit(event, ...args);
    const e = args[0] as Partial<EndStatus> & { message?: string };
    this.finish({ code: e?.code ?? status.INTERNAL, details: e?.details ?? e?.message ?? "" });
    return had;
  }

  /** Pauses (true) or resumes (false) the session's input: MuxEvent.flow; requests meanwhile are held in order. */
  flow(paused: boolean): void {
    if (this.done) return;
    this.mux.sendFlow(this.session, paused);
    if (paused) {
      this.held ??= [];
      return;
    }
    const held = this.held ?? [];
    this.held = null;
    for (const r of held) if (!this.done) super.emit("data", r);
  }

  /** @internal A request for this session. */
  request(r: Req): void {
    if (this.held !== null) this.held.push(r);
    else super.emit("data", r);
  }

  /** @internal The client half-closed the session. */
  halfClose(): void {
    super.emit("end");
  }

  /** @internal The client cancelled the session (or the call went away): no end event is sent. */
  cancel(): void {
    if (this.done) return;
    this.done = true;
    this.cancelled = true;
    super.emit("cancelled");
    super.emit("close");
  }

  private finish(s: EndStatus): void {
    if (this.done) return;
    this.done = true;
    this.mux.ended(this.session, s);
    super.emit("close");
  }
}

/** One StreamingRecognizeMux server call, split into virtual calls (see module comment). */
export class MuxServerCall<Req, Res> {
  /** Counters so far. */
  readonly stats: MuxServerStats = { messages: 0, frames: 0, sessions: 0 };
  /** The call's peer. */
  readonly peer: string;
  private readonly open = new Map<number, VirtualCall<Req, Res>>();
  private highest = 0;
  private halfClosed = false;
  private finished = false;
  private out = new BinaryWriter();
  private outEvents = 0;
  private scheduled = false;

  /**
   * Serves `call`: every new session number becomes a virtual call handed to
   * `onSession`, which attaches its handler synchronously (as grpc-js calls a
   * per-call handler before any data).
   */
  constructor(
    private readonly call: ServerDuplexStream<Buffer, Buffer>,
    /** @internal The per-call codec. */
    readonly codec: PerCallCodec<Req, Res>,
    private readonly onSession: (vc: VirtualCall<Req, Res>) => void,
  ) {
    this.peer = call.getPeer();
    call.on("data", (b: Buffer) => this.onMessage(b));
    call.on("end", () => {
      this.halfClosed = true;
      this.maybeFinish();
    });
    call.on("cancelled", () => {
      this.finished = true;
      for (const vc of [...this.open.values()]) vc.cancel();
      this.open.clear();
    });
    call.on("error", () => {});
  }

  /** @internal Queues a MuxEvent with a bytes field (2: response). */
  send(session: number, field: number, bytes: Uint8Array): void {
    this.out.uint32((1 << 3) | WireType.LengthDelimited).fork();
    this.out.uint32((1 << 3) | WireType.Varint).uint32(session);
    this.out.uint32((field << 3) | WireType.LengthDelimited).bytes(bytes);
    this.out.join();
    this.queued();
  }

  /** @internal Queues MuxEvent.flow. */
  sendFlow(session: number, paused: boolean): void {
    const w = new BinaryWriter();
    w.uint32((1 << 3) | WireType.Varint).bool(paused);
    this.send(session, 4, w.finish());
  }

  /** @internal A session ended: MuxEvent.end. */
  ended(session: number, s: EndStatus): void {
    this.open.delete(session);
    const w = new BinaryWriter();
    w.uint32((1 << 3) | WireType.Varint).uint32(s.code);
    if (s.details !== "") w.uint32((2 << 3) | WireType.LengthDelimited).string(s.details);
    this.send(session, 3, w.finish());
    this.maybeFinish();
  }

  /** Ends the whole call with `code` at once (a worker that stops or fails): every open session is lost with it. */
  abort(code: number, details: string): void {
    if (this.finished) return;
    this.finished = true;
    for (const vc of [...this.open.values()]) vc.cancel();
    this.open.clear();
    this.call.emit("error", { code, details });
  }

  private queued(): void {
    this.outEvents++;
    if (this.scheduled) return;
    this.scheduled = true;
    // Everything written in this loop turn leaves as one message.
    setImmediate(() => this.flush());
  }

  private flush(): void {
    this.scheduled = false;
    if (this.outEvents === 0) return;
    const bytes = this.out.finish();
    this.out = new BinaryWriter();
    this.outEvents = 0;
    if (!this.finished) this.call.write(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    if (this.halfClosed && this.open.size === 0) this.finishCall();
  }

  private maybeFinish(): void {
    if (!this.halfClosed || this.open.size > 0 || this.finished) return;
    if (this.scheduled) return; // the flush ends the call after the last events
    this.finishCall();
  }

  private finishCall(): void {
    if (this.finished) return;
    this.finished = true;
    this.call.end();
  }

  private onMessage(b: Buffer): void {
    if (this.finished) return;
    this.stats.messages++;
    const r = new BinaryReader(b);
    try {
      while (r.pos < r.len) {
        const [field, wt] = r.tag();
        if (field === 1 && wt === WireType.LengthDelimited) this.onFrame(r.bytes());
        else r.skip(wt);
      }
    } catch (e) {
      // A malformed message ends the whole call; every open session is lost.
      this.abort(status.INVALID_ARGUMENT, `malformed StreamingRecognizeMuxRequest: ${(e as Error).message}`);
    }
  }

  private onFrame(bytes: Uint8Array): void {
    this.stats.frames++;
    const r = new BinaryReader(bytes);
    let session = 0;
    let request: Uint8Array | null = null;
    let halfClose = false;
    let cancel = false;
    while (r.pos < r.len) {
      const [field, wt] = r.tag();
      if (field === 1 && wt === WireType.Varint) session = r.uint32();
      else if (field === 2 && wt === WireType.LengthDelimited) request = r.bytes();
      else if (field === 3 && wt === WireType.Varint) halfClose = r.bool();
      else if (field === 4 && wt === WireType.Varint) cancel = r.bool();
      else r.skip(wt);
    }
    let vc = this.open.get(session);
    if (vc === undefined) {
      // A lower number that is not open crossed its session's end: ignored.
      if (session <= this.highest) return;
      this.highest = session;
      vc = new VirtualCall(this, session);
      this.open.set(session, vc);
      this.stats.sessions++;
      this.onSession(vc);
    }
    if (cancel) {
      this.open.delete(session);
      vc.cancel();
      this.maybeFinish();
    } else if (halfClose) {
      vc.halfClose();
    } else if (request !== null) {
      vc.request(this.codec.requestDeserialize(Buffer.from(request.buffer, request.byteOffset, request.byteLength)));
    }
  }
}

/**
 * The StreamingRecognizeMux implementation for a server whose service
 * definition went through withRawMux(): every session is served by
 * `handler`, as if it were its own StreamingRecognize call. `onCall` sees
 * each mux call (tests count them).
 */
export function serveMux<Req, Res>(
  codec: PerCallCodec<Req, Res>,
  handler: (call: ServerDuplexStream<Req, Res>) => void,
  onCall?: (mux: MuxServerCall<Req, Res>) => void,
): (call: ServerDuplexStream<Buffer, Buffer>) => void {
  return (call) => {
    // The one cast: a virtual call carries the part of ServerDuplexStream the Node workers' handlers use.
    const mux = new MuxServerCall<Req, Res>(call, codec, (vc) => handler(vc as unknown as ServerDuplexStream<Req, Res>));
    onCall?.(mux);
  };
}
