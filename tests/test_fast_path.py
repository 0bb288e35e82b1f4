"""The fast path: every lever off is exactly the reference pipeline; each lever is exact outside the mask."""

from __future__ import annotations

import numpy as np
import pytest
from outpaint.engine.canvas import SourceImage
from outpaint.engine.errors import InvalidRequest
from outpaint.engine.fast_pipeline import FastOutpaintPipeline, FastPathOptions
from outpaint.engine.request import OutpaintRequest

OFF = FastPathOptions(decode_margin=None, window_margin=None, unguided_tail_steps=0)


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(7)
    source = SourceImage(rgb=rng.integers(0, 256, (256, 128, 3), dtype=np.uint8), known=np.ones((256, 128), bool))
    request = OutpaintRequest(prompt="a harbour", img_width=256, img_height=256, num_inference_steps=4, seed=5)
    return source, request


@pytest.fixture(scope="module")
def reference(tiny_pipeline, case):
    return tiny_pipeline(*case)


def _fast(tiny_model_dir, options):
    return FastOutpaintPipeline.load(tiny_model_dir, "ort-cpu", options)


def test_all_levers_off_is_the_reference_pipeline(tiny_model_dir, case, reference):
    result = _fast(tiny_model_dir, OFF)(*case)
    np.testing.assert_array_equal(result.latents, reference.latents)
    np.testing.assert_array_equal(result.image, reference.image)


@pytest.mark.parametrize("options", [
    FastPathOptions(decode_margin=2, window_margin=None, unguided_tail_steps=0),
    FastPathOptions(decode_margin=None, window_margin=2, unguided_tail_steps=0),
    FastPathOptions(decode_margin=2, window_margin=2, unguided_tail_steps=2),
], ids=["region-decode", "unet-window", "all"])
def test_each_lever_keeps_the_source_exact_and_changes_only_the_mask(tiny_model_dir, case, reference, options):
    result = _fast(tiny_model_dir, options)(*case)
    regenerate = reference.canvas.mask > 0
    np.testing.assert_array_equal(result.image[~regenerate], reference.image[~regenerate])
    assert result.image.shape == reference.image.shape
    differs = np.any(result.image != reference.image, axis=-1)
    assert differs[regenerate].any(), "the lever did not change anything: was it applied?"


def test_unet_window_is_aligned_and_skipped_when_it_would_be_the_whole_canvas(tiny_model_dir, reference):
    from outpaint.engine.canvas import latent_mask

    pipe = _fast(tiny_model_dir, FastPathOptions(window_margin=2))
    window = pipe.unet_window(latent_mask(reference.canvas.mask))
    assert window is not None and window.width % 8 == 0 and window.height == 32
    wide = _fast(tiny_model_dir, FastPathOptions(window_margin=40))
    assert wide.unet_window(latent_mask(reference.canvas.mask)) is None


def test_guidance_one_makes_the_unguided_tail_exact(tiny_model_dir, tiny_pipeline, case):
    source, request = case
    request = OutpaintRequest(**{**request.__dict__, "guidance_scale": 1.0})
    expected = tiny_pipeline(source, request)
    tail_only = FastPathOptions(decode_margin=None, window_margin=None, unguided_tail_steps=3)
    result = _fast(tiny_model_dir, tail_only)(source, request)
    np.testing.assert_array_equal(result.latents, expected.latents)


@pytest.mark.parametrize("kwargs,field", [
    ({"decode_margin": -1}, "decode_margin"), ({"window_margin": -2}, "window_margin"),
    ({"unguided_tail_steps": -1}, "unguided_tail_steps"),
])
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(InvalidRequest, match=field):
        FastPathOptions(**kwargs)
