"""Command line and composition root of the worker.

    python -m asr_worker serve --listen HOST:PORT --engine funasr-nano --model-dir DIR --device cpu|cuda
    python -m asr_worker download [--model-id ID --hub ms|hf --cache-dir DIR]
    python -m asr_worker tiny-model OUT_DIR
    python -m asr_worker check --model-dir DIR --device cpu|cuda   (self-test: load + transcribe a clip)

`serve` is the only place where engine, scheduler, VAD and server are wired
together. Once the port is bound it prints exactly one line `LISTENING
<host>:<port>` to stdout (so callers using `--listen 127.0.0.1:0` learn the
port); readiness is health SERVING, after engine warmup. Misconfiguration (bad
option value, missing or incomplete model directory, unknown device, CUDA
without a GPU) is reported as one line on stderr with exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import Draining, ModelLoadError, StartupError

#: Engines `--engine` accepts. funasr-nano is the default; fake is for tests and benchmarks.
ENGINES = ("funasr-nano", "fake")
#: VAD backends `--vad` accepts.
VADS = ("silero", "silero-torch", "silero-onnx", "fsmn")


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (no usage dump) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The worker's argument parser (all subcommands)."""
    p = _Parser(prog="asr_worker", description="Fun-ASR-Nano streaming worker (asr.v1 gRPC)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("serve", help="run the gRPC worker")
    s.add_argument("--listen", default="0.0.0.0:50051", help="HOST:PORT to bind; port 0 = any free port")
    s.add_argument("--engine", default="funasr-nano", help="funasr-nano (default) or fake (tests/benchmarks)")
    s.add_argument("--model-dir", type=Path, help="local Fun-ASR-Nano model directory (funasr-nano)")
    s.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:N or auto (cuda:0 when torch sees a GPU) (default cpu)")
    s.add_argument("--dtype", default="auto", help="auto (bf16 on Ampere+, else fp32), bf16 or fp32")
    s.add_argument("--max-batch-size", type=int, default=8, help="requests per engine call; 1 = batching off")
    s.add_argument("--batch-window-ms", type=float, default=10.0,
                   help="how long a batch waits for more requests after its first (default 10)")
    s.add_argument("--max-streams", type=int, default=64, help="streams admitted at once (default 64)")
    s.add_argument("--front-processes", type=int, default=-1,
                   help="processes serving gRPC streams, sessions and VAD beside the one engine "
                        "process; default: usable CPUs - 1 (one core is the engine's), "
                        "at least 1, at most 16; "
                        "0 = everything in one process (no IPC)")
    s.add_argument("--max-queue", type=int, default=0,
                   help="pending decode requests before OVERLOADED (default 4 x max-streams)")
    s.add_argument("--partial-interval-ms", type=int, default=600,
                   help="default partial cadence in ms of audio, clamped to 480..1200 (default 600)")
    s.add_argument("--partial-window-ms", type=int, default=12_000,
                   help="partials decode at most the last this-many ms of a segment (default 12000)")
    s.add_argument("--decoder-drafts", choices=("on", "off"), default="on",
                   help="prefill each request of an open segment with the segment's previous answer as "
                        "a draft and verify it in that forward (same output, fewer decoder steps; "
                        "default on); off decodes every request from its prompt alone")
    s.add_argument("--vad", default="silero",
                   help="silero (default: its ONNX and TorchScript files, both in the wheel, "
                        "onnxruntime for small batches and torch for large), silero-onnx, "
                        "silero-torch, or fsmn (FunASR fsmn-vad, --vad-model-dir)")
    s.add_argument("--vad-model-dir", type=Path, help="FunASR fsmn-vad model directory (--vad fsmn)")
    s.add_argument("--vad-threshold", type=float, default=None,
                   help="speech probability threshold (0.5 for silero, 0.8 for fsmn)")
    s.add_argument("--vad-neg-threshold", type=float, default=None,
                   help="end-of-speech threshold (default threshold - 0.15)")
    s.add_argument("--vad-batch-ms", type=int, default=64,
                   help="how long a front holds a stream's VAD windows so that other streams' are "
                        "scored in the same call (bigger batches, less CPU per stream; adds at most "
                        "this much to endpoint latency); 0 = score as soon as the loop is free")
    s.add_argument("--vad-min-speech-ms", type=int, default=250, help="shortest speech that opens a segment")
    s.add_argument("--vad-min-silence-ms", type=int, default=800, help="silence that closes a segment")
    s.add_argument("--vad-short-silence-ms", type=int, default=1700,
                   help="silence that closes a segment with less than --vad-short-speech-ms of speech")
    s.add_argument("--vad-short-speech-ms", type=int, default=2500, help="see --vad-short-silence-ms")
    s.add_argument("--vad-pad-ms", type=int, default=200, help="pre-/post-roll kept around speech")
    s.add_argument("--max-segment-s", type=float, default=30.0, help="segments are force-closed here (30)")
    s.add_argument("--drain-grace-s", type=float, default=30.0,
                   help="on SIGTERM, how long open streams may finish (default 30)")
    s.add_argument("--torch-threads", type=int, default=2, help="torch intra-op threads (default 2)")
    s.add_argument("--fake-base-ms", type=float, default=20.0, help="fake engine: cost per call")
    s.add_argument("--fake-per-item-ms", type=float, default=5.0, help="fake engine: cost per request")
    s.add_argument("--fake-fail-every", type=int, default=0,
                   help="fake engine, fault-injection tests only: every Nth batch raises (0 = never)")
    s.add_argument("--worker-id", default="", help="id in load reports (default HOSTNAME:PORT)")
    s.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus /metrics of every worker process on this port, on the "
                        "--listen host (0 = any free port, printed as METRICS host:port); default off")
    s.add_argument("--log-level", default="info", help="debug, info, warning, error")

    d = sub.add_parser("download", help="download Fun-ASR-Nano into a cache directory")
    t = sub.add_parser("tiny-model", help="write a random-weight Fun-ASR-Nano directory (offline)")
    c = sub.add_parser("check", help="self-test: load a model directory and transcribe a bundled clip")
    from .models import check, download, tiny

    download.add_download_args(d)
    tiny.add_tiny_model_args(t)
    check.add_check_args(c)
    return p


