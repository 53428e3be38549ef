"""Random-weight FunASR fsmn-vad model directories, built offline.

`build_fsmn_vad_dir` writes what `asr_worker.vad.FsmnVad` loads from a released
fsmn-vad directory (speech_fsmn_vad_zh-cn-16k-common-pytorch): config.yaml in the
released structure, model.pt from the model's own state_dict and a Kaldi-style
am.mvn. Random weights cannot find speech, so tests use the tiny variant for the
streaming contract; `real_shapes=True` keeps every dimension of the released model
(80 mel bins x LFR 5, four 250/128 FSMN layers with 19 frames of memory, 248 pdfs)
so that CPU cost measured on it (bench/vad_cost.py) is the released model's.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any

#: The released config.yaml's frontend and model sections (model_conf is FunASR's
#: own segmentation state machine, which the worker does not use but FunASR reads).
_BASE_CONFIG: dict[str, Any] = {
    "frontend": "WavFrontendOnline",
    "frontend_conf": {
        "fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
        "frame_shift": 10, "dither": 0.0, "lfr_m": 5, "lfr_n": 1,
    },
    "model": "FsmnVADStreaming",
    "model_conf": {
        "sample_rate": 16000, "detect_mode": 1, "snr_mode": 0, "max_end_silence_time": 800,
        "max_start_silence_time": 3000, "do_start_point_detection": True,
        "do_end_point_detection": True, "window_size_ms": 200, "sil_to_speech_time_thres": 150,
        "speech_to_sil_time_thres": 150, "speech_2_noise_ratio": 1.0, "do_extend": 1,
        "lookback_time_start_point": 200, "lookahead_time_end_point": 100,
        "max_single_segment_time": 60000, "snr_thres": -100.0,
        "noise_frame_num_used_for_snr": 100, "decibel_thres": -100.0,
        "speech_noise_thres": 0.6, "fe_prior_thres": 0.0001, "silence_pdf_num": 1,
        "sil_pdf_ids": [0], "speech_noise_thresh_low": -0.1, "speech_noise_thresh_high": 0.3,
        "output_frame_probs": False, "frame_in_ms": 10, "frame_length_ms": 25,
    },
    "encoder": "FSMN",
}

#: The released model's encoder dimensions.
_REAL_ENCODER = {
    "input_dim": 400, "input_affine_dim": 140, "fsmn_layers": 4, "linear_dim": 250,
    "proj_dim": 128, "lorder": 20, "rorder": 0, "lstride": 1, "rstride": 0,
    "output_affine_dim": 140, "output_dim": 248,
}
#: Tiny dimensions for tests: 8 mel bins x LFR 5 = 40 inputs, 2 small FSMN layers, 6 pdfs.
_TINY_ENCODER = {
    "input_dim": 40, "input_affine_dim": 16, "fsmn_layers": 2, "linear_dim": 16,
    "proj_dim": 8, "lorder": 4, "rorder": 0, "lstride": 1, "rstride": 0,
    "output_affine_dim": 16, "output_dim": 6,
}


def fsmn_vad_config(*, real_shapes: bool = False) -> dict[str, Any]:
    """The config.yaml content `build_fsmn_vad_dir` writes (a fresh copy)."""
    cfg = copy.deepcopy(_BASE_CONFIG)
    enc = dict(_REAL_ENCODER if real_shapes else _TINY_ENCODER)
    cfg["encoder_conf"] = enc
    cfg["frontend_conf"]["n_mels"] = enc["input_dim"] // cfg["frontend_conf"]["lfr_m"]
    return cfg


def build_fsmn_vad_dir(out: Path, *, real_shapes: bool = False, seed: int = 0) -> Path:
    """Write config.yaml, model.pt (random weights, seeded) and am.mvn into `out`; return it."""
    import torch
    import yaml

    # FunASR prints an ffmpeg notice on import; keep stdout for the caller's output.
    with contextlib.redirect_stdout(io.StringIO()):
        import funasr.models.fsmn_vad_streaming.model  # noqa: F401  (registers the classes)
        from funasr.register import tables

    cfg = fsmn_vad_config(real_shapes=real_shapes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    dim = cfg["encoder_conf"]["input_dim"]
    # Log-mel features are around -8 with spread ~3: shift and scale them to about N(0, 1).
    shift = " ".join(["-8.0"] * dim)
    scale = " ".join(["0.3"] * dim)
    (out / "am.mvn").write_text(
        f"<Nnet>\n<Splice> {dim} {dim}\n[ 0 ]\n"
        f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {shift} ]\n"
        f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {scale} ]\n</Nnet>\n",
        encoding="utf-8",
    )
    torch.manual_seed(seed)
    model_cls = tables.model_classes.get(cfg["model"])
    model = model_cls(encoder=cfg["encoder"], encoder_conf=cfg["encoder_conf"], **cfg["model_conf"])
    torch.save(model.state_dict(), out / "model.pt")
    return out
