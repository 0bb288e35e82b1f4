"""`outpaint build-engines`: one TensorRT engine per graph of an exported model, plus the step kernels.

Steps per graph: clean the ONNX (export/onnx_clean.py, on the CPU), parse it, set the precision and
one optimisation profile (export/trt_profiles.py), build with a timing cache shared by every build on
this GPU + TensorRT version, and write the engine under its build key (engine/backends/trt_key.py).
The step kernels (kernels/ddim_step.py) are built in fp32 whatever the precision: they hold the
latents between steps, and their cost is nothing next to the UNet's.

Idempotent: an engine whose file exists is kept (pass force=True to rebuild).

TensorRT and a GPU are needed for the build itself; everything before it (cleaning, profiles, keys,
precision rules) is pure or CPU-only and tested without them.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from outpaint.core.errors import BackendUnavailable, ModelError
from outpaint.core.graphs import GraphSpec, graph_specs
from outpaint.core.manifest import Manifest
from outpaint.core.trt_key import (
    ENGINES_DIR,
    PRECISIONS,
    BuildKey,
    BuildRecord,
    DeviceIdentity,
    engine_path,
    save_record,
    timing_cache_path,
)
from outpaint.core.trt_profiles import CanvasRange, ShapeProfile, profile_for
from outpaint.kernels.ddim_step import StepKernel, build_step_graph

from .onnx_clean import clean_onnx, save_model

log = logging.getLogger("outpaint")
CLEAN_DIR = "onnx-clean"
BF16_MIN_CAPABILITY = (8, 0)  # Ampere: the first architecture with bf16 tensor cores
QUANTIZE_OPS = {"QuantizeLinear", "DequantizeLinear"}


@dataclass(frozen=True)
class BuildOptions:
    precision: str = "fp16"
    canvas: CanvasRange = field(default_factory=CanvasRange.square)
    batch: int = 1
    workspace_gb: float = 0.0  # 0: TensorRT's default (up to the GPU's memory)
    optimization_level: int = 3  # TensorRT's builder_optimization_level, 0..5 (5: slowest build, fastest engine)
    gpu: int = 0
    force: bool = False  # rebuild engines whose files exist
    clean: bool = True  # fold constants etc. first (export/onnx_clean.py); False hands TensorRT the export as is


@dataclass(frozen=True)
class BuildItem:
    """One engine to build: its name, graph spec, ONNX file and precision."""

    name: str
    spec: GraphSpec
    precision: str
    kernel: StepKernel | None = None  # set for the step kernels, whose ONNX is generated, not exported


def check_precision(precision: str, compute_capability: tuple[int, int], explicitly_quantized: bool) -> None:
    """Raise with the reason when `precision` cannot be built for this GPU / this graph."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and tuple(compute_capability) < BF16_MIN_CAPABILITY:
        major, minor = compute_capability
        raise BackendUnavailable(
            f"bf16 needs a GPU of compute capability 8.0 (Ampere) or newer; this one is {major}.{minor}: use fp16"
        )
    if precision == "int8" and not explicitly_quantized:
        raise ModelError(
            "int8 needs a quantized ONNX graph (QuantizeLinear/DequantizeLinear nodes, e.g. from NVIDIA "
            "ModelOpt); this export has none and TensorRT 10 no longer calibrates: use fp16"
        )


def is_explicitly_quantized(model) -> bool:
    """Whether an onnx.ModelProto carries Q/DQ nodes (TensorRT's explicit int8 quantization)."""
    return any(node.op_type in QUANTIZE_OPS for node in model.graph.node)


def build_items(manifest: Manifest, precision: str) -> list[BuildItem]:
    """The four graphs at `precision`, then the step kernels this model's requests can need, in fp32."""
    items = [BuildItem(s.name, s, precision) for s in graph_specs(manifest.unet_in_channels, manifest.text_hidden_size)]
    blend = manifest.unet_in_channels == 4
    for guided in (True, False):
        kernel = StepKernel(guided=guided, blend=blend, unet_in_channels=manifest.unet_in_channels)
        items.append(BuildItem(kernel.name, kernel.spec(), "fp32", kernel))
    return items


class BuildProgress:
    """TensorRT's phase / step callbacks as nested progress bars (one per open phase).

    TensorRT calls these from its own threads; the lock keeps the bars consistent. `cancel()` makes
    the next `step_complete` return False, which asks TensorRT to abandon the build.
    """

    def __init__(self, file=None, disable: bool = False, base_position: int = 1) -> None:
        self._bars: dict[str, Any] = {}
        self._depth: dict[str, int] = {}
        self._lock = threading.Lock()
        self._file = file
        self._disable = disable
        self._base = base_position
        self.cancelled = False

    def phase_start(self, phase: str, parent: str | None, steps: int) -> None:
        with self._lock:
            depth = self._depth.get(parent, -1) + 1 if parent else 0
            self._depth[phase] = depth
            self._bars[phase] = tqdm(total=steps, desc="  " * depth + phase, position=self._base + len(self._bars),
                                     leave=False, file=self._file, disable=self._disable, unit="step")

    def step_complete(self, phase: str, step: int) -> bool:
        with self._lock:
            bar = self._bars.get(phase)
            if bar is not None:
                bar.update(step + 1 - bar.n)  # steps are 0-based and reported once each
        return not self.cancelled

    def phase_finish(self, phase: str) -> None:
        with self._lock:
            bar = self._bars.pop(phase, None)
            self._depth.pop(phase, None)
            if bar is not None:
                bar.close()

    def steps_done(self, phase: str) -> int:
        with self._lock:
            return int(self._bars[phase].n)

    def open_phases(self) -> list[str]:
        with self._lock:
            return list(self._bars)

    def cancel(self) -> None:
        self.cancelled = True


