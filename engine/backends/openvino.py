"""OpenVINO backend: the same ONNX files, compiled by OpenVINO's CPU plugin at static shapes.

Why it exists: on CPUs with AVX-512 BF16 (Zen 4, Sapphire Rapids and later) OpenVINO runs the
UNet in bf16 about twice as fast as ONNX Runtime's fp32 CPU provider, and its fp32 path is also a
little faster. `openvino-bf16` asks for bf16 inference precision (weights and activations in bf16,
accumulation in fp32; inputs and outputs stay float32), `openvino-fp32` keeps fp32 throughout.

Shapes: every compiled model holds its own repacked copy of the weights (1.7 GB for the UNet in
bf16, 3.4 GB in fp32), so how many are compiled decides the memory. `OvOptions.shapes`:

- "dynamic" (the default): one compiled model per batch size, with the spatial dimensions the ONNX
  graph leaves free kept free. Every canvas and UNet window shares one copy of the weights; OpenVINO
  builds (and caches) the kernels of a new spatial shape on its first call. A server holding three
  canvases thus holds the UNet's weights once (docs/benchmarks.md, "Memory").
- "static": one compiled model per input-shape set, in a small LRU cache (`max_shapes`). Static
  shapes let OpenVINO fold every shape computation at compile time; what that buys is measured in
  docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from outpaint.core.errors import BackendUnavailable, ModelError, OutpaintError
from outpaint.core.graphs import TIMESTEP

from .base import check_feeds
from .mapped_files import page_out_mapped_files

PRECISIONS = ("bf16", "fp32")
SHAPE_MODES = ("dynamic", "static")
_OV_TYPES = {"f32": "float32", "i64": "int64", "i32": "int32", "f16": "float16"}
ShapeKey = tuple[tuple[str, tuple[int, ...]], ...]


@dataclass(frozen=True)
class OvOptions:
    """How graphs are compiled. `threads` 0 = OpenVINO's default (one per physical core)."""

    precision: str = "bf16"  # inference precision hint: bf16 | fp32
    threads: int = 0
    shapes: str = "dynamic"  # dynamic: one compiled model per batch size | static: one per input-shape set
    max_shapes: int = 2  # compiled variants kept per graph (each holds its own weights)
    cache_dir: str | None = None  # OpenVINO's on-disk compiled-model cache (CACHE_DIR); None = off
    # In bf16, run the subgraph that depends only on this input in fp32 (ov_prologue.py); "" = off.
    fp32_prologue_input: str = TIMESTEP

    def __post_init__(self) -> None:
        if self.shapes not in SHAPE_MODES:
            raise OutpaintError(f"OvOptions.shapes must be one of {', '.join(SHAPE_MODES)}, got {self.shapes!r}")

    def compile_config(self, precision: str | None = None) -> dict[str, Any]:
        import openvino.properties as props
        import openvino.properties.hint as hints

        config: dict[str, Any] = {
            hints.performance_mode: hints.PerformanceMode.LATENCY,  # one stream: the request owns all cores
            hints.inference_precision: "bf16" if (precision or self.precision) == "bf16" else "f32",
            # ACCURACY would silently keep fp32 where PERFORMANCE is allowed to use bf16: be explicit.
            hints.execution_mode: hints.ExecutionMode.PERFORMANCE,
        }
        threads = self.threads or int(os.environ.get("OUTPAINT_OV_THREADS", "0"))
        if threads:
            config[props.inference_num_threads] = threads
        if self.cache_dir:
            config[props.cache_dir] = self.cache_dir
        return config


def _core():
    try:
        import openvino as ov
    except ImportError:
        raise BackendUnavailable(
            "the openvino backends need the `openvino` package: pip install 'outpaint[cpu-fast]'"
        ) from None
    return ov.Core()


