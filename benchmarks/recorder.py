"""Collects one system's rows and artifacts inside its worker process."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .config import BenchConfig
from .timing import Row, row_from_samples, time_calls


class Recorder:
    def __init__(self, system: str, config: BenchConfig, workdir: Path, out: Path | None = None) -> None:
        self.system = system
        self.out = out  # rewritten after every row: a worker killed later (e.g. out of memory) keeps its rows
        self.config = config
        self.workdir = workdir
        self.rows: list[Row] = []
        self.artifacts: dict[str, str] = {}  # name -> .npy path, compared across systems afterwards
        self.notes: list[str] = []

    def measure(
        self, stage: str, canvas: str, fn: Callable[[], Any], *, runs: int, warmup: int | None = None
    ) -> Any:
        """Time `fn` after warm-up and append its row; returns fn's last result."""
        samples, result = time_calls(fn, self.config.warmup if warmup is None else warmup, runs)
        self.add_samples(stage, canvas, samples)
        return result

    def add_samples(self, stage: str, canvas: str, samples: Sequence[float]) -> None:
        row = row_from_samples(self.system, stage, canvas, samples)
        self.rows.append(row)
        self.flush()
        print(f"  {self.system:24s} {stage:22s} {canvas:9s} median {row.median_s:8.3f} s "
              f"(min {row.min_s:.3f}, max {row.max_s:.3f}, n={row.runs}) peak RSS {row.peak_rss_gb:.2f} GiB",
              flush=True)

    def save(self, name: str, array: np.ndarray) -> None:
        path = self.workdir / f"{self.system}.{name}.npy"
        np.save(path, array)
        self.artifacts[name] = str(path)
        self.flush()

    def to_dict(self, seconds: float | None = None) -> dict:
        return {
            "system": self.system,
            "rows": [row.to_dict() for row in self.rows],
            "artifacts": self.artifacts,
            "notes": self.notes,
            "seconds": seconds,
        }

    def flush(self, seconds: float | None = None) -> None:
        if self.out is not None:
            tmp = self.out.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.to_dict(seconds), indent=1))
            tmp.replace(self.out)
