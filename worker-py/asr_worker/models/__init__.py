"""Fun-ASR-Nano model directories, one module per concern.

- `loader`: validate a local directory, resolve device and dtype, load the engine (runtime);
- `tiny`: build random-weight directories offline (tests, CPU and GPU benchmarks);
- `download`: fetch a snapshot from ModelScope or Hugging Face (`python -m asr_worker download`).

The names below are re-exported so that callers can keep writing `models.build_tiny_model`.
"""

from asr_worker.models.download import DEFAULT_MODEL_ID, HUBS, download_model
from asr_worker.models.loader import (
    CTC_VOCAB_FILE,
    LLM_SUBDIR,
    build_funasr_kwargs,
    load_engine,
    resolve_device,
    resolve_dtype,
    validate_model_dir,
)
from asr_worker.models.tiny import build_tiny_model, count_parameters, model_config, write_model_config

__all__ = [
    "CTC_VOCAB_FILE",
    "DEFAULT_MODEL_ID",
    "HUBS",
    "LLM_SUBDIR",
    "build_funasr_kwargs",
    "build_tiny_model",
    "count_parameters",
    "download_model",
    "load_engine",
    "model_config",
    "resolve_device",
    "resolve_dtype",
    "validate_model_dir",
    "write_model_config",
]
