"""Backend names (the CLI's --backend choices) -> a loader of the four graphs of a model folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidRequest
from ..manifest import Manifest
from .base import GraphRunner

GRAPHS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")
GraphLoader = Callable[[Path, Manifest], dict[str, GraphRunner]]


def _ort_loader(providers: tuple) -> GraphLoader:
    def load(folder: Path, manifest: Manifest) -> dict[str, GraphRunner]:
        from .ort import OrtGraph, OrtOptions

        options = OrtOptions(providers=providers)
        return {name: OrtGraph(name, folder / manifest.graphs[name].file, options) for name in GRAPHS}

    return load


def _openvino_loader(precision: str) -> GraphLoader:
    def load(folder: Path, manifest: Manifest) -> dict[str, GraphRunner]:
        from .openvino import OvOptions, load_openvino_graphs

        files = {name: manifest.graphs[name].file for name in GRAPHS}
        return dict(load_openvino_graphs(folder, files, OvOptions(precision=precision)))

    return load


BACKENDS: dict[str, GraphLoader] = {
    "ort-cpu": _ort_loader(("CPUExecutionProvider",)),
    "ort-cuda": _ort_loader(("CUDAExecutionProvider", "CPUExecutionProvider")),
    "openvino-bf16": _openvino_loader("bf16"),
    "openvino-fp32": _openvino_loader("fp32"),
}


def load_graphs(backend: str, folder: Path, manifest: Manifest) -> dict[str, GraphRunner]:
    try:
        loader = BACKENDS[backend]
    except KeyError:
        raise InvalidRequest("backend", f"{backend!r} is not a backend; choose one of {', '.join(BACKENDS)}") from None
    return loader(folder, manifest)
