"""Export: every graph checked against PyTorch, idempotent re-runs, sources and their errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from outpaint.core.errors import ModelError
from outpaint.core.manifest import Manifest

from .conftest import run_onnx

pytest.importorskip("torch")


def test_every_graph_is_recorded_with_a_passed_parity_check(tiny_model_dir):
    manifest = Manifest.load(tiny_model_dir)
    assert set(manifest.graphs) == {"text_encoder", "unet", "vae_encoder", "vae_decoder", "unet_deep", "unet_shallow",
                                    "unet.mha", "vae_encoder.mha", "vae_decoder.mha", "unet_deep.mha",
                                    "unet_shallow.mha"}
    for name, record in manifest.graphs.items():
        assert (tiny_model_dir / record.file).is_file(), name
        assert record.parity["max_rel_error"] <= record.parity["tolerance"], name
    assert manifest.unet_in_channels == 4 and manifest.vae_scaling_factor == pytest.approx(0.18215)
    assert {"torch", "diffusers", "onnx", "onnxruntime", "outpaint"} <= set(manifest.versions)
    assert json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())["steps_offset"] == 1


def test_graphs_have_dynamic_batch_and_canvas_axes(tiny_model_dir):
    import onnxruntime as ort

    session = ort.InferenceSession(str(tiny_model_dir / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    sample = session.get_inputs()[0]
    assert sample.name == "sample" and sample.shape == ["2B", 4, "H/8", "W/8"]


def test_each_graph_matches_pytorch_at_a_new_shape(tiny_components, tiny_model_dir):
    from outpaint.core.graphs import canvas_dims, graph_specs
    from outpaint.export.onnx_export import check_parity
    from outpaint.export.torch_modules import graph_modules

    modules = graph_modules(tiny_components)
    for spec in graph_specs(4, 32):
        result = check_parity(modules[spec.name], spec, tiny_model_dir / spec.name / "model.onnx",
                              canvas_dims(2, 192, 64))
        print(spec.name, result["max_abs_error"])
        assert result["max_rel_error"] < spec.max_rel_error


def test_parity_check_fails_loudly_on_a_wrong_graph(tiny_model_dir, tmp_path):
    from outpaint.core.graphs import canvas_dims, text_encoder_spec
    from outpaint.export.onnx_export import ParityError, check_parity
    from outpaint.export.random_models import build_random_components
    from outpaint.export.torch_modules import graph_modules

    other = build_random_components("tiny", seed=1, workdir=tmp_path)  # other weights, same architecture
    with pytest.raises(ParityError, match="over the tolerance"):
        check_parity(graph_modules(other)["text_encoder"], text_encoder_spec(32),
                     tiny_model_dir / "text_encoder" / "model.onnx", canvas_dims(1, 64, 64))


def test_rerunning_an_export_skips_what_is_done(tiny_components, tiny_model_dir, tmp_path):
    from outpaint.export.onnx_export import export_components

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    statuses: list[tuple[str, str]] = []
    export_components(tiny_components, copy, progress=lambda graph, status: statuses.append((graph, status)))
    graphs = ("text_encoder", "unet", "vae_encoder", "vae_decoder", "unet_deep", "unet_shallow",
              "unet.mha", "vae_encoder.mha", "vae_decoder.mha", "unet_deep.mha", "unet_shallow.mha")
    assert statuses == [(g, "skipped") for g in graphs]


MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "requires_safety_checker": False,
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None], "feature_extractor": [None, None],
}


def _diffusers_folder(components, folder):
    """`components` saved the way diffusers publishes SD 1.5 (model_index.json and one folder each)."""
    components.text_encoder.save_pretrained(folder / "text_encoder")
    components.unet.save_pretrained(folder / "unet")
    components.vae.save_pretrained(folder / "vae")
    shutil.copytree(components.tokenizer_dir, folder / "tokenizer")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(components.scheduler_config))
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX))
    return folder


def test_export_from_a_diffusers_folder_gives_the_same_graphs(tiny_components, tiny_model_dir, tmp_path):

    from outpaint.export.onnx_export import export_components
    from outpaint.export.sources import load_components

    folder = _diffusers_folder(tiny_components, tmp_path / "sd15")
    loaded = load_components(str(folder))
    assert loaded.fingerprint.startswith("sha256:")
    manifest = export_components(loaded, tmp_path / "out")
    assert manifest.fingerprint == loaded.fingerprint
    feeds = {"latent": np.random.default_rng(0).standard_normal((1, 4, 8, 8), dtype=np.float32)}
    outputs = [run_onnx(root / "vae_decoder" / "model.onnx", feeds)[0] for root in (tiny_model_dir, tmp_path / "out")]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-6)


def test_incomplete_folder_names_what_is_missing(tmp_path):
    from outpaint.export.sources import load_components

    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelError, match="missing text_encoder/, tokenizer/, vae/, scheduler/"):
        load_components(str(tmp_path))


def test_missing_source_and_offline_hub_id_are_clear_errors(monkeypatch):
    from outpaint.export.sources import load_components

    with pytest.raises(ModelError, match="does not exist"):
        load_components("/no/such/folder")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="pass a local diffusers-format folder"):
        load_components("some-user/some-model")


def test_fused_attention_twin_replaces_softmax_attention_and_matches_the_standard_graph(tiny_model_dir):
    import onnx

    fused = onnx.load(str(tiny_model_dir / "unet" / "model.mha.onnx"))
    ops = [node.op_type for node in fused.graph.node]
    # 3 down + 1 mid + 3 up levels with transformer blocks (self and cross attention each): at least 14
    assert ops.count("MultiHeadAttention") >= 14 and "Softmax" not in ops
    feeds = {
        "sample": np.random.default_rng(0).standard_normal((2, 4, 24, 40), dtype=np.float32),
        "timestep": np.array([301.0], np.float32),
        "encoder_hidden_states": np.random.default_rng(1).standard_normal((2, 77, 32), dtype=np.float32),
    }
    outputs = [run_onnx(tiny_model_dir / "unet" / name, feeds)[0] for name in ("model.onnx", "model.mha.onnx")]
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5 * np.abs(outputs[0]).max())


def test_onnx_runtime_backends_run_the_fused_twin(tiny_pipeline):
    for graph in ("unet", "vae_encoder", "vae_decoder"):
        assert tiny_pipeline.graphs[graph].path.name == "model.mha.onnx"


@pytest.mark.parametrize("variant", ["model.onnx", "model.mha.onnx"])
def test_shallow_path_on_the_deep_feature_of_the_same_call_is_the_whole_unet(tiny_model_dir, variant):
    """The split is exact where the feature is fresh: DeepCache's only approximation is its age."""

    def run(graph, feeds, outputs=None):
        return run_onnx(tiny_model_dir / graph / variant, feeds, outputs)

    rng = np.random.default_rng(3)
    feeds = {
        "sample": rng.standard_normal((2, 4, 16, 40), dtype=np.float32),
        "timestep": np.array([421.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, 77, 32), dtype=np.float32),
    }
    whole = run("unet", feeds)[0]
    eps, feature = run("unet_deep", feeds, ["out_sample", "deep_feature"])
    shallow = run("unet_shallow", {**feeds, "deep_feature": feature})[0]
    peak = np.abs(whole).max()
    np.testing.assert_allclose(eps, whole, atol=1e-5 * peak)
    np.testing.assert_allclose(shallow, whole, atol=1e-5 * peak)
    # A stale feature (another timestep's) must change the output, or the shallow graph ignores it.
    later = {**feeds, "timestep": np.array([901.0], np.float32)}
    _, stale = run("unet_deep", later, ["out_sample", "deep_feature"])
    moved = run("unet_shallow", {**feeds, "deep_feature": stale})[0]
    assert np.abs(moved - whole).max() > 1e-3 * peak


