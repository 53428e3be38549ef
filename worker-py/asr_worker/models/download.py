"""`python -m asr_worker download`: a Fun-ASR-Nano snapshot from ModelScope or Hugging Face.

The two hubs do not ship the same files under FunAudioLLM/Fun-ASR-Nano-2512: the
ModelScope model.pt holds the CTC branch (token timestamps), the Hugging Face one does not
(the loader then serves text without timestamps and says so once). Both transcribe alike.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from asr_worker.errors import ModelLoadError
from asr_worker.models.loader import validate_model_dir

#: Model id of Fun-ASR-Nano-2512 on both ModelScope and Hugging Face.
DEFAULT_MODEL_ID = "FunAudioLLM/Fun-ASR-Nano-2512"
#: Hub names accepted by `download_model` (FunASR's own spelling first).
HUBS = {"ms": "ms", "modelscope": "ms", "hf": "hf", "huggingface": "hf"}
#: The "try the other hub" hint, saying what changes: the two snapshots differ.
_OTHER_HUB = {
    "ms": "try Hugging Face with --hub hf (same model and text, but its model.pt has no CTC "
    "weights: finals then carry no token timestamps)",
    "hf": "try ModelScope with --hub ms (same model and text, plus the CTC weights that give "
    "finals token timestamps)",
}


def download_model(model_id: str, hub: str, cache_dir: Path, revision: str | None = None) -> Path:
    """Download a Fun-ASR-Nano snapshot from ModelScope ("ms") or Hugging Face ("hf").

    Returns the local snapshot directory after validating it. Any failure (unknown hub,
    unreachable hub, missing id, incomplete files) raises ModelLoadError with one line.
    """
    hub_key = HUBS.get(hub.lower()) if isinstance(hub, str) else None
    if hub_key is None:
        raise ModelLoadError(f"unknown hub {hub!r}; use one of: ms (ModelScope), hf (Hugging Face)")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    hub_name = "ModelScope" if hub_key == "ms" else "Hugging Face"
    try:
        if hub_key == "ms":
            from modelscope import snapshot_download as ms_snapshot

            local = ms_snapshot(model_id, revision=revision or "master", cache_dir=str(cache_dir))
        else:
            from huggingface_hub import snapshot_download as hf_snapshot

            local = hf_snapshot(repo_id=model_id, revision=revision, cache_dir=str(cache_dir))
    except ModelLoadError:
        raise
    except Exception as exc:  # network, auth, 404: all end the command with one line
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelLoadError(
            f"could not download {model_id} from {hub_name} into {cache_dir}: "
            f"{type(exc).__name__}: {detail} (is the hub reachable from this machine? "
            f"{_OTHER_HUB[hub_key]}, or copy a model directory here and use --model-dir)"
        ) from exc
    local_path = Path(local)
    validate_model_dir(local_path)
    return local_path



def add_download_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m asr_worker download`."""
    parser.add_argument(
        "--model-id",
        default=DEFAULT_MODEL_ID,
        help=f"model id on the hub (default: {DEFAULT_MODEL_ID}, the same id on both hubs)",
    )
    parser.add_argument(
        "--hub",
        choices=sorted(HUBS),
        default="ms",
        help="ms = ModelScope (default, FunASR's home; with CTC timestamps), "
        "hf = Hugging Face (no CTC weights: no token timestamps)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("ASR_MODEL_CACHE", "~/.cache/asr_worker/models")).expanduser(),
        help="where snapshots are stored (default: $ASR_MODEL_CACHE or ~/.cache/asr_worker/models)",
    )
    parser.add_argument("--revision", default=None, help="hub revision (default: latest)")


def download_from_args(args: argparse.Namespace) -> Path:
    """Run `download` from parsed arguments; returns the model directory to pass to --model-dir."""
    return download_model(args.model_id, args.hub, args.cache_dir, args.revision)


