"""Model directories: the tiny builder's layout, real-shape sizes, validation, download errors."""

from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import pytest
import torch
import yaml

from asr_worker import models
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