def test_export_without_feature_cache_skips_the_split(tiny_components, tmp_path):
    from outpaint.export.onnx_export import export_components

    statuses: list[tuple[str, str]] = []
    export_components(tiny_components, tmp_path / "model", feature_cache=False,
                      progress=lambda graph, status: statuses.append((graph, status)))
    done = {graph for graph, status in statuses if status == "done"}
    assert done == {"text_encoder", "unet", "vae_encoder", "vae_decoder", "unet.mha", "vae_encoder.mha",
                    "vae_decoder.mha"}


def test_export_without_attention_twins_writes_only_the_four_graphs_and_loads(tiny_components, tmp_path):
    """What `outpaint bench --gpu-check` exports to fit its time: ONNX Runtime then runs the plain graphs."""
    from outpaint.core.manifest import Manifest
    from outpaint.engine.backends.registry import ort_graph_file
    from outpaint.engine.pipeline import OutpaintPipeline
    from outpaint.export.onnx_export import export_components

    statuses: list[tuple[str, str]] = []
    export_components(tiny_components, tmp_path / "model", feature_cache=False, attention_twins=False,
                      progress=lambda graph, status: statuses.append((graph, status)))
    assert {graph for graph, status in statuses if status == "done"} == {
        "text_encoder", "unet", "vae_encoder", "vae_decoder"}
    manifest = Manifest.load(tmp_path / "model")
    assert ort_graph_file(manifest, "unet") == manifest.graphs["unet"].file
    assert OutpaintPipeline.load(tmp_path / "model").graphs["unet"] is not None


