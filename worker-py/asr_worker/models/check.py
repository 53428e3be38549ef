"""`python -m asr_worker check`: load a model directory and transcribe the clip that ships
with the worker, the way the seed deployment's test_inference.py proved an install.

It goes through the production path (`models.loader.load_engine`, the engine's own warmup
and `decode_batch`) and reports what an operator needs before serving: device, dtype,
load time, peak memory (CUDA's peak allocation on a GPU, the process's peak RSS on CPU),
real-time factor, the text and whether finals will carry token timestamps. A real model must
also get the clip roughly right (character error rate at most `--max-cer`); random-weight
directories built by `tiny-model` are only loaded and decoded, since their text is noise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from asr_worker.errors import StartupError

#: The clip: FunASR's runtime/funasr_api/asr_example.wav (MIT), 0.7-5.3 s, 16 kHz mono FLAC.
CLIP = Path(__file__).resolve().parent / "data" / "check-zh.flac"
#: What is said in the clip.
CLIP_TEXT = "欢迎大家来体验达摩院推出的语音识别模型"
#: Highest character error rate a real model may have on the clip (Fun-ASR-Nano gets it right).
DEFAULT_MAX_CER = 0.3
#: configuration.json's "generated_by" of directories written by `tiny-model`.
RANDOM_WEIGHTS_MARK = "asr_worker tiny-model"


class CheckFailed(StartupError):
    """The model loaded but did not transcribe the clip acceptably (or decoding raised)."""


@dataclass(frozen=True)
class CheckReport:
    """What `check` measured."""

    #: Resolved device ("cpu", "cuda:0").
    device: str
    #: Decoder dtype ("bf16", "fp32").
    dtype: str
    #: Seconds to load the model directory.
    load_s: float
    #: Peak memory in bytes (CUDA max allocated on a GPU, peak RSS on CPU).
    peak_memory_bytes: int
    #: "cuda max allocated" or "process peak RSS".
    peak_memory_kind: str
    #: Seconds of audio in the clip.
    audio_s: float
    #: Seconds to decode the clip (after warmup).
    decode_s: float
    #: Transcript of the clip.
    text: str
    #: Character error rate against CLIP_TEXT.
    cer: float
    #: Whether the directory holds random weights (text not judged).
    random_weights: bool
    #: Whether finals carry token timestamps (the checkpoint has CTC weights).
    timestamps: bool

    @property
    def rtf(self) -> float:
        """Real-time factor: decode seconds per second of audio."""
        return self.decode_s / self.audio_s


def character_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over characters, punctuation and spaces ignored, per reference char."""
    import unicodedata

    from rapidfuzz.distance import Levenshtein

    def chars(s: str) -> str:
        return "".join(c for c in s if not unicodedata.category(c).startswith(("P", "Z", "S")))

    ref, hyp = chars(reference), chars(hypothesis)
    return Levenshtein.distance(ref, hyp) / max(1, len(ref))


