"""The OpenVINO peer: plain OpenVINO reading our ONNX files, static shapes, one inference precision.

This is what a user of OpenVINO would write (read_model, reshape, compile_model with the precision
hint, infer); it is the yardstick of our openvino backends, which must add no overhead to it.

OpenVINO takes the bf16 hint without complaint where bf16 is not native: it emulates bf16 on AVX-512
without BF16 and ignores the hint on AVX2 (fp32). So `openvino-bf16` refuses such a CPU (the runner
skips it there, benchmarks/run.py) and checks that the compiled model really computes in bf16.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from outpaint.core.errors import BackendUnavailable
from outpaint.engine.backends.openvino import check_precision_supported

from .config import BenchConfig
from .recorder import Recorder
from .timing import NO_CANVAS
from .workload import unet_inputs, vae_inputs

PRECISION_HINT = {"openvino-fp32": "f32", "openvino-bf16": "bf16"}


def _compiled(core, path: Path, shapes: dict[str, tuple[int, ...]], precision: str):
    model = core.read_model(str(path))
    model.reshape({name: list(shape) for name, shape in shapes.items()})
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(model, "CPU", config)
    if precision == "bf16" and "bf16" not in _runtime_precisions(compiled):
        raise BackendUnavailable(f"{path}: OpenVINO compiled no bf16 kernel for the bf16 hint; not measured")
    return compiled.create_infer_request()


def _runtime_precisions(compiled) -> set[str]:
    """The precisions the compiled model's kernels run in (the hint only says what was asked)."""
    found = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "runtimePrecision" in info:
            found.add(info["runtimePrecision"].astype(str))
    return found


def run(system: str, config: BenchConfig, rec: Recorder) -> None:
    import openvino as ov

    from outpaint.core.manifest import Manifest

    precision = PRECISION_HINT[system]
    if precision == "bf16":
        check_precision_supported("bf16")  # the same refusal as our openvino-bf16 backend's
    core = ov.Core()
    folder = Path(config.model_dir)
    manifest = Manifest.load(folder)
    hidden = manifest.text_hidden_size
    path = {name: folder / record.file for name, record in manifest.graphs.items()}
    canvas = config.outpaint_canvas
    image, latent = vae_inputs(canvas)

    def infer(request, feeds):
        request.infer(feeds, share_inputs=True)
        return request.get_output_tensor(0).data

    def timed_compile(name: str, shapes: dict[str, tuple[int, ...]]):
        started = time.perf_counter()
        request = _compiled(core, path[name], shapes, precision)
        rec.notes.append(f"{name} {shapes}: compiled in {time.perf_counter() - started:.1f} s")
        return request

    def measure_graph(name: str, stage: str, at: str, feeds: dict[str, np.ndarray]) -> None:
        request = timed_compile(name, {key: value.shape for key, value in feeds.items()})
        rec.measure(stage, at, lambda: infer(request, feeds), runs=config.runs)

    measure_graph("text_encoder", "text_encoder", NO_CANVAS, {"input_ids": np.ones((2, 77), dtype=np.int64)})
    measure_graph("vae_encoder", "vae_encode", canvas, {"image": image})
    measure_graph("vae_decoder", "vae_decode", canvas, {"latent": latent})
    for at in config.unet_canvases_for(system):
        feeds = unet_inputs(at, hidden)
        feeds["sample"] = np.concatenate([feeds["sample"][:1]] * 2)  # [x, x] as in a guided step
        unet = timed_compile("unet", {name: value.shape for name, value in feeds.items()})

        def step(unet=unet, feeds=feeds):
            eps = infer(unet, feeds)
            return eps[:1] + np.float32(config.guidance) * (eps[1:] - eps[:1])

        rec.save(f"unet_step_{at}", rec.measure("unet_step", at, step, runs=config.runs_for(at)))
