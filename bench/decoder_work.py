#!/usr/bin/env python3
"""Decoder work per second of audio per stream: whole-hypothesis partials vs forced-prefix partials.

A hardware-independent cost: decoder tokens generated and prefilled, and seconds of audio
run through the audio encoder, per second of speech of one stream, counted by the real
funasr-nano engine (`engine.work`) on the tiny random-weight model.

Random weights never stop by themselves, so decode lengths are forced to real speech's:
each segment is a manifest utterance with a reference text, and every request of it
generates ceil(seconds x rate) tokens minus its forced prefix (the way
bench/gpu_capacity.py forces lengths), where rate is the reference's characters per
second: one token per Mandarin character, about what Qwen3's tokenizer needs (the tiny
model's toy tokenizer learnt whole words of these very texts, so its counts would be
meaningless). To count prefixes the same way, texts are spelled with one ASCII letter per
character, which the tiny tokenizer encodes one token per letter (checked). A real
decoder also spends one step on its end token per request; the figures add it.

A segment is streamed the way the worker's session does it: a partial
every `--partial-interval-ms` of audio over the open segment (at most `--window-ms` of it),
then one final of the whole segment.

The agreed prefix a partial forces is what the session has emitted so far. A real model's
hypothesis at time t is modelled as the reference text up to the share of the segment
heard (random weights cannot produce one), and two emission rules are measured:

- `lcp2`: the session's rule: emitted = longest common prefix of the last two hypotheses;
- `last`: emitted = the last hypothesis (a lower bound: everything is agreed at once).

`before` is every partial re-generating its whole hypothesis (prefix ""), as before.

`--draft on` (the default, what the engine ships) lets the engine prefill every request of
a segment with the segment's previous answer as a draft and verify it (engine/drafts.py);
`off` decodes without drafts; `both` runs each mode both ways. So that the engine's own
verification decides what is accepted, the decoder here follows a script: at each answer
position it picks the modelled hypothesis's next token (then the end token) instead of the
random weights' argmax (bench only, `ScriptedDecoder`; the forwards are the real ones). The
previous answer is then the previous modelled hypothesis, exactly as the engine stores it,
and counts are what the real engine counts: generated tokens include each request's end
token (no end token is added by hand in this mode), accepted draft tokens count as
prefilled. The modelled hypotheses only grow (a real model also revises its last words,
which a draft then loses from the first revised token on), so acceptance here is an upper
bound; `--revise N` makes every partial hypothesis end in N wrong characters to model that.

`--latency` adds the other half of the decoder work: how long a short partial waits when
it shares the engine with long finals. The same mixed arrivals (one long final to three
short partials, `--latency-requests` in all, one every `--arrival-ms`) go through the
real Scheduler `--repeats` times per mode, alternating (medians reported): whole batches
(`decode_batch`: a batch runs until its longest member ends, newcomers wait for it) and
iteration level (requests join between decoder steps and leave when done). Wall-clock
figures, so they depend on the machine (tiny model, 1 CPU thread); the ratio between the
two rows is the point.

Reported: transcript tokens per audio-second (finals' reference + end token), generated and prefilled
decoder tokens per audio-second (partials + finals), their ratio to the transcript rate
(target <= 2), and encoder audio-seconds per audio-second.

`--prepare` measures instead the CPU the engine spends turning requests into model inputs
(prompt ids + kaldi fbank/LFR/CMVN, `FunAsrNanoEngine.prepare`), single-threaded, for one
stream's realistic schedule: a segment of real speech growing in `--partial-interval-ms` steps
to each of `--prepare-seconds` (partials over at most `--window-ms`, forcing a growing agreed
prefix), then its final. `before`
runs FunASR's data_load_speech over every whole request (engine.input_cache = False), `after`
the per-segment frame cache and prompt-id cache; repeats alternate the two (medians).

    worker-py/.venv/bin/python bench/decoder_work.py
    worker-py/.venv/bin/python bench/decoder_work.py --partial-interval-ms 1200 --json out.json
    worker-py/.venv/bin/python bench/decoder_work.py --prepare --prepare-seconds 6,12,20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "worker-py"))
SHARED_AUDIO = Path(os.environ.get("ASR_SHARED_AUDIO", REPO.parent / "shared" / "audio"))


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None, help="tiny model dir (built if missing)")
    p.add_argument("--partial-interval-ms", type=int, default=600, help="session default: 600")
    p.add_argument("--window-ms", type=int, default=12_000, help="session partial window: 12000")
    p.add_argument("--modes", default="before,lcp2,last")
    p.add_argument("--draft", choices=("on", "off", "both", "forced"), default="on",
                   help="engine drafts from the segment's previous answer (on: as shipped); forced: "
                        "no script, random tokens at forced lengths (the bench before drafts)")
    p.add_argument("--revise", type=int, default=0,
                   help="wrong characters at the end of every partial hypothesis (model revisions)")
    p.add_argument("--segments", type=int, default=0, help="only the first N segments (smoke runs)")
    p.add_argument("--latency", action="store_true", help="also the partial-latency comparison")
    p.add_argument("--latency-requests", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3, help="latency runs per mode, alternating; medians")
    p.add_argument("--arrival-ms", type=float, default=15.0)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--batch-window-ms", type=float, default=10.0, help="serve's default: 10")
    p.add_argument("--prepare", action="store_true", help="measure input preparation CPU instead")
    p.add_argument("--prepare-seconds", default="6,12,20", help="segment lengths for --prepare")
    p.add_argument("--prepare-repeats", type=int, default=5, help="alternating runs per mode; medians")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args()


def segments() -> list[tuple[str, np.ndarray, str]]:
    """(name, 16 kHz float audio, reference text) of every manifest utterance with a text."""
    import soundfile as sf

    manifest = json.loads((SHARED_AUDIO / "MANIFEST.json").read_text(encoding="utf-8"))
    out = []
    for name, entry in manifest["files"].items():
        data, rate = sf.read(str(SHARED_AUDIO / name), dtype="float32")
        assert rate == 16_000, name
        if entry.get("text"):
            out.append((name, data, entry["text"]))
        for i, utt in enumerate(entry.get("utterances", ())):
            a, b = utt["segment"]
            out.append((f"{name}#{i}", data[int(a * rate) : int(b * rate)], utt["text"]))
    return out


def hypothesis(text: str, heard_s: float, total_s: float) -> str:
    """A real model's hypothesis after hearing heard_s of the segment (modelled)."""
    return text[: round(len(text) * min(1.0, heard_s / total_s))]


