"""`outpaint train --inpainting`: the 9-channel UNet starts as the trained 4-channel one, trains on the
masks the engine builds, resumes bitwise, and its folder is an inpainting model for diffusers and for
our exporter and pipeline alike."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from outpaint.engine.canvas import distance_to_unknown, latent_mask  # noqa: E402
from outpaint.training.config import InpaintRecipe, unet_config  # noqa: E402
from outpaint.training.inpaint import (  # noqa: E402
    VaeEncoder,
    inpaint_batch,
    nine_channel_unet,
    save_inpainting_folder,
    train_inpainting,
)
from outpaint.training.masks import known_rectangle, random_mask  # noqa: E402

BASE = Path(__file__).resolve().parents[1] / "weights" / "scenes"
TINY = InpaintRecipe(steps=2, shapes=((8, 8, 2), (8, 16, 1)), warmup=1, cache_images=4)


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_the_nine_channel_unet_starts_as_the_four_channel_one():
    torch.manual_seed(0)
    four = diffusers.UNet2DConditionModel(**unet_config())
    four.eval()
    nine = nine_channel_unet(four)
    nine.eval()
    latents, extra = torch.randn(2, 4, 16, 16), torch.randn(2, 5, 16, 16)
    context, t = torch.randn(2, 77, 64), torch.tensor([10, 900])
    with torch.no_grad():
        expected = four(latents, t, context).sample
        got = nine(torch.cat([latents, extra], dim=1), t, context).sample
    assert nine.config["in_channels"] == 9
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_known_rectangles_leave_new_area_at_the_canvas_edge():
    rng = np.random.default_rng(0)
    for _ in range(300):
        known = known_rectangle(rng, 128, 192)
        assert known.any() and not known.all()
        edge = np.concatenate([known[0], known[-1], known[:, 0], known[:, -1]])
        assert not edge.all(), "outpainting adds pixels at the canvas edge"
        ys, xs = np.nonzero(known)
        assert known[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all(), "a source is one rectangle"


def test_masks_are_the_engines_shapes_at_the_recipes_rates():
    rng = np.random.default_rng(1)
    masks = [random_mask(rng, 64, 128, full_rate=0.2, band_rate=0.3) for _ in range(1000)]
    assert all(m.shape == (64, 128) and m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0} for m in masks)
    full = sum(bool(m.all()) for m in masks)
    assert 150 < full < 250
    assert all(m.any() for m in masks)

    def unmasked_is_a_rectangle(m: np.ndarray) -> bool:
        ys, xs = np.nonzero(m == 0)
        return bool((m[ys.min():ys.max() + 1, xs.min():xs.max() + 1] == 0).all())

    # Outpainting masks keep a rectangle (the source less the expand) and come at 50 %; coherence bands
    # (30 %) keep the far new area too, so only those whose new area is all within the band do.
    rectangles = sum(unmasked_is_a_rectangle(m) for m in masks if not m.all())
    assert 450 < rectangles < 800


def test_an_outpainting_mask_equals_the_engines_for_its_source():
    rng = np.random.default_rng(2)
    state = rng.bit_generator.state
    mask = random_mask(rng, 64, 64, full_rate=0.0, band_rate=0.0)
    rng.bit_generator.state = state
    rng.random()  # the kind draw
    known = known_rectangle(rng, 64, 64)
    assert any(np.array_equal(mask, (distance_to_unknown(known) <= e).astype(np.float32)) for e in (0, 4, 8, 16))


@pytest.fixture(scope="module")
def encoder():
    vae = diffusers.AutoencoderKL.from_pretrained(str(BASE / "vae"), torch_dtype=torch.float32)
    return VaeEncoder(vae.eval(), "f32")


def test_a_batch_carries_the_latent_mask_and_the_masked_images_latents(encoder):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    latents = encoder((pixels.astype(np.float32) / 127.5 - 1).transpose(0, 3, 1, 2))
    cache = {"pixels": pixels, "latents": latents, "token_ids": rng.integers(3, 1000, (3, 77)),
             "empty_ids": np.zeros(77, np.int64)}
    recipe = replace(TINY, full_mask_rate=1.0, prompt_dropout=0.5)
    got_latents, extra, ids = inpaint_batch(cache, encoder, recipe, np.random.default_rng(4), 8, 16, 40)
    assert got_latents.shape == (40, 4, 8, 16) and extra.shape == (40, 5, 8, 16) and ids.shape == (40, 77)
    # Every mask full: the mask channel is all ones and the masked image is uniform blank gray.
    assert torch.all(extra[:, 0] == 1)
    blank = encoder(np.full((1, 3, 64, 128), 127 / 127.5 - 1, np.float32))
    torch.testing.assert_close(extra[:, 1:], torch.from_numpy(blank).expand(40, -1, -1, -1), rtol=0, atol=1e-4)
    assert 8 < int((ids == 0).all(dim=1).sum()) < 32


def test_a_masked_batch_matches_the_engines_latent_mask(encoder):
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    cache = {"pixels": pixels, "latents": np.zeros((2, 4, 8, 8), np.float32),
             "token_ids": np.ones((2, 77), np.int64), "empty_ids": np.zeros(77, np.int64)}
    recipe = replace(TINY, full_mask_rate=0.0, band_mask_rate=0.0, prompt_dropout=0.0)
    draw = np.random.default_rng(6)
    state = draw.bit_generator.state
    _, extra, _ = inpaint_batch(cache, encoder, recipe, draw, 8, 8, 1)
    draw.bit_generator.state = state
    _ = draw.integers(0, 2, 1), draw.integers(0, 1, 1), draw.integers(0, 1, 1)  # index, top, left
    mask = random_mask(draw, 64, 64, 0.0, 0.0)
    np.testing.assert_array_equal(extra[:, :1].numpy(), latent_mask(mask))


def test_the_fine_tune_resumes_bitwise(tmp_path):
    straight, _ = train_inpainting(TINY, BASE, tmp_path / "straight.pt")
    train_inpainting(replace(TINY, steps=1), BASE, tmp_path / "resumed.pt")  # "interrupted" after one step
    resumed, history = train_inpainting(TINY, BASE, tmp_path / "resumed.pt")
    assert [h[0] for h in history] == [0, 1]
    assert _same(straight, resumed)


def test_the_folder_is_an_inpainting_model_for_diffusers_and_for_us(tmp_path):
    from outpaint.engine.pipeline import OutpaintPipeline
    from outpaint.engine.request import OutpaintRequest
    from outpaint.export.onnx_export import export_components
    from outpaint.export.sources import load_components
    from tests.conftest import make_png

    folder = tmp_path / "scenes-inpaint"
    four = diffusers.UNet2DConditionModel.from_pretrained(str(BASE / "unet"))
    save_inpainting_folder(folder, BASE, nine_channel_unet(four))
    assert (folder / "vae").is_symlink() and (folder / "vae").resolve() == (BASE / "vae").resolve()
    pipe = diffusers.StableDiffusionInpaintPipeline.from_pretrained(str(folder), safety_checker=None)
    assert pipe.unet.config["in_channels"] == 9

    export_components(load_components(str(folder)), tmp_path / "model", feature_cache=False)
    pipeline = OutpaintPipeline.load(tmp_path / "model", "ort-cpu")
    assert pipeline.unet_in_channels == 9
    result = pipeline(make_png(128, 128), OutpaintRequest(prompt="a lake", img_width=256, img_height=256,
                                                          num_inference_steps=2, seed=1))
    assert result.image.shape == (256, 256, 3)
