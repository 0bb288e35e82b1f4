"""`outpaint build-engines` up to TensorRT's own build: precision rules, engine list, ONNX prep, progress."""

from __future__ import annotations

import importlib.util
import io
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from outpaint.core.errors import BackendUnavailable, ModelError
from outpaint.core.manifest import Manifest
from outpaint.export.tensorrt import (
    BuildOptions,
    BuildProgress,
    build_engines,
    build_items,
    check_precision,
    is_explicitly_quantized,
    prepare_onnx,
)
from outpaint.kernels.ddim_step import StepKernel

from .conftest import run_onnx

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None

@pytest.fixture(scope="module")
def model_copy(tiny_model_dir, tmp_path_factory) -> Path:
    """A private copy of the tiny model: these tests write engines/ into it."""
    target = tmp_path_factory.mktemp("model-copy") / "model"
    return Path(shutil.copytree(tiny_model_dir, target, ignore=shutil.ignore_patterns("engines")))



def test_bf16_needs_ampere_and_says_so():
    check_precision("bf16", (8, 0), explicitly_quantized=False)
    with pytest.raises(BackendUnavailable, match=r"compute capability 8.0.*7.5.*use fp16"):
        check_precision("bf16", (7, 5), explicitly_quantized=False)


def test_int8_needs_a_quantized_graph():
    check_precision("int8", (8, 9), explicitly_quantized=True)
    with pytest.raises(ModelError, match="QuantizeLinear"):
        check_precision("int8", (8, 9), explicitly_quantized=False)


def test_fp16_and_fp32_build_anywhere_and_unknown_precisions_do_not():
    for precision in ("fp16", "fp32"):
        check_precision(precision, (7, 5), explicitly_quantized=False)
    with pytest.raises(ValueError, match="fp8"):
        check_precision("fp8", (9, 0), explicitly_quantized=False)


def test_quantization_is_detected_from_qdq_nodes():
    from onnx import TensorProto, helper

    def model(op_types):
        nodes = [helper.make_node(op, ["x", "s", "z"] if "Linear" in op else ["x"], ["y"]) for op in op_types]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        return helper.make_model(graph)

    assert is_explicitly_quantized(model(["QuantizeLinear"]))
    assert not is_explicitly_quantized(model(["Relu"]))


def test_the_engine_set_is_the_four_graphs_and_both_step_kernels(tiny_model_dir):
    items = build_items(Manifest.load(tiny_model_dir), "fp16")
    assert [i.name for i in items[:4]] == ["text_encoder", "unet", "vae_encoder", "vae_decoder"]
    assert {i.precision for i in items[:4]} == {"fp16"}
    kernels = [i.kernel for i in items[4:]]
    assert kernels == [StepKernel(guided=True, blend=True), StepKernel(guided=False, blend=True)]
    assert {i.precision for i in items[4:]} == {"fp32"}, "the latents' arithmetic stays fp32"


def test_prepare_onnx_writes_cleaned_graphs_and_runnable_kernels(model_copy):
    manifest = Manifest.load(model_copy)
    items = build_items(manifest, "fp16")
    paths = prepare_onnx(model_copy, manifest, items)
    assert set(paths) == {i.name for i in items}
    for item in items:
        model = onnx.load(str(paths[item.name]))
        assert [i.name for i in model.graph.input] == [t.name for t in item.spec.inputs]
    kernel = items[-1].kernel
    assert kernel is not None, "the last build item is the step kernel"
    feeds = {n: np.ones(s, np.float32) * 0.5 for n, s in kernel.input_shapes(8, 8).items()}
    assert run_onnx(paths[kernel.name], feeds)[0].shape == (1, 4, 8, 8)
    before = paths["unet"].stat().st_mtime_ns
    prepare_onnx(model_copy, manifest, items)
    assert paths["unet"].stat().st_mtime_ns == before, "prepared graphs are reused"


def test_build_progress_follows_nested_phases_and_can_cancel():
    out = io.StringIO()
    progress = BuildProgress(file=out)
    progress.phase_start("Building engine", None, 3)
    progress.phase_start("Tactic selection", "Building engine", 10)
    for step in range(10):
        assert progress.step_complete("Tactic selection", step)
    assert progress.steps_done("Tactic selection") == 10
    progress.phase_finish("Tactic selection")
    assert progress.step_complete("Building engine", 0)
    assert progress.open_phases() == ["Building engine"]
    progress.cancel()
    assert progress.step_complete("Building engine", 1) is False, "False asks TensorRT to stop"
    progress.phase_finish("Building engine")
    assert progress.open_phases() == []
    assert "  Tactic selection" in out.getvalue(), "a nested phase is indented under its parent"


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here")
def test_building_without_tensorrt_names_the_missing_package(tiny_model_dir):
    with pytest.raises(BackendUnavailable, match=r"`tensorrt` Python package.*outpaint\[gpu\]"):
        build_engines(tiny_model_dir, BuildOptions())


def test_no_clean_hands_tensorrt_the_exported_graphs(model_copy):
    manifest = Manifest.load(model_copy)
    paths = prepare_onnx(model_copy, manifest, build_items(manifest, "fp16"), clean=False)
    assert paths["unet"] == model_copy / manifest.graphs["unet"].file
    assert paths["ddim_step_guided_blend_c4"].is_file(), "the kernels are generated either way"
