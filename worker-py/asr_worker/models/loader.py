"""Runtime loader: a local Fun-ASR-Nano directory validated and loaded into the engine.

A Fun-ASR-Nano-2512 directory looks like::

    config.yaml            FunASR config: model FunASRNano, frontend, encoder, adaptor, LLM, CTC
    configuration.json     ModelScope metadata (file_path_metas)
    model.pt               {"state_dict": {audio_encoder.*, audio_adaptor.*, llm.*, ctc_decoder.*, ctc.*}}
                           (the Hugging Face snapshot has no ctc_decoder.* / ctc.*: no timestamps)
    multilingual.tiktoken  SenseVoice tokenizer of the CTC (timestamp) branch
    Qwen3-0.6B/            config.json + tokenizer of the Qwen3 decoder (weights live in model.pt)

This module is the one place that resolves devices and dtypes, checks a directory, and
turns it into a `FunAsrNanoEngine` through FunASR's own `AutoModel.build_model`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

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
    """The device a request names: "cpu", "cuda", "cuda:N", or "auto" (cuda:0 when torch sees a
    GPU, else cpu). The one place the worker resolves devices (serve, check, the scripts'
    ASR_DEVICE=auto); raises DeviceUnavailableError (one line) for missing CUDA or a bad name."""
    import torch

    dev = (device or "").strip().lower()
    if dev == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
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
    raise DeviceUnavailableError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto")


@dataclass(frozen=True)
class ModelFiles:
    """Where a model directory's files are, as FunASR's own download resolves them."""

    #: The model directory.
    root: Path
    #: config.yaml (or what configuration.json's file_path_metas.config names).
    config: Path
    #: The checkpoint (model.pt, or file_path_metas.init_param).
    weights: Path
    #: file_path_metas with every path that exists made absolute; merged over config.yaml.
    metas: dict[str, Any]


def locate_files(model_dir: Path) -> ModelFiles:
    """Read configuration.json's `file_path_metas` the way FunASR's download does.

    FunASR (`download_from_ms` / `download_from_hf`) joins every string of file_path_metas
    to the model directory, keeps those that exist, and merges the result over config.yaml:
    `config` names the config file, `init_param` the checkpoint, and nested entries such as
    `tokenizer_conf.init_param_path` override config values. The joining is FunASR's own
    `add_file_root_path`, so a directory resolves here exactly as it would there.
    """
    model_dir = Path(model_dir)
    metas: dict[str, Any] = {}
    conf_file = model_dir / "configuration.json"
    if conf_file.is_file():
        try:
            conf = json.loads(conf_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelLoadError(f"{conf_file} is not valid JSON: {exc}") from exc
        raw = conf.get("file_path_metas") if isinstance(conf, dict) else None
        if isinstance(raw, dict):
            # Importing funasr prints notices (ffmpeg) on stdout, which `serve` keeps for its
            # LISTENING line and `check` for its report; this may be the first import.
            with contextlib.redirect_stdout(sys.stderr):
                from funasr.download.download_model_from_hub import add_file_root_path

            metas = add_file_root_path(str(model_dir), raw, {})
    config = Path(metas.pop("config", None) or model_dir / "config.yaml")
    weights = Path(metas.pop("init_param", None) or model_dir / "model.pt")
    return ModelFiles(root=model_dir, config=config, weights=weights, metas=metas)


def _load_config(files: ModelFiles) -> Any:
    """config.yaml merged with file_path_metas (an OmegaConf DictConfig, not yet resolved)."""
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(files.config)
    except Exception as exc:  # yaml errors, unreadable file
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{files.config} is not valid YAML: {first}") from exc
    if not isinstance(cfg, DictConfig):
        raise ModelLoadError(f"{files.config} is not a mapping of FunASR settings")
    return OmegaConf.merge(cfg, OmegaConf.create(files.metas)) if files.metas else cfg


def _select(cfg: Any, key: str) -> Any:
    """cfg's value at a dotted key with interpolations resolved; None when absent."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.select(cfg, key, default=None)
    except OmegaConfBaseException as exc:
        raise ModelLoadError(f"config.yaml: cannot resolve {key}: {exc}") from exc


def _llm_paths(root: Path, cfg: Any) -> tuple[Path, Path]:
    """Absolute (LLM config dir, LLM tokenizer dir) of a merged config."""
    llm = _under(root, str(_select(cfg, "llm_conf.init_param_path") or LLM_SUBDIR))
    tok = _select(cfg, "tokenizer_conf.init_param_path")
    return llm, (_under(root, str(tok)) if tok else llm)


def _ctc_vocab_path(root: Path, cfg: Any) -> Path | None:
    """The CTC tokenizer vocabulary, or None when the config has no CTC branch."""
    if not _select(cfg, "ctc_decoder") or not _select(cfg, "dataset_conf.ctc_tokenizer"):
        return None
    vocab = _select(cfg, "dataset_conf.ctc_tokenizer_conf.vocab_path")
    return _under(root, str(vocab)) if vocab else root / CTC_VOCAB_FILE


