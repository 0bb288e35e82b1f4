"""Shared fixtures: tiny random SD 1.5 models, built once per test session.

Building and exporting the tiny model takes about ten seconds; every test that needs a model
folder shares `tiny_model_dir`. Tests that compare against PyTorch use `tiny_components`, the very
modules that were exported (same seed, same weights).
"""

from __future__ import annotations

import dataclasses
import io
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from outpaint.engine.request import OutpaintRequest


def _has_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with onnxruntime-gpu / TensorRT; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_components(tmp_path_factory):
    pytest.importorskip("torch")
    from outpaint.export.random_models import build_random_components

    return build_random_components("tiny", seed=0, workdir=tmp_path_factory.mktemp("tiny-src"))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_components, tmp_path_factory) -> Path:
    from outpaint.export.onnx_export import export_components

    out = tmp_path_factory.mktemp("tiny-model")
    export_components(tiny_components, out)
    return out


def optimum_problem() -> str | None:
    """Why optimum's virtualenv cannot run here (export/optimum_export.py), or None. `make test` installs
    it, so under CI its absence fails the tests that need it instead of skipping them."""
    from outpaint.export.optimum_export import optimum_unavailable

    problem = optimum_unavailable()
    if problem is not None and os.environ.get("CI"):
        pytest.fail(problem)
    return problem


@pytest.fixture(scope="session")
def optimum_tiny_dir(tiny_components, tiny_model_dir) -> Path:
    """optimum's own export of the tiny model's very modules, where `outpaint bench` keeps its optimum peer's
    (MODEL/optimum-peer/), so the bench smoke run and the optimum-folder tests share one export."""
    from outpaint.benchmarks.systems_optimum import peer_folder
    from outpaint.export.optimum_export import ensure_optimum_export

    if (problem := optimum_problem()) is not None:
        pytest.skip(problem)
    return ensure_optimum_export(lambda: tiny_components, tiny_components.fingerprint, peer_folder(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_inpainting_model_dir(tmp_path_factory) -> Path:
    """The tiny model with a 9-channel (inpainting) UNet, exported like any other."""
    pytest.importorskip("torch")
    from outpaint.export.onnx_export import export_components
    from outpaint.export.random_models import build_random_components

    workdir = tmp_path_factory.mktemp("tiny9")
    export_components(build_random_components("tiny", unet_in_channels=9, workdir=workdir), workdir / "model")
    return workdir / "model"


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model_dir):
    from outpaint.engine.pipeline import OutpaintPipeline

    return OutpaintPipeline.load(tiny_model_dir)


def run_onnx(graph: Path | bytes, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
    """One run of an ONNX graph (a file, or serialized bytes) on ONNX Runtime's CPU provider. Its outputs
    as arrays: ORT's type stubs allow sparse tensors, lists and maps, which our graphs never return."""
    import onnxruntime as ort

    session = ort.InferenceSession(graph if isinstance(graph, bytes) else str(graph),
                                   providers=["CPUExecutionProvider"])
    return [np.asarray(out) for out in session.run(outputs, feeds)]


def make_request(**overrides: Any) -> OutpaintRequest:
    """A cheap request on the tiny model: 256x256 canvas, 4 steps, the source at (64, 64)."""
    base = OutpaintRequest(prompt="a lighthouse", img_width=256, img_height=256, num_inference_steps=4,
                           offset_x=64, offset_y=64, seed=42)
    return dataclasses.replace(base, **overrides)


def make_png(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    """A random-pixel PNG (every pixel distinct enough that misplacement shows)."""
    rng = np.random.default_rng(seed)
    channels = 4 if mode == "RGBA" else 3
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    if mode == "RGBA":
        pixels[..., 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def png_256() -> bytes:
    return make_png(256, 256)


@pytest.fixture(scope="session")
def postgres_cluster():
    """A throwaway PostgreSQL server for the session (server/pg_cluster.py). Missing binaries
    fail the tests that need it, unless OUTPAINT_SKIP_POSTGRES=1 asks to skip them."""
    from outpaint.server.pg_cluster import PostgresMissing, start_cluster

    if os.environ.get("OUTPAINT_SKIP_POSTGRES") == "1":
        pytest.skip("OUTPAINT_SKIP_POSTGRES=1")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail("psycopg is not installed: pip install -e '.[dev]' (or the postgres extra)", pytrace=False)
    try:
        cluster = start_cluster()
    except PostgresMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    return postgres_cluster.create_database()
