"""Where a stream's time goes: seconds per phase of the loop, summed over the run with
``perf_counter`` (a few calls per batch, not per record). ``run_stream``'s summary carries them as
``phases_s``; the stream benchmark prints them with their share of the timed window.
"""

from __future__ import annotations

from time import perf_counter

# In loop order. poll: the client's consume, records made; decode: values → rows; frame: rows →
# the model's DataFrame; predict: the model; encode: predictions → key/value bytes; produce:
# handing them to the client; flush: waiting for the broker's acknowledgements; commit: the
# offsets' commit.
PHASES = ("poll", "decode", "frame", "predict", "encode", "produce", "flush", "commit")


class Phases:
    """Seconds per phase. ``t = phases.lap("decode", t)`` adds the time since ``t`` to a phase and
    returns now, so consecutive phases are timed with one clock read each."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    def lap(self, phase: str, since: float) -> float:
        now = perf_counter()
        self.seconds[phase] += now - since
        return now

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}


clock = perf_counter
