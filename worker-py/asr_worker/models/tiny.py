"""Random-weight Fun-ASR-Nano model directories, built offline.

`build_tiny_model` writes the layout of a real Fun-ASR-Nano-2512 directory (see
`asr_worker.models.loader`) with random weights, so that tests and CPU benchmarks load a
model through exactly the production path (`asr_worker.models.loader.load_engine`).
`real_shapes=True` keeps every dimension of the real model (about 0.98 B parameters) for
GPU capacity benchmarks.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

from asr_worker.errors import ModelLoadError
from asr_worker.models.loader import CTC_VOCAB_FILE, LLM_SUBDIR, build_funasr_kwargs

log = logging.getLogger(__name__)

# Qwen3 chat-template tokens FunASRNano's prompt uses, in Qwen3's order.
_QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Tokens Qwen3 has as plain added tokens (FunASRNano inserts them when do_think is false).
_QWEN_ADDED = ["<think>", "</think>"]



# --------------------------------------------------------------------------- config


def _dims(real_shapes: bool) -> dict[str, Any]:
    """Every dimension the builder varies; the real ones are Fun-ASR-Nano-2512's."""
    if real_shapes:
        return {
            "enc_dim": 512,
            "enc_heads": 4,
            "enc_units": 2048,
            "enc_blocks": 50,
            "enc_tp_blocks": 20,
            "adaptor_ffn": 2048,
            "adaptor_layers": 2,
            "adaptor_heads": 8,
            "ctc_ffn": 2048,
            "ctc_layers": 5,
            "ctc_heads": 8,
            "llm_hidden": 1024,
            "llm_layers": 28,
            "llm_heads": 16,
            "llm_kv_heads": 8,
            "llm_head_dim": 128,
            "llm_ffn": 3072,
            "llm_vocab": 151936,
            "max_positions": 40960,
        }
    return {
        "enc_dim": 32,
        "enc_heads": 2,
        "enc_units": 64,
        "enc_blocks": 2,
        "enc_tp_blocks": 1,
        "adaptor_ffn": 64,
        "adaptor_layers": 1,
        "adaptor_heads": 2,
        "ctc_ffn": 64,
        "ctc_layers": 1,
        "ctc_heads": 2,
        "llm_hidden": 64,
        "llm_layers": 2,
        "llm_heads": 4,
        "llm_kv_heads": 2,
        "llm_head_dim": 16,
        "llm_ffn": 128,
        "llm_vocab": None,  # the tokenizer's size, rounded up
        "max_positions": 4096,
    }


def model_config(*, real_shapes: bool = False, ctc_vocab_size: int = 60515) -> dict[str, Any]:
    """The config.yaml of a Fun-ASR-Nano-2512 directory (tiny dims unless real_shapes)."""
    d = _dims(real_shapes)
    return {
        "model": "FunASRNano",
        "model_conf": {"lsm_weight": 0.1, "length_normalized_loss": True},
        "audio_encoder": "SenseVoiceEncoderSmall",
        "audio_encoder_conf": {
            "output_size": d["enc_dim"],
            "attention_heads": d["enc_heads"],
            "linear_units": d["enc_units"],
            "num_blocks": d["enc_blocks"],
            "tp_blocks": d["enc_tp_blocks"],
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "freeze": True,
        },
        "llm": "Qwen3-0.6b",
        "llm_conf": {
            "hub": "hf",
            "freeze": True,
            "llm_dtype": "bf16",
            "init_param_path": LLM_SUBDIR,
            "use_lora": False,
        },
        "audio_adaptor": "Transformer",
        "audio_adaptor_conf": {
            "downsample_rate": 1,
            "use_low_frame_rate": True,
            "ffn_dim": d["adaptor_ffn"],
            "llm_dim": d["llm_hidden"],
            "encoder_dim": d["enc_dim"],
            "n_layer": d["adaptor_layers"],
            "attention_heads": d["adaptor_heads"],
            "freeze": True,
        },
        "ctc_decoder": "Transformer",
        "detach_ctc_decoder": True,
        "ctc_decoder_conf": {
            "downsample_rate": 1,
            "ffn_dim": d["ctc_ffn"],
            "llm_dim": d["enc_dim"],
            "encoder_dim": d["enc_dim"],
            "n_layer": d["ctc_layers"],
            "attention_heads": d["ctc_heads"],
            "freeze": True,
        },
        "ctc_weight": 0.3,
        "ctc_vocab_size": ctc_vocab_size,
        "ctc_conf": {
            "dropout_rate": 0.0,
            "ctc_type": "builtin",
            "reduce": True,
            "ignore_nan_grad": True,
        },
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": 80,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": 7,
            "lfr_n": 6,
            "cmvn_file": None,
        },
        "tokenizer": "HuggingfaceTokenizer",
        "tokenizer_conf": {"init_param_path": LLM_SUBDIR},
        "dataset_conf": {
            "ctc_tokenizer": "SenseVoiceTokenizer",
            "ctc_tokenizer_conf": {
                "vocab_path": None,
                "is_multilingual": True,
                "num_languages": 8749,
            },
        },
    }


