"""Model directories: the tiny builder's layout, real-shape sizes, validation, download errors."""

from __future__ import annotations

import argparse
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from asr_worker import models
from asr_worker.engine.base import DecodeOptions, DecodeRequest
from asr_worker.errors import ModelLoadError
from asr_worker.models import download, tiny

torch.set_num_threads(2)


def test_tiny_model_has_the_fun_asr_nano_layout(tiny_model_dir: Path):
    for name in ("config.yaml", "configuration.json", "model.pt", "multilingual.tiktoken"):
        assert (tiny_model_dir / name).is_file(), name
    llm = tiny_model_dir / "Qwen3-0.6B"
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (llm / name).is_file(), name
    cfg = yaml.safe_load((tiny_model_dir / "config.yaml").read_text(encoding="utf-8"))
    assert cfg["model"] == "FunASRNano"
    assert cfg["audio_encoder"] == "SenseVoiceEncoderSmall"
    assert cfg["audio_adaptor"] == "Transformer"
    assert cfg["llm_conf"]["init_param_path"] == "Qwen3-0.6B"
    assert cfg["tokenizer"] == "HuggingfaceTokenizer"
    assert cfg["frontend"] == "WavFrontend"
    assert cfg["frontend_conf"]["lfr_m"] == 7 and cfg["frontend_conf"]["lfr_n"] == 6
    qcfg = json.loads((llm / "config.json").read_text(encoding="utf-8"))
    assert qcfg["model_type"] == "qwen3"
    models.validate_model_dir(tiny_model_dir)


def test_tiny_tokenizer_knows_the_chatml_tokens(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir / "Qwen3-0.6B"))
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        ids = tok.encode(special)
        assert len(ids) == 1, special
    text = "语音转写成中文：欢迎大家来体验达摩院"
    assert tok.decode(tok.encode(text)) == text
    assert tok.eos_token == "<|im_end|>"


def test_tiny_model_is_tiny(tiny_model_dir: Path):
    counts = models.count_parameters(tiny_model_dir)
    assert 100_000 < counts["total"] < 3_000_000
    assert counts["audio_encoder"] > 0 and counts["audio_adaptor"] > 0 and counts["llm"] > 0
    assert (tiny_model_dir / "model.pt").stat().st_size < 20 * 1024 * 1024


def test_same_seed_same_weights(tiny_model_dir: Path, tmp_path: Path):
    again = models.build_tiny_model(tmp_path / "again", seed=0)
    a = torch.load(tiny_model_dir / "model.pt", map_location="cpu")
    b = torch.load(again / "model.pt", map_location="cpu")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_build_refuses_to_overwrite(tiny_model_dir: Path):
    with pytest.raises(ModelLoadError, match=r"already holds a model\.pt"):
        models.build_tiny_model(tiny_model_dir)


def test_real_shapes_config_counts_without_weights(tmp_path: Path):
    out = models.write_model_config(tmp_path / "real", real_shapes=True)
    assert not (out / "model.pt").exists()
    qcfg = json.loads((out / "Qwen3-0.6B" / "config.json").read_text(encoding="utf-8"))
    assert (
        qcfg["num_hidden_layers"],
        qcfg["hidden_size"],
        qcfg["num_attention_heads"],
        qcfg["num_key_value_heads"],
        qcfg["head_dim"],
        qcfg["intermediate_size"],
        qcfg["vocab_size"],
    ) == (28, 1024, 16, 8, 128, 3072, 151936)
    cfg = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    enc = cfg["audio_encoder_conf"]
    assert (enc["num_blocks"], enc["tp_blocks"], enc["output_size"]) == (50, 20, 512)

    counts = models.count_parameters(out)  # on the meta device: nothing allocated
    assert 215e6 < counts["audio_encoder"] < 230e6  # SenseVoice-small encoder, ~221 M
    assert 12e6 < counts["audio_adaptor"] < 13.5e6  # 2-layer adaptor, ~12.6 M
    assert 590e6 < counts["llm"] < 600e6  # Qwen3-0.6B with tied embeddings, ~596 M
    assert 0.8e9 < counts["total"] < 1.0e9


