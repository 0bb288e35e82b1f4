"""The PyTorch peer: diffusers' StableDiffusionInpaintPipeline on the same random weights.

build_random_components(size, seed=0) builds exactly the modules `outpaint export --random` exported,
so both engines compute the same functions (results.json's "agreement" checks that on the UNet).
"""

from __future__ import annotations

import time

from .config import BenchConfig
from .peer_inpaint import StepClock, run_whole_inpaint
from .recorder import Recorder
from .timing import NO_CANVAS
from .workload import (
    NEGATIVE_PROMPT,
    PROMPT,
    unet_inputs,
    vae_inputs,
)


def _pipeline(config: BenchConfig):
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline
    from transformers import CLIPTokenizer

    from outpaint.export.random_models import build_random_components

    components = build_random_components(config.size, seed=0)
    pipe = StableDiffusionInpaintPipeline(
        vae=components.vae, text_encoder=components.text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(str(components.tokenizer_dir)), unet=components.unet,
        scheduler=DDIMScheduler.from_config(components.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _StepClock(StepClock):
    """Forward hooks on the UNet (a torch module) time its calls."""

    def __init__(self, unet) -> None:
        super().__init__()
        self._handles = [
            unet.register_forward_pre_hook(lambda *_: self.unet_start.append(time.perf_counter())),
            unet.register_forward_hook(
                lambda *_: self.unet_seconds.append(time.perf_counter() - self.unet_start[-1])
            ),
        ]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def run(system: str, config: BenchConfig, rec: Recorder) -> None:
    import torch


    started = time.perf_counter()
    pipe = _pipeline(config)
    rec.notes.append(f"built in {time.perf_counter() - started:.1f} s; torch threads {torch.get_num_threads()}")
    hidden = pipe.text_encoder.config.hidden_size
    canvas = config.outpaint_canvas
    image, latent = (torch.from_numpy(a) for a in vae_inputs(canvas))

    def unet_step(at: str) -> None:
        feeds = {k: torch.from_numpy(v) for k, v in unet_inputs(at, hidden).items()}
        x = feeds["sample"][:1]

        def step():
            eps = pipe.unet(torch.cat([x, x]), feeds["timestep"], encoder_hidden_states=feeds["encoder_hidden_states"]
                            ).sample
            uncond, cond = eps.chunk(2)
            return uncond + config.guidance * (cond - uncond)

        rec.save(f"unet_step_{at}", rec.measure("unet_step", at, step, runs=config.runs_for(at)).numpy())

    with torch.no_grad():
        rec.measure("text_encoder", NO_CANVAS,
                    lambda: pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE_PROMPT), runs=config.runs)
        rec.measure("vae_encode", canvas, lambda: pipe.vae.encode(image).latent_dist.mean, runs=config.runs)
        rec.measure("vae_decode", canvas, lambda: pipe.vae.decode(latent).sample, runs=config.runs)
        if canvas in config.unet_canvases_for(system):
            unet_step(canvas)
        if system in config.whole_systems:
            run_whole_inpaint(pipe, config, rec, _StepClock)
        for at in config.unet_canvases_for(system):
            if at != canvas:
                unet_step(at)