def common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def spelled(text: str) -> str:
    """One ASCII letter per character (the tiny tokenizer: one token per letter)."""
    return "".join(chr(ord("a") + i % 26) for i in range(len(text)))


def scripted_decoder(engine):
    """The engine's decoder, picking the scripted answer instead of the argmax (bench only)."""
    from asr_worker.engine.step_decoder import StepDecoder

    class ScriptedDecoder(StepDecoder):
        #: Token ids of the answer after the forced prefix; the end token follows them.
        script: list[int]

        def _greedy(self, rows, logits):
            super()._greedy(rows, logits)  # the real argmax, so the work is the engine's
            # rows[i] is the sequence of logits row i; a sequence's k-th row here follows
            # its answer's first len(generated) + k ids.
            assert len({id(r) for r in rows}) == 1, "the script is one request's"
            done = len(rows[0].generated)
            return [self.script[i] if i < len(self.script) else self.stop_ids[0]
                    for i in range(done, done + len(rows))]

    old = engine.decoder
    dec = ScriptedDecoder(old.llm, stop_ids=old.stop_ids, dtype=old.dtype, device=old.device)
    dec.script = []
    return dec


def run_mode(engine, segs, mode: str, interval_s: float, window_s: float, draft: bool | None = None,
             revise: int = 0) -> dict:
    """One emission rule over every segment. draft None: forced lengths, random tokens, one end
    token added per request (the first bench); True/False: the scripted decoder with or without
    the engine's drafts."""
    from asr_worker.engine.base import DecodeOptions, DecodeRequest, DecodeWork, SegmentRef

    engine.work = DecodeWork()
    scripted = draft is not None
    real_decoder = engine.decoder
    # Random tokens at forced lengths would make drafts accept whatever the random weights
    # happen to repeat, so the first bench runs without drafts.
    engine.use_drafts = bool(draft)
    if scripted:
        engine.decoder = scripted_decoder(engine)
        engine.forced_tokens_per_second = None
    forwards = engine.decoder.forward_calls
    speech_s = 0.0
    transcript_tokens = 0

    def decode(req: DecodeRequest, answer: str) -> None:
        if scripted:
            engine.decoder.script = engine.tokenizer.encode(answer[len(req.prefix):]) if answer else []
        engine.decode_batch([req])
        if scripted:
            assert engine.last_generated[0] == engine.decoder.script

    for s, (_name, audio, reference) in enumerate(segs):
        total_s = audio.size / 16_000
        speech_s += total_s
        text = spelled(reference)
        n_ref = len(text)
        assert len(engine.tokenizer.encode(text)) == n_ref, "one token per letter"
        transcript_tokens += n_ref + 1  # + the end token
        if not scripted:
            engine.forced_tokens_per_second = n_ref / total_s
        hyps: list[str] = []
        emitted = ""
        k = 1
        while k * interval_s < total_s:
            end = k * interval_s
            start = max(0.0, end - window_s)
            prefix = "" if mode == "before" else emitted
            first = int(start * 16_000)
            req = DecodeRequest(audio[first : int(end * 16_000)], DecodeOptions(), "partial",
                                prefix=prefix, segment=SegmentRef(("bench", s), 0, first))
            hyp = hypothesis(text, end, total_s)
            if revise and len(hyp) > len(prefix):
                # The last `revise` characters are wrong (a letter the reference spells differently).
                keep = max(len(prefix), len(hyp) - revise)
                hyp = hyp[:keep] + "".join(chr(ord("a") + (ord(c) - ord("a") + 13) % 26) for c in hyp[keep:])
            decode(req, hyp)
            hyps.append(hyp)
            if mode == "last":
                emitted = hyps[-1]
            elif len(hyps) >= 2:
                agreed = common_prefix(hyps[-2], hyps[-1])
                emitted = agreed if len(agreed) > len(emitted) else emitted
            k += 1
        decode(DecodeRequest(audio, DecodeOptions(), "final", segment=SegmentRef(("bench", s), 0, 0)), text)
    forwards = engine.decoder.forward_calls - forwards
    engine.decoder = real_decoder
    engine.use_drafts = True
    w = engine.work
    # One end token per request where lengths are forced (the scripted decoder generates it).
    ends = {kind: 0 if scripted else n for kind, n in w.requests.items()}
    gen = sum(w.generated_tokens.values()) + sum(ends.values())
    pre = sum(w.prefilled_tokens.values())
    rate = transcript_tokens / speech_s
    proposed, accepted = sum(w.draft_proposed.values()), sum(w.draft_accepted.values())
    return {
        "mode": mode,
        "draft": {None: "forced", True: "on", False: "off"}[draft],
        "revise": revise,
        "speech_s": round(speech_s, 2),
        "transcript_tokens_per_s": round(rate, 2),
        "generated_per_s": round(gen / speech_s, 2),
        "generated_partial_per_s": round(
            (w.generated_tokens.get("partial", 0) + ends.get("partial", 0)) / speech_s, 2
        ),
        "generated_final_per_s": round(
            (w.generated_tokens.get("final", 0) + ends.get("final", 0)) / speech_s, 2
        ),
        "generated_ratio": round(gen / speech_s / rate, 2),
        "prefilled_per_s": round(pre / speech_s, 1),
        "draft_proposed_per_s": round(proposed / speech_s, 2),
        "draft_accepted_per_s": round(accepted / speech_s, 2),
        "draft_acceptance": round(accepted / proposed, 3) if proposed else None,
        "encoder_s_per_s": round(sum(w.audio_seconds.values()) / speech_s, 2),
        # Sequential decoder forwards (prefills and steps): one request at a time here, so
        # each is one forward of one row.
        "forwards_per_s": round(forwards / speech_s, 2),
        "requests": dict(w.requests),
    }


