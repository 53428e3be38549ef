"""Entry points (and composition roots) of the worker's child processes.

- `engine_main`: the ONE engine process. Loads the engine, owns the Scheduler, the worker-wide
  Admission and the segment audio store (EngineCore), and serves them to the fronts over ZeroMQ
  (EngineService). It ignores SIGINT (a terminal's Ctrl-C reaches the whole process group, and
  the engine must outlive the fronts' drain); SIGTERM from the supervisor, sent after every
  front has drained, stops it.
- `front_main`: one of N front processes. Owns gRPC streams (grpc.aio on the shared port with
  SO_REUSEPORT), sessions, VAD and partial schedules; talks to the engine through EngineClient.
  SIGTERM (from the supervisor) drains it; a second one ends its open streams at once. It
  ignores SIGINT: a terminal's Ctrl-C reaches every process of the group, and the supervisor,
  which gets it too, forwards SIGTERM; counting both would cut the drain short.

Both exit at once when their parent (the supervisor) dies, so no orphan keeps the port.
Started with the multiprocessing "spawn" method: fresh interpreters, no state inherited.
Both run their event loop on uvloop (`run_loop`): the loop's own work (selector, handles,
callbacks) is paid per gRPC message and per ZeroMQ message, and uvloop's C loop cut the worker's
CPU per stream-second by ~6 % in bench/front_capacity.py (docs/benchmarks.md, "Worker front path").
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any

from .errors import Draining, StartupError

#: Exit status of a child whose engine failed to load or warm up (the CLI's startup-error code).
EXIT_STARTUP = 2
#: Exit status of a front that found the engine hung (see ENGINE_STALL_S).
EXIT_ENGINE_STALL = 3
#: Engine silence (it pushes load every 0.25 s) after which a front declares the engine
#: stalled: NOT_SERVING, not accepting, LoadReport.engine_stalled, so that gateways fail its
#: streams over by replay within the 5 s hang target. Reversible (the next message from the
#: engine undoes it), so a false alarm — an engine merely unscheduled for a few seconds on an
#: overloaded machine, as seen for 3.2 s in a soak — costs a replay, not the worker. Eight
#: missed pushes: far above the engine's normal jitter.
ENGINE_SUSPECT_S = 2.0
#: Engine silence after which a front ends the worker (exit 3), the last resort: a wedged
#: engine becomes a crash that orchestrators restart. Gateways have long failed its streams
#: over (ENGINE_SUSPECT_S); at 3 s this step ended a healthy-but-starved worker with nowhere
#: for its sessions to go, so it waits well beyond any CPU starvation seen
#: (docs/reliability.md, "engine hang").
ENGINE_STALL_S = 30.0


#: gRPC core experiments turned off in the worker's processes (GRPC_EXPERIMENTS syntax; the
#: supervisor sets it for its children unless the operator set GRPC_EXPERIMENTS). grpcio 1.85's
#: EventEngine listener hands accepted connections to EventEngine endpoints; with it off they
#: use the older iomgr TCP path, and a grpc.aio server reading paced 60 ms frames paid 78-88
#: instead of 122 µs per message (bench/grpc_read_floor.py, 50 streams); the whole worker
#: 8.2-8.4 instead of 9.3 ms of CPU per stream-second at 100 staggered streams (×0.89) and
#: ×0.96 with 100 at once (docs/benchmarks.md, "Worker front path").
GRPC_EXPERIMENTS_OFF = "-event_engine_listener"


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run a child's main coroutine to completion on a uvloop event loop (see module docstring)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _exit_with_parent(loop: asyncio.AbstractEventLoop) -> None:
    parent = multiprocessing.parent_process()
    if parent is not None:
        # The sentinel becomes readable when the parent exits, however it died.
        loop.add_reader(parent.sentinel, os._exit, 1)


def engine_main(
    args: argparse.Namespace,
    address: str,
    load_engine: Callable[[Any], Any],
    loaded_out: Connection | None = None,
) -> None:
    """Run the engine process until SIGTERM; exit 2 when the engine cannot load or warm up.

    `loaded_out` gets one message once the model is loaded (before warmup).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = run_loop(_engine(args, address, load_engine, loaded_out))
    except StartupError as exc:
        print(f"asr_worker: error: {exc}", file=sys.stderr, flush=True)
        code = EXIT_STARTUP
    _exit(code)