def release_config(*, real_shapes: bool = False) -> dict[str, Any]:
    """config.yaml with exactly the key set of the released Fun-ASR-Nano-2512 (sizes shrunk
    unless real_shapes).

    Where `model_config` spells out only what inference reads, this is the file as it ships:
    `tokenizer_conf.init_param_path` is the interpolation `${llm_conf.init_param_path}`,
    `llm_conf` carries `use_lora: false` and a `lora_conf`, the training, optimiser and
    dataset sections are present, the adaptor and CTC decoder have no `attention_heads` (their
    default, 8, applies) and there is no `ctc_vocab_size` (FunASRNano's default, 60515).
    Reconstructed from FunASR 1.4.16's FunASRNano (the keys it reads) and published copies of
    the checkpoint's config.yaml; docs/models.md lists the sources.
    """
    d = _dims(real_shapes)
    return {
        "model": "FunASRNano",
        "model_conf": {"lsm_weight": 0.1, "length_normalized_loss": True},
        "audio_encoder": "SenseVoiceEncoderSmall",
        "audio_encoder_conf": {
            "output_size": d["enc_dim"],
            "attention_heads": d["enc_heads"],
            "linear_units": d["enc_units"],
            "num_blocks": d["enc_blocks"],
            "tp_blocks": d["enc_tp_blocks"],
            "dropout_rate": 0.1,
            "positional_dropout_rate": 0.1,
            "attention_dropout_rate": 0.1,
            "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True,
            "kernel_size": 11,
            "sanm_shfit": 0,
            "selfattention_layer_type": "sanm",
            "feat_permute": True,
            "freeze": True,
            "freeze_layer_num": -1,
        },
        "llm": "Qwen3-0.6b",
        "llm_conf": {
            "hub": "hf",
            "freeze": True,
            "llm_dtype": "bf16",
            "init_param_path": LLM_SUBDIR,
            "use_lora": False,
            "lora_conf": {
                "freeze_lora": True,
                "task_type": "CAUSAL_LM",
                "r": 16,
                "lora_alpha": 32,
                "lora_dropout": 0.05,
                "bias": "none",
                "target_modules": ["q_proj", "v_proj"],
                "init_param_path": "",
            },
        },
        "audio_adaptor": "Transformer",
        "audio_adaptor_conf": {
            "downsample_rate": 1,
            "use_low_frame_rate": True,
            "ffn_dim": d["adaptor_ffn"],
            "llm_dim": d["llm_hidden"],
            "encoder_dim": d["enc_dim"],
            "n_layer": d["adaptor_layers"],
            "freeze": True,
        },
        "ctc_decoder": "Transformer",
        "detach_ctc_decoder": True,
        "ctc_decoder_conf": {
            "downsample_rate": 1,
            "ffn_dim": d["ctc_ffn"],
            "llm_dim": d["enc_dim"],
            "encoder_dim": d["enc_dim"],
            "n_layer": d["ctc_layers"],
            "freeze": False,
        },
        "ctc_weight": 1.0,
        "ctc_conf": {"dropout_rate": 0.0, "ctc_type": "builtin", "reduce": True, "ignore_nan_grad": True},
        "frontend": "WavFrontend",
        "frontend_conf": {
            "fs": 16000,
            "window": "hamming",
            "n_mels": 80,
            "frame_length": 25,
            "frame_shift": 10,
            "lfr_m": 7,
            "lfr_n": 6,
            "cmvn_file": None,
        },
        "train_conf": {
            "use_lora": "${llm_conf.use_lora}",
            "accum_grad": 1,
            "grad_clip": 5,
            "max_epoch": 2,
            "keep_nbest_models": 200,
            "log_interval": 100,
            "effective_save_name_excludes": ["llm."],
            "resume": True,
            "validate_interval": 2000,
            "save_checkpoint_interval": 2000,
            "avg_nbest_model": 100,
            "use_bf16": False,
            "use_deepspeed": True,
            "deepspeed_config": None,
            "save_init_model": False,
        },
        "optim": "adamw",
        "optim_conf": {"lr": 5.0e-06, "weight_decay": 0.0},
        "scheduler": "warmuplr",
        "scheduler_conf": {"warmup_steps": 2500},
        "dataset": "FunASR",
        "dataset_conf": {
            "index_ds": "FunASR",
            "batch_sampler": "BatchSampler",
            "batch_type": "token",
            "batch_size": 6000,
            "max_token_length": 3500,
            "shuffle": True,
            "sort_size": 1024,
            "batch_size_scale_ratio_max": 2,
            "num_workers": 4,
            "audio_adaptor_downsample_rate": "${audio_adaptor_conf.downsample_rate}",
            "audio_encoder_downsample_rate": 6,
            "data_split_num": 256,
            "batch_size_sample_max": 10,
            "retry": 2000,
            "batch_size_token_max": 6000,
            "max_source_length": 12000,
            "max_target_length": 2048,
            "prompt_classes": "MultiContextPrompt",
            "prompt_conf": {
                "max_neg_hotwords_num": 0,
                "min_neg_hotwords_num": 0,
                "use_hist": False,
                "use_one_pass_result": True,
                "use_hotwords": True,
                "use_asr_hotwords": True,
                "chinese_hotwords_list": None,
                "english_hotwords_list": None,
            },
            "ctc_tokenizer": "SenseVoiceTokenizer",
            "ctc_target_normalize": True,
            "ctc_tokenizer_conf": {"vocab_path": None, "is_multilingual": True, "num_languages": 8749},
            "min_source_length": 10,
            "batch_size_scale_threshold": 3000,
            "use_dynamic_output_ratio": 0.0,
        },
        "tokenizer": "HuggingfaceTokenizer",
        "tokenizer_conf": {"init_param_path": "${llm_conf.init_param_path}"},
        "enable_tf32": True,
        "debug": False,
        "train_data_set_list": None,
        "valid_data_set_list": None,
        "init_param": None,
        "output_dir": None,
    }