def is_random_weights(model_dir: Path) -> bool:
    """Whether configuration.json says `tiny-model` wrote this directory."""
    try:
        conf = json.loads((Path(model_dir) / "configuration.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(conf, dict) and str(conf.get("generated_by", "")).startswith(RANDOM_WEIGHTS_MARK)


def run_check(model_dir: Path, device: str = "cpu", dtype: str = "auto", *, max_cer: float = DEFAULT_MAX_CER,
              clip: Path = CLIP) -> CheckReport:
    """Load, warm up, transcribe the clip; raises StartupError (one line) on any failure."""
    import soundfile as sf
    import torch

    from asr_worker.engine.base import MODEL_SAMPLE_RATE, DecodeOptions, DecodeRequest
    from asr_worker.models.loader import load_engine, resolve_device

    dev = resolve_device(device)
    try:
        audio, rate = sf.read(str(clip), dtype="float32")
    except Exception as exc:
        raise CheckFailed(f"cannot read the check clip {clip}: {exc}") from exc
    if rate != MODEL_SAMPLE_RATE:
        raise CheckFailed(f"the check clip {clip} is {rate} Hz, not {MODEL_SAMPLE_RATE}")
    cuda = torch.device(dev) if dev.startswith("cuda") else None
    if cuda is not None:
        torch.cuda.reset_peak_memory_stats(cuda)
    started = time.perf_counter()
    engine = load_engine(model_dir, dev, dtype=dtype)
    load_s = time.perf_counter() - started
    request = DecodeRequest(audio, DecodeOptions(language="zh"), "final")
    try:
        engine.warmup()
        started = time.perf_counter()
        result = engine.decode_batch([request])[0]
        if cuda is not None:
            torch.cuda.synchronize(cuda)
        decode_s = time.perf_counter() - started
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CheckFailed(f"decoding the check clip failed: {type(exc).__name__}: {detail}") from exc
    if cuda is not None:
        peak, kind = torch.cuda.max_memory_allocated(cuda), "cuda max allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"
    report = CheckReport(
        device=engine.device,
        dtype=engine.dtype,
        load_s=load_s,
        peak_memory_bytes=int(peak),
        peak_memory_kind=kind,
        audio_s=audio.size / MODEL_SAMPLE_RATE,
        decode_s=decode_s,
        text=result.text,
        cer=character_error_rate(CLIP_TEXT, result.text),
        random_weights=is_random_weights(model_dir),
        timestamps=bool(engine.timestamps),
    )
    if not report.random_weights and report.cer > max_cer:
        raise CheckFailed(
            f"the model transcribed the check clip as {report.text!r}, expected {CLIP_TEXT!r} "
            f"(character error rate {report.cer:.2f} > {max_cer}): wrong weights, dtype or device?"
        )
    return report


def format_report(report: CheckReport, model_dir: Path) -> str:
    """The report as `key: value` lines."""
    verdict = (
        "not judged (random-weight model from tiny-model)"
        if report.random_weights
        else f"{report.cer:.2f}"
    )
    lines = [
        f"model_dir: {model_dir}",
        f"device: {report.device}",
        f"dtype: {report.dtype}",
        f"load_s: {report.load_s:.2f}",
        f"peak_memory_mib: {report.peak_memory_bytes / 2**20:.0f} ({report.peak_memory_kind})",
        f"audio_s: {report.audio_s:.2f}",
        f"decode_s: {report.decode_s:.3f}",
        f"rtf: {report.rtf:.3f}",
        f"text: {report.text}",
        f"reference: {CLIP_TEXT}",
        f"cer: {verdict}",
        f"timestamps: {'yes' if report.timestamps else 'no (the checkpoint has no CTC weights)'}",
        "check: ok",
    ]
    return "\n".join(lines)


def add_check_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m asr_worker check`."""
    parser.add_argument("--model-dir", type=Path, required=True, help="local Fun-ASR-Nano model directory")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on Ampere+, else fp32), bf16 or fp32")
    parser.add_argument(
        "--max-cer",
        type=float,
        default=DEFAULT_MAX_CER,
        help=f"highest character error rate accepted on the clip (default {DEFAULT_MAX_CER}; "
        "not applied to random-weight models)",
    )


def check_from_args(args: argparse.Namespace, out: TextIO) -> None:
    """Run `check` from parsed arguments; writes the report to out, raises StartupError."""
    from asr_worker.log import configure

    if not args.max_cer >= 0:
        raise StartupError(f"--max-cer must be >= 0, got {args.max_cer}")
    configure("warning")  # the loader's warnings (no CTC weights, ...) go to stderr
    # Libraries print notices to stdout; keep stdout for the report alone.
    with contextlib.redirect_stdout(sys.stderr):
        report = run_check(args.model_dir, args.device, args.dtype, max_cer=args.max_cer)
    print(format_report(report, args.model_dir), file=out, flush=True)