def validate_model_dir(path: Path) -> None:
    """Raise ModelLoadError (one line) unless path is a loadable Fun-ASR-Nano directory."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model dir {path} does not exist ({_BUILD_HINT})")
    if not path.is_dir():
        raise ModelLoadError(f"model dir {path} is not a directory ({_BUILD_HINT})")
    files = locate_files(path)
    cfg_file = files.config
    if not cfg_file.is_file():
        raise ModelLoadError(
            f"model dir {path} has no {cfg_file.name} (expected a Fun-ASR-Nano model directory; "
            f"{_BUILD_HINT})"
        )
    cfg = _load_config(files)
    if _select(cfg, "model") != "FunASRNano":
        raise ModelLoadError(
            f"{cfg_file} describes model {_select(cfg, 'model')!r}, not 'FunASRNano' "
            "(this engine serves Fun-ASR-Nano directories only)"
        )
    hub = _select(cfg, "audio_encoder_conf.hub")
    if hub:
        raise ModelLoadError(
            f"{cfg_file} loads its audio encoder from model hub {hub!r}; "
            "a served model directory must be self-contained"
        )
    weights = files.weights
    if not weights.is_file():
        raise ModelLoadError(
            f"model dir {path} has no {weights.name} (incomplete download? {_BUILD_HINT})"
        )
    with open(weights, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise ModelLoadError(
            f"{weights} is a git-lfs pointer, not weights (fetch it with `git lfs pull` "
            "or use `python -m asr_worker download`)"
        )
    llm_dir, tok_dir = _llm_paths(path, cfg)
    if not (llm_dir / "config.json").is_file():
        raise ModelLoadError(
            f"model dir {path} lacks the LLM config {llm_dir / 'config.json'} "
            f"(llm_conf.init_param_path is {_select(cfg, 'llm_conf.init_param_path')!r})"
        )
    if not (tok_dir / "tokenizer.json").is_file() and not (
        (tok_dir / "vocab.json").is_file() and (tok_dir / "merges.txt").is_file()
    ):
        raise ModelLoadError(
            f"model dir {path} lacks the LLM tokenizer in {tok_dir} "
            "(need tokenizer.json, or vocab.json + merges.txt)"
        )
    vocab_path = _ctc_vocab_path(path, cfg)
    if vocab_path is not None and not vocab_path.is_file():
        raise ModelLoadError(f"model dir {path} lacks the CTC tokenizer vocabulary {vocab_path}")


def build_funasr_kwargs(model_dir: Path) -> dict[str, Any]:
    """FunASR build kwargs for a local model directory, every path made absolute.

    config.yaml names the LLM / tokenizer directory relatively ("Qwen3-0.6B"); FunASR
    would hand that to transformers as is, which resolves it against the current directory
    and then treats it as a hub repo id. Here every path points into model_dir, so loading
    never consults a model hub. configuration.json's file_path_metas apply first, as in
    FunASR's own download.
    """
    from omegaconf import OmegaConf

    model_dir = Path(model_dir).resolve()
    files = locate_files(model_dir)
    cfg = _load_config(files)
    llm_dir, tok_dir = _llm_paths(model_dir, cfg)
    overrides: dict[str, Any] = {
        "model_path": str(model_dir),
        "init_param": str(files.weights),
        "llm_conf": {"init_param_path": str(llm_dir)},
        "tokenizer_conf": {"init_param_path": str(tok_dir)},
        # kaldi fbank dithers by default: random noise in every decode. Inference never dithers.
        "frontend_conf": {"dither": 0.0},
        "disable_update": True,
        "disable_log": True,
    }
    vocab_path = _ctc_vocab_path(model_dir, cfg)
    if vocab_path is not None:
        overrides["dataset_conf"] = {"ctc_tokenizer_conf": {"vocab_path": str(vocab_path)}}
    cmvn = _select(cfg, "frontend_conf.cmvn_file")
    if cmvn:
        overrides["frontend_conf"]["cmvn_file"] = str(_under(model_dir, cmvn))
    elif (model_dir / "am.mvn").exists():
        overrides["frontend_conf"]["cmvn_file"] = str(model_dir / "am.mvn")
    merged = OmegaConf.merge(cfg, OmegaConf.create(overrides))
    try:
        kwargs = OmegaConf.to_container(merged, resolve=True)
    except Exception as exc:  # an interpolation that names a missing key
        raise ModelLoadError(f"{files.config}: {' '.join(str(exc).split())[:300]}") from exc
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
    weights = Path(kwargs["init_param"])
    state = read_checkpoint(weights)
    ctc_configured = bool(kwargs.get("ctc_decoder"))
    if ctc_configured and not any(k.startswith(_CTC_PREFIXES) for k in state):
        # The Hugging Face release ships no CTC weights. Building the branch anyway would
        # make FunASR print one line per missing tensor, then drop the branch itself.
        kwargs.pop("ctc_decoder")
        log.warning(
            "%s has no CTC weights (the Hugging Face release of Fun-ASR-Nano-2512 ships none; "
            "the ModelScope release has them): transcription works, but finals will carry "
            "no token timestamps",
            weights,
        )
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
    _check_checkpoint(model, state, weights)
    if ctc_configured and kwargs.get("ctc_decoder") and getattr(model, "ctc_decoder", None) is None:
        # Some CTC tensors but not all: FunASR disabled the branch (and said so).
        log.warning("%s has incomplete CTC weights: finals will carry no token timestamps", weights)
    del state
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


#: State-dict prefixes of the CTC (timestamp) branch.
_CTC_PREFIXES = ("ctc_decoder.", "ctc.")


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state dict of a checkpoint, unwrapped as FunASR unwraps it (memory-mapped when
    the file allows): `{"state_dict": ...}` and the other containers FunASR knows, and one
    DDP `module.` prefix."""
    import torch
    from funasr.models.fun_asr_nano.checkpoint_utils import normalize_checkpoint_state

    try:
        try:
            raw = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ModelLoadError(f"cannot read checkpoint {path}: {type(exc).__name__}: {detail}") from exc
    if not isinstance(raw, dict):
        raise ModelLoadError(f"checkpoint {path} holds a {type(raw).__name__}, not a state dict")
    return normalize_checkpoint_state(raw)


def _check_checkpoint(model: Any, state: dict[str, Any], path: Path) -> None:
    """Fail if the checkpoint does not cover the model: FunASR only warns and keeps random weights."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(_CTC_PREFIXES)]
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
