"""Every scheduler of the API against its diffusers reference, driven the way diffusers' pipelines drive it.

The model is a deterministic, elementwise numpy mock of (x, t); both sides get the same start noise and,
for the ancestral schedulers, the same fresh noise per step: diffusers draws it with torch.randn from the
generator it is given, so our side gets an rng whose standard_normal draws from a twin torch generator
with the same seed. A scheduler that drew a different number of times, or different shapes, would fall
out of step. Every model call is recorded on both sides and compared: count, timestep, input.

Tolerance: float32 rounding. Our schedules are built with diffusers' own dtypes (alphas-bar are
bit-identical), but torch's sqrt/exp/log differ from numpy's by an ulp here and there, so results
agree to a few float32 ulps of the largest latent: TOLERANCE x max(1, max|latents|).
"""

from __future__ import annotations

import inspect
import itertools

import numpy as np
import pytest

from outpaint.core.errors import InvalidRequest
from outpaint.engine.coherence import COHERENCE_DEFAULT
from outpaint.engine.loop import KnownRegion, denoise_loop
from outpaint.engine.request import OutpaintRequest
from outpaint.engine.schedulers import API_SCHEDULER_NAMES, SCHEDULERS, NoiseScheduleConfig, get_scheduler
from outpaint.export.random_models import SD15_SCHEDULER_CONFIG

from .conftest import make_png

SD15 = NoiseScheduleConfig.from_dict(SD15_SCHEDULER_CONFIG)
TOLERANCE = 1e-5  # relative to max(1, max |latents|); measured worst case ~2e-6
TIMESTEP_TOLERANCE = 1e-3  # fractional timesteps: float32 against diffusers' float64 (an ulp at t ~ 1000 is 6e-5)
ANCESTRAL = ("Euler a", "DPM2 a Karras", "DDPM")
SHAPE = (1, 4, 6, 6)

