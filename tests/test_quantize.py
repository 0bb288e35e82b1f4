"""`outpaint quantize` (export/quantize.py) and the openvino-int8 backend that runs its twins: the twins
are recorded with their parity and checked like every graph, the backend runs them in place of the UNet
graphs and the VAE (the VAE's where the folder has them), and what cannot be done is a clear error naming
the fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from outpaint.core.errors import BackendUnavailable, ModelError
from outpaint.core.graphs import TEXT_ENCODER, UNET_DEEP, UNET_SHALLOW, VAE_DECODER, VAE_ENCODER, int8_file, int8_key
from outpaint.core.manifest import Manifest
from outpaint.engine.backends.openvino import OvGraph
from outpaint.engine.coherence import COHERENCE_OFF
from outpaint.engine.cpu_features import cpu_features
from outpaint.engine.fast_path import FastPathOptions
from outpaint.engine.pipeline import OutpaintPipeline
from outpaint.export.quantize import INT8_MAX_REL_ERROR, Calibration, calibration_outpaints, quantize_model

pytest.importorskip("nncf")
pytest.importorskip("openvino")

CALIBRATION = Calibration(steps=3, prompts=("a lighthouse on a cliff",))


@pytest.fixture(scope="module")
def quantized_dir(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-int8") / "model"
    shutil.copytree(tiny_model_dir, folder)
    quantize_model(folder, calibration=CALIBRATION)
    # By default the UNet graphs only; the VAE's twins when asked for, beside them.
    assert {key for key in Manifest.load(folder).graphs if key.endswith(".int8")} == {
        int8_key(UNET_DEEP), int8_key(UNET_SHALLOW)}
    quantize_model(folder, [VAE_ENCODER, VAE_DECODER], CALIBRATION)
    return folder


def test_the_twins_are_recorded_with_their_files_and_parity(quantized_dir):
    from outpaint.info import describe_model

    manifest = Manifest.load(quantized_dir)
    assert describe_model(quantized_dir)["int8_modes"] == {
        UNET_DEEP: "full", UNET_SHALLOW: "full", VAE_ENCODER: "full", VAE_DECODER: "full"}
    for graph in (UNET_DEEP, UNET_SHALLOW, VAE_ENCODER, VAE_DECODER):
        record = manifest.graphs[int8_key(graph)]
        assert record.file == int8_file(graph)
        assert set(record.files or {}) == {int8_file(graph), int8_file(graph).removesuffix(".xml") + ".bin"}
        assert record.problems(quantized_dir, hashes=True) == []
        assert 0 < record.parity["max_rel_error"] <= INT8_MAX_REL_ERROR
        assert record.parity["calibration_feeds"] >= 1
        # The same signature as the graph it stands in for.
        assert (record.inputs, record.outputs) == (manifest.graphs[graph].inputs, manifest.graphs[graph].outputs)


def test_the_int8_fast_path_runs_the_twins_and_stays_near_fp32(quantized_dir):
    source, request = calibration_outpaints(256, Calibration(steps=4, prompts=("a harbour",)))[0]
    images = {}
    for backend in ("openvino-fp32", "openvino-int8"):
        pipeline = OutpaintPipeline.load(quantized_dir, backend, options=FastPathOptions(), coherence=COHERENCE_OFF)
        if backend == "openvino-int8":
            runners = [pipeline.graphs[g] for g in (UNET_DEEP, UNET_SHALLOW, VAE_ENCODER, VAE_DECODER)]
            assert all(isinstance(r, OvGraph) and r.path.name == "model.int8.xml" for r in runners)
            text_encoder = pipeline.graphs[TEXT_ENCODER]
            assert isinstance(text_encoder, OvGraph) and text_encoder.path.name == "model.onnx"
        result = pipeline(source, request)
        images[backend] = result.image
    known = result.canvas.mask == 0
    # Outside the new area both are the source (paste-back), bit for bit.
    np.testing.assert_array_equal(images["openvino-int8"][known], images["openvino-fp32"][known])
    diff = images["openvino-int8"].astype(np.float64) - images["openvino-fp32"]
    psnr = 10 * np.log10(255.0**2 / max(float((diff[~known] ** 2).mean()), 1e-9))
    assert 15 < psnr < 99, psnr  # int8 changes the new area, but not into noise (random tiny weights)


def test_the_graphs_without_a_twin_can_run_in_bf16_where_it_is_native(quantized_dir, monkeypatch, tmp_path):
    folder = tmp_path / "model"  # the UNet's twins only, as `outpaint quantize` makes by default
    shutil.copytree(quantized_dir, folder)
    manifest = Manifest.load(folder)
    for graph in (VAE_ENCODER, VAE_DECODER):
        del manifest.graphs[int8_key(graph)]
    manifest.save(folder)
    monkeypatch.setenv("OUTPAINT_OV_INT8_FLOAT", "bf16")
    if not cpu_features().native_bf16:
        with pytest.raises(BackendUnavailable, match="no native bf16"):
            OutpaintPipeline.load(folder, "openvino-int8", options=FastPathOptions())
        return
    pipeline = OutpaintPipeline.load(folder, "openvino-int8", options=FastPathOptions(), coherence=COHERENCE_OFF)
    runners = {name: r for name, r in pipeline.graphs.items() if isinstance(r, OvGraph)}
    precisions = {name: (r.path.name, r.options.precision) for name, r in runners.items()}
    assert precisions[UNET_DEEP] == ("model.int8.xml", "fp32")  # a twin keeps the hint it is fastest under
    assert precisions[VAE_DECODER] == ("model.onnx", "bf16") and precisions[TEXT_ENCODER] == ("model.onnx", "bf16")
    source, request = calibration_outpaints(256, Calibration(steps=2, prompts=("a harbour",)))[0]
    assert pipeline(source, request).image.shape == (256, 256, 3)


def test_an_unknown_float_precision_for_the_int8_backend_is_refused(quantized_dir, monkeypatch):
    monkeypatch.setenv("OUTPAINT_OV_INT8_FLOAT", "fp16")
    with pytest.raises(BackendUnavailable, match="'fp16' is not one of"):
        OutpaintPipeline.load(quantized_dir, "openvino-int8", options=FastPathOptions())


def test_a_folder_without_twins_names_the_command(tiny_model_dir):
    with pytest.raises(ModelError, match=r"no int8 twin of unet_deep, unet_shallow: run `outpaint quantize"):
        OutpaintPipeline.load(tiny_model_dir, "openvino-int8", options=FastPathOptions())


def test_a_damaged_twin_is_caught_at_load(quantized_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(quantized_dir, folder)
    weights = folder / int8_file(UNET_SHALLOW).removesuffix(".xml")
    with open(f"{weights}.bin", "r+b") as f:
        f.truncate(100)
    with pytest.raises(ModelError, match=r"unet_shallow/model.int8.bin has 100 bytes"):
        OutpaintPipeline.load(folder, "openvino-int8", options=FastPathOptions())


def test_exporting_a_graph_again_drops_its_stale_twin(quantized_dir, tiny_components, tmp_path):
    from outpaint.export.onnx_export import export_components

    folder = tmp_path / "model"
    shutil.copytree(quantized_dir, folder)
    with open(folder / "unet_shallow" / "model.onnx", "r+b") as f:
        f.truncate(100)
    export_components(tiny_components, folder)  # re-exports the damaged graph only
    graphs = Manifest.load(folder).graphs
    assert int8_key(UNET_SHALLOW) not in graphs and not (folder / int8_file(UNET_SHALLOW)).exists()
    assert graphs[int8_key(UNET_DEEP)].problems(folder, hashes=True) == []  # made from an intact graph: kept


def test_the_text_encoder_does_not_quantize(tiny_model_dir):
    with pytest.raises(ModelError, match="cannot quantize text_encoder: the int8 twins are of unet, unet_deep, "
                       "unet_shallow, vae_encoder, vae_decoder"):
        quantize_model(tiny_model_dir, [TEXT_ENCODER], CALIBRATION)


def test_a_folder_quantized_before_the_vae_was_runs_its_vae_in_fp32(quantized_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(quantized_dir, folder)
    manifest = Manifest.load(folder)
    for graph in (VAE_ENCODER, VAE_DECODER):
        del manifest.graphs[int8_key(graph)]
    manifest.save(folder)
    pipeline = OutpaintPipeline.load(folder, "openvino-int8", options=FastPathOptions())
    runners = {g: pipeline.graphs[g] for g in (UNET_DEEP, VAE_ENCODER, VAE_DECODER)}
    names = {g: runner.path.name for g, runner in runners.items() if isinstance(runner, OvGraph)}
    assert names == {UNET_DEEP: "model.int8.xml", VAE_ENCODER: "model.onnx", VAE_DECODER: "model.onnx"}


def test_the_command_rejects_too_few_steps(tiny_model_dir):
    done = subprocess.run([sys.executable, "-m", "outpaint.cli", "quantize", str(tiny_model_dir), "--steps", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "--steps must be >= 3" in done.stderr
    assert int8_key(UNET_DEEP) not in json.loads((tiny_model_dir / "manifest.json").read_text())["graphs"]


def test_calibration_extends_each_source_in_turn_to_the_right_down_and_left(tmp_path):
    from PIL import Image

    path = tmp_path / "wide.png"
    Image.new("RGB", (300, 100), (200, 10, 10)).save(path)
    pairs = calibration_outpaints(256, Calibration(steps=5, prompts=("a", "b", "c"), images=(path,)))
    shapes = [(source.rgb.shape, request.offset_x, request.offset_y) for source, request in pairs]
    assert shapes == [((256, 128, 3), 0, 0), ((128, 256, 3), 0, 0), ((256, 128, 3), 128, 0)]
    assert all(request.num_inference_steps == 5 and (request.img_width, request.img_height) == (256, 256)
               for _, request in pairs)
    assert (pairs[0][0].rgb == (200, 10, 10)).all()  # scaled and cropped, not squashed with a border


def test_the_bench_runs_int8_beside_the_fast_path_which_picks_it_as_fast_does(quantized_dir, tmp_path):
    from outpaint.cli import main
    from outpaint.engine.cpu_features import fast_backend

    out = tmp_path / "results.json"
    systems = "outpaint-ort-cpu,outpaint-fast,outpaint-fast-int8"
    code = main(["bench", "--size", "tiny", "--model", str(quantized_dir), "--out", str(out), "--steps", "2",
                 "--warmup", "0", "--runs", "1", "--unet-canvases", "256x256", "--systems", systems,
                 "--whole-systems", systems])
    assert code == 0
    results = json.loads(out.read_text())
    # The folder has twins: outpaint-fast runs them where `--fast` would (VNNI without native bf16).
    assert results["fast_path"]["backend"] == fast_backend(int8_twins=True).backend
    stages = {r["stage"] for r in results["rows"] if r["system"] == "outpaint-fast-int8"}
    assert {"unet_step_window", "unet_step_window_shallow", "outpaint_2_steps"} <= stages
    quality = {q["system"]: q for q in results["quality"]}
    assert quality["outpaint-fast-int8"]["identical_outside_mask"]


@pytest.fixture(scope="module")
def hybrid_dir(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-int8-hybrid") / "model"
    shutil.copytree(tiny_model_dir, folder)
    quantize_model(folder, [UNET_DEEP], CALIBRATION, mode="hybrid")
    return folder


def _int8_inputs(folder, graph: str, linear: list[str], edges: list[str]) -> dict[str, list[bool]]:
    """For the twin of `graph` in `folder`: per kind of op (the edges kept in float, the other
    convolutions, the other linear layers), whether each op's activation input (input 0) comes quantized
    (a FakeQuantize), and whether each linear layer's weight is stored in 8 bits."""
    import openvino as ov

    record = Manifest.load(folder).graphs[int8_key(graph)]
    model = ov.Core().read_model(str(folder / record.file))
    by_name = {op.get_friendly_name(): op for op in model.get_ops()}

    def quantized_input(op) -> bool:
        return op.input_value(0).get_node().get_type_name() == "FakeQuantize"

    def eight_bit_weight(op) -> bool:
        pending, seen = [op.input_value(1).get_node()], set()
        while pending:  # the weight's producers, back to its constants
            node = pending.pop()
            if node.get_type_name() == "Constant" and node.get_element_type().bitwidth == 8:
                return True
            if node.get_type_name() != "Constant" and node.get_friendly_name() not in seen:
                seen.add(node.get_friendly_name())
                pending.extend(value.get_node() for value in node.input_values())
        return False

    convs = [op for op in model.get_ops()
             if op.get_type_name() == "Convolution" and op.get_friendly_name() not in edges]
    return {"edge_input": [quantized_input(by_name[name]) for name in edges],
            "conv_input": [quantized_input(op) for op in convs],
            "linear_input": [quantized_input(by_name[name]) for name in linear],
            "linear_weight_8bit": [eight_bit_weight(by_name[name]) for name in linear]}