# ------------------------------------------------------------------ release layout

#: Every key of the config.yaml that ships with Fun-ASR-Nano-2512, as dotted paths (lists
#: are leaves). Sources: FunASR 1.4.16's FunASRNano (what it reads) and published copies of
#: the checkpoint's config.yaml (see docs/models.md). Only values (sizes) may differ.
RELEASE_KEYS = {
    "model", "model_conf.lsm_weight", "model_conf.length_normalized_loss",
    "audio_encoder", *(f"audio_encoder_conf.{k}" for k in (
        "output_size", "attention_heads", "linear_units", "num_blocks", "tp_blocks", "dropout_rate",
        "positional_dropout_rate", "attention_dropout_rate", "input_layer", "pos_enc_class",
        "normalize_before", "kernel_size", "sanm_shfit", "selfattention_layer_type", "feat_permute",
        "freeze", "freeze_layer_num")),
    "llm", *(f"llm_conf.{k}" for k in ("hub", "freeze", "llm_dtype", "init_param_path", "use_lora")),
    *(f"llm_conf.lora_conf.{k}" for k in (
        "freeze_lora", "task_type", "r", "lora_alpha", "lora_dropout", "bias", "target_modules",
        "init_param_path")),
    "audio_adaptor", *(f"audio_adaptor_conf.{k}" for k in (
        "downsample_rate", "use_low_frame_rate", "ffn_dim", "llm_dim", "encoder_dim", "n_layer", "freeze")),
    "ctc_decoder", "detach_ctc_decoder", *(f"ctc_decoder_conf.{k}" for k in (
        "downsample_rate", "ffn_dim", "llm_dim", "encoder_dim", "n_layer", "freeze")),
    "ctc_weight", *(f"ctc_conf.{k}" for k in ("dropout_rate", "ctc_type", "reduce", "ignore_nan_grad")),
    "frontend", *(f"frontend_conf.{k}" for k in (
        "fs", "window", "n_mels", "frame_length", "frame_shift", "lfr_m", "lfr_n", "cmvn_file")),
    *(f"train_conf.{k}" for k in (
        "use_lora", "accum_grad", "grad_clip", "max_epoch", "keep_nbest_models", "log_interval",
        "effective_save_name_excludes", "resume", "validate_interval", "save_checkpoint_interval",
        "avg_nbest_model", "use_bf16", "use_deepspeed", "deepspeed_config", "save_init_model")),
    "optim", "optim_conf.lr", "optim_conf.weight_decay", "scheduler", "scheduler_conf.warmup_steps",
    "dataset", *(f"dataset_conf.{k}" for k in (
        "index_ds", "batch_sampler", "batch_type", "batch_size", "max_token_length", "shuffle", "sort_size",
        "batch_size_scale_ratio_max", "num_workers", "audio_adaptor_downsample_rate",
        "audio_encoder_downsample_rate", "data_split_num", "batch_size_sample_max", "retry",
        "batch_size_token_max", "max_source_length", "max_target_length", "prompt_classes",
        "ctc_tokenizer", "ctc_target_normalize", "min_source_length", "batch_size_scale_threshold",
        "use_dynamic_output_ratio")),
    *(f"dataset_conf.prompt_conf.{k}" for k in (
        "max_neg_hotwords_num", "min_neg_hotwords_num", "use_hist", "use_one_pass_result", "use_hotwords",
        "use_asr_hotwords", "chinese_hotwords_list", "english_hotwords_list")),
    *(f"dataset_conf.ctc_tokenizer_conf.{k}" for k in ("vocab_path", "is_multilingual", "num_languages")),
    "tokenizer", "tokenizer_conf.init_param_path",
    "enable_tf32", "debug", "train_data_set_list", "valid_data_set_list", "init_param", "output_dir",
}