def _monitor(trt, progress: BuildProgress):
    """A tensorrt.IProgressMonitor forwarding to `progress` (the subclass needs tensorrt, hence built here)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name):
            progress.phase_finish(phase_name)

    return Monitor()


def prepare_onnx(model_dir: Path, manifest: Manifest, items: list[BuildItem], force: bool = False,
                 clean: bool = True) -> dict[str, Path]:
    """Cleaned graphs (or, clean=False, the exported ones) and kernel graphs on disk, for TensorRT's parser."""
    out = Path(model_dir) / ENGINES_DIR / CLEAN_DIR
    paths: dict[str, Path] = {}
    for item in items:
        path = out / item.name / "model.onnx"
        if item.kernel is None and not clean:
            paths[item.name] = Path(model_dir) / manifest.graphs[item.name].file
            continue
        if force or not path.is_file():
            if item.kernel is not None:
                save_model(build_step_graph(item.kernel), path)
            else:
                report = clean_onnx(Path(model_dir) / manifest.graphs[item.name].file, path, item.name)
                log.info("cleaned %s: %d -> %d nodes in %.1f s", item.name, report.nodes_before, report.nodes_after,
                         report.seconds)
        paths[item.name] = path
    return paths


def build_engine(trt, onnx_path: Path, out: Path, profile: dict[str, ShapeProfile], precision: str,
                 options: BuildOptions, timing_cache: Path, progress: BuildProgress) -> float:
    """Build and write one engine; returns the build's seconds."""
    from outpaint.engine.backends.tensorrt import trt_logger

    started = time.perf_counter()
    logger = trt_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external weights beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    if options.workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * 2**30))
    config.builder_optimization_level = options.optimization_level
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ layers in int8,
        config.set_flag(trt.BuilderFlag.FP16)  # the rest in fp16
    shapes = builder.create_optimization_profile()
    for name, p in profile.items():
        shapes.set_shape(name, p.min, p.opt, p.max)
    config.add_optimization_profile(shapes)

    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _monitor(trt, progress)
    config.progress_monitor = monitor

    serialized = _build_interruptibly(builder, network, config, progress)
    if serialized is None:
        if progress.cancelled:
            raise KeyboardInterrupt
        raise ModelError(f"TensorRT could not build an engine from {onnx_path} (its log above says why)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".plan.tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out)  # a crash mid-write never leaves a truncated engine under the real name
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return time.perf_counter() - started


def _build_interruptibly(builder, network, config, progress: BuildProgress):
    """Ctrl-C during a build asks TensorRT to stop (via the progress monitor) instead of killing it mid-call."""
    if threading.current_thread() is not threading.main_thread():
        return builder.build_serialized_network(network, config)
    previous = signal.signal(signal.SIGINT, lambda *_: progress.cancel())
    try:
        return builder.build_serialized_network(network, config)
    finally:
        signal.signal(signal.SIGINT, previous)


def build_engines(model_dir: Path, options: BuildOptions, show_progress: bool = True) -> BuildRecord:
    """Build (or keep) every engine of `model_dir` for this GPU; select the set for `--backend tensorrt`."""
    from outpaint.engine.backends.tensorrt import device_identity, import_tensorrt

    model_dir = Path(model_dir)
    manifest = Manifest.load(model_dir)
    trt = import_tensorrt()
    here: DeviceIdentity = device_identity(options.gpu)
    items = build_items(manifest, options.precision)
    paths = prepare_onnx(model_dir, manifest, items, force=options.force, clean=options.clean)
    if options.precision == "int8":
        import onnx

        quantized = is_explicitly_quantized(onnx.load(str(paths["unet"]), load_external_data=False))
    else:
        quantized = False
    check_precision(options.precision, here.compute_capability, quantized)

    key = BuildKey(here, options.precision, options.canvas, options.batch)
    cache = timing_cache_path(model_dir, here)
    progress = BuildProgress(disable=not show_progress)
    with tqdm(items, desc="engines", unit="engine", disable=not show_progress, position=0) as bar:
        for item in bar:
            out = engine_path(model_dir, key, item.name)
            bar.set_postfix_str(item.name)
            if out.is_file() and not options.force:
                continue
            profile = profile_for(item.spec, options.canvas, options.batch)
            seconds = build_engine(trt, paths[item.name], out, profile, item.precision, options, cache, progress)
            log.info("built %s (%s) in %.0f s", out, item.precision, seconds)
    record = BuildRecord(key, tuple(item.name for item in items))
    save_record(model_dir, record)
    return record