def qwen3_config(*, real_shapes: bool, vocab_size: int, special_ids: dict[str, int]):
    """The transformers Qwen3Config of the decoder (Qwen3-0.6B's when real_shapes)."""
    from transformers import Qwen3Config

    d = _dims(real_shapes)
    return Qwen3Config(
        vocab_size=d["llm_vocab"] or vocab_size,
        hidden_size=d["llm_hidden"],
        intermediate_size=d["llm_ffn"],
        num_hidden_layers=d["llm_layers"],
        num_attention_heads=d["llm_heads"],
        num_key_value_heads=d["llm_kv_heads"],
        head_dim=d["llm_head_dim"],
        max_position_embeddings=d["max_positions"],
        max_window_layers=d["llm_layers"],
        rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attention_bias=False,
        use_sliding_window=False,
        hidden_act="silu",
        bos_token_id=special_ids["<|endoftext|>"],
        eos_token_id=special_ids["<|im_end|>"],
        pad_token_id=special_ids["<|endoftext|>"],
        architectures=["Qwen3ForCausalLM"],
        torch_dtype="bfloat16" if real_shapes else "float32",
    )


# --------------------------------------------------------------------------- tokenizers

# Text the tiny byte-level BPE is trained on: FunASRNano's prompt pieces, language names
# and common Chinese characters, so that prompts tokenize into a plausible number of ids.
_PROMPT_TEXT = (
    "You are a helpful assistant.\n"
    "请结合上下文信息，更加准确地完成语音转写任务。如果没有相关信息，我们会留空。\n\n\n"
    "**上下文信息：**\n\n\n热词列表：[阿里巴巴, 达摩院, 通义实验室]\n"
    "语音转写：语音转写成中文：语音转写成英文：语音转写成日文：语音转写成粤语：，不进行文本规整"
    "欢迎大家来体验达摩院推出的语音识别模型。我想问我在滨海新区有房。"
    "今天天气很好，我们去公园散步吧。请把会议安排在下午三点。阿里巴巴达摩院推出了新的语音识别模型。"
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学"
    "对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面"
    "公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部"
    "正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关"
    "并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安"
    "表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共"
    "风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管"
    "Hello world, this is a speech recognition test. The quick brown fox jumps over the lazy dog. "
    "0123456789 %.,!?;:'\"()[]-"
)


