"""GPU per-stage timing with CUDA events: text encoder, VAE encode, each denoising step, VAE decode.

    python -m outpaint.benchmarks.gpu --model models/sd15 --backend tensorrt --width 512 --height 512

Events are recorded on the stream the backend runs on, so the times are the GPU's, not Python's:
the native TensorRT backend's own stream (true device time per stage); for ONNX Runtime's CUDA and
TensorRT providers, the default stream around each call (ONNX Runtime synchronises its stream before
`run` returns, so the pair brackets the call's device work plus its launch overhead). A denoising step
is the UNet plus the step kernel on the device loop (one event pair per step).

Rows use benchmarks/timing.py's format (system, stage, canvas, median/min/max seconds), so they sit
beside the CPU benchmark's rows in one results.json. Needs an NVIDIA GPU: it cannot run on the
machines this repository's CI uses.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .timing import Row, row_from_samples

STAGES = ("text_encoder", "vae_encode", "denoise_step", "vae_decode", "total")
GRAPH_STAGE = {"text_encoder": "text_encoder", "vae_encoder": "vae_encode", "vae_decoder": "vae_decode",
               "unet": "denoise_step"}


@dataclass
class EventLog:
    """Start/end event pairs per stage, resolved to milliseconds after the run (one sync at the end)."""

    stream: Any
    pairs: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)
    # The event type: cuda-python's by default; gpu_check/clock.py has PyTorch's and the host clock's.
    new_event: Callable[[], Any] | None = None

    @contextmanager
    def stage(self, name: str):
        from outpaint.engine.backends import cuda

        new_event = self.new_event or cuda.Event
        start, end = new_event(), new_event()
        start.record(self.stream)
        try:
            yield
        finally:
            end.record(self.stream)
            self.pairs.setdefault(name, []).append((start, end))

    def seconds(self) -> dict[str, list[float]]:
        out = {name: [end.elapsed_ms(start) / 1000.0 for start, end in pairs] for name, pairs in self.pairs.items()}
        for pairs in self.pairs.values():
            for start, end in pairs:
                start.close()
                end.close()
        self.pairs.clear()
        return out


class TimedGraph:
    """A GraphRunner that records a stage's events around every call of the wrapped runner."""

    def __init__(self, inner, stage: str, log: EventLog) -> None:
        self.inner, self.stage, self.log = inner, stage, log
        self.name, self.input_names, self.output_names = inner.name, inner.input_names, inner.output_names

    def run(self, feeds):
        with self.log.stage(self.stage):
            return self.inner.run(feeds)


class TimedRuntime:
    """A DeviceRuntime whose sessions record one event pair per denoising step."""

    def __init__(self, inner, log: EventLog) -> None:
        self.inner, self.log, self.device = inner, log, inner.device

    def open(self, tensors):
        return _TimedSession(self.inner.open(tensors), self.log)


class _TimedSession:
    def __init__(self, inner, log: EventLog) -> None:
        self.inner, self.log = inner, log

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)

    def step(self, index: int) -> None:
        with self.log.stage("denoise_step"):
            self.inner.step(index)

    def read_latents(self):
        return self.inner.read_latents()


def backend_stream(pipeline) -> Any:
    """The stream the backend's work is ordered on (see the module docstring)."""
    from outpaint.engine.backends import cuda

    backend = getattr(pipeline.graphs["unet"], "backend", None)
    return backend.stream if backend is not None else cuda.Stream(handle=0)


def instrument(pipeline, log: EventLog | None = None) -> EventLog:
    """Wrap `pipeline`'s graphs and device loop (this instance only) to record events per stage in `log`
    (default: CUDA events on the backend's stream)."""
    log = log or EventLog(backend_stream(pipeline))
    for name, stage in GRAPH_STAGE.items():
        pipeline.graphs[name] = TimedGraph(pipeline.graphs[name], stage, log)
    if pipeline.device_runtime is not None:
        pipeline.device_runtime = TimedRuntime(pipeline.device_runtime, log)
    return log


def _source_png(width: int, height: int) -> bytes:
    """A seeded noise picture: the content does not change the work, only the canvas size does."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def benchmark(model: Path, backend: str, width: int, height: int, steps: int, runs: int, warmup: int,
              ) -> list[Row]:
    from outpaint.engine.pipeline import OutpaintPipeline
    from outpaint.engine.request import OutpaintRequest

    pipeline = OutpaintPipeline.load(model, backend)
    log = instrument(pipeline)
    request = OutpaintRequest(prompt="a photograph of a harbour at dusk", img_width=width, img_height=height,
                              num_inference_steps=steps, offset_x=width // 4, offset_y=height // 4, seed=1234)
    source = _source_png(width // 2, height // 2)
    samples: dict[str, list[float]] = {}
    for run in range(warmup + runs):
        with log.stage("total"):
            pipeline(source, request)
        times = log.seconds()
        if run >= warmup:
            for stage, values in times.items():
                samples.setdefault(stage, []).extend(values)
    canvas = f"{width}x{height}"
    system = f"outpaint-{backend}"
    return [row_from_samples(system, stage, "-" if stage == "text_encoder" else canvas, samples[stage])
            for stage in STAGES if stage in samples]


def format_table(rows: list[Row]) -> str:
    lines = [f"{'system':<22} {'stage':<14} {'canvas':<10} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'n':>4}"]
    for r in rows:
        lines.append(f"{r.system:<22} {r.stage:<14} {r.canvas:<10} {r.median_s * 1e3:>10.2f} "
                     f"{r.min_s * 1e3:>9.2f} {r.max_s * 1e3:>9.2f} {r.runs:>4}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from outpaint.core.errors import OutpaintError

    p = argparse.ArgumentParser(prog="python -m outpaint.benchmarks.gpu", description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--backend", action="append", choices=("ort-cuda", "ort-trt", "tensorrt"),
                   help="repeat for several (default: all three)")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (engine caches, CUDA graphs, clocks)")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = p.parse_args(argv)
    rows: list[Row] = []
    try:
        for backend in args.backend or ["ort-cuda", "ort-trt", "tensorrt"]:
            rows += benchmark(args.model, backend, args.width, args.height, args.steps, args.runs, args.warmup)
    except OutpaintError as exc:
        print(f"gpu benchmark: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.out:
        args.out.write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