def test_single_file_checkpoint_loads_every_weight_exactly(tiny_components, tmp_path):
    """An original-layout (LDM) .safetensors of the tiny model, read through `outpaint export`'s own path."""
    from outpaint.export.sources import load_components

    from .ldm_layout import write_ldm_checkpoint

    checkpoint = tmp_path / "tiny-sd15.safetensors"
    write_ldm_checkpoint(tiny_components, checkpoint)
    loaded = load_components(str(checkpoint), config=_diffusers_folder(tiny_components, tmp_path / "configs"))
    assert loaded.description.startswith("single-file checkpoint") and loaded.fingerprint.startswith("sha256:")
    for name in ("unet", "vae", "text_encoder"):
        expected, actual = getattr(tiny_components, name).state_dict(), getattr(loaded, name).state_dict()
        assert set(actual) == set(expected), name
        for key, tensor in expected.items():
            assert actual[key].equal(tensor), f"{name}.{key}"
    assert loaded.scheduler_config["steps_offset"] == 1 and (loaded.tokenizer_dir / "tokenizer.json").is_file()


def test_fused_attention_export_prints_no_shape_inference_warning(tmp_path):
    # torch's exporter prints a C++ warning (beyond Python's warnings filters) for every custom-domain op
    # whose output type the symbolic leaves unknown: dozens per `outpaint export` before the fix.
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from outpaint.export.attention import _MultiHeadAttention\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, q):\n"
        "        return _MultiHeadAttention.apply(q, q, q, 2)\n"
        "q = torch.randn(1, 16, 8)\n"
        f"torch.onnx.export(M(), (q,), {str(tmp_path / 'm.onnx')!r}, input_names=['q'], "
        "dynamic_axes={'q': {1: 'n'}}, opset_version=17, dynamo=False)\n"
    )
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "MultiHeadAttention type is missing" not in done.stderr, done.stderr


# -- damaged graphs: found at load, replaced at re-export (issue 11) -----------------------------


def _statuses(components, folder, **kwargs) -> dict[str, str]:
    from outpaint.export.onnx_export import export_components

    seen: dict[str, str] = {}
    export_components(components, folder, progress=lambda graph, status: seen.__setitem__(graph, status), **kwargs)
    return seen


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_every_graph_file_is_recorded_with_its_size_and_sha256(tiny_model_dir):
    from outpaint.core.manifest import describe_file

    manifest = Manifest.load(tiny_model_dir)
    for key, record in manifest.graphs.items():
        assert record.files is not None and record.file in record.files, key
        for name, recorded in record.files.items():
            assert describe_file(tiny_model_dir / name) == recorded, name


