"""
What the bench's commands show as they go, and in their C{--help}: a line
per step on stderr (C{[3/9] websockets: fan-out W=20 (about 40 s left)}),
and plain-text descriptions made from the modules' docstrings.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

__all__ = ["Progress", "description", "plain", "span"]

_MARKUP = re.compile(r"\b[BCILU]\{([^{}]*)\}")


def plain(text: str) -> str:
    """Epytext markup (C{C{code}}, C{L{link}}, C{I{italic}}, ...) as its bare text."""
    while True:
        bare = _MARKUP.sub(r"\1", text)
        if bare == text:
            return bare
        text = bare


def description(docstring: str | None, paragraphs: int = 1) -> str:
    """A module docstring's first C{paragraphs}, in plain text, for argparse."""
    kept = (docstring or "").strip().split("\n\n")[:paragraphs]
    return plain("\n\n".join(paragraph.strip("\n") for paragraph in kept))


def span(seconds: float) -> str:
    """A duration, rounded as a person would say it: 40 s, 2 min 30 s, 12 min."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 600:
        minutes, rest = divmod(round(seconds / 10) * 10, 60)
        return f"{minutes} min" + (f" {rest} s" if rest else "")
    return f"{round(seconds / 60)} min"


class Progress:
    """
    C{step(label)} before each step writes C{[i/n] label (about T left)}.

    C{planned} is, for each step in order, (wall, work): the seconds it
    takes whatever the machine (timers: a warm-up, a measurement of fixed
    length) and the seconds of work it should take at the expected pace
    (starting processes, opening connections).  The time left is the steps
    not begun yet, their work scaled by the pace of the work done so far (a
    busy machine, a slow one).
    """

    def __init__(self, planned: Sequence[tuple[float, float]], stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.planned = [(max(0.0, wall), max(0.0, work)) for wall, work in planned]
        self.stream = stream
        self.clock = clock
        self.started = clock()
        self.begun = 0  # steps begun

    def left(self) -> float:
        """Seconds the steps not begun yet should take, from the end of those begun."""
        elapsed = self.clock() - self.started
        wall = sum(wall for wall, _ in self.planned[:self.begun])
        work = sum(work for _, work in self.planned[:self.begun])
        pace = min(5.0, max(0.2, (elapsed - wall) / work)) if work > 0 else 1.0
        return sum(wall + work * pace for wall, work in self.planned[self.begun:])

    def step(self, label: str) -> None:
        """Say that the next step begins (the one before it is over)."""
        left = self.left()
        self.begun += 1
        total = max(len(self.planned), self.begun)
        self.write(f"[{self.begun}/{total}] {label} (about {span(left)} left)")

    def done(self, what: str = "done") -> None:
        self.write(f"{what} in {span(self.clock() - self.started)}")

    def write(self, line: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()
