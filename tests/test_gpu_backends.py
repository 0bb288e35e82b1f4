"""GPU backends: what can be checked without a GPU runs everywhere; the rest is marked `gpu`.

Without a GPU: the ort-trt provider options, and that every GPU backend fails at load with a message
naming what is missing. With a GPU (conftest skips these otherwise): the whole pipeline on every GPU
backend against the CPU fp32 image on the same seed, and the device loop against the host loop.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from outpaint.core.errors import BackendUnavailable, OutpaintError
from outpaint.core.graphs import graph_specs
from outpaint.core.manifest import Manifest
from outpaint.core.trt_profiles import CanvasRange, profile_for
from outpaint.engine.backends import cuda
from outpaint.engine.backends.ort_trt import ORT_TRT_CACHE, ort_trt_providers, shapes_option, trt_provider_options
from outpaint.engine.backends.registry import BACKENDS
from outpaint.engine.large_canvas import LARGE_CANVAS_OFF
from outpaint.engine.pipeline import OutpaintPipeline
from outpaint.engine.request import OutpaintRequest

from .conftest import make_png, make_request

GPU_BACKENDS = ("ort-cuda", "ort-trt", "tensorrt")
HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_CUDA_PYTHON = importlib.util.find_spec("cuda") is not None

@pytest.fixture(scope="module")
def model_copy(tiny_model_dir, tmp_path_factory) -> Path:
    """A private copy of the tiny model: these tests write engines/ into it."""
    target = tmp_path_factory.mktemp("model-copy") / "model"
    return Path(shutil.copytree(tiny_model_dir, target, ignore=shutil.ignore_patterns("engines")))



def test_every_gpu_backend_is_registered():
    assert set(GPU_BACKENDS) <= set(BACKENDS)


def test_ort_trt_profile_strings_use_onnx_runtimes_syntax():
    unet = {s.name: s for s in graph_specs(4, 768)}["unet"]
    profile = profile_for(unet, CanvasRange.square(256, 512, 1024))
    assert shapes_option(profile, "min") == "sample:1x4x32x32,timestep:1,encoder_hidden_states:1x77x768"
    assert shapes_option(profile, "max") == "sample:2x4x128x128,timestep:1,encoder_hidden_states:2x77x768"


def test_ort_trt_options_cache_engines_and_timings_in_the_model_folder(model_copy):
    providers = ort_trt_providers(model_copy, Manifest.load(model_copy), "vae_decoder")
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    options = providers[0][1]
    cache = model_copy / "engines" / ORT_TRT_CACHE / "vae_decoder"
    assert cache.is_dir() and options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(cache)
    assert options["trt_engine_cache_enable"] == options["trt_fp16_enable"] == "True"
    assert options["trt_profile_opt_shapes"] == "latent:1x4x64x64"
    assert all(isinstance(v, str) for v in options.values()), "ONNX Runtime takes provider options as strings"


def test_fp32_ort_trt_options_turn_fp16_off(tmp_path):
    spec = {s.name: s for s in graph_specs(4, 768)}["text_encoder"]
    assert trt_provider_options(spec, tmp_path, fp16=False)["trt_fp16_enable"] == "False"


@pytest.mark.skipif(HAS_CUDA_EP, reason="onnxruntime-gpu is installed here")
@pytest.mark.parametrize("backend, provider", [("ort-cuda", "CUDAExecutionProvider"),
                                               ("ort-trt", "TensorrtExecutionProvider")])
def test_ort_gpu_backends_fail_at_load_naming_the_missing_provider(model_copy, backend, provider):
    with pytest.raises(BackendUnavailable, match=rf"{provider}.*onnxruntime-gpu"):
        OutpaintPipeline.load(model_copy, backend)


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_tensorrt_backend_fails_at_load_naming_the_package_and_gpu(tiny_model_dir):
    with pytest.raises(BackendUnavailable, match=r"`tensorrt` Python package.*NVIDIA GPU"):
        OutpaintPipeline.load(tiny_model_dir, "tensorrt")


@pytest.mark.skipif(HAS_CUDA_PYTHON, reason="cuda-python is installed here")
def test_cuda_helpers_without_cuda_python_name_the_package():
    cuda.cudart.cache_clear()
    with pytest.raises(BackendUnavailable, match="cuda-python"):
        cuda.cudart()


def test_cuda_errors_meaning_no_gpu_are_told_apart():
    assert "no NVIDIA GPU" in str(cuda.unavailable_reason("cudaErrorNoDevice"))
    assert "driver" in str(cuda.unavailable_reason("cudaErrorInsufficientDriver"))
    assert cuda.unavailable_reason("cudaErrorMemoryAllocation") is None, "out of memory is not 'no GPU'"


# -- on a GPU ----------------------------------------------------------------------------------

# PSNR of the VAE's output (before paste-back, which would copy the source in and inflate the number)
# against the CPU fp32 image; docs/gpu.md explains the thresholds.
PSNR_DB = {"ort-cuda": 40.0, "ort-trt": 30.0, "tensorrt": 30.0}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _request(**overrides) -> OutpaintRequest:
    return make_request(**{"num_inference_steps": 8, **overrides})


@pytest.fixture(scope="module")
def gpu_model_dir(model_copy):
    if HAS_TENSORRT:
        from outpaint.export.tensorrt import BuildOptions, build_engines

        build_engines(model_copy, BuildOptions(canvas=CanvasRange.square(256, 256, 512)), show_progress=False)
    return model_copy


@pytest.mark.gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_backend_matches_the_cpu_fp32_image(gpu_model_dir, tiny_pipeline, backend):
    if backend in ("tensorrt", "ort-trt") and not HAS_TENSORRT:  # ONNX Runtime's TensorRT EP loads its libraries
        pytest.skip("TensorRT is not installed on this GPU machine")
    source = make_png(128, 128, seed=3)
    reference = tiny_pipeline(source, _request())
    pipeline = OutpaintPipeline.load(gpu_model_dir, backend)
    assert pipeline.device_runtime is not None and pipeline.device_runtime.device == "cuda"
    result = pipeline(source, _request())
    score = psnr(result.decoded, reference.decoded)
    print(f"{backend}: PSNR {score:.1f} dB vs CPU fp32")  # recorded in docs/gpu.md from a GPU run
    assert score >= PSNR_DB[backend]
    assert np.array_equal(result.image[result.canvas.alpha == 1.0], reference.image[reference.canvas.alpha == 1.0])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["ort-cuda", "tensorrt"])
def test_device_loop_on_the_gpu_matches_the_host_loop_on_the_same_backend(gpu_model_dir, backend):
    if backend == "tensorrt" and not HAS_TENSORRT:
        pytest.skip("TensorRT is not installed on this GPU machine")
    source = make_png(128, 128, seed=3)
    host = OutpaintPipeline.load(gpu_model_dir, backend, device_loop=False)(source, _request())
    device = OutpaintPipeline.load(gpu_model_dir, backend, device_loop=True)(source, _request())
    # Same engines; only the step arithmetic moved from numpy to the fp32 kernel on the GPU.
    assert psnr(device.decoded, host.decoded) >= 45.0


@pytest.mark.gpu
def test_tensorrt_refuses_a_canvas_outside_its_profile(gpu_model_dir):
    if not HAS_TENSORRT:
        pytest.skip("TensorRT is not installed on this GPU machine")
    # At full size: the large-canvas strategy would compose at native size first, inside the profile.
    pipeline = OutpaintPipeline.load(gpu_model_dir, "tensorrt", large_canvas=LARGE_CANVAS_OFF)
    with pytest.raises(OutpaintError, match=re.escape("outside the engine's profile")):
        pipeline(make_png(128, 128), _request(img_width=1024, img_height=1024))