# API name -> (diffusers class name, config overrides on top of SD 1.5's scheduler config)
REFERENCES = {
    "DDIM": ("DDIMScheduler", {}),
    "DPM Multi": ("DPMSolverMultistepScheduler", {}),
    "DPM Single": ("DPMSolverSinglestepScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
}
# With strength < 1 these two deliberately do not follow diffusers (see their module docstrings);
# they are checked against diffusers' own algorithm restarted on the remaining schedule instead.
RESTARTED_FOR_STRENGTH = ("LMS", "PNDM")
# diffusers spreads one step of these over two step() calls and blends in between (see docs/schedulers.md).
TWO_CALL = ("Heun", "DPM2 Karras", "DPM2 a Karras", "PNDM")


def mock_eps(x: np.ndarray, t: float) -> np.ndarray:
    """A fake UNet: elementwise, nonlinear in x, dependent on t."""
    return (0.1 * x + 0.05 * np.sin(3 * x + t / 250.0) + 0.002 * t / 1000).astype(np.float32)


class TwinTorchRng:
    """Stands in for the request's numpy Generator: draws what diffusers' torch generator of the same seed draws."""

    def __init__(self, seed: int) -> None:
        import torch

        self._torch = torch
        self._generator = torch.Generator().manual_seed(seed)

    def standard_normal(self, size, dtype=np.float32) -> np.ndarray:
        assert dtype == np.float32
        return self._torch.randn(size, generator=self._generator, dtype=self._torch.float32).numpy()


def _inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(noise, init latents, binary mask with the right half regenerated)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(SHAPE, dtype=np.float32)
    init = rng.standard_normal(SHAPE, dtype=np.float32)
    mask = np.zeros((1, 1, *SHAPE[2:]), np.float32)
    mask[..., SHAPE[3] // 2:] = 1.0
    return noise, init, mask


def _reference(name: str, config: dict = SD15_SCHEDULER_CONFIG):
    """diffusers' scheduler as `XScheduler.from_config(model's scheduler config)` gives it."""
    diffusers = pytest.importorskip("diffusers")
    class_name, overrides = REFERENCES[name]
    return getattr(diffusers, class_name).from_config({**config, **overrides})


def _run_reference(
    name, steps, strength, noise, init, mask=None, seed=5, timesteps_override=None, config=SD15_SCHEDULER_CONFIG
):
    """diffusers' StableDiffusionInpaintPipeline loop (4-channel UNet) with the mock model.

    Returns the final latents, the model calls [(input, timestep)] and the known latents blended in
    after each call (empty without a mask).
    """
    import torch

    ref = _reference(name, config)
    ref.set_timesteps(steps)
    if timesteps_override is None:
        # get_timesteps(): skip t_start * order entries and tell the scheduler where it begins.
        t_start = max(steps - min(int(steps * strength), steps), 0)
        timesteps = ref.timesteps[t_start * ref.order:]
        if hasattr(ref, "set_begin_index"):
            ref.set_begin_index(t_start * ref.order)
    else:
        timesteps = ref.timesteps = timesteps_override
    noise_t, init_t = torch.from_numpy(noise), torch.from_numpy(init)
    pure_noise = strength >= 1.0
    latents = noise_t * ref.init_noise_sigma if pure_noise else ref.add_noise(init_t, noise_t, timesteps[:1])
    step_kwargs = {}
    if "generator" in inspect.signature(ref.step).parameters:
        step_kwargs["generator"] = torch.Generator().manual_seed(seed)
    calls, knowns = [], []
    for i, t in enumerate(timesteps):
        model_input = ref.scale_model_input(latents, t)
        calls.append((model_input.numpy().copy(), float(t)))
        eps = torch.from_numpy(mock_eps(model_input.numpy(), float(t)))
        latents = ref.step(eps, t, latents, **step_kwargs).prev_sample
        if mask is not None:
            known = init_t
            if i < len(timesteps) - 1:
                known = ref.add_noise(init_t, noise_t, torch.tensor([timesteps[i + 1]]))
            knowns.append(known.numpy())
            latents = (1 - torch.from_numpy(mask)) * known + torch.from_numpy(mask) * latents
    return latents.numpy(), calls, knowns


def _calls_ending_steps(name: str, steps: int) -> list[int]:
    """Index of diffusers' step() call that completes each of our steps."""
    if name == "PNDM":  # [t0, t1, t1, t2, ...]: the first step takes calls 0 and 1
        return [k + 1 for k in range(steps)]
    if name in TWO_CALL:  # [t0, t1, t1, ..., t_{n-1}, t_{n-1}]: two calls per step, one for the last
        return [2 * k + 1 for k in range(steps - 1)] + [2 * steps - 2]
    return list(range(steps))


def _run_ours(name, steps, strength, noise, init, mask=None, rng=None, config=SD15):
    scheduler = SCHEDULERS[name]
    plan = scheduler.plan(config, steps, strength)
    calls = []

    def denoise(x: np.ndarray, t: float) -> np.ndarray:
        calls.append((x.copy(), t))
        return mock_eps(x, t)

    latents = scheduler.start(plan, init, noise, strength >= 1.0)
    events = list(denoise_loop(
        scheduler=scheduler, plan=plan, latents=latents, denoise=denoise, rng=rng or TwinTorchRng(5),
        known=None if mask is None else KnownRegion(init, noise, mask),
    ))
    assert [e.index for e in events] == list(range(plan.num_steps))
    return events[-1].latents, calls


def _assert_same_run(ours, ours_calls, ref, ref_calls):
    assert len(ours_calls) == len(ref_calls), "number of model calls"
    scale = max(1.0, float(np.abs(ref).max()))
    for (x, t), (x_ref, t_ref) in zip(ours_calls, ref_calls, strict=True):
        assert abs(t - t_ref) <= TIMESTEP_TOLERANCE, f"timestep {t} vs diffusers {t_ref}"
        assert np.abs(x - x_ref).max() <= TOLERANCE * max(1.0, float(np.abs(x_ref).max())), f"model input at t={t}"
    error = float(np.abs(ours - ref).max())
    assert np.isfinite(ours).all()
    assert error <= TOLERANCE * scale, f"max abs diff {error} (latents up to {scale})"
    return error


# -- registry -----------------------------------------------------------------------------------


def test_every_api_name_is_registered_with_its_reference():
    assert set(SCHEDULERS) == set(API_SCHEDULER_NAMES) == set(REFERENCES)
    for name, scheduler in SCHEDULERS.items():
        assert scheduler.name == name
        assert REFERENCES[name][0].removesuffix("Scheduler") in scheduler.reference


@pytest.mark.parametrize("name", API_SCHEDULER_NAMES)
def test_calls_per_step_counts_the_model_calls(name):
    """The server's cost estimate multiplies steps by it (server/cost.py)."""
    noise, init, _ = _inputs()
    steps = 10
    _, calls = _run_ours(name, steps, 1.0, noise, init)
    # Two-call methods make one call on their last step (Euler to 0); PNDM one extra on its first.
    assert abs(len(calls) - steps * SCHEDULERS[name].calls_per_step) <= 1, len(calls)


def test_unknown_name_is_rejected_listing_the_valid_names():
    with pytest.raises(InvalidRequest) as info:
        get_scheduler("Euler Karras")
    assert info.value.field == "scheduler"
    for name in API_SCHEDULER_NAMES:
        assert name in info.value.message
    with pytest.raises(InvalidRequest, match="must be one of"):
        OutpaintRequest.from_fields({"prompt": "x", "scheduler": "euler"}, schedulers=tuple(SCHEDULERS))


@pytest.mark.parametrize("name", API_SCHEDULER_NAMES)
def test_bad_step_counts_and_strengths_are_rejected(name):
    scheduler = SCHEDULERS[name]
    with pytest.raises(InvalidRequest) as info:
        scheduler.plan(SD15, 0, 1.0)
    assert info.value.field == "num_inference_steps"
    with pytest.raises(InvalidRequest) as info:
        scheduler.plan(SD15, 5, 0.1)
    assert info.value.field == "strength" and "no denoising step" in info.value.message


# -- against diffusers --------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 4, 25])
@pytest.mark.parametrize("name", API_SCHEDULER_NAMES)
def test_whole_loop_matches_diffusers(name, steps):
    noise, init, _ = _inputs(steps)
    ref, ref_calls, _ = _run_reference(name, steps, 1.0, noise, init)
    ours, ours_calls = _run_ours(name, steps, 1.0, noise, init)
    _assert_same_run(ours, ours_calls, ref, ref_calls)


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("name", API_SCHEDULER_NAMES)
def test_other_timestep_spacings_match_diffusers(name, spacing):
    """Models whose scheduler_config.json asks for another spacing (steps_offset 0, as such configs have)."""
    if name == "PNDM" and spacing == "linspace":
        pytest.skip("deliberate: diffusers' PNDM transfers to t - T // n, which linspace timesteps are not")
    config = {**SD15_SCHEDULER_CONFIG, "timestep_spacing": spacing, "steps_offset": 0}
    noise, init, _ = _inputs(11)
    ref, ref_calls, _ = _run_reference(name, 10, 1.0, noise, init, config=config)
    ours, ours_calls = _run_ours(name, 10, 1.0, noise, init, config=NoiseScheduleConfig.from_dict(config))
    _assert_same_run(ours, ours_calls, ref, ref_calls)


@pytest.mark.parametrize("name", API_SCHEDULER_NAMES)
def test_masked_loop_matches_diffusers_inpaint_blending(name):
    """Blending after every step with the scheduler's own noise level, as diffusers' inpaint pipeline does.

    For the two-call schedulers diffusers also blends between the two calls; with a binary mask and an
    elementwise model that cannot change the result, which is what makes this comparison possible.
    """
    noise, init, mask = _inputs(1)
    ref, ref_calls, ref_knowns = _run_reference(name, 10, 1.0, noise, init, mask)
    ours, ours_calls = _run_ours(name, 10, 1.0, noise, init, mask)
    # The known region after each of our steps is what diffusers blends in after the call ending that step.
    scheduler, plan = SCHEDULERS[name], SCHEDULERS[name].plan(SD15, 10, 1.0)
    for step, call in enumerate(_calls_ending_steps(name, 10)):
        expected = ref_knowns[call]
        atol = TOLERANCE * max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(scheduler.noised(plan, step + 1, init, noise), expected, rtol=0, atol=atol)
    # diffusers' inputs to the second call of a two-call step are blended in the known region; ours are not.
    keep = mask[0, 0] > 0 if name in TWO_CALL else np.ones(mask.shape[2:], bool)
    _assert_same_run(ours, [(x[..., keep], t) for x, t in ours_calls], ref, [(x[..., keep], t) for x, t in ref_calls])
    np.testing.assert_array_equal(ours[..., mask[0, 0] == 0], init[..., mask[0, 0] == 0])


@pytest.mark.parametrize("strength", [0.3, 0.55, 0.8])
@pytest.mark.parametrize("name", API_SCHEDULER_NAMES)
def test_strength_start_is_diffusers_add_noise_at_the_first_remaining_timestep(name, strength):
    import torch

    steps = 10
    noise, init, _ = _inputs(2)
    scheduler = SCHEDULERS[name]
    plan = scheduler.plan(SD15, steps, strength)
    assert plan.num_steps == int(steps * strength)
    ref = _reference(name)
    ref.set_timesteps(steps)
    t_start = steps - int(steps * strength)
    if hasattr(ref, "set_begin_index"):
        ref.set_begin_index(t_start * ref.order)
    # PNDM's call list repeats its second timestep, so its step t_start starts at entry t_start + 1.
    first = ref.timesteps[t_start * ref.order + (name == "PNDM"):][:1]
    expected = ref.add_noise(torch.from_numpy(init), torch.from_numpy(noise), first).numpy()
    ours = scheduler.start(plan, init, noise, pure_noise=False)
    assert abs(float(plan.timesteps[0]) - float(first[0])) <= TIMESTEP_TOLERANCE
    np.testing.assert_allclose(ours, expected, rtol=0, atol=TOLERANCE * max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize("name", [n for n in API_SCHEDULER_NAMES if n not in RESTARTED_FOR_STRENGTH])
def test_strength_loop_matches_diffusers(name):
    noise, init, mask = _inputs(3)
    ref, ref_calls, _ = _run_reference(name, 10, 0.55, noise, init, mask)
    ours, ours_calls = _run_ours(name, 10, 0.55, noise, init, mask)
    keep = mask[0, 0] > 0 if name in TWO_CALL else np.ones(mask.shape[2:], bool)
    _assert_same_run(ours, [(x[..., keep], t) for x, t in ours_calls], ref, [(x[..., keep], t) for x, t in ref_calls])


def test_lms_with_strength_restarts_its_history_like_k_diffusion():
    """diffusers' LMS would use fourth-order coefficients with one derivative on the first remaining step;
    we match its algorithm run on the remaining schedule alone (orders 1, 2, 3, 4 as history builds)."""
    import torch

    noise, init, _ = _inputs(4)
    steps, strength, skip = 10, 0.55, 5
    full = _reference("LMS")
    full.set_timesteps(steps)
    ref_timesteps = full.timesteps[skip:]
    ref = _reference("LMS")
    ref.set_timesteps(steps)
    ref.timesteps, ref.sigmas = ref_timesteps, full.sigmas[skip:]  # a schedule that begins where we begin
    latents = ref.add_noise(torch.from_numpy(init), torch.from_numpy(noise), ref_timesteps[:1])
    ref_calls = []
    for t in ref_timesteps:
        model_input = ref.scale_model_input(latents, t)
        ref_calls.append((model_input.numpy().copy(), float(t)))
        latents = ref.step(torch.from_numpy(mock_eps(model_input.numpy(), float(t))), t, latents).prev_sample
    ours, ours_calls = _run_ours("LMS", steps, strength, noise, init)
    _assert_same_run(ours, ours_calls, latents.numpy(), ref_calls)


def test_pndm_with_strength_starts_afresh_on_the_remaining_steps():
    """diffusers' PNDM sliced by get_timesteps loses its duplicated timestep; we run its own call
    pattern [t_k, t_k+1, t_k+1, t_k+2, ...] on the remaining steps (what it does at strength 1)."""
    import torch

    noise, init, _ = _inputs(5)
    plan = SCHEDULERS["PNDM"].plan(SD15, 10, 0.55)
    remaining = plan.timesteps.astype(np.int64)
    pattern = torch.from_numpy(np.concatenate([remaining[:1], remaining[1:2], remaining[1:]]))
    ref, ref_calls, _ = _run_reference("PNDM", 10, 0.55, noise, init, timesteps_override=pattern)
    ours, ours_calls = _run_ours("PNDM", 10, 0.55, noise, init)
    _assert_same_run(ours, ours_calls, ref, ref_calls)


@pytest.mark.parametrize("name", API_SCHEDULER_NAMES)
def test_pure_noise_start_is_noise_times_init_noise_sigma(name):
    noise, init, _ = _inputs(6)
    scheduler = SCHEDULERS[name]
    ref = _reference(name)
    ref.set_timesteps(25)
    ours = scheduler.start(scheduler.plan(SD15, 25, 1.0), init, noise, pure_noise=True)
    np.testing.assert_allclose(ours, noise * float(ref.init_noise_sigma), rtol=2e-7, atol=0)


# -- properties of our loop ---------------------------------------------------------------------


@pytest.mark.parametrize("name", API_SCHEDULER_NAMES)
def test_known_region_is_the_init_latents_noised_to_each_level(name):
    """After every step, where mask == 0, the latents are exactly scheduler.noised(plan, i + 1, init, noise)."""
    scheduler = SCHEDULERS[name]
    noise, init, _ = _inputs(7)
    mask = np.linspace(0, 1, SHAPE[3], dtype=np.float32).reshape(1, 1, 1, -1).repeat(SHAPE[2], axis=2)
    mask[..., : SHAPE[3] // 2] = 0.0  # left half known, right half a soft ramp
    known = mask[0, 0] == 0
    for strength in (1.0, 0.6):
        plan = scheduler.plan(SD15, 6, strength)
        events = list(denoise_loop(
            scheduler=scheduler, plan=plan, latents=scheduler.start(plan, init, noise, strength >= 1.0),
            denoise=mock_eps, rng=np.random.default_rng(1), known=KnownRegion(init, noise, mask),
        ))
        for event in events:
            expected = scheduler.noised(plan, event.index + 1, init, noise)
            np.testing.assert_array_equal(event.latents[..., known], expected[..., known])
        np.testing.assert_array_equal(events[-1].latents[..., known], init[..., known])
        zeros = np.zeros_like(init)
        noise_left = [np.abs(scheduler.noised(plan, i, zeros, noise)).mean() for i in range(plan.num_steps + 1)]
        assert all(a > b for a, b in itertools.pairwise(noise_left)), "levels must get less noisy"
        assert noise_left[-1] == 0


@pytest.mark.parametrize("name", API_SCHEDULER_NAMES)
def test_same_seed_same_result(name):
    scheduler = SCHEDULERS[name]
    noise, init, mask = _inputs(8)

    def run(seed: int) -> np.ndarray:
        plan = scheduler.plan(SD15, 5, 1.0)
        *_, last = denoise_loop(
            scheduler=scheduler, plan=plan, latents=scheduler.start(plan, init, noise, True), denoise=mock_eps,
            rng=np.random.default_rng(seed), known=KnownRegion(init, noise, mask),
        )
        return last.latents

    assert run(3).tobytes() == run(3).tobytes()
    if name in ANCESTRAL:
        assert np.abs(run(3) - run(4)).max() > 1e-3, "fresh noise must come from the request's generator"


@pytest.mark.parametrize("name", API_SCHEDULER_NAMES)
def test_one_scheduler_serves_interleaved_requests(name):
    """History lives in new_state(): two requests stepped alternately equal the same two run alone."""
    scheduler = SCHEDULERS[name]
    requests = [_inputs(seed)[0] for seed in (9, 10)]
    plan = scheduler.plan(SD15, 7, 1.0)

    def alone(noise: np.ndarray) -> np.ndarray:
        state, x, rng = scheduler.new_state(), scheduler.start(plan, noise, noise, True), np.random.default_rng(0)
        for i in range(plan.num_steps):
            x = scheduler.step(plan, state, i, x, mock_eps, rng)
        return x

    states = [scheduler.new_state() for _ in requests]
    xs = [scheduler.start(plan, noise, noise, True) for noise in requests]
    rngs = [np.random.default_rng(0) for _ in requests]
    for i in range(plan.num_steps):
        for k in range(len(requests)):
            xs[k] = scheduler.step(plan, states[k], i, xs[k], mock_eps, rngs[k])
    for x, noise in zip(xs, requests, strict=True):
        np.testing.assert_array_equal(x, alone(noise))


# -- end to end ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", API_SCHEDULER_NAMES)
def test_every_scheduler_outpaints_through_the_tiny_pipeline(tiny_pipeline, name):
    request = OutpaintRequest(
        prompt="a lighthouse", img_width=256, img_height=256, num_inference_steps=3, offset_x=64, offset_y=64,
        seed=42, scheduler=name,
    )
    result = tiny_pipeline(make_png(128, 128, seed=3), request)
    assert result.image.shape == (256, 256, 3) and result.image.dtype == np.uint8
    assert np.isfinite(result.latents).all()
    assert len(result.step_seconds) == 3 + COHERENCE_DEFAULT.steps  # and the coherence pass's
    assert result.decoded.std() > 0
