"""An optimum ONNX export folder read in place (core/optimum_folder.py), against our export of the same weights.

The optimum folder is made by optimum's own exporter (`python -m optimum.exporters.onnx`, in
.venv-optimum: export/optimum_export.py) from the tiny model's very modules, the ones `tiny_model_dir`
exported. Both are ONNX graphs of the same weights traced by the same torch, so the same seed must give
the same latents to float tolerance: 1e-4 relative, the tolerance every exported graph's parity check
against PyTorch uses (graphs.py). The uint8 images may differ where a float difference of ~1e-6 crosses a
rounding boundary, amplified by the random-weight VAE decoder (measured: a few pixels by up to 3 levels,
83 dB); 60 dB is far above a visible difference (a one-level error on every pixel is 48 dB).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from outpaint.benchmarks.workload import psnr_db
from outpaint.core.errors import ModelError
from outpaint.core.manifest import MANIFEST, read_manifest
from outpaint.core.onnx_signature import read_signature
from outpaint.engine.canvas import SourceImage
from outpaint.engine.fast_path import FastPathOptions
from outpaint.engine.pipeline import OutpaintPipeline

from .conftest import make_request

LATENT_REL_TOLERANCE = 1e-4
IMAGE_PSNR_DB = 60.0


@pytest.fixture
def optimum_copy(optimum_tiny_dir, tmp_path) -> Path:
    copy = tmp_path / "optimum"
    shutil.copytree(optimum_tiny_dir, copy)
    return copy


def _source() -> SourceImage:
    rgb = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    return SourceImage(rgb=rgb, known=np.ones((128, 128), dtype=bool))


def _assert_same(ours, theirs) -> None:
    error = float(np.abs(ours.latents - theirs.latents).max() / np.abs(ours.latents).max())
    assert error <= LATENT_REL_TOLERANCE, error
    assert psnr_db(ours.decoded, theirs.decoded) >= IMAGE_PSNR_DB
    assert psnr_db(ours.image, theirs.image) >= IMAGE_PSNR_DB
    kept = ours.canvas.mask == 0  # outside the mask and its feathered edge: the source, pasted back untouched
    assert kept.any() and np.array_equal(ours.image[kept], theirs.image[kept])


def test_the_folder_is_optimums_own_layout(optimum_tiny_dir):
    index = json.loads((optimum_tiny_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for graph in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        assert (optimum_tiny_dir / graph / "model.onnx").is_file()
    assert not (optimum_tiny_dir / MANIFEST).exists()
    assert not (optimum_tiny_dir / "tokenizer" / "tokenizer.json").exists()  # vocab.json + merges.txt only


def test_the_signature_reader_agrees_with_onnx(optimum_tiny_dir, tiny_model_dir):
    onnx = pytest.importorskip("onnx")
    for path in [*optimum_tiny_dir.glob("*/model.onnx"), *tiny_model_dir.glob("*/model*.onnx")]:
        model = onnx.load(str(path), load_external_data=False)
        signature = read_signature(path)
        for declared, read in ((model.graph.input, signature.inputs), (model.graph.output, signature.outputs)):
            expected = [(v.name, onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                         tuple(d.dim_value if d.HasField("dim_value") else d.dim_param
                               for d in v.type.tensor_type.shape.dim)) for v in declared]
            assert [(t.name, t.dtype, t.shape) for t in read] == expected, path


def test_the_manifest_is_built_from_the_graphs(optimum_tiny_dir, tiny_model_dir):
    manifest = read_manifest(optimum_tiny_dir)
    ours = read_manifest(tiny_model_dir)
    assert manifest.layout == "optimum" and ours.layout == "outpaint"
    for field in ("unet_in_channels", "text_hidden_size", "latent_channels", "vae_scaling_factor", "native_size"):
        assert getattr(manifest, field) == getattr(ours, field), field
    assert set(manifest.graphs) == {"text_encoder", "unet", "vae_encoder", "vae_decoder"}
    unet = manifest.graphs["unet"].bindings
    assert unet is not None and unet["timestep"].rank == 0  # optimum's scalar timestep
    encoder = manifest.graphs["vae_encoder"].bindings
    assert encoder is not None and encoder["latent_mean"].name == "latent_parameters"
    assert encoder["latent_mean"].channels == 4
    assert any("feature caching" in note for note in manifest.notes)
    assert not (optimum_tiny_dir / MANIFEST).exists()  # read in place: nothing written


def test_the_bpe_files_tokenize_as_tokenizer_json(optimum_tiny_dir, tiny_model_dir):
    from outpaint.engine.tokenizer import ClipTokenizer

    theirs, ours = ClipTokenizer(optimum_tiny_dir / "tokenizer"), ClipTokenizer(tiny_model_dir / "tokenizer")
    for text in ("a photo of a street in italy", "", "Hello   WORLD!! it's 2024 — café naïve 東京 🙂",
                 "don't\tstop\nme <|endoftext|> now", "word " * 100):
        a, b = theirs(text), ours(text)
        assert np.array_equal(a.ids, b.ids) and a.truncated == b.truncated, text


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino-fp32"])
def test_same_seed_same_image_as_our_export(optimum_tiny_dir, tiny_model_dir, backend):
    if backend.startswith("openvino"):
        pytest.importorskip("openvino")
    request = make_request()
    ours = OutpaintPipeline.load(tiny_model_dir, backend)(_source(), request)
    theirs = OutpaintPipeline.load(optimum_tiny_dir, backend)(_source(), request)
    _assert_same(ours, theirs)


def test_the_inpainting_step_runs_the_same(optimum_tiny_dir, tiny_model_dir):
    """Another scheduler and canvas through the same graphs: nothing in the bindings is DDIM- or size-specific."""
    request = make_request(scheduler="DPM Multi", img_width=320, img_height=256, seed=7)
    _assert_same(OutpaintPipeline.load(tiny_model_dir)(_source(), request),
                 OutpaintPipeline.load(optimum_tiny_dir)(_source(), request))


def test_the_fast_path_runs_without_feature_caching(optimum_tiny_dir, tiny_model_dir, caplog):
    pipeline = OutpaintPipeline.load(optimum_tiny_dir, options=FastPathOptions())
    assert pipeline.options.feature_cache_interval == 1
    assert "without feature caching" in caplog.text
    ours = OutpaintPipeline.load(tiny_model_dir, options=FastPathOptions(feature_cache_interval=1))
    _assert_same(ours(_source(), make_request()), pipeline(_source(), make_request()))


def test_outpaint_run_reads_the_folder(optimum_tiny_dir, tmp_path, png_256):
    from outpaint.cli import main

    image = tmp_path / "in.png"
    image.write_bytes(png_256)
    out = tmp_path / "out.png"
    code = main(["run", "--model", str(optimum_tiny_dir), "--image", str(image), "--out", str(out),
                 "--prompt", "a lighthouse", "--width", "256", "--height", "256", "--steps", "25", "--seed", "1"])
    assert code == 0 and out.stat().st_size > 0


def test_outpaint_serve_loads_the_folder_with_the_fast_path(optimum_tiny_dir):
    from outpaint.server.config import ServerConfig
    from outpaint.server.loading import load_pipeline

    config, pipeline = load_pipeline(ServerConfig(model=optimum_tiny_dir, no_auth=True, fast=True, backend="ort-cpu"))
    assert config.backend == "ort-cpu" and pipeline.manifest.layout == "optimum"
    assert pipeline.options.window_margin is not None and pipeline.options.feature_cache_interval == 1


def test_native_tensorrt_engines_are_refused_by_name(optimum_tiny_dir):
    with pytest.raises(ModelError, match=r"optimum export read in place.*tensorrt backend"):
        OutpaintPipeline.load(optimum_tiny_dir, "tensorrt")


# -- what cannot be used: a clear error naming what was found and what is expected ----------------------------


def _write_graph(path: Path, inputs: dict[str, tuple[int, list]], outputs: dict[str, tuple[int, list]]) -> None:
    """A graph that declares `inputs` and `outputs` (name -> (TensorProto type, shape)): the reader reads no
    more than that, and every error below is raised before a runtime would load it."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper

    nodes = [helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_v", kind, [], [0]))
             for name, (kind, _) in outputs.items()]
    graph = helper.make_graph(
        nodes, "declared",
        [helper.make_tensor_value_info(name, kind, shape) for name, (kind, shape) in inputs.items()],
        [helper.make_tensor_value_info(name, kind, shape) for name, (kind, shape) in outputs.items()],
    )
    onnx.save(helper.make_model(graph), str(path))


