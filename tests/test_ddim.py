"""DDIM: the schedule pinned, the step against diffusers, the loop with a mock UNet in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from outpaint.engine.loop import KnownRegion, blend, denoise_loop
from outpaint.engine.schedulers import SCHEDULERS, NoiseScheduleConfig
from outpaint.engine.schedulers.ddim import DDIM, ddim_step

SD15 = NoiseScheduleConfig()


def test_sd15_schedule_five_steps_is_801_to_1():
    plan = DDIM().plan(SD15, 5)
    assert plan.timesteps.tolist() == [801, 601, 401, 201, 1]


def test_strength_skips_leading_steps():
    plan = DDIM().plan(SD15, 10, strength=0.55)
    # 10 - int(10 * 0.55) = 5 steps skipped, as diffusers' get_timesteps
    assert plan.timesteps.tolist() == [401, 301, 201, 101, 1]


def test_strength_too_low_for_steps_is_an_error():
    with pytest.raises(ValueError, match="no denoising step"):
        DDIM().plan(SD15, 5, strength=0.1)


def test_ddim_matches_diffusers_ddim_scheduler_over_a_whole_loop():
    torch = pytest.importorskip("torch")
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    reference = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
        steps_offset=1, clip_sample=False, num_train_timesteps=1000,
    )
    reference.set_timesteps(25)
    scheduler = DDIM()
    plan = scheduler.plan(SD15, 25)
    assert plan.timesteps.tolist() == reference.timesteps.tolist()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 8, 8), dtype=np.float32)
    x_ref = torch.from_numpy(x.copy())

    def mock_eps(latents: np.ndarray, t: float) -> np.ndarray:  # not constant: depends on x and t
        return (0.3 * latents + 0.001 * t * np.cos(latents)).astype(np.float32)

    for i, t in enumerate(reference.timesteps):
        x = scheduler.step(plan, None, i, x, mock_eps, rng)
        eps_ref = torch.from_numpy(mock_eps(x_ref.numpy(), float(t)))
        x_ref = reference.step(eps_ref, int(t), x_ref, return_dict=False)[0]
    error = np.abs(x - x_ref.numpy()).max()
    assert error < 1e-5 * np.abs(x).max(), f"max abs error {error}"


def test_noised_matches_diffusers_add_noise():
    torch = pytest.importorskip("torch")
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler

    reference = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    plan = DDIM().plan(SD15, 5)
    rng = np.random.default_rng(1)
    clean, noise = rng.standard_normal((2, 1, 4, 4, 4), dtype=np.float32)
    for level, t in enumerate(plan.timesteps):
        ours = DDIM().noised(plan, level, clean, noise)
        ref = reference.add_noise(torch.from_numpy(clean), torch.from_numpy(noise), torch.tensor([int(t)]))
        assert np.abs(ours - ref.numpy()).max() < 1e-6


def test_zero_eps_unet_makes_ddim_a_known_scaling_and_blend_restores_known_region():
    """eps = 0: every step scales x by sqrt(alpha_prev / alpha_t), so after the loop
    x = x_T * sqrt(alpha_final / alpha_first). The known region must equal the init latents exactly."""
    scheduler = SCHEDULERS["DDIM"]
    plan = scheduler.plan(SD15, 5)
    rng = np.random.default_rng(2)
    noise = rng.standard_normal((1, 4, 6, 6), dtype=np.float32)
    init = rng.standard_normal((1, 4, 6, 6), dtype=np.float32)
    mask = np.zeros((1, 1, 6, 6), np.float32)
    mask[..., :, 3:] = 1.0  # right half regenerated

    events = list(denoise_loop(
        scheduler=scheduler, plan=plan, latents=scheduler.start(plan, init, noise, True),
        denoise=lambda x, t: np.zeros_like(x), rng=rng, known=KnownRegion(init, noise, mask),
    ))
    assert len(events) == 5
    for event in events[:-1]:
        expected_known = scheduler.noised(plan, event.index + 1, init, noise)
        np.testing.assert_array_equal(event.latents[..., :3], expected_known[..., :3])
    final = events[-1].latents
    np.testing.assert_array_equal(final[..., :3], init[..., :3])
    alpha_first, alpha_final = plan.coefficients.alpha_t[0], plan.coefficients.alpha_prev[-1]
    expected_new = noise * np.sqrt(alpha_final / alpha_first)
    np.testing.assert_allclose(final[..., 3:], expected_new[..., 3:], rtol=1e-5)


def test_ddim_step_with_exact_eps_recovers_clean_latents_at_the_end():
    """If eps is the true noise, DDIM lands exactly on x0 (up to the final alpha_0 < 1)."""
    plan = DDIM().plan(SD15, 5)
    rng = np.random.default_rng(4)
    clean, noise = rng.standard_normal((2, 1, 4, 4, 4), dtype=np.float32)
    x = DDIM().noised(plan, 0, clean, noise)
    for i in range(plan.num_steps):
        x = ddim_step(x, noise, plan.coefficients.alpha_t[i], plan.coefficients.alpha_prev[i])
    alpha_0 = plan.coefficients.alpha_prev[-1]
    np.testing.assert_allclose(x, np.sqrt(alpha_0) * clean + np.sqrt(1 - alpha_0) * noise, atol=1e-5)


def test_blend_keeps_known_where_mask_is_zero_and_mixes_soft_values():
    latents = np.full((1, 4, 1, 3), 2.0, np.float32)
    known = np.full((1, 4, 1, 3), -2.0, np.float32)
    mask = np.array([0.0, 0.25, 1.0], np.float32).reshape(1, 1, 1, 3)
    out = blend(latents, known, mask)
    assert out[0, 0, 0].tolist() == [-2.0, -1.0, 2.0]
