"""The training command's promises, on a few steps: resuming from a checkpoint gives bitwise the
weights an uninterrupted run gives, and the data never touches held-out scenes."""

from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from outpaint.scenes import HELD_OUT_START  # noqa: E402
from outpaint.training import data  # noqa: E402
from outpaint.training.config import UnetRecipe, VaeRecipe  # noqa: E402
from outpaint.training.optim import lr_at  # noqa: E402
from outpaint.training.unet import batch_of_crops, train_unet  # noqa: E402
from outpaint.training.vae import train_vae  # noqa: E402


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_vae_resumed_equals_uninterrupted(tmp_path):
    recipe = VaeRecipe(steps=2, batch=2, crop_px=32, warmup=1)
    straight, _ = train_vae(recipe, tmp_path / "straight.pt")
    train_vae(replace(recipe, steps=1), tmp_path / "resumed.pt")  # "interrupted" after one step
    resumed, history = train_vae(recipe, tmp_path / "resumed.pt")
    assert [h[0] for h in history] == [0, 1]
    assert _same(straight, resumed)


def _cache(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"latents": rng.standard_normal((3, 4, 32, 32), dtype=np.float32),
            "token_ids": rng.integers(0, 1000, (3, 77)), "empty_ids": np.zeros(77, np.int64),
            "scaling_factor": np.asarray(1.0)}


def test_unet_resumed_equals_uninterrupted(tmp_path):
    cache = _cache(np.random.default_rng(0))
    recipe = UnetRecipe(steps=2, shapes=((16, 16, 2), (16, 32, 1)), warmup=1)
    unet, text, _ = train_unet(recipe, cache, tmp_path / "straight.pt")
    train_unet(replace(recipe, steps=1), cache, tmp_path / "resumed.pt")
    unet2, text2, history = train_unet(recipe, cache, tmp_path / "resumed.pt")
    assert [h[0] for h in history] == [0, 1]
    assert _same(unet, unet2) and _same(text, text2)


def test_prompt_dropout_uses_the_empty_prompt():
    cache = _cache(np.random.default_rng(1))
    crops, ids = batch_of_crops(cache, np.random.default_rng(2), 16, 24, 64, prompt_dropout=0.5)
    assert crops.shape == (64, 4, 16, 24)
    dropped = (ids == 0).all(axis=1).sum()
    assert 16 < dropped < 48


def test_training_draws_no_held_out_scene():
    rng = np.random.default_rng(3)
    assert all(data.training_seed(rng) < HELD_OUT_START for _ in range(10_000))


def test_native_density_crops_show_a_part_of_a_view():
    rng = np.random.default_rng(4)
    full = [data.random_view(rng, 1.0).height for _ in range(200)]
    crop = [data.random_view(rng, 1.0, extent=0.25).height for _ in range(200)]
    assert min(full) >= 0.5 and max(full) <= 2.0
    assert min(crop) >= 0.125 and max(crop) <= 0.5


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    assert lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(100, 1.0, 10, 100) == pytest.approx(0.1)