def _dotted(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= _dotted(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


@pytest.fixture(scope="module")
def release_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model in the release layout (exact config key set, wrapped state dict)."""
    return models.build_tiny_model(tmp_path_factory.mktemp("release") / "nano", seed=1, release=True)


@pytest.fixture(scope="module")
def hf_model_dir(release_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release layout without CTC tensors in model.pt, like the Hugging Face snapshot."""
    import shutil

    out = tmp_path_factory.mktemp("hf") / "nano"
    shutil.copytree(release_model_dir, out)
    wrapped = torch.load(out / "model.pt", map_location="cpu")
    wrapped["state_dict"] = {
        k: v for k, v in wrapped["state_dict"].items() if not k.startswith(("ctc_decoder.", "ctc."))
    }
    torch.save(wrapped, out / "model.pt")
    return out


def test_release_layout_writes_exactly_the_released_config_keys(release_model_dir: Path):
    text = (release_model_dir / "config.yaml").read_text(encoding="utf-8")
    cfg = yaml.safe_load(text)
    assert _dotted(cfg) == RELEASE_KEYS
    assert cfg["tokenizer_conf"]["init_param_path"] == "${llm_conf.init_param_path}"
    assert cfg["llm_conf"]["use_lora"] is False and cfg["llm_conf"]["lora_conf"]["r"] == 16
    assert "attention_heads" not in cfg["audio_adaptor_conf"]
    assert "attention_heads" not in cfg["ctc_decoder_conf"]
    # Only the sizes are shrunk.
    assert cfg["audio_encoder_conf"]["output_size"] == 32 and cfg["audio_encoder_conf"]["num_blocks"] == 2
    metas = json.loads((release_model_dir / "configuration.json").read_text(encoding="utf-8"))
    assert metas["file_path_metas"] == {"init_param": "model.pt", "config": "config.yaml"}


def test_release_layout_wraps_the_state_dict(release_model_dir: Path):
    saved = torch.load(release_model_dir / "model.pt", map_location="cpu")
    assert list(saved) == ["state_dict"]
    keys = saved["state_dict"].keys()
    assert any(k.startswith("llm.") for k in keys) and any(k.startswith("ctc_decoder.") for k in keys)


def test_release_layout_validates_loads_and_decodes(release_model_dir: Path, shared_audio: Path, no_network):
    import soundfile as sf


    models.validate_model_dir(release_model_dir)
    kwargs = models.build_funasr_kwargs(release_model_dir)
    llm_dir = str((release_model_dir / "Qwen3-0.6B").resolve())
    # The interpolation resolved, to the LLM directory anchored in the model directory.
    assert kwargs["tokenizer_conf"]["init_param_path"] == llm_dir == kwargs["llm_conf"]["init_param_path"]
    eng = models.load_engine(release_model_dir, "cpu", max_new_tokens=6, max_tokens_per_second=0)
    assert eng.timestamps  # ModelScope-style: the CTC branch is loaded
    audio, _ = sf.read(shared_audio / "zh" / "damo.wav", dtype="float32")
    out = eng.decode_batch([DecodeRequest(audio[:32000], DecodeOptions(language="zh"), "final")])
    assert len(eng.last_generated[0]) > 0 and isinstance(out[0].text, str)


def test_checkpoint_without_ctc_weights_loads_with_one_warning(
    hf_model_dir: Path, shared_audio: Path, no_network, caplog, capfd
):
    import logging

    import soundfile as sf


    with caplog.at_level(logging.WARNING):
        eng = models.load_engine(hf_model_dir, "cpu", max_new_tokens=6, max_tokens_per_second=0)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "no CTC weights" in message and "no token timestamps" in message and "Hugging Face" in message
    # Nor one line per missing tensor on stdout (FunASR prints those when the branch is built).
    assert "miss key" not in capfd.readouterr().out
    assert not eng.timestamps
    audio, _ = sf.read(shared_audio / "zh" / "damo.wav", dtype="float32")
    out = eng.decode_batch([DecodeRequest(audio[:32000], DecodeOptions(language="zh"), "final")])[0]
    assert isinstance(out.text, str) and out.tokens == ()


def test_configuration_json_file_path_metas_name_the_files(tiny_model_dir: Path, tmp_path: Path, no_network):
    d = _copy_layout(tiny_model_dir, tmp_path / "m")
    (d / "weights").mkdir()
    (d / "model.pt").rename(d / "weights" / "nano.pt")
    (d / "conf").mkdir()
    (d / "config.yaml").rename(d / "conf" / "nano.yaml")
    (d / "Qwen3-0.6B").rename(d / "qwen")
    conf = json.loads((d / "configuration.json").read_text(encoding="utf-8"))
    conf["file_path_metas"] = {
        "init_param": "weights/nano.pt",
        "config": "conf/nano.yaml",
        "llm_conf": {"init_param_path": "qwen"},
        "tokenizer_conf": {"init_param_path": "qwen"},
    }
    (d / "configuration.json").write_text(json.dumps(conf), encoding="utf-8")
    models.validate_model_dir(d)
    kwargs = models.build_funasr_kwargs(d)
    assert kwargs["init_param"] == str((d / "weights" / "nano.pt").resolve())
    assert kwargs["llm_conf"]["init_param_path"] == str((d / "qwen").resolve())
    assert models.load_engine(d, "cpu").decode_batch(
        [DecodeRequest(np.zeros(8000, dtype=np.float32), DecodeOptions())]
    )[0].text is not None
    # Without the metas the same directory is incomplete: FunASR would not find the files either.
    (d / "configuration.json").unlink()
    with pytest.raises(ModelLoadError, match=r"has no config\.yaml"):
        models.validate_model_dir(d)


def test_device_auto_is_cuda_when_torch_sees_a_gpu_else_cpu():
    assert models.resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")
    assert models.resolve_device(" CPU ") == "cpu"
    with pytest.raises(ModelLoadError, match="unknown device 'gpu'; use cpu, cuda, cuda:N or auto"):
        models.resolve_device("gpu")


# ------------------------------------------------------------------ validation


def _copy_layout(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "does not exist"),
        ("file", "is not a directory"),
        ("no_config", "has no config.yaml"),
        ("bad_yaml", "not valid YAML"),
        ("other_model", "not 'FunASRNano'"),
        ("no_weights", "has no model.pt"),
        ("lfs_pointer", "git-lfs pointer"),
        ("no_llm_config", "lacks the LLM config"),
        ("no_tokenizer", "lacks the LLM tokenizer"),
        ("no_ctc_vocab", "CTC tokenizer vocabulary"),
        ("hub_encoder", "model hub"),
    ],
)
def test_validate_model_dir_errors(tiny_model_dir: Path, tmp_path: Path, breakage: str, message: str):
    d = tmp_path / "m"
    if breakage == "missing":
        pass
    elif breakage == "file":
        d.write_text("x")
    else:
        _copy_layout(tiny_model_dir, d)
        cfg_file = d / "config.yaml"
        cfg = yaml.safe_load(cfg_file.read_text(encoding="utf-8"))
        if breakage == "no_config":
            cfg_file.unlink()
        elif breakage == "bad_yaml":
            cfg_file.write_text("model: [unclosed\n", encoding="utf-8")
        elif breakage == "other_model":
            cfg["model"] = "Paraformer"
            cfg_file.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        elif breakage == "no_weights":
            (d / "model.pt").unlink()
        elif breakage == "lfs_pointer":
            (d / "model.pt").write_text(
                "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n"
            )
        elif breakage == "no_llm_config":
            (d / "Qwen3-0.6B" / "config.json").unlink()
        elif breakage == "no_tokenizer":
            (d / "Qwen3-0.6B" / "tokenizer.json").unlink()
        elif breakage == "no_ctc_vocab":
            (d / "multilingual.tiktoken").unlink()
        elif breakage == "hub_encoder":
            cfg["audio_encoder_conf"]["hub"] = "ms"
            cfg_file.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    with pytest.raises(ModelLoadError, match=message) as info:
        models.validate_model_dir(d)
    assert "\n" not in str(info.value)


