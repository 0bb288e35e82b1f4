"""The optimum peer: optimum's ORTStableDiffusionInpaintPipeline (ONNX Runtime, CPU) on the same weights.

What an ONNX Runtime user starts from: optimum's own export of the very weights the diffusers peer
rebuilds (build_random_components(size, seed=0), exported once into MODEL/optimum-peer/ by run.py with
`python -m optimum.exporters.onnx --task inpainting`), run by optimum's pipeline, which is diffusers'
StableDiffusionInpaintPipeline with ONNX Runtime sessions in place of the torch modules. Same canvas,
mask, prompt, steps, guidance, DDIM and initial noise (`latents=`) as the diffusers peer; like diffusers it
draws the VAE-encoded source latents from the latent distribution, so its image is compared by PSNR.

This module runs in optimum's own virtualenv (.venv-optimum: constraints-optimum.txt says why it is not
ours); the runner starts its worker there. It imports nothing of ours that needs more than numpy, Pillow
and scipy.
"""

from __future__ import annotations

import time
from pathlib import Path

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

PEER_DIR = "optimum-peer"  # beside the model's graphs: optimum's export of the same weights (run.py makes it)


def peer_folder(model_dir: str | Path) -> Path:
    return Path(model_dir) / PEER_DIR


class _StepClock(StepClock):
    """Per-step wall time minus UNet time: optimum's UNet is no torch module (no hooks), so its `forward`
    is wrapped on the instance (`__call__` looks it up there first)."""

    def __init__(self, unet) -> None:
        super().__init__()
        self.unet = unet
        inner = unet.forward

        def timed(*args, **kwargs):
            self.unet_start.append(time.perf_counter())
            out = inner(*args, **kwargs)
            self.unet_seconds.append(time.perf_counter() - self.unet_start[-1])
            return out

        unet.forward = timed

    def close(self) -> None:
        del self.unet.forward  # the class's own again


def run(system: str, config: BenchConfig, rec: Recorder) -> None:
    from importlib.metadata import version

    import torch
    from optimum.onnxruntime import ORTStableDiffusionInpaintPipeline


    folder = peer_folder(config.model_dir)
    started = time.perf_counter()
    pipe = ORTStableDiffusionInpaintPipeline.from_pretrained(str(folder), provider="CPUExecutionProvider")
    pipe.set_progress_bar_config(disable=True)
    rec.notes.append(f"optimum {version('optimum')}, optimum-onnx {version('optimum-onnx')}, diffusers "
                     f"{version('diffusers')}, onnxruntime {version('onnxruntime')}; loaded {folder} in "
                     f"{time.perf_counter() - started:.1f} s; scheduler "
                     f"{type(pipe.scheduler).__name__}; torch threads {torch.get_num_threads()}")
    hidden = int(pipe.text_encoder.config.hidden_size)
    canvas = config.outpaint_canvas
    image, latent = (torch.from_numpy(a) for a in vae_inputs(canvas))

    def unet_step(at: str) -> None:
        feeds = {k: torch.from_numpy(v) for k, v in unet_inputs(at, hidden).items()}
        x = feeds["sample"][:1]
        timestep = feeds["timestep"].reshape(())  # optimum's UNet takes a scalar timestep

        def step():
            # A fresh batch per call: optimum's IOBinding writes the UNet's output into its input's buffer.
            eps = pipe.unet(sample=torch.cat([x, x]), timestep=timestep,
                            encoder_hidden_states=feeds["encoder_hidden_states"]).sample
            uncond, cond = eps.chunk(2)
            return uncond + config.guidance * (cond - uncond)

        rec.save(f"unet_step_{at}", rec.measure("unet_step", at, step, runs=config.runs_for(at)).numpy().copy())

    with torch.no_grad():
        rec.measure("text_encoder", NO_CANVAS,
                    lambda: pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE_PROMPT), runs=config.runs)
        rec.measure("vae_encode", canvas, lambda: pipe.vae_encoder(sample=image).latent_dist.mean, runs=config.runs)
        rec.measure("vae_decode", canvas, lambda: pipe.vae_decoder(latent_sample=latent).sample, runs=config.runs)
        if canvas in config.unet_canvases_for(system):
            unet_step(canvas)
        if system in config.whole_systems:
            run_whole_inpaint(pipe, config, rec, _StepClock)
        for at in config.unet_canvases_for(system):
            if at != canvas:
                unet_step(at)
