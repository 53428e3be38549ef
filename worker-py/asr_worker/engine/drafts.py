"""Per open segment, the last hypothesis the engine produced: the draft of the segment's next request.

A segment is decoded again and again while it is open (a partial every ~600 ms of audio, then
its final), and each decode mostly repeats the previous one's answer: the audio only grew.
The engine keeps the token ids of the last answer per (stream, segment) and offers them as
the DRAFT of the segment's next request; the decoder verifies a draft in the request's
prefill and generates only what the draft did not already have (engine/step_decoder.py).
A draft is only a guess: a wrong one costs prefill columns, never a different output.

A draft is offered only to a request over the same audio start (`offset`) as the answer it
comes from (windowed partials of long segments move their start, so an answer of another
window is no guess for them). Besides the newest answer, the newest answer from the
segment's start is kept, so a final after windowed partials is drafted from the last
partial that covered the segment from its start. Only the part after the request's forced
prefix is offered:

- token level: the answer's ids start with the ids the request forces (a partial forcing
  the agreed text that an earlier answer produced): the draft is the ids after them;
- else text level: the answer's text starts with the forced text (the agreed text ends
  inside one of the answer's tokens): the draft is that text's remainder, tokenized;
- else none.

Lifecycle and memory are those of the segment's fbank frames (engine/nano_inputs.py): a
final takes the draft and frees the entry, `forget_segment` / `forget_stream` notices (any
thread) are applied on the batch thread before its next use, and at most `max_segments`
entries are held (least recently used first; a partial that finishes after its segment's
final was prepared leaves one behind until then or until its stream closes).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

#: Default bound on segments with a remembered answer (a few hundred ids each).
DEFAULT_MAX_SEGMENTS = 8192


@dataclass(frozen=True)
class Answer:
    """One decode's answer: the token ids after the assistant tag (forced prefix included)."""

    #: Samples from the segment's start to the decoded audio's start.
    offset: int
    ids: tuple[int, ...]
    text: str


class SegmentAnswers:
    """The last answer per open (stream, segment), and the draft it gives the next request.

    Args:
        max_segments: most segments remembered at once.
    """

    def __init__(self, *, max_segments: int = DEFAULT_MAX_SEGMENTS) -> None:
        self.max_segments = max(0, int(max_segments))
        # Per segment: the newest answer, and the newest one from the segment's start when
        # the newest is a window's.
        self._entries: collections.OrderedDict[tuple[Hashable, int], tuple[Answer, Answer | None]] = (
            collections.OrderedDict()
        )
        # (stream, segment or None) notices from any thread; deque appends/pops are atomic.
        self._forget: collections.deque[tuple[Hashable, int | None]] = collections.deque()

    # ------------------------------------------------------------------ any thread

    def forget_segment(self, stream: Hashable, segment: int) -> None:
        """The segment is gone; its answer is dropped before the next use (any thread)."""
        self._forget.append((stream, segment))

    def forget_stream(self, stream: Hashable) -> None:
        """The stream is gone; the answers of all its segments are dropped (any thread)."""
        self._forget.append((stream, None))

    # ------------------------------------------------------------------ batch thread

    def __len__(self) -> int:
        self._apply_forgets()
        return len(self._entries)

    def remember(self, key: tuple[Hashable, int], answer: Answer) -> None:
        """`answer` is the segment's newest."""
        self._apply_forgets()
        if self.max_segments == 0:
            return
        previous = self._entries.get(key)
        start = None
        if answer.offset != 0 and previous is not None:
            start = previous[0] if previous[0].offset == 0 else previous[1]
        self._entries[key] = (answer, start)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_segments:
            self._entries.popitem(last=False)

    def drop(self, key: tuple[Hashable, int]) -> None:
        """Forget the segment's answer now (after its final took its draft)."""
        self._apply_forgets()
        self._entries.pop(key, None)

    def draft(
        self,
        key: tuple[Hashable, int],
        offset: int,
        forced_ids: Sequence[int],
        forced_text: str,
        encode: Callable[[str], list[int]],
    ) -> list[int]:
        """Token ids the request over `offset` probably generates after its forced prefix
        (`forced_ids`, spelled `forced_text`), from the segment's last answer; [] if none."""
        self._apply_forgets()
        entry = self._entries.get(key)
        last = None
        if entry is not None:
            last = next((a for a in entry if a is not None and a.offset == offset), None)
        if last is None:
            return []
        self._entries.move_to_end(key)
        n = len(forced_ids)
        if tuple(forced_ids) == last.ids[:n]:
            return list(last.ids[n:])
        if last.text.startswith(forced_text) and len(last.text) > len(forced_text):
            return [int(i) for i in encode(last.text[len(forced_text) :])]
        return []

    def _apply_forgets(self) -> None:
        while self._forget:
            stream, segment = self._forget.popleft()
            if segment is not None:
                self._entries.pop((stream, segment), None)
            else:
                for key in [k for k in self._entries if k[0] == stream]:
                    del self._entries[key]