def _build_qwen_tokenizer(out_dir: Path) -> dict[str, int]:
    """Train a small byte-level BPE offline and save it the way Qwen3's tokenizer is saved."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        min_frequency=1,
        special_tokens=_QWEN_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_PROMPT_TEXT] * 4, trainer=trainer)
    tok.add_tokens(_QWEN_ADDED)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out_dir))
    return {t: tok.token_to_id(t) for t in _QWEN_SPECIAL + _QWEN_ADDED}


def _write_ctc_vocab(path: Path) -> None:
    """A small tiktoken vocabulary in SenseVoice's file format: the 256 bytes, then the
    common Chinese characters of the training text as single tokens (as in the real one)."""
    ranks: list[bytes] = [bytes([b]) for b in range(256)]
    seen = set(ranks)
    chars = sorted({c for c in _PROMPT_TEXT if ord(c) > 0x2E80})
    for prefix_len in (2, 3):  # BPE needs every prefix merge: b1b2, then b1b2b3
        for c in chars:
            piece = c.encode("utf-8")[:prefix_len]
            if len(piece) == prefix_len and piece not in seen:
                seen.add(piece)
                ranks.append(piece)
    lines = [f"{base64.b64encode(tok).decode()} {rank}" for rank, tok in enumerate(ranks)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _ctc_vocab_size(vocab_path: Path, conf: dict[str, Any]) -> int:
    """Vocabulary size of FunASR's SenseVoiceTokenizer over vocab_path (specials included)."""
    import funasr.tokenizer.whisper_tokenizer  # noqa: F401  (registers SenseVoiceTokenizer)
    from funasr.register import tables

    cls = tables.tokenizer_classes.get("SenseVoiceTokenizer")
    tok = cls(**{**conf, "vocab_path": str(vocab_path)})
    return int(tok.encoding.n_vocab)


# --------------------------------------------------------------------------- building