def check_serve_args(args: argparse.Namespace) -> None:
    """Fast checks before anything is loaded; raises StartupError."""
    if args.engine not in ENGINES:
        raise StartupError(f"unknown engine {args.engine!r}; use {' or '.join(ENGINES)}")
    if args.vad not in VADS:
        raise StartupError(f"unknown vad {args.vad!r}; use one of {', '.join(VADS)}")
    if not 0 <= args.vad_batch_ms <= 1000:
        raise StartupError(f"--vad-batch-ms must be 0..1000, got {args.vad_batch_ms}")
    host, sep, port = args.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise StartupError(f"--listen must be HOST:PORT, got {args.listen!r}")
    for name in ("max_batch_size", "max_streams", "torch_threads"):
        if getattr(args, name) < 1:
            raise StartupError(f"--{name.replace('_', '-')} must be >= 1")
    if args.front_processes > 64:
        raise StartupError("--front-processes must be <= 64")
    if args.max_queue < 0 or args.batch_window_ms < 0 or args.drain_grace_s < 0:
        raise StartupError("--max-queue, --batch-window-ms and --drain-grace-s must be >= 0")
    if args.max_segment_s < 1:
        raise StartupError("--max-segment-s must be >= 1")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise StartupError("--metrics-port must be 0..65535")
    if args.vad == "fsmn":
        from .vad import validate_fsmn_dir

        validate_fsmn_dir(args.vad_model_dir)  # cheap file checks before loading anything
    check_port_free(host, int(port))
    from .models.loader import resolve_device

    resolve_device(args.device)  # the one place devices are resolved (models/loader.py)
    if args.engine == "funasr-nano":
        if args.model_dir is None:
            raise ModelLoadError(
                "--model-dir is required for --engine funasr-nano "
                "(build one with `python -m asr_worker tiny-model DIR`)"
            )
        if not args.model_dir.is_dir():
            raise ModelLoadError(f"model directory {str(args.model_dir)!r} does not exist")
        from . import models

        models.validate_model_dir(args.model_dir)  # cheap file checks before loading anything


