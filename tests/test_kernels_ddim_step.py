"""The step kernel (one ONNX graph: guidance, DDIM update, masked blend) against the host loop's numpy code."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from outpaint.engine.device_loop import plan_scalars
from outpaint.engine.schedulers import NoiseScheduleConfig, get_scheduler
from outpaint.kernels.ddim_step import (
    ALPHA_NEXT,
    ALPHA_PREV,
    LATENTS_NEXT,
    UNET_SAMPLE_NEXT,
    StepKernel,
    build_step_graph,
)

from .kernel_reference import reference_step

VARIANTS = [
    StepKernel(guided=True, blend=True),
    StepKernel(guided=False, blend=True),
    StepKernel(guided=True, blend=False, unet_in_channels=9),
    StepKernel(guided=False, blend=False, unet_in_channels=9),
    StepKernel(guided=True, blend=False),
]


def _session(kernel: StepKernel) -> ort.InferenceSession:
    return ort.InferenceSession(build_step_graph(kernel).SerializeToString(), providers=["CPUExecutionProvider"])


def _random_inputs(kernel: StepKernel, h: int, w: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for name, shape in kernel.input_shapes(h, w).items():
        if shape == (1,):
            continue  # the step's scalars come from the plan
        feeds[name] = (rng.random(shape, dtype=np.float32) if name == "mask"
                       else rng.standard_normal(shape, dtype=np.float32) * np.float32(2.0))
    return feeds


def _run(session, feeds) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))


@pytest.mark.parametrize("kernel", VARIANTS, ids=lambda k: k.name)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_kernel_matches_the_numpy_reference_on_every_step_of_a_plan(kernel, spacing):
    config = dataclasses.replace(NoiseScheduleConfig(), timestep_spacing=spacing)
    plan = get_scheduler("DDIM").plan(config, 7, 0.8)
    session = _session(kernel)
    rng = np.random.default_rng(5)
    for index in range(plan.num_steps):
        feeds = _random_inputs(kernel, 6, 10, rng)
        feeds.update(plan_scalars(plan, index, 7.5, kernel))
        ours = _run(session, feeds)
        latents, sample = reference_step(
            plan, index, feeds["eps"], feeds["latents"], guidance_scale=7.5,
            init_latents=feeds.get("init_latents"), noise=feeds.get("noise"), mask=feeds.get("mask"),
            extra_channels=feeds.get("extra_channels"),
        )
        assert ours[UNET_SAMPLE_NEXT].shape == sample.shape == kernel.output_shapes(6, 10)[UNET_SAMPLE_NEXT]
        # Same operations in the same order in float32: equal up to rounding (0 on ONNX Runtime's CPU provider).
        scale = np.abs(latents).max()
        assert np.abs(ours[LATENTS_NEXT] - latents).max() <= 1e-6 * scale, f"step {index}"
        assert np.abs(ours[UNET_SAMPLE_NEXT] - sample).max() <= 1e-6 * scale, f"step {index}"


def test_last_step_puts_back_the_init_latents_exactly_where_the_mask_is_zero():
    kernel = StepKernel(guided=True, blend=True)
    plan = get_scheduler("DDIM").plan(NoiseScheduleConfig(), 3, 1.0)
    feeds = _random_inputs(kernel, 4, 4, np.random.default_rng(0))
    feeds["mask"][..., :2] = 0.0
    feeds.update(plan_scalars(plan, plan.num_steps - 1, 5.0, kernel))
    assert feeds[ALPHA_NEXT][0] == 1.0
    out = _run(_session(kernel), feeds)[LATENTS_NEXT]
    assert np.array_equal(out[..., :2], feeds["init_latents"][..., :2])


def test_the_blend_uses_the_next_level_not_alpha_prev():
    """Under linspace spacing the two differ: a kernel fed alpha_prev for the blend would be wrong."""
    config = dataclasses.replace(NoiseScheduleConfig(), timestep_spacing="linspace")
    plan = get_scheduler("DDIM").plan(config, 6, 1.0)
    kernel = StepKernel(guided=False, blend=True)
    feeds = _random_inputs(kernel, 4, 4, np.random.default_rng(1))
    feeds.update(plan_scalars(plan, 1, 1.0, kernel))
    assert feeds[ALPHA_NEXT][0] != feeds[ALPHA_PREV][0]
    right = _run(_session(kernel), feeds)[LATENTS_NEXT]
    wrong = _run(_session(kernel), {**feeds, ALPHA_NEXT: feeds[ALPHA_PREV]})[LATENTS_NEXT]
    reference, _ = reference_step(plan, 1, feeds["eps"], feeds["latents"], guidance_scale=1.0,
                                  init_latents=feeds["init_latents"], noise=feeds["noise"], mask=feeds["mask"])
    assert np.allclose(right, reference, rtol=0, atol=1e-6)
    assert np.abs(wrong - reference).max() > 1e-3


@pytest.mark.parametrize("kernel", VARIANTS, ids=lambda k: k.name)
def test_kernel_graphs_are_valid_onnx_with_symbolic_latent_size(kernel):
    model = build_step_graph(kernel)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == list(kernel.input_names())
    dims = [d.dim_param or d.dim_value for d in model.graph.input[1].type.tensor_type.shape.dim]
    assert dims == [1, 4, "h", "w"]


def test_a_kernel_for_another_unet_is_refused():
    with pytest.raises(ValueError, match="4 or 9"):
        StepKernel(guided=True, blend=True, unet_in_channels=8)
