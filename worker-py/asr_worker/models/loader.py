"""Runtime loader: a local Fun-ASR-Nano directory validated and loaded into the engine.

A Fun-ASR-Nano-2512 directory looks like::

    config.yaml            FunASR config: model FunASRNano, frontend, encoder, adaptor, LLM, CTC
    configuration.json     ModelScope metadata (file_path_metas)
    model.pt               {"state_dict": {audio_encoder.*, audio_adaptor.*, llm.*, ctc_decoder.*, ctc.*}}
    multilingual.tiktoken  SenseVoice tokenizer of the CTC (timestamp) branch
    Qwen3-0.6B/            config.json + tokenizer of the Qwen3 decoder (weights live in model.pt)

This module is the one place that resolves devices and dtypes, checks a directory, and
turns it into a `FunAsrNanoEngine` through FunASR's own `AutoModel.build_model`.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from asr_worker.engine.funasr_nano import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_MAX_TOKENS_PER_SECOND,
    DEFAULT_PARTIAL_MAX_NEW_TOKENS,
    FunAsrNanoEngine,
)
from asr_worker.errors import DeviceError, ModelLoadError

log = logging.getLogger(__name__)

#: Sub-directory of the Qwen3 decoder config + tokenizer (llm_conf.init_param_path).
LLM_SUBDIR = "Qwen3-0.6B"
#: Vocabulary of the SenseVoice CTC tokenizer (dataset_conf.ctc_tokenizer_conf.vocab_path).
CTC_VOCAB_FILE = "multilingual.tiktoken"

_BUILD_HINT = (
    "build one with `python -m asr_worker tiny-model DIR` "
    "or download one with `python -m asr_worker download`"
)

_DTYPE_ALIASES = {
    "auto": "auto",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp32": "fp32",
    "float32": "fp32",
    "float": "fp32",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
}


class DeviceUnavailableError(DeviceError, ModelLoadError):
    """The requested device does not exist here (both a DeviceError and a ModelLoadError)."""


def resolve_dtype(dtype: str, device: str) -> str:
    """ "bf16" or "fp32" for a dtype request on a device; raises ModelLoadError for fp16."""
    import torch

    name = _DTYPE_ALIASES.get(str(dtype).lower())
    if name is None:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, bf16 or fp32")
    if name == "fp16":
        raise ModelLoadError(
            "dtype fp16 is refused: the Qwen3 decoder of Fun-ASR-Nano overflows in float16 and "
            "emits garbage; use bf16 (CUDA compute capability >= 8.0) or fp32"
        )
    is_cuda = device.startswith("cuda")
    bf16_ok = is_cuda and torch.cuda.get_device_capability(torch.device(device))[0] >= 8
    if name == "auto":
        return "bf16" if bf16_ok else "fp32"
    if name == "bf16" and is_cuda and not bf16_ok:
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        raise ModelLoadError(
            f"dtype bf16 needs CUDA compute capability >= 8.0 (Ampere or newer); {device} has "
            f"{major}.{minor}: use fp32"
        )
    return name


def resolve_device(device: str) -> str:
    """Validate a device string ("cpu", "cuda", "cuda:N"); raises for missing CUDA."""
    import torch

    dev = (device or "").strip().lower()
    if dev == "cpu":
        return "cpu"
    if re.fullmatch(r"cuda(:\d+)?", dev):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {device!r} requested but CUDA is not available here "
                f"(torch {torch.__version__}, cuda build {torch.version.cuda or 'none'}); "
                "use --device cpu"
            )
        index = int(dev.split(":")[1]) if ":" in dev else 0
        if index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return f"cuda:{index}"
    raise DeviceUnavailableError(f"unknown device {device!r}; use cpu, cuda or cuda:N")


def validate_model_dir(path: Path) -> None:
    """Raise ModelLoadError (one line) unless path is a loadable Fun-ASR-Nano directory."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model dir {path} does not exist ({_BUILD_HINT})")
    if not path.is_dir():
        raise ModelLoadError(f"model dir {path} is not a directory ({_BUILD_HINT})")
    cfg_file = path / "config.yaml"
    if not cfg_file.is_file():
        raise ModelLoadError(
            f"model dir {path} has no config.yaml (expected a Fun-ASR-Nano model directory; {_BUILD_HINT})"
        )
    try:
        cfg = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{cfg_file} is not valid YAML: {first}") from exc
    if not isinstance(cfg, dict) or cfg.get("model") != "FunASRNano":
        found = cfg.get("model") if isinstance(cfg, dict) else None
        raise ModelLoadError(
            f"{cfg_file} describes model {found!r}, not 'FunASRNano' "
            "(this engine serves Fun-ASR-Nano directories only)"
        )
    enc_conf = cfg.get("audio_encoder_conf") or {}
    if enc_conf.get("hub"):
        raise ModelLoadError(
            f"{cfg_file} loads its audio encoder from model hub {enc_conf['hub']!r}; "
            "a served model directory must be self-contained"
        )
    weights = path / "model.pt"
    if not weights.is_file():
        raise ModelLoadError(f"model dir {path} has no model.pt (incomplete download? {_BUILD_HINT})")
    with open(weights, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise ModelLoadError(
            f"{weights} is a git-lfs pointer, not weights (fetch it with `git lfs pull` "
            "or use `python -m asr_worker download`)"
        )
    llm_rel = (cfg.get("llm_conf") or {}).get("init_param_path") or LLM_SUBDIR
    llm_dir = _under(path, str(llm_rel))
    if not (llm_dir / "config.json").is_file():
        raise ModelLoadError(
            f"model dir {path} lacks the LLM config {llm_dir / 'config.json'} "
            f"(llm_conf.init_param_path is {llm_rel!r})"
        )
    if not (llm_dir / "tokenizer.json").is_file() and not (
        (llm_dir / "vocab.json").is_file() and (llm_dir / "merges.txt").is_file()
    ):
        raise ModelLoadError(
            f"model dir {path} lacks the LLM tokenizer in {llm_dir} "
            "(need tokenizer.json, or vocab.json + merges.txt)"
        )
    ds = cfg.get("dataset_conf") or {}
    if cfg.get("ctc_decoder") and ds.get("ctc_tokenizer"):
        vocab = (ds.get("ctc_tokenizer_conf") or {}).get("vocab_path")
        vocab_path = _under(path, str(vocab)) if vocab else path / CTC_VOCAB_FILE
        if not vocab_path.is_file():
            raise ModelLoadError(f"model dir {path} lacks the CTC tokenizer vocabulary {vocab_path}")



def build_funasr_kwargs(model_dir: Path) -> dict[str, Any]:
    """FunASR build kwargs for a local model directory, every path made absolute.

    config.yaml names the LLM / tokenizer directory relatively ("Qwen3-0.6B"); FunASR
    would hand that to transformers as is, which resolves it against the current directory
    and then treats it as a hub repo id. Here every path points into model_dir, so loading
    never consults a model hub.
    """
    from omegaconf import OmegaConf

    model_dir = Path(model_dir).resolve()
    cfg = OmegaConf.load(model_dir / "config.yaml")
    llm_rel = OmegaConf.select(cfg, "llm_conf.init_param_path", default=LLM_SUBDIR)
    llm_dir = str(_under(model_dir, llm_rel))
    overrides: dict[str, Any] = {
        "model_path": str(model_dir),
        "init_param": str(model_dir / "model.pt"),
        "llm_conf": {"init_param_path": llm_dir},
        "tokenizer_conf": {"init_param_path": llm_dir},
        # kaldi fbank dithers by default: random noise in every decode. Inference never dithers.
        "frontend_conf": {"dither": 0.0},
        "disable_update": True,
        "disable_log": True,
    }
    if OmegaConf.select(cfg, "dataset_conf.ctc_tokenizer", default=None):
        vocab = OmegaConf.select(cfg, "dataset_conf.ctc_tokenizer_conf.vocab_path", default=None)
        vocab_path = _under(model_dir, vocab) if vocab else model_dir / CTC_VOCAB_FILE
        overrides["dataset_conf"] = {"ctc_tokenizer_conf": {"vocab_path": str(vocab_path)}}
    cmvn = OmegaConf.select(cfg, "frontend_conf.cmvn_file", default=None)
    if cmvn:
        overrides["frontend_conf"]["cmvn_file"] = str(_under(model_dir, cmvn))
    elif (model_dir / "am.mvn").exists():
        overrides["frontend_conf"]["cmvn_file"] = str(model_dir / "am.mvn")
    merged = OmegaConf.merge(cfg, OmegaConf.create(overrides))
    kwargs = OmegaConf.to_container(merged, resolve=True)
    assert isinstance(kwargs, dict)
    return kwargs


def _under(model_dir: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else model_dir / p



def load_engine(
    model_dir: Path,
    device: str = "cpu",
    *,
    dtype: str = "auto",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    partial_max_new_tokens: int = DEFAULT_PARTIAL_MAX_NEW_TOKENS,
    max_tokens_per_second: float = DEFAULT_MAX_TOKENS_PER_SECOND,
    forced_tokens_per_second: float | None = None,
) -> FunAsrNanoEngine:
    """Load a local Fun-ASR-Nano directory with FunASR's own loader; never touches a hub.

    dtype: "auto" (bf16 on CUDA with compute capability >= 8.0, else fp32), "bf16" or
    "fp32"; "fp16" is refused (the Qwen3 decoder breaks in fp16). The audio encoder always
    runs in fp32, as FunASR does. forced_tokens_per_second (benchmarks only) makes every
    request generate exactly ceil(seconds * rate) tokens, whatever the weights say.
    Raises ModelLoadError (one line) for a bad directory, device or dtype.
    """
    import torch

    model_dir = Path(model_dir)
    if max_new_tokens < 1 or partial_max_new_tokens < 1:
        raise ModelLoadError("max_new_tokens and partial_max_new_tokens must be >= 1")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    validate_model_dir(model_dir)

    import funasr.models.fun_asr_nano.model  # noqa: F401  (registers FunASRNano)
    from funasr.auto.auto_model import AutoModel

    kwargs = build_funasr_kwargs(model_dir)
    kwargs.update(
        device=dev,
        ncpu=torch.get_num_threads(),  # build_model would otherwise force 4 threads
        # A model_conf makes build_model skip FunASR's hub download step: this directory
        # is all there is.
        model_conf=kwargs.get("model_conf") or {},
    )
    started = time.monotonic()
    try:
        model, kwargs = AutoModel.build_model(**kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelLoadError(
            f"could not load Fun-ASR-Nano from {model_dir}: {type(exc).__name__}: {detail}"
        ) from exc
    _check_checkpoint(model, model_dir / "model.pt")
    model.llm.to(torch.bfloat16 if dt == "bf16" else torch.float32)
    model.audio_encoder.float()
    model.audio_adaptor.float()
    model.eval()
    kwargs["llm_dtype"] = dt
    log.info(
        "loaded Fun-ASR-Nano from %s on %s (%s decoder) in %.1fs",
        model_dir,
        dev,
        dt,
        time.monotonic() - started,
    )
    return FunAsrNanoEngine(
        model,
        kwargs,
        device=dev,
        dtype=dt,
        max_new_tokens=max_new_tokens,
        partial_max_new_tokens=partial_max_new_tokens,
        max_tokens_per_second=max_tokens_per_second,
        forced_tokens_per_second=forced_tokens_per_second,
        model_dir=model_dir,
    )


def _check_checkpoint(model: Any, path: Path) -> None:
    """Fail if model.pt does not cover the model: FunASR only warns and keeps random weights."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", mmap=True)
    except Exception:
        state = torch.load(path, map_location="cpu")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    optional = ("ctc_decoder.", "ctc.")  # FunASR disables timestamps when these are absent
    missing = [k for k in expected if k not in state and not k.startswith(optional)]
    mismatched = [
        k
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or mismatched:
        example = (missing or mismatched)[0]
        raise ModelLoadError(
            f"{path} does not match config.yaml: {len(missing)} tensors missing, "
            f"{len(mismatched)} of another shape (e.g. {example}); wrong or partial checkpoint"
        )
