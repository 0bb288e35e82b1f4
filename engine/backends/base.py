"""The protocol every backend's per-graph runner implements, and the input check they share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from outpaint.core.errors import OutpaintError


class GraphRunner(Protocol):
    """One loaded graph. `run` is safe to call from several threads at once."""

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def check_feeds(
    graph: str,
    declared: Sequence[tuple[str, str, Sequence[int | str | None]]],
    feeds: Mapping[str, np.ndarray],
) -> None:
    """Raise with expected vs actual when a feed's name, dtype or fixed dimension is off.

    `declared` is (name, numpy dtype name, shape with ints for fixed axes) per input.
    """
    names = {name for name, _, _ in declared}
    if set(feeds) != names:
        raise OutpaintError(f"{graph}: inputs {sorted(feeds)} given, the graph takes {sorted(names)}")
    for name, dtype, shape in declared:
        value = feeds[name]
        if value.dtype != np.dtype(dtype):
            raise OutpaintError(f"{graph}.{name}: dtype {value.dtype}, the graph takes {dtype}")
        if value.ndim != len(shape) or any(
            isinstance(d, int) and d != actual for d, actual in zip(shape, value.shape, strict=True)
        ):
            raise OutpaintError(f"{graph}.{name}: shape {value.shape}, the graph takes {tuple(shape)}")
