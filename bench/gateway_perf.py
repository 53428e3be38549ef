#!/usr/bin/env python3
"""Where the gateway's CPU goes: `npm run bench:gateway` with the gateway under `perf record`.

Runs bench:gateway with the arguments given after `--`. It adds
`--gateway-node-arg=--perf-basic-prof-only-functions`, so perf can name JIT'd JavaScript, and an
`--out` file of its own unless one is given.

When the bench starts its run through the gateway (its `N=...: via gateway` line), the script
waits for the ramp (N x 10 ms) plus `--settle` seconds. Then it records `perf record -e cpu-clock
-g` of every gateway process (GATEWAY_PROCESSES > 1 included) for `--seconds`.

It prints the gateway's CPU per paced frame from the bench's own result, then:
- each shared object's share of the samples (kernel, node, JIT'd JavaScript, libc);
- each path's share and its µs per frame (share x the bench's `gatewayCpuUsPerFrame`).

The paths are inclusive, so they overlap. They name what docs/benchmarks.md discusses: the read
of each client frame and the ACK it sends, the receive work the kernel does in the gateway's
context for packets the gateway sent (on loopback, the peers' TCP; across a network, the peers'
hosts), epoll and the switch into the gateway, the frame path in Node, ws and the gateway's own
code, the results path, the writes to the workers, GC and malloc.

    flock /tmp/bench.lock python3 bench/gateway_perf.py --seconds 10 -- --worker stub --ns 500 \\
        --pin gateway=0,worker=1,load=1 --worker-node-arg=--import=./bench/lib/h2-window.ts

Needs `perf` (linux-perf) and permission to attach to the gateway (root, or
kernel.perf_event_paranoid <= 1). Only the first N of `--ns` is recorded: give one N.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Leaf symbols that are the allocator's own work (glibc malloc).
MALLOC_SYMBOLS = frozenset({
    "malloc", "_int_malloc", "free", "cfree", "_int_free", "unlink_chunk.constprop.0",
    "realloc", "_int_realloc", "malloc_consolidate", "__libc_malloc", "__libc_free",
})


@dataclass(frozen=True)
class Sample:
    """One perf sample: its stack (leaf first) as (symbol, shared object) pairs."""

    frames: tuple[tuple[str, str], ...]

    def has(self, *needles: str) -> bool:
        """Whether any frame's symbol contains any of `needles`."""
        return any(n in sym for sym, _ in self.frames for n in needles)

    @property
    def leaf(self) -> tuple[str, str]:
        """The sampled frame (symbol, shared object)."""
        return self.frames[0] if self.frames else ("[unknown]", "[unknown]")


def _on_frame_path(s: Sample) -> bool:
    return s.has("JS:*onStreamRead", "JS:~onStreamRead")


def _on_results_path(s: Sample) -> bool:
    return s.has("Http2Session::OnStreamRead")


#: (path, predicate) in print order; indented names are parts of the path above them.
PATHS: list[tuple[str, Callable[[Sample], bool]]] = [
    ("read() of sockets (kernel)", lambda s: s.has("ksys_read")),
    ("  the ACK a read sends, with its delivery into the peer",
     lambda s: s.has("tcp_recvmsg") and s.has("__tcp_transmit_skb")),
    ("writev()/write() (kernel)", lambda s: s.has("do_writev", "ksys_write")),
    ("receive work for packets the gateway sent (net_rx_action in its context)",
     lambda s: s.has("net_rx_action")),
    ("epoll_wait and the switch into the gateway", lambda s: s.has("do_epoll_wait", "__schedule")),
    ("client frames: Node's socket read, ws and the gateway's frame path", _on_frame_path),
    ("  the gateway's own code in it", lambda s: _on_frame_path(s) and s.has("/gateway/src/")),
    ("  … the replay buffer's push", lambda s: _on_frame_path(s) and s.has("replay.ts")),
    ("results from workers: HTTP/2 read, grpc-js, decode, policy, ws send", _on_results_path),
    ("  ws send of results", lambda s: _on_results_path(s) and s.has("ws/lib/sender.js")),
    ("writes to workers: the hold's flush, grpc-js, HTTP/2 send",
     lambda s: s.has("write-coalescer.ts", "Http2Session::SendPendingData")),
    ("GC (V8 heap, any thread)",
     lambda s: s.has("v8::internal::Heap::", "Scavenge", "MarkCompact", "ConcurrentMarking", "Sweeper")),
    ("malloc/free (libc, self)", lambda s: s.leaf[0] in MALLOC_SYMBOLS),
]

_FRAME = re.compile(r"^\s+[0-9a-f]+\s+(.*?)\s+\(([^()]*)\)\s*$")
_OFFSET = re.compile(r"\+0x[0-9a-f]+$")


def parse_perf_script(text: str) -> list[Sample]:
    """Samples of `perf script` output (a header line, then one line per frame, blank-separated)."""
    samples: list[Sample] = []
    for block in text.split("\n\n"):
        frames = []
        for line in block.splitlines():
            m = _FRAME.match(line)
            if m:
                frames.append((_OFFSET.sub("", m.group(1)), os.path.basename(m.group(2))))
        if frames:
            samples.append(Sample(tuple(frames)))
    return samples


def dso_kind(dso: str) -> str:
    """A shared object's family: kernel, JIT'd JavaScript, node, libc or other."""
    if dso.startswith("[kernel"):
        return "kernel"
    if dso.startswith("perf-") or dso.startswith("[JIT]"):
        return "JIT'd JavaScript"
    if dso == "node":
        return "node (V8 builtins, Node's C++)"
    if dso.startswith("libc"):
        return "libc"
    return "other"