class WholeBatches:
    """The engine seen only through decode_batch, so the Scheduler runs whole batches."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.name = engine.name

    def warmup(self) -> None:
        self.engine.warmup()

    def decode_batch(self, requests):
        return self.engine.decode_batch(requests)


async def latency_run(engine, segs, mode: str, a: argparse.Namespace) -> dict:
    """Mixed long finals and short partials through the Scheduler; latency per kind."""
    import asyncio
    import time

    from asr_worker.engine.base import DecodeOptions, DecodeRequest
    from asr_worker.scheduler import Scheduler

    target = engine if mode == "iteration" else WholeBatches(engine)
    sched = Scheduler(target, max_batch_size=a.max_batch_size, batch_window_ms=a.batch_window_ms,
                      max_queue=10_000)
    await sched.start()
    waits: dict[str, list[float]] = {"final": [], "partial": []}
    loop = asyncio.get_running_loop()
    pending = []
    t0 = time.monotonic()
    for i in range(a.latency_requests):
        _name, audio, _text = segs[i % len(segs)]
        if i % 4 == 0:  # a long final: the whole segment
            req = DecodeRequest(audio, DecodeOptions(), "final")
        else:  # a short partial: 1.2 s of new audio after an agreed prefix
            end = min(audio.size, int(16_000 * (2.4 + 0.6 * (i % 5))))
            agreed = spelled("x" * max(0, int((end / 16_000 - 1.2) * 3.0)))  # at 3 tokens/s
            req = DecodeRequest(audio[:end], DecodeOptions(), "partial", prefix=agreed)
        started = loop.time()
        fut = sched.submit(req, stream_key=i).future
        fut.add_done_callback(lambda _f, k=req.kind, s=started: waits[k].append(loop.time() - s))
        pending.append(fut)
        await asyncio.sleep(a.arrival_ms / 1000)
    await asyncio.gather(*pending)
    wall = time.monotonic() - t0
    await sched.stop()

    def pct(xs: list[float], q: float) -> float:
        return round(1000 * float(np.percentile(xs, q)), 1)

    return {
        "mode": mode,
        "wall_s": round(wall, 2),
        "partial_p50_ms": pct(waits["partial"], 50),
        "partial_p95_ms": pct(waits["partial"], 95),
        "final_p50_ms": pct(waits["final"], 50),
        "final_p95_ms": pct(waits["final"], 95),
        "mean_batch": round(float(np.mean(sched.batch_sizes)), 2),
    }


def prepare_run(engine, audio: np.ndarray, seconds: float, interval_s: float, window_s: float,
                cached: bool, stream: object) -> dict:
    """CPU seconds of engine.prepare per request of one segment's partial schedule + final."""
    import time

    from asr_worker.engine.base import DecodeOptions, DecodeRequest, SegmentRef

    engine.input_cache = cached
    total = int(seconds * 16_000)
    opts = DecodeOptions()
    spans = []
    k = 1
    while k * interval_s < seconds:  # partials, as the session makes them
        end = int(k * interval_s * 16_000)
        start = max(0, end - int(window_s * 16_000))
        # The agreed prefix a partial forces: about 3 tokens per second of speech, less the
        # unstable last 1.2 s (as --latency models it); none for windows, as the session does.
        prefix = "" if start else spelled("x" * max(0, int((end / 16_000 - 1.2) * 3.0)))
        spans.append(("partial", start - start % engine.segment_align, end, prefix))  # as EngineCore aligns
        k += 1
    spans.append(("final", 0, total, ""))
    cpu = {"partial": 0.0, "final": 0.0}
    count = {"partial": 0, "final": 0}
    for kind, start, end, prefix in spans:
        req = DecodeRequest(audio[start:end], opts, kind, prefix=prefix, segment=SegmentRef(stream, 0, start))
        t0 = time.thread_time()
        engine.prepare(req)
        cpu[kind] += time.thread_time() - t0
        count[kind] += 1
    engine.input_cache = True
    return {"cpu": cpu, "count": count}