def test_missing_config_message_says_how_to_get_a_model(tmp_path: Path):
    with pytest.raises(ModelLoadError) as info:
        models.validate_model_dir(tmp_path)
    msg = str(info.value)
    assert "python -m asr_worker tiny-model" in msg and "python -m asr_worker download" in msg


# ------------------------------------------------------------------ download


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: (_ for _ in ()).throw(OSError("blocked")))


@pytest.mark.parametrize("hub", ["hf", "ms"])
def test_download_unreachable_hub_is_one_clear_line(hub: str, tmp_path: Path, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with pytest.raises(ModelLoadError) as info:
        models.download_model(models.DEFAULT_MODEL_ID, hub, tmp_path / "cache")
    msg = str(info.value)
    assert "\n" not in msg
    assert models.DEFAULT_MODEL_ID in msg
    assert ("Hugging Face" if hub == "hf" else "ModelScope") in msg
    # The hint to try the other hub says what changes: only ModelScope's has CTC timestamps.
    assert "timestamps" in msg and "--hub" in msg


def test_download_unknown_hub(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="unknown hub"):
        models.download_model(models.DEFAULT_MODEL_ID, "github", tmp_path)


def test_download_validates_what_it_got(tmp_path: Path, monkeypatch):
    import huggingface_hub

    empty = tmp_path / "snapshot"
    empty.mkdir()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda **kw: str(empty))
    with pytest.raises(ModelLoadError, match=r"has no config\.yaml"):
        models.download_model(models.DEFAULT_MODEL_ID, "hf", tmp_path / "cache")