def _exit(code: int) -> None:
    # Everything is stopped and flushed; skip the interpreter's teardown (torch, grpc and
    # zmq finalizers take seconds on a busy machine and can only delay the worker's exit).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _engine(
    args: argparse.Namespace,
    address: str,
    load_engine: Callable[[Any], Any],
    loaded_out: Connection | None,
) -> int:
    import torch

    from .cli import build_scheduler
    from .engine_core import Admission, EngineCore
    from .engine_service import EngineService
    from .log import configure

    loop = asyncio.get_running_loop()
    _exit_with_parent(loop)
    log = configure(args.log_level).getChild("engine")
    torch.set_num_threads(args.torch_threads)
    engine = load_engine(args)
    if loaded_out is not None:
        loaded_out.send(True)
        loaded_out.close()
    log = configure(args.log_level).getChild("engine")  # model code may install handlers
    metrics = None
    if args.metrics_port is not None:
        from .metrics import WorkerMetrics, metered_engine

        metrics = WorkerMetrics("engine")
        engine = metered_engine(engine, metrics)
    scheduler = build_scheduler(args, engine, log)
    core = EngineCore(scheduler, Admission(args.max_streams), engine.name)
    service = EngineService(core, address, log)
    await service.start()
    await scheduler.start()
    if metrics is not None:
        from .metrics import start_engine_sampler

        start_engine_sampler(metrics, scheduler=scheduler, admission=core.admission, engine=engine)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await scheduler.warmup()
    except Exception as exc:
        log.error("engine warmup failed", extra={"error": f"{type(exc).__name__}: {exc}"})
        return EXIT_STARTUP
    core.admission.set_ready()
    log.info(
        "engine ready",
        extra={"engine": engine.name, "max_batch_size": args.max_batch_size,
               "max_streams": args.max_streams, "pid": os.getpid()},
    )
    await stop.wait()
    await service.stop()
    await scheduler.stop()
    return 0


def front_main(
    args: argparse.Namespace, index: int, address: str, listen: str, port_out: Connection
) -> None:
    """Run front `index` on `listen` until drained; its bound port is sent on `port_out`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = run_loop(_front(args, index, address, listen, port_out))
    except StartupError as exc:
        print(f"asr_worker: error: {exc}", file=sys.stderr, flush=True)
        code = EXIT_STARTUP
    _exit(code)


async def _front(
    args: argparse.Namespace, index: int, address: str, listen: str, port_out: Connection
) -> int:
    import torch

    from .cli import build_vad, session_options_from_args, worker_id
    from .engine_client import EngineClient
    from .log import configure
    from .server import AsrService, ServiceConfig, WorkerServer

    loop = asyncio.get_running_loop()
    _exit_with_parent(loop)
    log = configure(args.log_level).getChild(f"front{index}")
    # VAD runs batched on one thread per front; parallelism comes from the fronts themselves.
    torch.set_num_threads(1)
    session_options = session_options_from_args(args)
    vad = build_vad(args)
    def engine_stalled(silent_s: float) -> None:
        log.error(
            "engine silent; ending the worker so that gateways fail over and it is restarted",
            extra={"silent_s": round(silent_s, 1)},
        )
        _exit(EXIT_ENGINE_STALL)

    client = EngineClient(
        address,
        log,
        front_index=index,
        suspect_s=ENGINE_SUSPECT_S,
        stall_s=ENGINE_STALL_S,
        on_stall=engine_stalled,
    )
    await client.start()
    config = ServiceConfig(
        max_streams=args.max_streams,
        session=session_options,
        front_id=index,
        vad_batch_ms=args.vad_batch_ms,
    )
    metrics = None
    if args.metrics_port is not None:
        from .metrics import WorkerMetrics

        metrics = WorkerMetrics("front")
    service = AsrService(link=client, vad=vad, config=config, logger=log, vad_observer=metrics)
    server = WorkerServer(service, log, reuse_port=True)
    try:
        port = await server.start(listen)
    except (OSError, RuntimeError) as exc:
        raise StartupError(f"cannot listen on {listen}: {exc}") from exc
    service.config = dataclasses.replace(config, worker_id=worker_id(args, port))
    port_out.send(port)
    port_out.close()

    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    log.info("signal received; draining", extra={"grace_s": args.drain_grace_s})

    def stop_now() -> None:
        log.info("second signal; ending open streams now")
        service.kill_all(Draining("worker shutting down; resume elsewhere"))

    loop.add_signal_handler(signal.SIGTERM, stop_now)
    await server.drain(args.drain_grace_s)
    await client.stop()
    log.info("front stopped")
    return 0
