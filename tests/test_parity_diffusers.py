"""End to end: our engine against diffusers' StableDiffusionInpaintPipeline on the same tiny weights.

Same canvas (our infilled canvas is given to diffusers as `image`), same mask, same noise, geometry
aligned to the 8-pixel latent grid (where our area-averaged latent mask equals diffusers' nearest
resize of the binarised mask). diffusers samples from the VAE's latent distribution; its VAE copy
here returns the mean, as pipeline.md step 4 prescribes.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from PIL import Image

from outpaint.engine import canvas as cv
from outpaint.engine.coherence import COHERENCE_OFF
from outpaint.engine.pipeline import OutpaintPipeline
from outpaint.engine.request import OutpaintRequest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")


def _mean_only_vae(vae):
    """A copy of the VAE whose encode() distribution is deterministic (sample() returns the mean)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput

    vae = copy.deepcopy(vae)
    original_encode = vae.encode

    def encode(x, return_dict=True):
        dist = original_encode(x).latent_dist
        return AutoencoderKLOutput(latent_dist=DiagonalGaussianDistribution(dist.parameters, deterministic=True))

    vae.encode = encode
    return vae


@pytest.mark.parametrize("guidance", [7.5, 1.0])
def test_engine_matches_diffusers_inpaint_pipeline(tiny_components, tiny_model_dir, guidance):
    from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import StableDiffusionInpaintPipeline
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from transformers import CLIPTokenizer

    width, height, steps = 256, 192, 5
    rng = np.random.default_rng(3)
    source = cv.SourceImage(rgb=rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), known=np.ones((128, 128), bool))
    request = OutpaintRequest(
        prompt="streets in italy", negative_prompt="blurry", num_inference_steps=steps, img_width=width,
        img_height=height, offset_x=64, offset_y=32, mask_expand=8, guidance_scale=guidance, seed=11,
    )
    noise = rng.standard_normal((1, 4, height // 8, width // 8), dtype=np.float32)
    # Colour match and the coherence pass off: stages diffusers does not have (engine/colour_match.py,
    # engine/coherence.py).
    ours = OutpaintPipeline.load(tiny_model_dir, colour_match="off", coherence=COHERENCE_OFF)(source, request,
                                                                                             noise=noise)

    # The very canvas our engine encoded: the infilled canvas and the regenerate mask.
    canvas = ours.canvas
    infilled = cv.infill(canvas, request.infill, np.random.default_rng([request.seed, 1]))
    assert set(np.unique(cv.latent_mask(canvas.mask))) <= {0.0, 1.0}, "geometry must be latent-aligned"

    pipe = StableDiffusionInpaintPipeline(
        vae=_mean_only_vae(tiny_components.vae),
        text_encoder=tiny_components.text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(tiny_components.tokenizer_dir)),
        unet=tiny_components.unet,
        # diffusers annotates these as an enum of scheduler names and as required; it takes an instance and None.
        scheduler=DDIMScheduler.from_config(tiny_components.scheduler_config),  # pyright: ignore[reportArgumentType]
        safety_checker=None,  # pyright: ignore[reportArgumentType]
        feature_extractor=None,  # pyright: ignore[reportArgumentType]
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    kwargs: dict[str, Any] = dict(
        prompt=request.prompt, negative_prompt=request.negative_prompt, image=Image.fromarray(infilled),
        mask_image=Image.fromarray((canvas.mask * 255).astype(np.uint8)), height=height, width=width,
        num_inference_steps=steps, guidance_scale=guidance, strength=1.0, latents=torch.from_numpy(noise),
    )
    with torch.no_grad():
        latent_out, image_out = pipe(**kwargs, output_type="latent"), pipe(**kwargs, output_type="np")
    assert isinstance(latent_out, StableDiffusionPipelineOutput)
    assert isinstance(image_out, StableDiffusionPipelineOutput)
    ref_latents = np.asarray(latent_out.images)
    ref_image = np.asarray(image_out.images)[0]  # (H, W, 3) float in [0, 1]

    latent_error = np.abs(ours.latents - ref_latents).max() / np.abs(ref_latents).max()
    print(f"max relative latent error vs diffusers: {latent_error:.3g}")
    assert latent_error < 1e-4
    # Decoded pixels: ours are rounded to uint8, diffusers' are floats; one step of rounding apart at most.
    pixel_error = np.abs(ours.decoded.astype(np.float32) - ref_image * 255).max()
    print(f"max pixel error vs diffusers: {pixel_error:.3g}")
    assert pixel_error <= 1.0
