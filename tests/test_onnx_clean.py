"""ONNX cleaning before TensorRT (constant folding, dead nodes, sorting): same outputs, fewer nodes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from outpaint.core.graphs import canvas_dims, graph_specs
from outpaint.core.manifest import Manifest
from outpaint.export.onnx_clean import clean_onnx

from .conftest import run_onnx

pytest.importorskip("polygraphy")
pytest.importorskip("onnx_graphsurgeon")

GRAPHS = ("text_encoder", "unet", "vae_encoder", "vae_decoder")


@pytest.fixture(scope="module")
def cleaned(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    reports = {g: clean_onnx(tiny_model_dir / g / "model.onnx", out / g / "model.onnx") for g in GRAPHS}
    return out, reports


@pytest.mark.parametrize("graph", GRAPHS)
def test_cleaned_graph_gives_the_exported_graphs_outputs(tiny_model_dir, cleaned, graph):
    out, _ = cleaned
    manifest = Manifest.load(tiny_model_dir)
    spec = {s.name: s for s in graph_specs(manifest.unet_in_channels, manifest.text_hidden_size)}[graph]
    # Another canvas than the trace's and batch 2: folding must not have frozen a dynamic axis.
    feeds = spec.sample_inputs({**canvas_dims(1, 192, 128), "2B": 2, "vocab": 1000}, seed=3)
    before = run_onnx(tiny_model_dir / graph / "model.onnx", feeds)
    after = run_onnx(out / graph / "model.onnx", feeds)
    for b, a in zip(before, after, strict=True):
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


@pytest.mark.parametrize("graph", GRAPHS)
def test_cleaning_removes_nodes_and_keeps_the_interface(tiny_model_dir, cleaned, graph):
    out, reports = cleaned
    report = reports[graph]
    assert report.nodes_after < report.nodes_before
    original = onnx.load(str(tiny_model_dir / graph / "model.onnx"), load_external_data=False)
    result = onnx.load(str(out / graph / "model.onnx"))
    assert [i.name for i in result.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in result.graph.output] == [o.name for o in original.graph.output]
    assert result.ir_version == original.ir_version
    dims = [d.dim_param for d in result.graph.input[0].type.tensor_type.shape.dim]
    assert any(dims), "symbolic axes survive"
