"""Backend names (the CLI's --backend choices) -> a loader of the named graphs of a model folder."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from outpaint.core.errors import InvalidRequest, ModelError
from outpaint.core.graphs import GRAPHS, UNET_GRAPHS, int8_key
from outpaint.core.manifest import Manifest

from .base import GraphRunner
from .bound import BoundGraph

GraphLoader = Callable[[Path, Manifest, Sequence[str]], dict[str, GraphRunner]]


def ort_graph_file(manifest: Manifest, name: str) -> str:
    """The file ONNX Runtime's CPU and CUDA providers run: the fused-attention twin where the export
    made one (export/attention.py; its attention never materialises the score matrix), else the graph."""
    return manifest.graphs.get(f"{name}.mha", manifest.graphs[name]).file


def _ort_loader(providers: tuple) -> GraphLoader:
    def load(folder: Path, manifest: Manifest, names: Sequence[str]) -> dict[str, GraphRunner]:
        from .ort import OrtGraph, OrtOptions

        options = OrtOptions(providers=providers)
        return {name: OrtGraph(name, folder / ort_graph_file(manifest, name), options) for name in names}

    return load


def _openvino_loader(precision: str) -> GraphLoader:
    def load(folder: Path, manifest: Manifest, names: Sequence[str]) -> dict[str, GraphRunner]:
        from .openvino import OvOptions, load_openvino_graphs

        files = {name: manifest.graphs[name].file for name in names}
        # OUTPAINT_OV_SHAPES=static|dynamic overrides the shape mode (a benchmark compares the two).
        shapes = os.environ.get("OUTPAINT_OV_SHAPES") or OvOptions.shapes
        return dict(load_openvino_graphs(folder, files, OvOptions(precision=precision, shapes=shapes)))

    return load


def _openvino_int8_loader(folder: Path, manifest: Manifest, names: Sequence[str]) -> dict[str, GraphRunner]:
    """The int8 twins (export/quantize.py) of the UNet graphs and, where the folder has them, of the VAE;
    everything else as openvino-fp32 runs it: int8 pays off against fp32 on CPUs with VNNI and no native
    bf16, and the quality benchmark judges exactly that computation on every machine. A UNet graph
    without a twin is a ModelError naming the fix; a VAE without one (folders quantized before the VAE
    was) runs in fp32."""
    from .openvino import OvOptions, check_precision_supported, load_openvino_graphs

    lacking = [name for name in names if name in UNET_GRAPHS and int8_key(name) not in manifest.graphs]
    if lacking:
        raise ModelError(f"{folder} has no int8 twin of {', '.join(lacking)}: run `outpaint quantize {folder}` "
                         f"(it calibrates on outpaints of the model itself), or use openvino-bf16 / openvino-fp32")
    files = {name: manifest.graphs.get(int8_key(name), manifest.graphs[name]).file for name in names}
    shapes = os.environ.get("OUTPAINT_OV_SHAPES") or OvOptions.shapes
    # OUTPAINT_OV_INT8_FLOAT=bf16 runs the graphs without a twin (the text encoder; the VAE unless
    # quantized) in bf16 where bf16 is native: on Zen 4 the int8 UNet beat bf16's, but the fp32 VAE gave
    # the gain back (benchmarks/RESULTS.md, "Zen 4"). The twins keep the fp32 hint: under a bf16 hint
    # their deep call took 2.64 s against 2.02 s (benchmarks/int8-probe-zen4.json). A knob for the
    # benchmark until the quality benchmark has judged that mix; all-fp32 is what it judged.
    rest = os.environ.get("OUTPAINT_OV_INT8_FLOAT") or "fp32"
    check_precision_supported(rest)  # refused before anything compiles, whichever graphs are asked for
    twins_fp32 = {name: "fp32" for name in names if int8_key(name) in manifest.graphs}
    return dict(load_openvino_graphs(folder, files, OvOptions(precision=rest, shapes=shapes), twins_fp32))


def _ort_trt_loader(folder: Path, manifest: Manifest, names: Sequence[str]) -> dict[str, GraphRunner]:
    from .ort import OrtGraph, OrtOptions
    from .ort_trt import ort_trt_providers

    return {
        name: OrtGraph(name, folder / manifest.graphs[name].file,
                       OrtOptions(providers=ort_trt_providers(folder, manifest, name)))
        for name in names
    }


def _tensorrt_loader(folder: Path, manifest: Manifest, names: Sequence[str]) -> dict[str, GraphRunner]:
    from .tensorrt import load_tensorrt_graphs

    return dict(load_tensorrt_graphs(folder, manifest, tuple(names)))


BACKENDS: dict[str, GraphLoader] = {
    "ort-cpu": _ort_loader(("CPUExecutionProvider",)),
    "ort-cuda": _ort_loader(("CUDAExecutionProvider", "CPUExecutionProvider")),
    "openvino-bf16": _openvino_loader("bf16"),
    "openvino-fp32": _openvino_loader("fp32"),
    # The UNet's and the VAE's int8 twins from `outpaint quantize`, fp32 elsewhere: `--fast` picks it
    # on CPUs with VNNI and no native bf16 where the folder has the twins (engine/cpu_features.py).
    "openvino-int8": _openvino_int8_loader,
    # NVIDIA GPUs (docs/gpu.md): TensorRT inside ONNX Runtime, and native engines from `outpaint build-engines`.
    "ort-trt": _ort_trt_loader,
    "tensorrt": _tensorrt_loader,
}
# Backends that read more than the ONNX graphs: engines built from our export's manifest (trt_profiles, keys).
NEEDS_OUR_EXPORT = ("tensorrt",)


def load_graphs(
    backend: str, folder: Path, manifest: Manifest, names: Sequence[str] = GRAPHS
) -> dict[str, GraphRunner]:
    """Load `names` (default: the four graphs every pipeline runs) on `backend`."""
    try:
        loader = BACKENDS[backend]
    except KeyError:
        raise InvalidRequest("backend", f"{backend!r} is not a backend; choose one of {', '.join(BACKENDS)}") from None
    if manifest.layout != "outpaint" and backend in NEEDS_OUR_EXPORT:
        raise ModelError(
            f"{folder} is an {manifest.layout} export read in place; the {backend} backend builds its engines "
            f"from the graphs `outpaint export` writes (our tensor names and profiles). Use "
            f"{', '.join(b for b in BACKENDS if b not in NEEDS_OUR_EXPORT)}, or export the weights with "
            "`outpaint export SRC OUT` first"
        )
    graphs = loader(folder, manifest, names)
    for name in names:
        bindings = manifest.graphs[name].bindings
        if bindings is not None:
            graphs[name] = BoundGraph(graphs[name], bindings)
    return graphs
