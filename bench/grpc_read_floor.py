#!/usr/bin/env python3
"""The floor of the worker's front path: CPU of a grpc.aio server that only reads paced audio.

A server implementing asr.v1.Asr whose StreamingRecognize reads every request and does nothing
else (no session, no VAD, no engine), in its own process; N client streams in another process
send a config, then 60 ms PCM16 frames (1,920 bytes) in real time for `--seconds`. Prints the
server process's CPU per message and per stream-second: what any grpc.aio front pays before
doing any work, to set beside bench/front_capacity.py (docs/benchmarks.md, "After the VAD tick").

    worker-py/.venv/bin/python bench/grpc_read_floor.py --streams 50,100 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker-py"))

#: Ways the servicer can read its request stream (`--read`).
READS = ("iterator", "context")


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _server(ports: mp.Queue, done: mp.Queue, read: str) -> None:
    import grpc

    from asr.v1 import asr_pb2_grpc

    class Reader(asr_pb2_grpc.AsrServicer):
        def __init__(self) -> None:
            self.messages = 0

        async def StreamingRecognize(self, request_iterator, context):  # noqa: N802
            if read == "context":
                # The servicer context's own read(): no async generator per message.
                while await context.read() is not grpc.aio.EOF:
                    self.messages += 1
            else:
                async for _ in request_iterator:
                    self.messages += 1
            return
            yield  # a response stream with no responses

    async def main() -> None:
        server = grpc.aio.server()
        reader = Reader()
        asr_pb2_grpc.add_AsrServicer_to_server(reader, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        cpu0 = _cpu()
        ports.put(port)
        await asyncio.get_running_loop().run_in_executor(None, done.get)
        ports.put((_cpu() - cpu0, reader.messages))
        await server.stop(None)

    asyncio.run(main())


async def _clients(port: int, streams: int, seconds: float, frame_s: float) -> None:
    import grpc

    from asr.v1 import asr_pb2, asr_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = asr_pb2_grpc.AsrStub(channel)

        async def one(i: int) -> None:
            await asyncio.sleep(i * frame_s / streams)  # spread the sends over the frame period
            frame = b"\x01\x02" * round(16_000 * frame_s)  # 16 kHz PCM16

            async def requests():
                yield asr_pb2.StreamingRecognizeRequest(
                    config=asr_pb2.StreamingConfig(sample_rate_hz=16000)
                )
                t0 = time.monotonic()
                k = 0
                while (k + 1) * frame_s <= seconds:
                    yield asr_pb2.StreamingRecognizeRequest(audio=asr_pb2.AudioChunk(pcm16le=frame))
                    k += 1
                    await asyncio.sleep(max(0.0, t0 + k * frame_s - time.monotonic()))

            async for _ in stub.StreamingRecognize(requests()):
                pass

        await asyncio.gather(*(one(i) for i in range(streams)))


def run(
    streams: int, seconds: float, *, read: str = "iterator", frame_ms: int = 60
) -> dict[str, float | str]:
    """One measurement: server CPU for `streams` paced streams of `seconds`."""
    ctx = mp.get_context("spawn")
    ports, done = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_server, args=(ports, done, read))
    proc.start()
    try:
        port = ports.get(timeout=60)
        asyncio.run(_clients(port, streams, seconds, frame_ms / 1000.0))
        done.put(True)
        cpu, messages = ports.get(timeout=60)
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return {
        "read": read,
        "frame_ms": frame_ms,
        "streams": streams,
        "messages": messages,
        "server_cpu_s": round(cpu, 3),
        "us_per_message": round(cpu / max(messages, 1) * 1e6, 1),
        "ms_per_stream_second": round(cpu / (streams * seconds) * 1e3, 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="50,100", help="comma-separated stream counts")
    p.add_argument("--seconds", type=float, default=15.0, help="length of each stream")
    p.add_argument("--read", default="iterator",
                   help=f"comma-separated ways to read the request stream: {', '.join(READS)}")
    p.add_argument("--frame-ms", default="60", help="comma-separated audio per message, ms")
    p.add_argument("--repeats", type=int, default=1, help="alternate the cells this many times")
    args = p.parse_args()
    reads = [r for r in args.read.split(",") if r]
    if any(r not in READS for r in reads):
        p.error(f"--read takes {', '.join(READS)}")
    print("read      frame ms  streams  messages  server CPU s  µs/message  ms per stream-second")
    for _ in range(args.repeats):
        for n in [int(x) for x in args.streams.split(",") if x.strip()]:
            for frame_ms in [int(x) for x in args.frame_ms.split(",") if x.strip()]:
                for read in reads:
                    r = run(n, args.seconds, read=read, frame_ms=frame_ms)
                    print(f"{read:9s} {frame_ms:8d}  {r['streams']:7d}  {r['messages']:8d}  "
                          f"{r['server_cpu_s']:12.2f}  {r['us_per_message']:10.1f}  "
                          f"{r['ms_per_stream_second']:20.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