F32, F16, I64 = 1, 10, 7


def test_missing_vae_encoder_says_outpainting_needs_it(optimum_copy):
    shutil.rmtree(optimum_copy / "vae_encoder")
    with pytest.raises(ModelError, match=r"lacks vae_encoder/model.onnx.*encodes the source image"):
        OutpaintPipeline.load(optimum_copy)


def test_an_fp16_export_is_refused_with_the_fix(optimum_copy):
    _write_graph(optimum_copy / "unet" / "model.onnx",
                 {"sample": (F16, ["b", 4, "h", "w"]), "timestep": (F16, []),
                  "encoder_hidden_states": (F16, ["b", 77, 32])},
                 {"out_sample": (F16, ["b", 4, "h", "w"])})
    with pytest.raises(ModelError, match=r"sample float16.*an fp16 export.*--dtype fp32"):
        read_manifest(optimum_copy)


def test_an_sdxl_folder_is_refused(optimum_copy):
    index = json.loads((optimum_copy / "model_index.json").read_text())
    index.update(_class_name="StableDiffusionXLPipeline",
                 text_encoder_2=["transformers", "CLIPTextModelWithProjection"])
    (optimum_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match=r"SDXL export.*SD 1.5 architecture"):
        read_manifest(optimum_copy)


def test_unexpected_unet_inputs_are_named(optimum_copy):
    _write_graph(optimum_copy / "unet" / "model.onnx",
                 {"sample": (F32, ["b", 4, "h", "w"]), "timestep": (F32, []),
                  "encoder_hidden_states": (F32, ["b", 77, 32]), "text_embeds": (F32, ["b", 1280]),
                  "time_ids": (F32, ["b", 6])},
                 {"out_sample": (F32, ["b", 4, "h", "w"])})
    with pytest.raises(ModelError, match=r"does not feed: text_embeds float32.*time_ids.*an SDXL UNet"):
        read_manifest(optimum_copy)


