"""`serve` as a process tree: one engine process, N front processes, this supervisor.

The supervisor does no request work. It

1. starts front 0, which loads the VAD and binds `--listen` (port 0 = any), then the engine
   process (it loads the model) and the other fronts, which bind the same port with
   SO_REUSEPORT; once every front is bound and the model is loaded, prints
   `LISTENING host:port` on stdout (health turns SERVING after the engine's warmup). A VAD
   that cannot load thus fails the start before any model is loaded;
2. watches every child: one that ends unexpectedly ends the whole worker: one error log line
   naming it, the other children are killed, and the supervisor exits non-zero (2 when a
   child could not start: that child's own one-line error is then the line; else 1).
   Gateways fail over; orchestrators restart;
3. on SIGTERM/SIGINT forwards SIGTERM to the fronts (each drains its streams for up to
   `--drain-grace-s`; a second signal ends them at once), and once every front has exited,
   stops the engine and exits 0.

Children are started with multiprocessing's "spawn" method (fresh interpreters), talk to the
engine over ZeroMQ ipc:// sockets in a private temporary directory, and exit by themselves
when the supervisor dies.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from .cli import default_front_processes
from .log import configure
from .processes import EXIT_STARTUP, GRPC_EXPERIMENTS_OFF, engine_main, front_main

#: How often the supervisor looks at signals while waiting on children.
_POLL_S = 0.1
#: How long the engine may take to stop after the fronts are gone.
_ENGINE_STOP_S = 10.0


class _ChildDied(Exception):
    def __init__(self, name: str, proc: multiprocessing.process.BaseProcess) -> None:
        super().__init__(name)
        self.name = name
        self.proc = proc


def _describe(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


class Supervisor:
    """Starts, watches and stops the worker's processes.

    Args:
        args: the parsed `serve` flags.
        load_engine: builds the Engine from `args` in the engine process (a module-level
            function: it is pickled by reference into the spawned child).
        metrics_dir: the worker's metrics.MetricsDir (--metrics-port), told of children that exit.
    """

    def __init__(
        self, args: argparse.Namespace, load_engine: Callable[[Any], Any], metrics_dir: Any = None
    ) -> None:
        self.args = args
        self._load_engine = load_engine
        self._metrics_dir = metrics_dir
        self._marked_dead: set[int] = set()
        self._log = configure(args.log_level).getChild("supervisor")
        self._ctx = multiprocessing.get_context("spawn")
        self._children: dict[str, multiprocessing.process.BaseProcess] = {}
        self._signals: list[int] = []
        self.fronts = (
            args.front_processes if args.front_processes > 0 else default_front_processes()
        )

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._signals.append(signum)

    def run(self, listening_out) -> int:
        """Run until drained (0) or a child dies (non-zero)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        # Read by gRPC core when a child initialises it; spawned children inherit the environment.
        os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS_OFF)
        ipc_dir = tempfile.mkdtemp(prefix="asr-worker-")
        try:
            return self._run(f"ipc://{ipc_dir}/engine", listening_out)
        except _ChildDied as died:
            return self._fail(died.name, died.proc)
        finally:
            shutil.rmtree(ipc_dir, ignore_errors=True)

    def _start_front(self, i: int, address: str, listen: str):
        port_in, port_out = self._ctx.Pipe(duplex=False)
        front = self._ctx.Process(
            target=front_main, args=(self.args, i, address, listen, port_out), name=f"asr-front{i}"
        )
        front.start()
        port_out.close()
        self._children[f"front {i}"] = front
        return port_in

    def _run(self, address: str, listening_out) -> int:
        host = self.args.listen.rpartition(":")[0]
        port = self._wait_port(self._start_front(0, address, self.args.listen))
        if port is None:
            return self._stop_all_now()
        loaded_in, loaded_out = self._ctx.Pipe(duplex=False)
        engine = self._ctx.Process(
            target=engine_main, args=(self.args, address, self._load_engine, loaded_out),
            name="asr-engine",
        )
        engine.start()
        loaded_out.close()
        self._children["engine"] = engine
        pipes = [self._start_front(i, address, f"{host}:{port}") for i in range(1, self.fronts)]
        for pipe in pipes:
            if self._wait_port(pipe) is None:
                return self._stop_all_now()
        # LISTENING once the model is loaded too (as a one-process worker did): callers then
        # wait only for warmup, not for the load, before health says SERVING.
        if self._wait_port(loaded_in) is None:
            return self._stop_all_now()
        listening_out.write(f"LISTENING {host}:{port}\n")
        listening_out.flush()
        self._log.info(
            "worker started",
            extra={"port": port, "front_processes": self.fronts,
                   "pids": ",".join(f"{n}={p.pid}" for n, p in self._children.items())},
        )
        return self._watch()

    def _wait_port(self, port_in) -> int | None:
        """What a starting child sends (a front: its port; the engine: loaded); None when a
        signal asked to stop first."""
        while True:
            ready = wait([port_in, *(p.sentinel for p in self._children.values())], _POLL_S)
            if self._signals:
                return None
            if port_in in ready:
                try:
                    return int(port_in.recv())
                except EOFError:
                    pass  # it died before binding: its sentinel says how
            self._check_children(draining=False)

    def _check_children(self, *, draining: bool) -> None:
        for name, proc in self._children.items():
            if proc.exitcode is None:
                continue
            expected = draining and name != "engine" and proc.exitcode == 0
            if not expected:
                raise _ChildDied(name, proc)

    def _watch(self) -> int:
        draining = False
        fronts = [p for n, p in self._children.items() if n != "engine"]
        while True:
            wait([p.sentinel for p in self._children.values() if p.exitcode is None], _POLL_S)
            if self._signals:
                self._signals.clear()
                if not draining:
                    self._log.info("signal received; draining", extra={"grace_s": self.args.drain_grace_s})
                draining = True
                for p in fronts:
                    if p.exitcode is None:
                        os.kill(p.pid, signal.SIGTERM)  # a second one cuts the grace short
            self._check_children(draining=draining)
            self._mark_exited()
            if draining and all(p.exitcode is not None for p in fronts):
                return self._stop_engine()

    def _mark_exited(self) -> None:
        # A drained front's live gauges (its streams, its process) leave the scrape.
        if self._metrics_dir is None:
            return
        for proc in self._children.values():
            if proc.exitcode is not None and proc.pid not in self._marked_dead:
                self._marked_dead.add(proc.pid)
                self._metrics_dir.mark_dead(proc.pid)

    def _stop_engine(self) -> int:
        engine = self._children["engine"]
        engine.terminate()
        engine.join(_ENGINE_STOP_S)
        if engine.exitcode is None:
            engine.kill()
            engine.join()
        if engine.exitcode != 0:
            self._log.error(f"engine process {_describe(engine.exitcode)} while stopping")
            return 1
        self._log.info("stopped")
        return 0

    def _kill_all(self) -> None:
        for proc in self._children.values():
            if proc.exitcode is None:
                proc.kill()
        for proc in self._children.values():
            proc.join()

    def _stop_all_now(self) -> int:
        # A signal before the worker was up: nothing to drain.
        self._kill_all()
        return 0

    def _fail(self, name: str, proc: multiprocessing.process.BaseProcess) -> int:
        self._kill_all()
        if proc.exitcode == EXIT_STARTUP:
            return EXIT_STARTUP  # the child printed its own one-line reason
        self._log.error(
            f"{name} process (pid {proc.pid}) {_describe(proc.exitcode)}; stopping the worker",
            extra={"child": name, "pid": proc.pid, "exitcode": proc.exitcode},
        )
        return 1


def run_worker(
    args: argparse.Namespace, load_engine: Callable[[Any], Any], listening_out, *, metrics_dir: Any = None
) -> int:
    """`serve` with one engine process and N front processes; returns the exit status.

    `listening_out` is the original stdout (cli.stdout_to_stderr), for the LISTENING line;
    `metrics_dir` the worker's metrics directory when --metrics-port is on.
    """
    return Supervisor(args, load_engine, metrics_dir).run(listening_out)