def test_hybrid_quantizes_the_convolutions_and_only_the_weights_of_the_linear_layers(hybrid_dir, quantized_dir):
    import openvino as ov

    from outpaint.export.quantize import _weighted_matmuls, float_layers

    plain = ov.Core().read_model(str(hybrid_dir / Manifest.load(hybrid_dir).graphs[UNET_DEEP].file))
    edges = float_layers(plain)
    assert {name.split("/")[2] for name in edges} >= {"conv_in", "conv_out", "time_embedding"}, edges
    linear = [name for name in _weighted_matmuls(plain) if name not in edges]
    assert len(linear) >= 10  # attention projections, feed-forward, text projections
    hybrid = _int8_inputs(hybrid_dir, UNET_DEEP, linear, edges)
    full = _int8_inputs(quantized_dir, UNET_DEEP, linear, edges)
    assert Manifest.load(hybrid_dir).graphs[int8_key(UNET_DEEP)].int8_mode == "hybrid"
    assert Manifest.load(quantized_dir).graphs[int8_key(UNET_DEEP)].int8_mode == "full"
    # Neither quantizes the edges.
    assert not any(hybrid["edge_input"]) and not any(full["edge_input"])
    # Both quantize the other convolutions' activations.
    assert sum(hybrid["conv_input"]) >= 0.8 * len(hybrid["conv_input"]), hybrid["conv_input"]
    assert sum(full["conv_input"]) >= 0.8 * len(full["conv_input"]), full["conv_input"]
    # Hybrid keeps every linear layer's input in float and stores its weight in 8 bits; full quantizes
    # the inputs of most of them (its weights stay fp32 behind a FakeQuantize until compile time).
    assert not any(hybrid["linear_input"]) and all(hybrid["linear_weight_8bit"])
    assert sum(full["linear_input"]) >= 0.5 * len(linear), full["linear_input"]
    parity = Manifest.load(hybrid_dir).graphs[int8_key(UNET_DEEP)].parity
    assert 0 < parity["max_rel_error"] <= INT8_MAX_REL_ERROR