def check_port_free(host: str, port: int) -> None:
    """Fail fast (one line) when a fixed port is taken, before gRPC logs its own error."""
    if port == 0:
        return
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise StartupError(f"cannot resolve --listen host {host!r}: {exc}") from exc
    family, socktype, proto, _, addr = infos[0]
    with socket.socket(family, socktype, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def load_engine(args: argparse.Namespace):
    """The Engine named by --engine."""
    if args.engine == "fake":
        from .engine.fake import FakeEngine

        try:
            return FakeEngine(args.fake_base_ms, args.fake_per_item_ms, fail_every=args.fake_fail_every)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
    from .models.loader import load_engine as load_funasr_nano

    engine = load_funasr_nano(args.model_dir, args.device, dtype=args.dtype)
    engine.use_drafts = args.decoder_drafts == "on"
    return engine


def build_vad(args: argparse.Namespace):
    """The shared VAD weights."""
    from .vad import FsmnVad, SileroVad

    if args.vad == "fsmn":
        return FsmnVad(args.vad_model_dir)
    return SileroVad({"silero-torch": "torch", "silero-onnx": "onnx"}.get(args.vad, "auto"))


def default_front_processes(cpus: int | None = None) -> int:
    """The `--front-processes` default: usable CPUs - 1 (one is the engine's), in [1, 16].

    One core stays the engine's (its batch thread feeds the device and prepares inputs), and
    each other core gets one front. More fronts than that costs CPU for nothing: every front
    pays silero's per-call cost and its own loop and gRPC threads, so on a 2-CPU host two
    fronts cost ~1.2x the CPU per stream-second of one (docs/benchmarks.md, "One front
    instead of two"). At most 16 because each front holds its own VAD weights and Python
    heap, and 16 fronts already serve thousands of streams. Usable CPUs honour
    taskset/cgroup affinity (os.sched_getaffinity).
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cpus - 1, 16))


def stdout_to_stderr():
    """Route stdout (fd 1 too) to stderr; returns a file on the original stdout.

    stdout carries exactly one line, LISTENING: anything libraries print (FunASR prints
    notices) goes to stderr, at the file-descriptor level, in child processes too.
    """
    listening_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return listening_out


def session_options_from_args(args: argparse.Namespace):
    """SessionOptions (with the VAD endpointing config) from `serve` flags; raises StartupError."""
    from .session import SessionOptions
    from .vad import FSMN_DEFAULT_THRESHOLD, VadConfig

    try:
        vad_config = VadConfig(
            threshold=args.vad_threshold if args.vad_threshold is not None
            else (FSMN_DEFAULT_THRESHOLD if args.vad == "fsmn" else 0.5),
            neg_threshold=args.vad_neg_threshold,
            min_speech_ms=args.vad_min_speech_ms,
            min_silence_ms=args.vad_min_silence_ms,
            short_silence_ms=args.vad_short_silence_ms,
            short_speech_ms=args.vad_short_speech_ms,
            speech_pad_ms=args.vad_pad_ms,
            max_segment_ms=int(args.max_segment_s * 1000),
        )
        session_options = SessionOptions(
            partial_interval_ms=args.partial_interval_ms,
            partial_window_ms=args.partial_window_ms,
            vad=vad_config,
        )
    except ValueError as exc:
        raise StartupError(str(exc)) from exc
    return session_options


def build_scheduler(args: argparse.Namespace, engine, log):
    """The one Scheduler around `engine`, sized by the `serve` flags."""
    from .scheduler import Scheduler

    return Scheduler(
        engine,
        max_batch_size=args.max_batch_size,
        batch_window_ms=args.batch_window_ms,
        max_queue=args.max_queue or 4 * args.max_streams,
        logger=log.getChild("scheduler"),
    )


def worker_id(args: argparse.Namespace, port: int) -> str:
    """The id in load reports: --worker-id, else HOSTNAME:PORT."""
    return args.worker_id or f"{os.environ.get('HOSTNAME') or socket.gethostname()}:{port}"


async def serve(args: argparse.Namespace, listening_out) -> int:
    """`--front-processes 0`: the whole worker in this process, until SIGTERM/SIGINT and a drain."""
    import torch

    from .engine_core import Admission, EngineCore
    from .engine_link import LocalEngineLink
    from .log import configure
    from .server import AsrService, ServiceConfig, WorkerServer

    log = configure(args.log_level)
    torch.set_num_threads(args.torch_threads)
    session_options = session_options_from_args(args)
    vad = build_vad(args)
    engine = load_engine(args)
    configure(args.log_level)  # again: model code may have installed its own handlers
    metrics = None
    if args.metrics_port is not None:
        from .metrics import WorkerMetrics, metered_engine

        metrics = WorkerMetrics("worker")
        engine = metered_engine(engine, metrics)
    scheduler = build_scheduler(args, engine, log)
    core = EngineCore(scheduler, Admission(args.max_streams), engine.name)
    service = AsrService(
        link=LocalEngineLink(core),
        vad=vad,
        config=ServiceConfig(
            max_streams=args.max_streams, session=session_options, vad_batch_ms=args.vad_batch_ms
        ),
        logger=log.getChild("server"),
        vad_observer=metrics,
    )
    server = WorkerServer(service, log.getChild("server"))
    try:
        port = await server.start(args.listen)
    except (OSError, RuntimeError) as exc:
        raise StartupError(f"cannot listen on {args.listen}: {exc}") from exc
    host = args.listen.rpartition(":")[0]
    service.config = ServiceConfig(
        max_streams=args.max_streams,
        worker_id=worker_id(args, port),
        session=session_options,
        vad_batch_ms=args.vad_batch_ms,
    )
    listening_out.write(f"LISTENING {host}:{port}\n")
    listening_out.flush()

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    await scheduler.start()
    sampler = None
    if metrics is not None:
        from .metrics import start_engine_sampler

        sampler = start_engine_sampler(metrics, scheduler=scheduler, admission=core.admission, engine=engine)
    warm = asyncio.create_task(scheduler.warmup())
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({warm, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if warm.done():
        if warm.exception() is not None:
            await server.stop()
            await scheduler.stop()
            raise ModelLoadError(f"engine warmup failed: {warm.exception()}")
        core.admission.set_ready()
        await server.sync_health()
        log.info(
            "serving",
            extra={"port": port, "engine": engine.name, "max_batch_size": args.max_batch_size,
                   "max_streams": args.max_streams},
        )
        await waiter
    log.info("signal received; draining", extra={"grace_s": args.drain_grace_s})

    def stop_now() -> None:
        # A second signal cuts the grace period short.
        log.info("second signal; ending open streams now")
        service.kill_all(Draining("worker shutting down; resume elsewhere"))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_now)
    await server.drain(args.drain_grace_s)
    if sampler is not None:
        sampler.cancel()
    await scheduler.stop()
    log.info("stopped")
    return 0


@contextlib.contextmanager
def serving_metrics(args: argparse.Namespace, listening_out) -> Iterator[Any]:
    """With --metrics-port: the worker's metrics directory (exported before any process imports
    prometheus_client, so every process of the worker records there) and /metrics served from
    this process, for as long as the worker runs; yields the MetricsDir, or None when off."""
    if args.metrics_port is None:
        yield None
        return
    from .metrics import MetricsDir, serve_metrics

    metrics_dir = MetricsDir()
    host = args.listen.rpartition(":")[0]
    try:
        try:
            server, port = serve_metrics(metrics_dir.path, host, args.metrics_port)
        except OSError as exc:
            raise StartupError(f"cannot serve metrics on {host}:{args.metrics_port}: {exc}") from exc
        listening_out.write(f"METRICS {host}:{port}\n")
        listening_out.flush()
        try:
            yield metrics_dir
        finally:
            server.shutdown()
    finally:
        metrics_dir.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m asr_worker`; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            # Before anything is imported that may print (FunASR prints notices).
            listening_out = stdout_to_stderr()
            check_serve_args(args)
            with serving_metrics(args, listening_out) as metrics_dir:
                if args.front_processes == 0:
                    return asyncio.run(serve(args, listening_out))
                from .supervisor import run_worker

                return run_worker(args, load_engine, listening_out, metrics_dir=metrics_dir)
        from .models import check, download, tiny

        if args.command == "download":
            print(download.download_from_args(args))
        elif args.command == "check":
            check.check_from_args(args, sys.stdout)
        else:
            print(tiny.tiny_model_from_args(args))
        return 0
    except StartupError as exc:
        print(f"asr_worker: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