def check_precision_supported(precision: str) -> None:
    """Raise BackendUnavailable when this CPU cannot run `precision` natively (emulated bf16 is slower).

    Whether bf16 is native comes from engine/cpu_features.py, the one place `--fast`, the benchmark
    and the tests ask too (OpenVINO's OPTIMIZATION_CAPABILITIES, queried once per process)."""
    from outpaint.engine.cpu_features import cpu_features

    if precision not in PRECISIONS:
        raise BackendUnavailable(f"OpenVINO precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    features = cpu_features()
    if precision == "bf16" and not features.native_bf16:
        raise BackendUnavailable(
            f"this CPU has no native bf16 ({features.bf16_source()}); "
            "use --backend openvino-fp32 or ort-cpu, or --fast without --backend to let it choose"
        )


class _Compiled:
    """One static-shape compiled model and a pool of its infer requests (one per concurrent caller).

    With a `prologue` (an fp32 model of the inputs in `prologue_inputs`), the prologue runs first
    and its outputs are fed to the main model in place of those inputs.
    """

    def __init__(self, compiled, prologue: _Compiled | None = None, prologue_inputs: tuple[str, ...] = ()) -> None:
        self.compiled = compiled
        self.output_names = tuple(o.get_any_name() for o in compiled.outputs)
        self.prologue = prologue
        self.prologue_inputs = prologue_inputs
        self._idle: queue.SimpleQueue = queue.SimpleQueue()

    def release_memory(self) -> None:
        """Free the intermediate buffers (sized for the largest shape run so far) until the next run."""
        # An inference in flight keeps them: nothing is lost, the memory stays held a while longer.
        with contextlib.suppress(RuntimeError):
            self.compiled.release_memory()

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.prologue is not None:
            feeds = dict(feeds)
            feeds.update(self.prologue.infer({name: feeds.pop(name) for name in self.prologue_inputs}))
        return self._infer(feeds)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            # share_inputs: OpenVINO reads the caller's arrays in place (no input copy).
            request.infer(dict(feeds), share_inputs=True)
            # Outputs are copied: the request's buffers are reused by its next inference.
            return {name: request.get_tensor(name).data.copy() for name in self.output_names}
        finally:
            self._idle.put(request)


class OvGraph:
    """One ONNX graph run by OpenVINO, compiled once per distinct input-shape set."""

    def __init__(self, name: str, path: Path, options: OvOptions, core=None) -> None:
        if not path.is_file():
            raise ModelError(f"{path} is missing; re-export the model")
        self.core = core if core is not None else _core()
        check_precision_supported(options.precision)
        self.name = name
        self.options = options
        self.path = path
        # Only the signature is kept: a held ov.Model would keep its weight file mapped, and every
        # mapping a process holds counts in its resident memory (the compile reads its own copy).
        model = self.core.read_model(str(path))
        self._declared = [
            (
                p.get_any_name(),
                _OV_TYPES.get(p.get_element_type().get_type_name(), p.get_element_type().get_type_name()),
                [d.get_length() if d.is_static else None for d in p.get_partial_shape()],
            )
            for p in model.inputs
        ]
        self.input_names = tuple(name for name, _, _ in self._declared)
        self._declared_shapes = {name: shape for name, _, shape in self._declared}
        self.output_names = tuple(o.get_any_name() for o in model.outputs)
        del model
        self._cache: OrderedDict[ShapeKey, _Compiled] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache
        self._shapes_run: set[tuple[tuple[int, ...], ...]] = set()

    def _compiled_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape `name` is compiled at for a feed of `shape`: the feed's own in static mode; in
        dynamic mode the dimensions the graph declares free stay free (-1), but for the batch: a
        static batch lets the fp32 prologue's timestep broadcast fold (ov_prologue.py)."""
        if self.options.shapes == "static":
            return tuple(int(d) for d in shape)
        declared = self._declared_shapes[name]
        return tuple(int(d) if axis == 0 or declared[axis] is not None else -1 for axis, d in enumerate(shape))

    def release_memory(self) -> None:
        """Free every compiled variant's intermediate buffers (pipeline.release_memory says when)."""
        with self._lock:
            entries = list(self._cache.values())
        for entry in entries:
            entry.release_memory()

    def compiled_shapes(self) -> list[ShapeKey]:
        with self._lock:
            return list(self._cache)

    def _compiled_for(self, key: ShapeKey) -> _Compiled:
        with self._lock:
            entry = self._cache.get(key)
            if entry is not None:
                self._cache.move_to_end(key)
                return entry
            # Compiling under the lock keeps two threads from building the same multi-GB variant twice.
            try:
                entry = self._compile(key)
            except RuntimeError as exc:
                raise OutpaintError(f"{self.name}: OpenVINO could not compile shapes {dict(key)}: {exc}") from exc
            self._cache[key] = entry
            while len(self._cache) > max(1, self.options.max_shapes):
                self._cache.popitem(last=False)  # least recently used canvas size
            return entry

    def _compile(self, key: ShapeKey) -> _Compiled:
        # A fresh read per shape (ONNX external data is memory-mapped: cheap) because reshaping and
        # the prologue split change the model in place. -1 = a dimension left free (dynamic mode).
        model = self.core.read_model(str(self.path))
        model.reshape({name: list(shape) for name, shape in key})
        prologue_input = self.options.fp32_prologue_input
        split = None
        if self.options.precision == "bf16" and prologue_input in self.input_names:
            from .ov_prologue import split_fp32_prologue

            split = split_fp32_prologue(model, prologue_input)
        if split is None:
            compiled = _Compiled(self.core.compile_model(model, "CPU", self.options.compile_config()))
        else:
            prologue = _Compiled(self.core.compile_model(split.prologue, "CPU", self.options.compile_config("fp32")))
            main = self.core.compile_model(split.main, "CPU", self.options.compile_config())
            compiled = _Compiled(main, prologue, (prologue_input,))
        page_out_mapped_files(self.weight_files())  # the compiled model runs on its own copy
        return compiled

    def weight_files(self) -> list[Path]:
        """The files a compile may map: the graph's folder holds it and its external data, under
        names that differ between exporters (`model.onnx.data`, optimum's `model.onnx_data`); only
        mapped ones are paged out."""
        return [path for path in self.path.parent.iterdir() if path.is_file()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.name, self._declared, feeds)
        key = tuple((name, self._compiled_shape(name, feeds[name].shape)) for name in self.input_names)
        contiguous = {name: np.require(value, requirements="C") for name, value in feeds.items()}
        outputs = self._compiled_for(key).infer(contiguous)
        shape = tuple(value.shape for value in contiguous.values())
        if shape not in self._shapes_run:
            # A new shape's first inference builds its kernels from the mapped original weights.
            self._shapes_run.add(shape)
            page_out_mapped_files(self.weight_files())
        return outputs


def load_openvino_graphs(folder: Path, files: Mapping[str, str], options: OvOptions,
                         precisions: Mapping[str, str] | None = None) -> dict[str, OvGraph]:
    """One OvGraph per graph name -> file (relative to `folder`), sharing one OpenVINO Core; `precisions`
    gives a graph a precision other than `options.precision` (openvino-int8's twins and the rest)."""
    core = _core()
    chosen = {name: (precisions or {}).get(name, options.precision) for name in files}
    for precision in sorted(set(chosen.values())):
        check_precision_supported(precision)
    return {name: OvGraph(name, folder / file, replace(options, precision=chosen[name]), core=core)
            for name, file in files.items()}