def test_the_command_names_the_modes(tiny_model_dir):
    done = subprocess.run([sys.executable, "-m", "outpaint.cli", "quantize", str(tiny_model_dir), "--mode", "int4"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "argument --mode: invalid choice: 'int4'" in done.stderr  # argparse quotes the choices or not by version
    assert "hybrid" in done.stderr and "full" in done.stderr


def test_fast_picks_the_twins_only_where_every_fast_path_graph_has_one_of_the_current_recipe(
        quantized_dir, hybrid_dir, tiny_model_dir, tmp_path):
    from outpaint.engine.cpu_features import model_has_int8_twins

    assert model_has_int8_twins(quantized_dir)
    assert not model_has_int8_twins(tiny_model_dir)
    assert not model_has_int8_twins(hybrid_dir)  # unet_shallow has no twin there
    assert not model_has_int8_twins(tmp_path / "missing")
    legacy = tmp_path / "legacy"
    shutil.copytree(quantized_dir, legacy)
    manifest = json.loads((legacy / "manifest.json").read_text())
    del manifest["graphs"][int8_key(UNET_SHALLOW)]["int8_mode"]  # as twins were written before the recipes
    (legacy / "manifest.json").write_text(json.dumps(manifest))
    assert not model_has_int8_twins(legacy)
    from outpaint.info import LEGACY_INT8, describe_model

    assert describe_model(legacy)["int8_modes"] == {UNET_DEEP: "full", UNET_SHALLOW: LEGACY_INT8,
                                                    VAE_ENCODER: "full", VAE_DECODER: "full"}


def test_the_recipe_ablation_scores_each_recipe_on_held_out_feeds(tiny_model_dir):
    from outpaint.benchmarks.int8_recipes import run

    results = run(tiny_model_dir, Calibration(steps=3, prompts=("a lighthouse on a cliff",)),
                  ["every-layer", "edges-float"])
    for recipe in ("every-layer", "edges-float"):
        for graph in (UNET_DEEP, UNET_SHALLOW):
            row = results[recipe][graph]
            assert 0 < row["max_rel_error_mean"] < 1 and np.isfinite(row["psnr_db_mean"])
            assert row["psnr_db_worst"] <= row["psnr_db_mean"]
    # Different recipes give different graphs: the scores are measured, not shared.
    assert results["every-layer"][UNET_DEEP] != results["edges-float"][UNET_DEEP]


@pytest.mark.parametrize("graph", [VAE_ENCODER, VAE_DECODER])
def test_the_vae_twins_keep_their_edges_in_float_and_the_rest_in_int8(quantized_dir, graph):
    import openvino as ov

    from outpaint.export.quantize import VAE_FLOAT_LAYERS, float_layers

    plain = ov.Core().read_model(str(quantized_dir / Manifest.load(quantized_dir).graphs[graph].file))
    edges = float_layers(plain, VAE_FLOAT_LAYERS)
    assert {name.split("/")[-3] for name in edges} >= {"conv_in", "conv_out"}, edges
    twin = _int8_inputs(quantized_dir, graph, [], edges)
    assert not any(twin["edge_input"])
    assert sum(twin["conv_input"]) >= 0.8 * len(twin["conv_input"]), twin["conv_input"]


def test_the_vae_benchmark_swaps_the_twins_in_one_pipeline_and_names_what_is_missing(quantized_dir, tiny_model_dir):
    from outpaint.benchmarks.vae_int8 import compare

    report = compare(quantized_dir, runs=1)
    assert [row["vae"] for row in report["rows"]] == ["int8", "fp32"]
    assert all(row["vae_decode_s"] > 0 and row["total_s"] >= row["denoise_s"] for row in report["rows"])
    assert set(report["int8_over_fp32"]) == {"total_s", "vae_encode_s", "denoise_s", "vae_decode_s"}
    with pytest.raises(ModelError, match="no int8 twin of vae_encoder, vae_decoder"):
        compare(tiny_model_dir, runs=1)
