"""Turning a model's decoded output into the reply: a prefix stripped, cut at the first stop string.

Works on a stream of text deltas without ever emitting part of a stop string: a tail that could begin
one is held back until the next delta shows whether it does.
"""

from __future__ import annotations

from collections.abc import Sequence


class ReplyFilter:
    """Text deltas in, reply deltas out; `text` is the reply so far and `stopped` says a stop string met."""

    def __init__(self, stop: Sequence[str], strip_prefix: str = "") -> None:
        self._stop = [s for s in stop if s]
        self._prefix = strip_prefix
        self._started = not strip_prefix
        self._held = ""
        self.stopped = False
        self.text = ""

    def feed(self, delta: str) -> str:
        """Return the part of the output so far that can be emitted now."""
        if self.stopped:
            return ""
        text = self._held + delta
        if not self._started:
            if len(text) < len(self._prefix) and self._prefix.startswith(text):
                self._held = text
                return ""
            self._started = True
            text = text.removeprefix(self._prefix)
        cut = min((i for i in (text.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return self._emit(text[:cut])
        keep = max((_overlap(text, s) for s in self._stop), default=0)
        self._held = text[len(text) - keep :]
        return self._emit(text[: len(text) - keep])

    def flush(self) -> str:
        """Return the held-back text at the end of an output that met no stop string."""
        held, self._held = self._held, ""
        if self.stopped or (not self._started and self._prefix.startswith(held)):
            return ""
        return self._emit(held)

    def cut(self, output: str) -> str:
        """Return the reply in a whole output (for a fresh filter)."""
        return self.feed(output) + self.flush()

    def _emit(self, text: str) -> str:
        self.text += text
        return text


def _overlap(text: str, stop: str) -> int:
    """Return the length of the longest end of `text` that is a proper start of `stop`."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0