def breakdown(samples: Iterable[Sample]) -> tuple[int, Counter[str], Counter[str]]:
    """(sample count, samples per shared-object family, samples per path of PATHS)."""
    n = 0
    by_dso: Counter[str] = Counter()
    by_path: Counter[str] = Counter()
    for s in samples:
        n += 1
        by_dso[dso_kind(s.leaf[1])] += 1
        for name, pred in PATHS:
            if pred(s):
                by_path[name] += 1
    return n, by_dso, by_path


def report(n: int, by_dso: Counter[str], by_path: Counter[str], us_per_frame: float | None) -> str:
    """The printed tables: shares of the samples and, with the bench's figure, µs per frame."""
    out = [f"samples: {n}"]
    if n == 0:
        return out[0]
    out.append("by shared object:")
    for k, v in by_dso.most_common():
        out.append(f"  {100 * v / n:5.1f} %  {k}")
    scale = "" if us_per_frame is None else f"  µs per frame at {us_per_frame:.1f}"
    out.append("by path (inclusive; rows overlap):" + scale)
    for name, _ in PATHS:
        share = by_path[name] / n
        us = "" if us_per_frame is None else f"  {share * us_per_frame:5.1f} µs"
        out.append(f"  {100 * share:5.1f} %{us}  {name}")
    return "\n".join(out)


def gateway_pids() -> list[int]:
    """Processes running the gateway's entry point (the primary and any GATEWAY_PROCESSES children)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith((b"gateway/src/main.ts", b"gateway/src/main.js")) for a in argv):
            pids.append(int(d.name))
    return sorted(pids)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="how long to record (s)")
    ap.add_argument("--settle", type=float, default=5.0, help="wait after the ramp before recording (s)")
    ap.add_argument("--freq", type=int, default=2000, help="samples per second")
    ap.add_argument("--keep", help="also keep the perf.data here")
    ap.add_argument("bench_args", nargs=argparse.REMAINDER, help="-- then bench:gateway's arguments")
    a = ap.parse_args()
    bench_args = a.bench_args[1:] if a.bench_args[:1] == ["--"] else list(a.bench_args)
    if shutil.which("perf") is None:
        print("gateway_perf: perf not found (Debian: apt-get install linux-perf)", file=sys.stderr)
        return 2
    if gateway_pids():
        print("gateway_perf: a gateway is already running; run this alone (flock /tmp/bench.lock)",
              file=sys.stderr)
        return 2
    # perf.data (megabytes) and the bench's own result live here, gone however the run ends.
    with tempfile.TemporaryDirectory(prefix="gateway-perf-") as tmp:
        return profile(a, bench_args, Path(tmp))


def profile(a: argparse.Namespace, bench_args: list[str], tmp: Path) -> int:
    """Runs the bench with the gateway under perf (working files in `tmp`); prints the breakdown."""
    out_json = tmp / "bench.json"
    if not any(x == "--out" or x.startswith("--out=") for x in bench_args):
        bench_args += ["--out", str(out_json)]
    else:
        i = next(i for i, x in enumerate(bench_args) if x == "--out" or x.startswith("--out="))
        out_json = Path(bench_args[i].split("=", 1)[1] if "=" in bench_args[i] else bench_args[i + 1])
    perf_data = tmp / "perf.data"
    cmd = ["npm", "run", "--silent", "bench:gateway", "--",
           "--gateway-node-arg=--perf-basic-prof-only-functions", *bench_args]
    print("gateway_perf: " + " ".join(cmd), file=sys.stderr)
    bench = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)

    recorded: dict[str, object] = {}

    def record(n: int) -> None:
        time.sleep(n * 0.010 + a.settle)
        pids = gateway_pids()
        if not pids:
            recorded["error"] = "no gateway process found"
            return
        r = subprocess.run(["perf", "record", "-e", "cpu-clock", "-F", str(a.freq), "-g",
                            "-p", ",".join(map(str, pids)), "-o", str(perf_data),
                            "--", "sleep", str(a.seconds)], capture_output=True, text=True)
        recorded.update(n=n, pids=pids, rc=r.returncode, err=r.stderr[-2000:])

    recorder: threading.Thread | None = None
    assert bench.stderr is not None
    for line in bench.stderr:
        sys.stderr.write(line)
        m = re.search(r"N=(\d+): via gateway", line)
        if m and recorder is None:
            recorder = threading.Thread(target=record, args=(int(m.group(1)),), daemon=True)
            recorder.start()
    rc = bench.wait()
    if recorder is not None:
        recorder.join()
    if rc != 0:
        print(f"gateway_perf: bench:gateway exited {rc}", file=sys.stderr)
        return rc
    if recorder is None or recorded.get("rc") != 0 or not perf_data.exists():
        print(f"gateway_perf: nothing recorded: {recorded}", file=sys.stderr)
        return 1

    n_streams = int(recorded["n"])  # type: ignore[arg-type]
    us = None
    try:
        rows = json.loads(out_json.read_text())["rows"]
        us = next(r["added"]["gatewayCpuUsPerFrame"] for r in rows if r["n"] == n_streams)
    except (OSError, KeyError, StopIteration, ValueError) as e:
        print(f"gateway_perf: no CPU per frame in {out_json}: {e}", file=sys.stderr)
    text = subprocess.run(["perf", "script", "-i", str(perf_data)], capture_output=True, text=True).stdout
    n, by_dso, by_path = breakdown(parse_perf_script(text))
    per_frame = "n/a" if us is None else f"{us:.1f} µs"
    print(f"gateway pids {recorded['pids']}, N = {n_streams}, {a.seconds:g} s at {a.freq} Hz; "
          f"gateway CPU per paced frame (bench): {per_frame}")
    print(report(n, by_dso, by_path, us))
    if a.keep:
        shutil.copy(perf_data, a.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
