"""ONNX Runtime backend: CPU here; CUDA / TensorRT execution providers by configuration.

Every call goes through an IOBinding, so the same code path serves device-resident tensors
(OrtValues on a GPU) when the provider changes; on the CPU the bound arrays are used in place.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from outpaint.core.errors import BackendUnavailable, ModelError

from .base import check_feeds

_ORT_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(int32)": "int32",
              "tensor(float16)": "float16"}


@dataclass(frozen=True)
class OrtOptions:
    """How sessions are created. `providers` is ONNX Runtime's ordered list (name or (name, options))."""

    providers: tuple[Any, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0  # 0 = ONNX Runtime's default (one per physical core)
    graph_optimization: str = "all"  # basic | extended | all
    extra_session_config: dict[str, str] = field(default_factory=dict)

    @property
    def device(self) -> str:
        first = self.providers[0]
        name = first[0] if isinstance(first, tuple) else first
        return "cpu" if name == "CPUExecutionProvider" else "cuda"


def _session_options(options: OrtOptions):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.graph_optimization]
    if options.intra_op_threads:
        so.intra_op_num_threads = options.intra_op_threads
    threads = os.environ.get("OUTPAINT_ORT_THREADS")
    if threads:
        so.intra_op_num_threads = int(threads)
    for key, value in options.extra_session_config.items():
        so.add_session_config_entry(key, value)
    return so


class OrtGraph:
    """One ONNX graph in an InferenceSession, run through IOBinding."""

    def __init__(self, name: str, path: Path, options: OrtOptions) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise ModelError(f"{path} is missing; re-export the model")
        available = ort.get_available_providers()
        wanted = [p[0] if isinstance(p, tuple) else p for p in options.providers]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise BackendUnavailable(
                f"ONNX Runtime here has no {', '.join(missing)} (it has {', '.join(available)}); "
                "install the GPU extra (onnxruntime-gpu) on a machine with an NVIDIA driver"
            )
        self.name = name
        self.path = path
        self.device = options.device
        if self.device == "cuda" and hasattr(ort, "preload_dlls"):
            ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels of the gpu extra, when that is where they are
        try:
            self.session = ort.InferenceSession(str(path), _session_options(options),
                                                providers=list(options.providers))
        except Exception as exc:  # ONNX Runtime's own types (InvalidProtobuf, Fail, ...), not importable stably
            # A file with the recorded size but damaged inside (or from an export older than the
            # recorded sizes) gets here: name the file and the fix rather than a protobuf traceback.
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"{path} could not be loaded by ONNX Runtime ({first_line[:300]}); if the file is damaged, "
                "re-run `outpaint export` into the model folder: it re-exports the damaged graphs"
            ) from exc
        started = self.session.get_providers()[0]
        if started != wanted[0]:
            # ONNX Runtime falls back to the next provider with only a log line when one fails to start.
            raise BackendUnavailable(
                f"{name}: ONNX Runtime could not start {wanted[0]} and fell back to {started}; its log above says "
                "which library is missing (the CUDA runtime, cuBLAS and cuDNN 9 the onnxruntime-gpu wheel was built "
                "for, TensorRT 10's libnvinfer for TensorRT)"
            )
        self._declared = [
            (i.name, _ORT_TYPES.get(i.type, i.type), [d if isinstance(d, int) else None for d in i.shape])
            for i in self.session.get_inputs()
        ]
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())

    def device_runtime(self):
        """The device-resident loop's runtime around this (UNet) session: engine/device_loop.py."""
        from .ort_device import OrtDeviceRuntime

        return OrtDeviceRuntime(self.session)

    def input_shape(self, name: str) -> Sequence[int | None]:
        return next(shape for n, _, shape in self._declared if n == name)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.name, self._declared, feeds)
        binding = self.session.io_binding()  # one per call: bindings are not shared between threads
        for name, value in feeds.items():
            # np.require, not np.ascontiguousarray: that one turns a scalar (an optimum UNet's timestep) into (1,).
            binding.bind_cpu_input(name, np.require(value, requirements="C"))
        for name in self.output_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu(), strict=True))
