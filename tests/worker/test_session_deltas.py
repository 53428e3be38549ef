"""Stable partial deltas (LocalAgreement-2) and config validation."""

from __future__ import annotations

import pytest

from asr.v1 import asr_pb2
from asr_worker.errors import InvalidConfig
from asr_worker.session import SessionOptions, agreed_delta, align_tail, validate_config

pytestmark = pytest.mark.timeout(10)


def test_agreed_delta_emits_the_new_common_prefix_only():
    assert agreed_delta("", "今天天", "今天天气") == "今天天"
    assert agreed_delta("今天天", "今天天气", "今天天气很") == "气"
    assert agreed_delta("今天天气", "今天天气很", "今天天汽很好") == ""  # contradicts emitted text
    assert agreed_delta("今天", "今天天", "今天") == ""


def test_deltas_never_revise_over_a_hypothesis_sequence():
    hyps = ["今", "今天", "今天填", "今天天气", "今天天气很", "今天天气很好"]
    emitted, prev = "", None
    for h in hyps:
        if prev is not None:
            emitted += agreed_delta(emitted, prev, h)
        prev = h
        assert h.startswith(emitted) or not emitted.startswith(h)
    assert emitted == "今天天气很"


def test_align_tail_maps_a_window_hypothesis_onto_the_segment():
    assert align_tail("我们去公园散步", "公园散步吧然后") == "我们去公园散步吧然后"
    assert align_tail("我们去公园散步", "完全不同") is None
    assert align_tail("", "任何") is None


def test_validate_config_defaults_and_mapping():
    s = validate_config(asr_pb2.StreamingConfig(sample_rate_hz=8000, language="zh",
                                                hotwords=[asr_pb2.Hotword(phrase=" 阿里巴巴 ", weight=20),
                                                          asr_pb2.Hotword(phrase="阿里巴巴")]),
                        SessionOptions())
    assert s.mode == asr_pb2.RECOGNITION_MODE_TWO_PASS
    assert s.options.itn is True and s.options.language == "zh"  # the engine maps it
    assert s.options.hotwords == ("阿里巴巴",)
    assert s.partial_interval_ms == 600
    s = validate_config(asr_pb2.StreamingConfig(sample_rate_hz=16000, itn=False, language="auto",
                                                partial_interval_ms=100), SessionOptions())
    assert s.options.itn is False and s.options.language == "auto" and s.partial_interval_ms == 480
    s = validate_config(asr_pb2.StreamingConfig(sample_rate_hz=16000, partial_interval_ms=5000),
                        SessionOptions())
    assert s.partial_interval_ms == 1200
    with pytest.raises(InvalidConfig, match="mode"):
        validate_config(asr_pb2.StreamingConfig(sample_rate_hz=16000, mode=9), SessionOptions())
