"""The small model trained here outpaints held-out scenes closer to their ground truth than every
naive baseline, and this check fails when the model or the pipeline is broken (docs/quality.md).

The margin is a PSNR lead over the new area, in dB, averaged over a few held-out scenes of the
benchmark's `right_50` case; QUALITY_MARGIN_DB says where its value comes from.
"""

from pathlib import Path

import numpy as np
import pytest

from outpaint.benchmarks.quality.cases import case_by_name
from outpaint.benchmarks.quality.metrics import psnr
from outpaint.benchmarks.quality.systems import Fill, Ours
from outpaint.scenes import held_out_seeds, scene_from_seed

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "scenes"
SCENES = 4
# Measured on these four scenes and seeds (Ice Lake, ort-cpu): the committed model leads the best
# baseline (the infill) by 0.61 dB (18.13 against 17.52 dB); with the sabotages below the lead is
# -9.62 dB (shuffled UNet weights), -5.78 (SD 1.5's VAE scaling factor instead of the measured one),
# -4.65 (no latent blending) and -2.27 (guidance reversed). The run is deterministic on one machine;
# the bar sits at about 40 % of the working lead, leaving 0.36 dB for another CPU's float rounding
# (not yet measured on an AVX2-only machine), and 2.5 dB or more above every broken variant.
QUALITY_MARGIN_DB = 0.25


@pytest.fixture(scope="module")
def trained_model_dir(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from outpaint.export.onnx_export import export_components
    from outpaint.export.sources import load_components

    out = tmp_path_factory.mktemp("trained")
    export_components(load_components(str(WEIGHTS)), out, feature_cache=False)
    return out


@pytest.fixture
def pipeline(trained_model_dir):
    from outpaint.engine.pipeline import OutpaintPipeline

    return OutpaintPipeline.load(trained_model_dir, "ort-cpu", colour_match="off")  # margins measured without it


def lead_over_baselines(pipeline) -> tuple[float, dict[str, float]]:
    """(our mean new-area PSNR minus the best naive baseline's, every system's mean PSNR)."""
    case = case_by_name("right_50")
    systems = [Ours("ours", pipeline), Fill("infill", "pushpull"), Fill("gray", "gray")]
    scores: dict[str, list[float]] = {s.name: [] for s in systems}
    for seed in held_out_seeds(SCENES):
        scene = scene_from_seed(seed)
        truth, source = case.truth(scene), case.source_image(scene)
        for system in systems:
            scores[system.name].append(psnr(system.outpaint(case, source, scene.caption(), seed), truth,
                                            case.new_area()))
    means = {name: float(np.mean(v)) for name, v in scores.items()}
    return means["ours"] - max(means["infill"], means["gray"]), means


def test_trained_model_beats_every_naive_baseline(pipeline):
    lead, means = lead_over_baselines(pipeline)
    assert lead > QUALITY_MARGIN_DB, means


def _shuffled(path: Path, out: Path) -> Path:
    """The ONNX graph at `path` with every weight tensor's values permuted (shapes kept)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.size > 16 and values.dtype == np.float32:
            init.CopyFrom(numpy_helper.from_array(rng.permutation(values.ravel()).reshape(values.shape), init.name))
    onnx.save(model, str(out))
    return out


def _break_weights(pipeline, tmp_path):
    from outpaint.core.graphs import UNET
    from outpaint.engine.backends.ort import OrtGraph, OrtOptions

    shuffled = _shuffled(pipeline.graphs[UNET].path, tmp_path / "unet.onnx")  # the graph the pipeline loaded
    pipeline.graphs[UNET] = OrtGraph(UNET, shuffled, OrtOptions())


def _break_vae_scaling(pipeline, tmp_path):
    pipeline.scaling_factor = np.float32(0.18215)  # SD 1.5's factor instead of the one measured for this VAE


def _break_guidance(pipeline, tmp_path, monkeypatch):
    from outpaint.engine import guidance

    monkeypatch.setattr(guidance, "guide", lambda uncond, cond, scale: cond + scale * (uncond - cond))


def _break_blend(pipeline, tmp_path, monkeypatch):
    from outpaint.engine import loop

    monkeypatch.setattr(loop, "blend", lambda latents, known, mask: latents)


@pytest.mark.parametrize("sabotage", ["weights", "vae_scaling", "guidance", "blend"])
def test_the_check_fails_when_the_model_or_pipeline_is_broken(pipeline, tmp_path, monkeypatch, sabotage):
    if sabotage == "weights":
        _break_weights(pipeline, tmp_path)
    elif sabotage == "vae_scaling":
        _break_vae_scaling(pipeline, tmp_path)
    elif sabotage == "guidance":
        _break_guidance(pipeline, tmp_path, monkeypatch)
    else:
        _break_blend(pipeline, tmp_path, monkeypatch)
    lead, means = lead_over_baselines(pipeline)
    assert lead <= QUALITY_MARGIN_DB, f"a broken {sabotage} still passed the check: {means}"
