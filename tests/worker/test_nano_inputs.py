"""Fun-ASR-Nano request inputs from the caches equal FunASR's own data_load_speech, bit for bit.

The engine computes fbank frames once per open segment and prompt ids once per prompt
(engine/nano_inputs.py). Everything here compares against FunASR's own data pipeline run over
the whole request (`engine.input_cache = False`, i.e. generate_chatml + data_template +
data_load_speech), on the tiny model's real frontend settings (kaldi fbank, LFR 7/6).
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from asr_worker.engine.base import MODEL_SAMPLE_RATE, DecodeOptions, DecodeRequest, SegmentRef
from asr_worker.engine.funasr_nano import FunAsrNanoEngine, Prepared
from asr_worker.engine.nano_inputs import PromptTokens, SegmentFeatures
from asr_worker.engine_core import Admission, EngineCore
from asr_worker.models.loader import load_engine
from asr_worker.scheduler import Scheduler

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, no_network) -> FunAsrNanoEngine:
    return load_engine(tiny_model_dir, "cpu")


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * MODEL_SAMPLE_RATE)) / MODEL_SAMPLE_RATE
    voiced = 0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    return (voiced + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def _reference(engine: FunAsrNanoEngine, req: DecodeRequest) -> Prepared:
    engine.input_cache = False
    try:
        return engine.prepare(DecodeRequest(req.audio, req.options, req.kind, req.prefix))
    finally:
        engine.input_cache = True


def _assert_same(got: Prepared, want: Prepared) -> None:
    assert got.source_ids == want.source_ids
    assert got.fbank_beg == want.fbank_beg
    assert (got.fake_token_len, got.budget) == (want.fake_token_len, want.budget)
    assert got.fbank.dtype == want.fbank.dtype == torch.float32
    assert got.fbank.shape == want.fbank.shape
    assert torch.equal(got.fbank, want.fbank), "cached features differ from data_load_speech's"


def test_growing_segment_in_uneven_appends_gives_bit_identical_features(engine: FunAsrNanoEngine):
    audio = _speech(7.3, seed=1)
    # Request ends not on the 160-sample frame grid, steps of 1 frame, of less than a frame,
    # and of several seconds; the same end twice.
    ends = [1601, 1763, 1923, 1924, 2087, 9_999, 9_999, 16_000, 25_601, 48_123, 96_000, 116_800]
    key = SegmentRef(stream="s-uneven", segment=3)
    for end in ends:
        req = DecodeRequest(audio[:end], DecodeOptions(), "partial", segment=key)
        _assert_same(engine.prepare(req), _reference(engine, req))
    assert engine.features.held_frames == 1 + (116_800 - 400) // 160
    final = DecodeRequest(audio, DecodeOptions(), "final", segment=key)
    _assert_same(engine.prepare(final), _reference(engine, final))
    assert engine.features.held_frames == 0, "the final frees its segment's frames"


@pytest.mark.parametrize("seconds", [0.1, 0.137, 1.0, 2.71, 6.0, 12.0])
def test_lengths_not_multiple_of_a_frame_match_after_any_earlier_request(engine: FunAsrNanoEngine, seconds):
    audio = _speech(12.5, seed=2)
    n = int(seconds * MODEL_SAMPLE_RATE) + 37
    key = SegmentRef(stream=("front", f"s-{seconds}"), segment=0)
    engine.prepare(DecodeRequest(audio[: n // 2 + 1], DecodeOptions(), "partial", segment=key))
    req = DecodeRequest(audio[:n], DecodeOptions(), "final", segment=key)
    _assert_same(engine.prepare(req), _reference(engine, req))


def test_shorter_request_after_a_longer_one_reuses_the_cached_frames(engine: FunAsrNanoEngine):
    audio = _speech(3.0, seed=3)
    key = SegmentRef(stream="s-shorter", segment=0)
    engine.prepare(DecodeRequest(audio, DecodeOptions(), "partial", segment=key))
    held = engine.features.held_frames
    req = DecodeRequest(audio[:20_011], DecodeOptions(), "partial", segment=key)
    _assert_same(engine.prepare(req), _reference(engine, req))
    assert engine.features.held_frames == held
    engine.forget_stream("s-shorter")
    assert engine.features.held_frames == 0


def test_prompt_ids_match_for_every_option_and_prefix(engine: FunAsrNanoEngine):
    audio = _speech(2.0, seed=4)
    options = [
        DecodeOptions(),
        DecodeOptions(hotwords=("阿里巴巴", "达摩院"), language="zh"),
        DecodeOptions(language="en", itn=False),
        DecodeOptions(hotwords=("通义",), language="ja"),
    ]
    for opts in options:
        for prefix in ("", "abc", " 空格 开头", "abc"):
            req = DecodeRequest(audio, opts, "partial", prefix=prefix)
            _assert_same(engine.prepare(req), _reference(engine, req))


@pytest.mark.parametrize(
    "data_kwargs",
    [
        {"dataset_conf": {"do_think": False}},
        {"dataset_conf": {"sys_prompt": False}},
        {"infer_with_assistant_input": True},
        {"infer_with_assistant_input": True, "dataset_conf": {"sys_prompt": False, "do_think": False}},
    ],
)
def test_prompt_tokens_follow_data_load_speech_settings(engine: FunAsrNanoEngine, data_kwargs):
    tokens = PromptTokens(engine.model, engine.tokenizer, data_kwargs)
    prompt = engine.prompt(DecodeOptions(hotwords=("热词",), language="zh"))
    for prefix in ("", "前缀 text"):
        chat = engine.model.generate_chatml(prompt, torch.from_numpy(_speech(1.0)))
        kwargs = dict(data_kwargs, prev_text=prefix) if prefix else data_kwargs
        out = engine.model.data_load_speech(
            engine.model.data_template(chat), engine.tokenizer, engine.frontend, meta_data={}, **kwargs
        )
        want = out["source_ids"][0].tolist()
        beg, n = int(out["fbank_beg"][0, 0]), int(out["fake_token_len"][0, 0])
        before, after = tokens.ids(prompt, prefix)
        assert before + [0] * n + after == want
        assert len(before) == beg


def test_windows_on_the_frame_grid_reuse_and_extend_the_segments_frames(engine: FunAsrNanoEngine):
    audio = _speech(6.0, seed=10)
    key = SegmentRef("s-grid", 0)
    engine.prepare(DecodeRequest(audio[:30_001], DecodeOptions(), "partial", segment=key))
    for start, end in ((160 * 50, 50_017), (160 * 120, 70_000), (160 * 187, audio.size)):
        ref = SegmentRef("s-grid", 0, start)
        req = DecodeRequest(audio[start:end], DecodeOptions(), "partial", segment=ref)
        _assert_same(engine.prepare(req), _reference(engine, req))
        assert engine.features.held_frames == 1 + (end - 400) // 160, "the window extended the frames"
    final = DecodeRequest(audio, DecodeOptions(), "final", segment=key)
    _assert_same(engine.prepare(final), _reference(engine, final))
    assert engine.features.held_frames == 0


def test_off_grid_windows_gaps_and_unnamed_requests_are_computed_afresh(engine: FunAsrNanoEngine):
    audio = _speech(4.0, seed=5)
    windowed = DecodeRequest(
        audio[8_123:], DecodeOptions(), "partial", segment=SegmentRef("s-window", 0, offset=8_123)
    )
    _assert_same(engine.prepare(windowed), _reference(engine, windowed))
    gap = DecodeRequest(
        audio[16_000:], DecodeOptions(), "partial", segment=SegmentRef("s-window", 0, 16_000)
    )
    _assert_same(engine.prepare(gap), _reference(engine, gap))  # no frames before the window
    plain = DecodeRequest(audio, DecodeOptions(), "final")
    _assert_same(engine.prepare(plain), _reference(engine, plain))
    tiny = DecodeRequest(audio[:700], DecodeOptions(), "partial", segment=SegmentRef("s-window", 1))
    _assert_same(engine.prepare(tiny), _reference(engine, tiny))
    assert len(engine.features) == 0


def test_an_empty_final_frees_its_segments_frames(engine: FunAsrNanoEngine):
    audio = _speech(1.0, seed=12)
    key = SegmentRef("s-empty-final", 0)
    engine.prepare(DecodeRequest(audio, DecodeOptions(), "partial", segment=key))
    assert len(engine.features) == 1
    (result,) = engine.decode_batch([DecodeRequest(audio[:0], DecodeOptions(), "final", segment=key)])
    assert result.text == "" and len(engine.features) == 0


def test_cache_is_bounded_least_recently_used_first(engine: FunAsrNanoEngine):
    cache = SegmentFeatures(engine.frontend, max_frames=250)  # 2.5 s of audio
    audio = _speech(2.0, seed=6)
    frames = 1 + (audio.size - 400) // 160
    cache.features(audio, ("a", 0))
    cache.features(audio, ("b", 0))  # 2 x 198 frames > 250: "a" goes
    assert len(cache) == 1 and cache.held_frames == frames
    want = cache.features(audio, None)
    assert torch.equal(cache.features(audio, ("b", 0)), want)
    cache.features(_speech(3.0, seed=7), ("c", 0))  # alone over the bound: not kept
    assert len(cache) == 0 and cache.held_frames == 0


def test_forget_notices_from_another_thread_free_frames_before_the_next_request(engine: FunAsrNanoEngine):
    cache = SegmentFeatures(engine.frontend, max_frames=100_000)
    audio = _speech(1.0, seed=8)
    for key in (("s1", 0), ("s1", 1), ("s2", 0)):
        cache.features(audio, key)
    notices = [threading.Thread(target=cache.forget_stream, args=("s1",)),
               threading.Thread(target=cache.forget_segment, args=("s2", 0))]
    for t in notices:
        t.start()
    for t in notices:
        t.join()
    assert len(cache) == 0 and cache.held_frames == 0


async def test_engine_core_requests_reuse_frames_and_finals_equal_uncached_decodes(engine: FunAsrNanoEngine):
    """Through EngineCore + Scheduler: uneven appends, partials, a final; the final's text and
    ids equal a decode without any cache, and the segment's frames are gone afterwards."""
    audio = _speech(3.1, seed=9)
    sched = Scheduler(engine, max_batch_size=4, batch_window_ms=1)
    core = EngineCore(sched, Admission(4), engine.name)
    await sched.start()
    try:
        stream, pos = ("front-0", 7), 0
        for chunk in (5_003, 7_777, 12_345, audio.size):
            core.append(stream, 0, pos, audio[pos:chunk])
            pos = chunk
            partial = await core.submit(stream, 0, 0, pos, {"options": DecodeOptions(), "kind": "partial"},
                                        last=False).future
            assert isinstance(partial.text, str)
        assert engine.features.held_frames == 1 + (audio.size - 400) // 160
        final = await core.submit(stream, 0, 0, audio.size, {"options": DecodeOptions(), "kind": "final"},
                                  last=True).future
        assert engine.features.held_frames == 0, "the final frees its segment's frames"
        core.append(stream, 1, pos, audio[:16_000])
        await core.submit(stream, 1, pos, pos + 9_000, {"options": DecodeOptions(), "kind": "partial"},
                          last=False).future
        # A window off the frame grid: EngineCore moves its start back onto it, so it reuses
        # and extends the segment's frames.
        await core.submit(stream, 1, pos + 4_321, pos + 16_000,
                          {"options": DecodeOptions(), "kind": "partial"}, last=False).future
        assert len(engine.features) == 1
        assert engine.features.held_frames == 1 + (16_000 - 400) // 160
        core.close_stream(stream)
        assert len(engine.features) == 0, "closing the stream frees its segments"
    finally:
        await sched.stop()
    engine.input_cache = False
    try:
        want = engine.decode_batch([DecodeRequest(audio, DecodeOptions(), "final")])[0]
    finally:
        engine.input_cache = True
    assert final == want, "a final through the caches decodes exactly as without them"


def test_cache_is_on_for_the_models_fbank_and_off_where_frames_are_not_local(engine: FunAsrNanoEngine):
    assert engine.features.cacheable, "kaldi-native-fbank frames of the real frontend settings are local"
    edgy = copy.copy(engine.frontend)
    edgy.snip_edges = False  # frames near the end are padded by reflection: not local
    cache = SegmentFeatures(edgy, max_frames=100_000)
    assert not cache._frames_are_local()
    assert not cache.cacheable
    audio = _speech(1.3, seed=11)
    cache.features(audio, ("s", 0))
    assert len(cache) == 0
