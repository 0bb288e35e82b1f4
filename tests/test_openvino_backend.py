"""The OpenVINO backend against ONNX Runtime on the tiny model's very ONNX files."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from outpaint.core.errors import BackendUnavailable, OutpaintError

ov = pytest.importorskip("openvino")

from outpaint.engine.backends.openvino import OvGraph, OvOptions, check_precision_supported  # noqa: E402
from outpaint.engine.backends.ort import OrtGraph, OrtOptions  # noqa: E402
from outpaint.engine.cpu_features import cpu_features, has_native_bf16  # noqa: E402


def _unet_feeds(height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "sample": rng.standard_normal((2, 4, height // 8, width // 8), dtype=np.float32),
        "timestep": np.array([501.0], dtype=np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
    }


def _rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _no_bf16_reason() -> str:
    return f"this CPU has no native bf16 ({cpu_features().bf16_source()})"


@pytest.fixture(scope="module")
def unet_path(tiny_model_dir):
    return tiny_model_dir / "unet" / "model.onnx"


def test_fp32_unet_matches_onnx_runtime(unet_path):
    feeds = _unet_feeds(64, 128)
    expected = OrtGraph("unet", unet_path, OrtOptions()).run(feeds)["out_sample"]
    actual = OvGraph("unet", unet_path, OvOptions(precision="fp32")).run(feeds)["out_sample"]
    error = _rel_error(actual, expected)
    print(f"OpenVINO fp32 vs ONNX Runtime, max relative error {error:.2e}")
    assert actual.shape == expected.shape and actual.dtype == np.float32
    assert error < 1e-4


def test_bf16_unet_is_close_to_fp32_but_not_identical(unet_path):
    if not has_native_bf16():
        pytest.skip(_no_bf16_reason())
    feeds = _unet_feeds(64, 64)
    fp32 = OvGraph("unet", unet_path, OvOptions(precision="fp32")).run(feeds)["out_sample"]
    bf16 = OvGraph("unet", unet_path, OvOptions(precision="bf16")).run(feeds)["out_sample"]
    rms = float(np.sqrt(np.mean((bf16 - fp32) ** 2)) / np.sqrt(np.mean(fp32**2)))
    print(f"bf16 vs fp32 relative RMS error {rms:.3e}")
    # bf16 keeps 8 significant bits; on the tiny random net that compounds to several per cent, never zero.
    assert 0 < rms < 0.25


def test_static_mode_one_compiled_model_per_shape_bounded_cache(unet_path):
    graph = OvGraph("unet", unet_path, OvOptions(precision="fp32", shapes="static", max_shapes=2))
    for height, width in ((64, 64), (64, 128), (64, 64)):
        graph.run(_unet_feeds(height, width))
    assert len(graph.compiled_shapes()) == 2
    graph.run(_unet_feeds(128, 64))
    shapes = [dict(key)["sample"] for key in graph.compiled_shapes()]
    # (64, 128) was the least recently used and went; the newest shape is last.
    assert shapes == [(2, 4, 8, 8), (2, 4, 16, 8)]


def test_dynamic_mode_one_compiled_model_per_batch_for_every_canvas(unet_path):
    graph = OvGraph("unet", unet_path, OvOptions(precision="fp32"))  # dynamic is the default
    static = OvGraph("unet", unet_path, OvOptions(precision="fp32", shapes="static", max_shapes=4))
    for height, width in ((64, 64), (64, 128), (128, 64)):
        feeds = _unet_feeds(height, width)
        np.testing.assert_allclose(graph.run(feeds)["out_sample"], static.run(feeds)["out_sample"],
                                   rtol=0, atol=1e-5)
    assert [dict(key)["sample"] for key in graph.compiled_shapes()] == [(2, 4, -1, -1)]
    # Another batch (the unguided tail's) is its own compiled model; the spatial sizes stay free.
    feeds = _unet_feeds(64, 64)
    feeds = {**feeds, "sample": feeds["sample"][:1], "encoder_hidden_states": feeds["encoder_hidden_states"][:1]}
    graph.run(feeds)
    assert [dict(key)["sample"] for key in graph.compiled_shapes()] == [(2, 4, -1, -1), (1, 4, -1, -1)]
    graph.release_memory()  # frees buffers only: the next run gives the same result
    np.testing.assert_array_equal(graph.run(feeds)["out_sample"], graph.run(feeds)["out_sample"])


def test_unknown_shape_mode_is_refused():
    with pytest.raises(OutpaintError, match="shapes must be one of dynamic, static"):
        OvOptions(shapes="ragged")


def test_wrong_input_is_named_in_the_error(unet_path):
    graph = OvGraph("unet", unet_path, OvOptions(precision="fp32"))
    feeds = _unet_feeds(64, 64)
    feeds["sample"] = feeds["sample"].astype(np.float64)
    with pytest.raises(OutpaintError, match=r"unet\.sample: dtype float64, the graph takes float32"):
        graph.run(feeds)
    feeds = _unet_feeds(64, 64)
    del feeds["timestep"]
    with pytest.raises(OutpaintError, match="timestep"):
        graph.run(feeds)


def test_unknown_precision_is_refused():
    with pytest.raises(BackendUnavailable, match="fp8"):
        check_precision_supported("fp8")


def test_bf16_without_native_bf16_is_refused_with_the_reason(unet_path):
    if has_native_bf16():
        pytest.skip("this CPU runs bf16 natively: nothing to refuse")
    # Emulated bf16 is slower than fp32: an explicit openvino-bf16 must fail, naming what OpenVINO reports.
    with pytest.raises(BackendUnavailable, match=r"no native bf16 \(OpenVINO reports .*FP32"):
        OvGraph("unet", unet_path, OvOptions(precision="bf16"))


def test_concurrent_calls_give_the_sequential_results(unet_path):
    graph = OvGraph("unet", unet_path, OvOptions(precision="fp32"))
    inputs = [_unet_feeds(64, 64, seed) for seed in range(4)]
    expected = [graph.run(feeds)["out_sample"] for feeds in inputs]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = graph.run(inputs[i])["out_sample"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for i in range(4):
        np.testing.assert_array_equal(results[i], expected[i])


def test_pipeline_on_openvino_fp32_matches_ort_cpu(tiny_model_dir, tiny_pipeline):
    from outpaint.engine.canvas import SourceImage
    from outpaint.engine.pipeline import OutpaintPipeline
    from outpaint.engine.request import OutpaintRequest

    rng = np.random.default_rng(5)
    source = SourceImage(rgb=rng.integers(0, 256, (128, 64, 3), dtype=np.uint8), known=np.ones((128, 64), bool))
    request = OutpaintRequest(prompt="a street", img_width=128, img_height=128, num_inference_steps=4, seed=3)
    # Colour match off on both: it scales colour statistics, so it would magnify the runtimes' rounding;
    # the coherence pass too: it re-encodes the first pass's rounded pixels.
    from outpaint.engine.coherence import COHERENCE_OFF

    expected = OutpaintPipeline.load(tiny_model_dir, "ort-cpu", colour_match="off",
                                     coherence=COHERENCE_OFF)(source, request)
    actual = OutpaintPipeline.load(tiny_model_dir, "openvino-fp32", colour_match="off",
                                   coherence=COHERENCE_OFF)(source, request)
    error = _rel_error(actual.latents, expected.latents)
    print(f"final latents, openvino-fp32 vs ort-cpu: max relative error {error:.2e}")
    assert error < 1e-4
    assert np.abs(actual.image.astype(int) - expected.image.astype(int)).max() <= 1


def _static_model(core, path, feeds):
    model = core.read_model(str(path))
    model.reshape({name: list(value.shape) for name, value in feeds.items()})
    return model


def test_fp32_prologue_split_computes_the_same_function(unet_path):
    from outpaint.engine.backends.ov_prologue import split_fp32_prologue

    core = ov.Core()
    fp32 = {"INFERENCE_PRECISION_HINT": "f32"}
    feeds = _unet_feeds(64, 64)
    expected = core.compile_model(_static_model(core, unet_path, feeds), "CPU", fp32)(feeds)[0]
    split = split_fp32_prologue(_static_model(core, unet_path, feeds), "timestep")
    assert split is not None and split.output_names
    assert "timestep" not in {name for p in split.main.inputs for name in p.get_names()}
    prologue = core.compile_model(split.prologue, "CPU", fp32)({"timestep": feeds["timestep"]})
    main_feeds = {"sample": feeds["sample"], "encoder_hidden_states": feeds["encoder_hidden_states"]}
    main_feeds.update({name: prologue[name] for name in split.output_names})
    actual = core.compile_model(split.main, "CPU", fp32)(main_feeds)[0]
    assert _rel_error(actual, expected) < 1e-5


def test_a_graph_without_the_prologue_input_is_not_split(tiny_model_dir):
    from outpaint.engine.backends.ov_prologue import split_fp32_prologue

    core = ov.Core()
    feeds = {"latent": np.zeros((1, 4, 8, 8), np.float32)}
    assert split_fp32_prologue(_static_model(core, tiny_model_dir / "vae_decoder" / "model.onnx", feeds),
                               "timestep") is None