def write_model_config(out_dir: Path, *, real_shapes: bool = False, release: bool = False) -> Path:
    """Write everything of a model directory except model.pt (configs and tokenizers).

    Cheap at any size: used by `build_tiny_model` and to inspect real shapes without weights.
    release: config.yaml and configuration.json as the released checkpoint writes them
    (`release_config`) instead of the compact `model_config`.
    """
    import yaml

    out_dir = Path(out_dir)
    llm_dir = out_dir / LLM_SUBDIR
    llm_dir.mkdir(parents=True, exist_ok=True)

    special_ids = _build_qwen_tokenizer(llm_dir)
    from transformers import AutoTokenizer, GenerationConfig

    vocab = len(AutoTokenizer.from_pretrained(str(llm_dir)))
    qcfg = qwen3_config(real_shapes=real_shapes, vocab_size=-(-vocab // 64) * 64, special_ids=special_ids)
    qcfg.save_pretrained(str(llm_dir))
    GenerationConfig(
        bos_token_id=qcfg.bos_token_id,
        eos_token_id=[qcfg.eos_token_id, qcfg.bos_token_id],
        pad_token_id=qcfg.pad_token_id,
        do_sample=False,
    ).save_pretrained(str(llm_dir))

    _write_ctc_vocab(out_dir / CTC_VOCAB_FILE)
    base = model_config(real_shapes=real_shapes)
    ctc_conf = base["dataset_conf"]["ctc_tokenizer_conf"]
    ctc_vocab = _ctc_vocab_size(out_dir / CTC_VOCAB_FILE, ctc_conf)
    if release:
        cfg = release_config(real_shapes=real_shapes)
        # As in the release: only the weights and the config are named, so the LLM and
        # tokenizer paths stay relative (the loader anchors them in the directory).
        metas: dict[str, Any] = {"init_param": "model.pt", "config": "config.yaml"}
    else:
        cfg = model_config(real_shapes=real_shapes, ctc_vocab_size=ctc_vocab)
        metas = {
            "init_param": "model.pt",
            "config": "config.yaml",
            "tokenizer_conf": {"init_param_path": LLM_SUBDIR},
            "llm_conf": {"init_param_path": LLM_SUBDIR},
        }
    with open(out_dir / "config.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, allow_unicode=True, sort_keys=False)

    (out_dir / "configuration.json").write_text(
        json.dumps(
            {
                "framework": "pytorch",
                "task": "auto-speech-recognition",
                "model": {"type": "funasr"},
                "pipeline": {"type": "funasr-pipeline"},
                "file_path_metas": metas,
                "generated_by": "asr_worker tiny-model (random weights)",
                "real_shapes": real_shapes,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return out_dir


def _instantiate(model_dir: Path, *, meta: bool = False):
    """Construct FunASRNano from a directory's configs via FunASR's registry (no weights)."""
    import funasr.models.fun_asr_nano.model  # noqa: F401  (registers FunASRNano)
    import torch
    from funasr.register import tables

    kwargs = build_funasr_kwargs(model_dir)
    # Mirror AutoModel.build_model: the frontend decides the encoder's input size, the
    # tokenizer arguments come from config.yaml.
    frontend_cls = tables.frontend_classes.get(kwargs["frontend"])
    frontend = frontend_cls(**kwargs.get("frontend_conf", {}))
    kwargs["input_size"] = frontend.output_size()
    model_cls = tables.model_classes.get(kwargs["model"])
    if meta:
        with torch.device("meta"):
            return model_cls(**kwargs)
    return model_cls(**kwargs)


def count_parameters(model_dir: Path) -> dict[str, int]:
    """Parameters per component of the model a directory describes, on torch's meta device.

    Allocates nothing, so it works for real shapes without 4 GB of memory or a model.pt.
    """
    model = _instantiate(model_dir, meta=True)
    counts: dict[str, int] = {}
    for name in ("audio_encoder", "audio_adaptor", "llm", "ctc_decoder", "ctc"):
        mod = getattr(model, name, None)
        counts[name] = sum(p.numel() for p in mod.parameters()) if mod is not None else 0
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def build_tiny_model(
    out_dir: Path,
    *,
    real_shapes: bool = False,
    seed: int = 0,
    release: bool = False,
    ctc_weights: bool = True,
) -> Path:
    """Write a complete random-weight Fun-ASR-Nano model directory offline; return its path.

    Tiny dims (about 0.4 M parameters, a few MB, seconds on a CPU) unless real_shapes, which
    keeps Fun-ASR-Nano-2512's architecture (SenseVoice-small encoder 50+20 layers of width
    512, 2-layer adaptor, Qwen3-0.6B decoder; ~2 GB written in bf16, a minute or two on CPU).
    release: the released checkpoint's file formats — config.yaml with its exact key set
    (`release_config`) and model.pt wrapped as `{"state_dict": ...}`. ctc_weights=False
    leaves the CTC branch's tensors out of model.pt while config.yaml still describes the
    branch, as in the Hugging Face release. The directory loads through
    `asr_worker.models.loader.load_engine` like a real one.
    """
    import torch

    out_dir = Path(out_dir)
    if (out_dir / "model.pt").exists():
        raise ModelLoadError(f"{out_dir} already holds a model.pt; choose an empty directory")
    write_model_config(out_dir, real_shapes=real_shapes, release=release)

    torch.manual_seed(seed)
    model = _instantiate(out_dir)
    if real_shapes:
        model = model.to(torch.bfloat16)
    else:
        # Random init leaves LayerNorms at identity and biases at zero; perturb every
        # tensor slightly so that all weights matter (and outputs depend on the input).
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)
    state = {
        k: v.detach().contiguous()
        for k, v in model.state_dict().items()
        if ctc_weights or not k.startswith(("ctc_decoder.", "ctc."))
    }
    tmp = out_dir / "model.pt.partial"
    torch.save({"state_dict": state} if release else state, tmp)
    os.replace(tmp, out_dir / "model.pt")
    log.info("wrote random-weight Fun-ASR-Nano (%s) to %s", "real shapes" if real_shapes else "tiny", out_dir)
    return out_dir


# --------------------------------------------------------------------------- CLI wiring


def add_tiny_model_args(parser: argparse.ArgumentParser) -> None:
    """Arguments of `python -m asr_worker tiny-model`."""
    parser.add_argument("out_dir", type=Path, help="directory to write (created; must not hold a model.pt)")
    parser.add_argument(
        "--real-shapes",
        action="store_true",
        help="real Fun-ASR-Nano-2512 dimensions (~0.98 B params, ~2 GB) for GPU benchmarks",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    parser.add_argument(
        "--release-layout",
        action="store_true",
        help="config.yaml with the released checkpoint's exact key set, model.pt as {'state_dict': ...}",
    )
    parser.add_argument(
        "--no-ctc-weights",
        action="store_true",
        help="leave the CTC (timestamp) tensors out of model.pt, as the Hugging Face release does",
    )


def tiny_model_from_args(args: argparse.Namespace) -> Path:
    """Run `tiny-model` from parsed arguments; returns the written directory."""
    return build_tiny_model(
        args.out_dir,
        real_shapes=args.real_shapes,
        seed=args.seed,
        release=args.release_layout,
        ctc_weights=not args.no_ctc_weights,
    )