@pytest.mark.parametrize("graph_file", ["unet/model.mha.onnx", "vae_decoder/model.onnx"])
def test_a_truncated_graph_is_a_model_error_naming_the_file_and_the_command_that_repairs_it(
    tiny_model_dir, tmp_path, graph_file
):
    """It was an ONNX Runtime protobuf traceback from `run` and `serve`."""
    from outpaint.engine.pipeline import OutpaintPipeline

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    _truncate(copy / graph_file)
    with pytest.raises(ModelError) as info:
        OutpaintPipeline.load(copy)
    message = str(info.value)
    assert graph_file in message and "bytes where the export wrote" in message
    assert f"outpaint export --random tiny --seed 0 {copy}" in message


def test_re_export_replaces_damaged_graphs_and_skips_the_intact_ones(tiny_components, tiny_model_dir, tmp_path):
    """A truncated graph was skipped as done by every later `outpaint export`, so it stayed broken."""
    from outpaint.engine.pipeline import OutpaintPipeline

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    _truncate(copy / "vae_decoder" / "model.onnx")
    same_size = bytearray((copy / "text_encoder" / "model.onnx").read_bytes())
    same_size[len(same_size) // 2] ^= 0xFF  # damaged inside, size unchanged: only the hash sees it
    (copy / "text_encoder" / "model.onnx").write_bytes(bytes(same_size))
    statuses = _statuses(tiny_components, copy)
    assert {g for g, s in statuses.items() if s == "done"} == {"vae_decoder", "text_encoder"}
    assert all(s == "skipped" for g, s in statuses.items() if g not in ("vae_decoder", "text_encoder"))
    OutpaintPipeline.load(copy)  # loads again
    assert Manifest.load(copy).graphs["vae_decoder"].problems(copy, hashes=True) == []


def test_external_data_files_are_recorded_checked_and_re_exported(tiny_components, tiny_model_dir, tmp_path,
                                                                   monkeypatch):
    """The full-size UNet keeps its weights in model.onnx.data: a cut data file is found like a cut graph."""
    from outpaint.engine.pipeline import OutpaintPipeline
    from outpaint.export import onnx_export

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    manifest = Manifest.load(copy)
    del manifest.graphs["text_encoder"]  # exported again below, with its weights as external data
    manifest.save(copy)
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    assert _statuses(tiny_components, copy)["text_encoder"] == "done"
    record = Manifest.load(copy).graphs["text_encoder"]
    assert record.files is not None and set(record.files) == {"text_encoder/model.onnx", "text_encoder/model.onnx.data"}
    OutpaintPipeline.load(copy)

    _truncate(copy / "text_encoder" / "model.onnx.data", keep=0.9)
    with pytest.raises(ModelError, match=r"text_encoder/model\.onnx\.data has \d+ bytes where the export wrote"):
        OutpaintPipeline.load(copy)
    assert _statuses(tiny_components, copy)["text_encoder"] == "done"
    OutpaintPipeline.load(copy)


def test_manifests_without_file_records_still_load_and_their_graphs_are_re_exported(
    tiny_components, tiny_model_dir, tmp_path
):
    from outpaint.engine.pipeline import OutpaintPipeline

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    data = json.loads((copy / "manifest.json").read_text())
    for record in data["graphs"].values():
        record.pop("files")  # as written before sizes and hashes were recorded
    (copy / "manifest.json").write_text(json.dumps(data))
    assert all(record.files is None for record in Manifest.load(copy).graphs.values())
    OutpaintPipeline.load(copy)  # an older export still runs
    # An export into it re-checks what it cannot verify; here only the text encoder, to stay quick.
    data["graphs"] = {key: record if key == "text_encoder" else json.loads((tiny_model_dir / "manifest.json")
                      .read_text())["graphs"][key] for key, record in data["graphs"].items()}
    (copy / "manifest.json").write_text(json.dumps(data))
    statuses = _statuses(tiny_components, copy)
    assert statuses["text_encoder"] == "done" and statuses["unet"] == "skipped"
    assert Manifest.load(copy).graphs["text_encoder"].files is not None


def test_a_damaged_manifest_is_a_model_error(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format_version": 1, "graphs": {')
    with pytest.raises(ModelError, match="not valid JSON"):
        Manifest.load(tmp_path)
