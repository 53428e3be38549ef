"""bench/gateway_perf.py's reading of `perf script` output and its path breakdown.

The breakdown in docs/benchmarks.md (the loopback share, the frame path, the replay copy) comes from
this classifier. perf itself is not available in CI, so these stacks are written in perf script's
own format, the way perf prints a node process with --perf-basic-prof-only-functions.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import gateway_perf as gp  # noqa: E402  (bench/ is not a package)

# A read of a client frame whose ACK is delivered into the client's socket (loopback receive work).
ACK_ON_READ = """node  8675 63197.122458:     500000 cpu-clock:
\tffffffff81e59241 skb_defer_free_flush+0x21 ([kernel.kallsyms])
\tffffffff81e69575 net_rx_action+0xf5 ([kernel.kallsyms])
\tffffffff820281e0 __tcp_transmit_skb+0xa10 ([kernel.kallsyms])
\tffffffff82011ec8 tcp_recvmsg_locked+0x268 ([kernel.kallsyms])
\tffffffff8201352e tcp_recvmsg+0x6e ([kernel.kallsyms])
\tffffffff816bb8da ksys_read+0xba ([kernel.kallsyms])
\t           f82ec read+0x4c (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t         14b8b90 uv__stream_io+0xa0 (/usr/bin/node)
\t         14ac8a7 uv_run+0x187 (/usr/bin/node)
"""

# The replay copy on a client frame's path, in JIT'd code of the gateway.
REPLAY_PUSH = """node  8675 63197.123000:     500000 cpu-clock:
\t    7fcde6990000 JS:*push file:///repo/gateway/src/replay.ts:1:385+0x40 (/tmp/perf-8675.map)
\t    7fcde6991000 JS:* file:///repo/gateway/src/http.ts:1:4903+0x10 (/tmp/perf-8675.map)
\t    7fcde69696c4 JS:*socketOnData /repo/node_modules/ws/lib/websocket.js:1437:22+0x4 (/tmp/perf-8675.map)
\t    7fcde696a643 JS:*onStreamRead node:internal/stream_base_commons:168:22+0x603 (/tmp/perf-8675.map)
\t         14b8b90 uv__stream_io+0xa0 (/usr/bin/node)
"""

# ws's receive of a frame before the gateway's listener: Node and ws only.
WS_ONLY = """node  8675 63197.124000:     500000 cpu-clock:
\t    7fcde69696c4 JS:*startLoop /repo/node_modules/ws/lib/receiver.js:172:12+0x4 (/tmp/perf-8675.map)
\t    7fcde696a643 JS:*onStreamRead node:internal/stream_base_commons:168:22+0x603 (/tmp/perf-8675.map)
"""

# A result sent to a client: under the HTTP/2 session's read of the worker's message.
RESULT_SEND = """node  8675 63197.125000:     500000 cpu-clock:
\tffffffff816bf000 do_writev+0x10 ([kernel.kallsyms])
\t    7fcde6992000 JS:*send /repo/node_modules/ws/lib/sender.js:354:7+0x8 (/tmp/perf-8675.map)
\t         1600000 node::http2::Http2Session::OnStreamRead+0x20 (/usr/bin/node)
"""

# The allocator, sampled at its own leaf.
MALLOC = """node  8675 63197.126000:     500000 cpu-clock:
\t           a0000 _int_malloc+0x100 (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t         1500000 node::LibuvStreamWrap::OnUvAlloc+0x10 (/usr/bin/node)
"""


def _paths(text: str) -> tuple[int, dict[str, int], dict[str, int]]:
    n, by_dso, by_path = gp.breakdown(gp.parse_perf_script(text))
    return n, dict(by_dso), dict(by_path)


def test_frames_are_read_without_offsets_and_with_the_shared_objects_name() -> None:
    (s,) = gp.parse_perf_script(ACK_ON_READ)
    assert s.leaf == ("skb_defer_free_flush", "[kernel.kallsyms]")
    assert s.frames[-1] == ("uv_run", "node")
    assert len(s.frames) == 9


def test_an_ack_sent_by_a_read_counts_as_read_ack_and_loopback_receive_work() -> None:
    n, by_dso, by_path = _paths(ACK_ON_READ)
    assert n == 1 and by_dso == {"kernel": 1}
    assert by_path["read() of sockets (kernel)"] == 1
    assert by_path["  the ACK a read sends, with its delivery into the peer"] == 1
    assert by_path["receive work for packets the gateway sent (net_rx_action in its context)"] == 1
    assert "client frames: Node's socket read, ws and the gateway's frame path" not in by_path


def test_the_gateways_own_code_is_told_apart_from_node_and_ws_on_the_frame_path() -> None:
    n, by_dso, by_path = _paths(REPLAY_PUSH + "\n" + WS_ONLY)
    assert n == 2 and by_dso == {"JIT'd JavaScript": 2}
    assert by_path["client frames: Node's socket read, ws and the gateway's frame path"] == 2
    assert by_path["  the gateway's own code in it"] == 1
    assert by_path["  … the replay buffer's push"] == 1


def test_results_ws_sends_and_malloc_are_their_own_paths() -> None:
    n, by_dso, by_path = _paths(RESULT_SEND + "\n" + MALLOC)
    assert n == 2
    assert by_dso == {"kernel": 1, "libc": 1}
    assert by_path["results from workers: HTTP/2 read, grpc-js, decode, policy, ws send"] == 1
    assert by_path["  ws send of results"] == 1
    assert by_path["writev()/write() (kernel)"] == 1
    assert by_path["malloc/free (libc, self)"] == 1


def test_the_report_scales_each_share_by_the_benchs_cpu_per_frame() -> None:
    n, by_dso, by_path = gp.breakdown(gp.parse_perf_script(ACK_ON_READ + "\n" + WS_ONLY))
    text = gp.report(n, by_dso, by_path, 40.0)
    # Half the samples are the ACK on a read: 50 % of 40 µs.
    assert " 50.0 %   20.0 µs    the ACK a read sends, with its delivery into the peer" in text
    assert "samples: 2" in text
    assert gp.report(0, by_dso, by_path, 40.0) == "samples: 0"