def prepare_bench(engine, a: argparse.Namespace) -> list[dict]:
    """Before/after preparation CPU for each segment length (medians of alternating repeats)."""
    import soundfile as sf

    manifest = json.loads((SHARED_AUDIO / "MANIFEST.json").read_text(encoding="utf-8"))
    pieces = []
    for name in manifest["files"]:
        data, rate = sf.read(str(SHARED_AUDIO / name), dtype="float32")
        if rate == 16_000 and data.ndim == 1:
            pieces.append(data)
    speech = np.concatenate(pieces)  # real speech, as long as the manifest's 16 kHz files
    lengths = [float(x) for x in a.prepare_seconds.split(",") if x]
    assert speech.size >= max(lengths) * 16_000, "not enough shared audio for --prepare-seconds"
    interval, window = a.partial_interval_ms / 1000, a.window_ms / 1000
    # Warm both paths (first calls load code and allocate).
    for cached in (False, True):
        prepare_run(engine, speech, 2.0, interval, window, cached, ("warm", cached))
    rows = []
    streams = iter(range(10**9))
    for seconds in lengths:
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for _ in range(a.prepare_repeats):
            for mode in runs:
                runs[mode].append(prepare_run(engine, speech, seconds, interval, window, mode == "after",
                                              ("bench", next(streams))))
        row: dict = {"seconds": seconds}
        for mode, out in runs.items():
            count = out[0]["count"]
            n = count["partial"] + count["final"]
            total = float(np.median([r["cpu"]["partial"] + r["cpu"]["final"] for r in out]))
            partial = float(np.median([r["cpu"]["partial"] for r in out]))
            final = float(np.median([r["cpu"]["final"] for r in out]))
            row[mode] = {
                "requests": n,
                "ms_per_request": round(1000 * total / n, 2),
                "partial_ms": round(1000 * partial / max(1, count["partial"]), 2),
                "final_ms": round(1000 * final / max(1, count["final"]), 2),
                "ms_per_audio_s": round(1000 * total / seconds, 2),
                "prepares_per_s": round(n / total, 0),
            }
        rows.append(row)
    print(f"prepare CPU, 1 thread, partial every {a.partial_interval_ms} ms (window {a.window_ms} ms) "
          f"then the final; medians of {a.prepare_repeats} alternating runs")
    print("| segment | requests | ms per request before → after | partial ms | final ms | "
          "ms per audio-second | prepares/s one thread |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        b, f = r["before"], r["after"]
        print(f"| {r['seconds']:g} s | {b['requests']} | {b['ms_per_request']} → {f['ms_per_request']} | "
              f"{b['partial_ms']} → {f['partial_ms']} | {b['final_ms']} → {f['final_ms']} | "
              f"{b['ms_per_audio_s']} → {f['ms_per_audio_s']} | {b['prepares_per_s']:g} → "
              f"{f['prepares_per_s']:g} |")
    return rows


def main() -> int:
    a = parse()
    import torch

    from asr_worker.models import build_tiny_model, load_engine

    torch.set_num_threads(1)
    tmp = None
    model_dir = a.model_dir
    if model_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="decoder-work-")
        model_dir = Path(tmp.name) / "tiny"
    if not (model_dir / "model.pt").exists():
        build_tiny_model(model_dir, seed=0)
    engine = load_engine(model_dir, "cpu", forced_tokens_per_second=5.0)
    if a.prepare:
        rows = prepare_bench(engine, a)
        if a.json:
            a.json.write_text(json.dumps({"partial_interval_ms": a.partial_interval_ms, "prepare": rows},
                                         indent=2))
        if tmp is not None:
            tmp.cleanup()
        return 0
    segs = segments()[: a.segments or None]
    drafts = {"on": [True], "off": [False], "both": [False, True], "forced": [None]}[a.draft]
    rows = [
        run_mode(engine, segs, m, a.partial_interval_ms / 1000, a.window_ms / 1000, d, a.revise)
        for m in a.modes.split(",")
        for d in drafts
    ]
    print(f"{len(segs)} segments, {rows[0]['speech_s']} s of speech, partial every "
          f"{a.partial_interval_ms} ms, transcript {rows[0]['transcript_tokens_per_s']} tokens/s, "
          f"{a.revise} revised characters per partial")
    print("| prefix | drafts | generated tok/s (partials + finals) | ratio to transcript | "
          "prefilled tok/s | draft accepted / proposed tok/s | decoder forwards/s | encoder s/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['draft']} | {r['generated_per_s']} ({r['generated_partial_per_s']} + "
              f"{r['generated_final_per_s']}) | {r['generated_ratio']} | {r['prefilled_per_s']} | "
              f"{r['draft_accepted_per_s']} / {r['draft_proposed_per_s']} | {r['forwards_per_s']} | "
              f"{r['encoder_s_per_s']} |")
    latency = []
    if a.latency:
        import asyncio

        engine.forced_tokens_per_second = 3.0  # about real Mandarin's tokens per second
        runs: dict[str, list[dict]] = {"whole-batch": [], "iteration": []}
        for _ in range(a.repeats):  # alternating, so both modes see the same machine load
            for mode, out in runs.items():
                out.append(asyncio.run(latency_run(engine, segs, mode, a)))
        for mode, out in runs.items():
            row = {k: float(np.median([r[k] for r in out])) for k in out[0] if k != "mode"}
            latency.append({"mode": mode, "repeats": len(out), **row})
        print(f"\n{a.latency_requests} requests (1 final : 3 partials), one every {a.arrival_ms} ms, "
              f"max_batch_size {a.max_batch_size}, batch window {a.batch_window_ms} ms, forced 3 tokens/s")
        print(f"medians of {a.repeats} alternating runs per mode")
        print("| batching | partial p50 / p95 ms | final p50 / p95 ms | mean running | wall s |")
        print("|---|---|---|---|---|")
        for r in latency:
            print(f"| {r['mode']} | {r['partial_p50_ms']} / {r['partial_p95_ms']} | {r['final_p50_ms']} / "
                  f"{r['final_p95_ms']} | {r['mean_batch']} | {r['wall_s']} |")
    if a.json:
        a.json.write_text(json.dumps(
            {"partial_interval_ms": a.partial_interval_ms, "rows": rows, "latency": latency}, indent=2
        ))
    if tmp is not None:
        tmp.cleanup()
    assert all(math.isfinite(r["generated_ratio"]) for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