def test_argparse_helpers(tmp_path: Path):
    p = argparse.ArgumentParser()
    download.add_download_args(p)
    args = p.parse_args(["--hub", "hf", "--cache-dir", str(tmp_path)])
    assert (args.model_id, args.hub, args.cache_dir, args.revision) == (
        models.DEFAULT_MODEL_ID,
        "hf",
        tmp_path,
        None,
    )
    p2 = argparse.ArgumentParser()
    tiny.add_tiny_model_args(p2)
    args2 = p2.parse_args([str(tmp_path / "out"), "--real-shapes", "--seed", "3"])
    assert (args2.out_dir, args2.real_shapes, args2.seed) == (tmp_path / "out", True, 3)


# ------------------------------------------------------------------ real weights

_REAL = os.environ.get("ASR_REAL_MODEL_DIR")
real_weights = pytest.mark.skipif(
    not _REAL, reason="set ASR_REAL_MODEL_DIR to a real Fun-ASR-Nano-2512 directory"
)


@real_weights
def test_real_weights_config_has_the_release_key_set():
    # Confirms on a real copy what RELEASE_KEYS (and tiny-model --release-layout) reconstruct.
    files = models.loader.locate_files(Path(_REAL))
    cfg = yaml.safe_load(files.config.read_text(encoding="utf-8"))
    assert _dotted(cfg) == RELEASE_KEYS


@real_weights
def test_real_weights_checkpoint_is_a_wrapped_state_dict():
    files = models.loader.locate_files(Path(_REAL))
    saved = torch.load(files.weights, map_location="cpu", mmap=True, weights_only=True)
    assert list(saved) == ["state_dict"]


@real_weights
def test_real_weights_have_timestamps_exactly_when_the_checkpoint_has_ctc_weights(no_network, caplog):
    import logging

    files = models.loader.locate_files(Path(_REAL))
    state = models.loader.read_checkpoint(files.weights)
    has_ctc = any(k.startswith(("ctc_decoder.", "ctc.")) for k in state)
    del state
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with caplog.at_level(logging.WARNING):
        eng = models.load_engine(Path(_REAL), device)
    warned = [r for r in caplog.records if "no token timestamps" in r.getMessage()]
    assert eng.timestamps == has_ctc and len(warned) == (0 if has_ctc else 1)
