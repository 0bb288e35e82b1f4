"""The check's time limit, split between its parts in the order they run.

Each part has a cap (the most it may take) and a floor (the least worth starting it with: for an engine
build, the estimate of the build itself). Before a part starts it is allotted
min(cap, what is left - the margin - the floors of the parts still to come that are `kept`), and
skipped with the reason when that is under its floor: a late part is never starved by an earlier one that ran long,
and a part that cannot finish is not started. The allotment is the part's process timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Part:
    name: str
    cap_s: float
    floor_s: float
    # Whether earlier parts leave this part's floor free. An engine build does not: it takes what is
    # left at the end, or is skipped, rather than squeezing the parts before it.
    kept: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.floor_s <= self.cap_s:
            raise ValueError(f"{self.name}: need 0 <= floor ({self.floor_s}) <= cap ({self.cap_s})")


@dataclass(frozen=True)
class Allotment:
    part: str
    seconds: float | None  # None: skipped
    reason: str = ""

    @property
    def skipped(self) -> bool:
        return self.seconds is None


@dataclass
class Budget:
    total_s: float
    margin_s: float = 15.0  # the report, process exits and the summary after the last part
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=-1.0)
    spent: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.total_s <= self.margin_s:
            raise ValueError(f"a budget of {self.total_s} s leaves nothing after the {self.margin_s} s margin")
        if self.started < 0:
            self.started = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def allot(self, part: Part, later: Sequence[Part] = ()) -> Allotment:
        """What `part` may use now, keeping the floors of `later` (the parts that run after it)."""
        reserved = sum(p.floor_s for p in later if p.kept)
        available = self.left() - self.margin_s - reserved
        seconds = min(part.cap_s, available)
        if seconds < part.floor_s or seconds <= 0:
            return Allotment(part.name, None, (
                f"skipped: {max(0.0, self.left()):.0f} s of the {self.total_s:.0f} s budget were left, less the "
                f"{self.margin_s:.0f} s margin and the {reserved:.0f} s kept for the parts after it, which is under "
                f"the {part.floor_s:.0f} s it needs at least"))
        return Allotment(part.name, round(seconds, 1))

    def record(self, part: str, seconds: float) -> None:
        self.spent[part] = round(seconds, 1)