def test_a_unet_of_other_channels_is_refused(optimum_copy):
    _write_graph(optimum_copy / "unet" / "model.onnx",
                 {"sample": (F32, ["b", 5, "h", "w"]), "timestep": (F32, []),
                  "encoder_hidden_states": (F32, ["b", 77, 32])},
                 {"out_sample": (F32, ["b", 4, "h", "w"])})
    with pytest.raises(ModelError, match=r"5 input channels; SD 1.5's UNet has 4 .* or 9"):
        read_manifest(optimum_copy)


def test_renamed_tensors_are_named_with_what_the_graph_has(optimum_copy):
    _write_graph(optimum_copy / "vae_decoder" / "model.onnx", {"z": (F32, ["b", 4, "h", "w"])},
                 {"sample": (F32, ["b", 3, "H", "W"])})
    with pytest.raises(ModelError, match=r"vae_decoder/model.onnx takes inputs the engine does not feed: z float32"):
        read_manifest(optimum_copy)


def test_an_old_sampling_vae_encoder_is_refused(optimum_copy):
    _write_graph(optimum_copy / "vae_encoder" / "model.onnx", {"sample": (F32, ["b", 3, "H", "W"])},
                 {"latent_sample": (F32, ["b", 4, "h", "w"])})
    with pytest.raises(ModelError, match=r"random draw.*latent_parameters"):
        read_manifest(optimum_copy)


def test_without_a_scaling_factor_sd15s_is_used_and_said(optimum_copy):
    for graph in ("vae_encoder", "vae_decoder"):
        config = json.loads((optimum_copy / graph / "config.json").read_text())
        del config["scaling_factor"]
        (optimum_copy / graph / "config.json").write_text(json.dumps(config))
    manifest = read_manifest(optimum_copy)
    assert manifest.vae_scaling_factor == pytest.approx(0.18215)
    assert any("scaling factor 0.18215 (SD 1.5's)" in note for note in manifest.notes)


def test_a_damaged_graph_is_a_model_error(optimum_copy):
    path = optimum_copy / "text_encoder" / "model.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelError, match=r"text_encoder/model.onnx is not a readable ONNX model"):
        read_manifest(optimum_copy)


def test_a_folder_of_neither_kind_names_both(tmp_path):
    with pytest.raises(ModelError, match=r"no manifest.json.*optimum ONNX export folder"):
        read_manifest(tmp_path)
