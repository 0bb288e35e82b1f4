"""The DDIM loop with every tensor resident on the device: no host copy between two steps.

Per step the device runs two graphs: the UNet (sample, timestep, text embeddings -> eps) and the
step kernel (`kernels/ddim_step.py`: guidance, DDIM update and masked blend in one graph, which
also writes the next UNet `sample`). Everything a step reads is uploaded once before the loop:
start sample, text embeddings, init latents, noise, mask, and one small tensor per step for the
timestep and the step's alphas. The latents come back to the host once, after the last step;
a StepEvent copies them only if its `latents` is read (a preview), and only before the loop moves on.
The UNet's first batch is built by engine/guidance.py, as the host loop builds every batch.

A `DeviceRuntime` says *how* a backend keeps tensors on its device: ONNX Runtime binds OrtValues
through IOBinding (`engine/backends/ort_device.py`, which also runs on the CPU, and is how this
loop is tested against `denoise_loop`), TensorRT sets tensor addresses (`engine/backends/tensorrt.py`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from outpaint.core.errors import OutpaintError
from outpaint.core.graphs import TIMESTEP
from outpaint.kernels.ddim_step import (
    ALPHA_NEXT,
    ALPHA_PREV,
    ALPHA_T,
    EXTRA_CHANNELS,
    GUIDANCE,
    INIT_LATENTS,
    LATENTS,
    MASK,
    NOISE,
    StepKernel,
)

from .guidance import is_guided, unet_embeddings, unet_sample
from .loop import KnownRegion, StepEvent
from .schedulers import Plan, Scheduler
from .schedulers.alphas import AlphaSteps


@dataclass(frozen=True)
class LoopTensors:
    """What one request's loop needs on the device, as host arrays to upload once."""

    kernel: StepKernel
    sample: np.ndarray  # (N, C, h, w) float32, the first UNet call's `sample`
    text_embeddings: np.ndarray  # (N, 77, D) float32: [uncond, cond], or [cond] unguided
    constants: dict[str, np.ndarray]  # the kernel's per-request inputs: latents, init latents, noise, mask, ...
    per_step: list[dict[str, np.ndarray]]  # per step: timestep and the kernel's (1,) scalars


class DeviceLoopSession(AbstractContextManager, Protocol):
    """One request's buffers on the device."""

    def step(self, index: int) -> None:
        """Run the UNet and the kernel of step `index`; returns once the step's results are final."""
        ...

    def read_latents(self) -> np.ndarray:
        """(1, 4, h, w) float32 host copy of the latents after the last completed step."""
        ...


class DeviceRuntime(Protocol):
    device: str  # "cpu" or "cuda"

    def open(self, tensors: LoopTensors) -> DeviceLoopSession: ...


def supports(scheduler: Scheduler) -> bool:
    """The kernel implements DDIM's update; other schedulers run the host loop."""
    return scheduler.name == "DDIM"


def plan_scalars(plan: Plan[AlphaSteps], index: int, guidance_scale: float, kernel: StepKernel,
                 ) -> dict[str, np.ndarray]:
    """The (1,) float32 scalar inputs of step `index` of a DDIM `plan`, only those `kernel` takes.

    alpha_next is the plan's level after the step (1.0 after the last), the level DDIM.noised
    re-noises the init latents to for the blend.
    """
    values = {
        ALPHA_T: plan.coefficients.alpha_t[index],
        ALPHA_PREV: plan.coefficients.alpha_prev[index],
        ALPHA_NEXT: plan.levels[index + 1],
        GUIDANCE: guidance_scale,
    }
    return {name: np.array([values[name]], dtype=np.float32) for name in kernel.input_names() if name in values}


def loop_tensors(
    *,
    plan: Plan,
    latents: np.ndarray,  # (1, 4, h, w) float32 start latents
    text_embeddings: np.ndarray,  # (2, 77, D) float32: [uncond, cond]
    guidance_scale: float,
    known: KnownRegion | None,  # blend when given (4-channel UNet)
    extra_channels: np.ndarray | None,  # (1, 5, h, w), 9-channel UNet
) -> LoopTensors:
    """Everything the device loop uploads, derived exactly as the host loop derives it."""
    guided = is_guided(guidance_scale)
    kernel = StepKernel(
        guided=guided,
        blend=known is not None,
        unet_in_channels=4 if extra_channels is None else 4 + extra_channels.shape[1],
    )
    constants = {LATENTS: latents}
    if known is not None:
        constants.update({INIT_LATENTS: known.init_latents, NOISE: known.noise, MASK: known.mask})
    if extra_channels is not None:
        constants[EXTRA_CHANNELS] = extra_channels
    per_step = [
        {TIMESTEP: np.array([plan.timesteps[i]], dtype=np.float32), **plan_scalars(plan, i, guidance_scale, kernel)}
        for i in range(plan.num_steps)
    ]
    return LoopTensors(
        kernel=kernel,
        sample=unet_sample(latents, extra_channels, guided),
        text_embeddings=unet_embeddings(text_embeddings, guided),
        constants={name: np.ascontiguousarray(value, dtype=np.float32) for name, value in constants.items()},
        per_step=per_step,
    )


class DeviceLatents:
    """The reader of one step's latents: a host copy made on the first call, possible only while the
    device buffers still hold that step (until the loop advances)."""

    def __init__(self, index: int, progress: _Progress, session: DeviceLoopSession) -> None:
        self.index = index
        self.progress = progress
        self.session = session
        self.copy: np.ndarray | None = None  # (1, 4, h, w) float32

    def __call__(self) -> np.ndarray:
        if self.copy is None:
            if self.progress.completed != self.index + 1:
                raise OutpaintError(
                    f"the latents of step {self.index} are gone (the loop is at step {self.progress.completed}): "
                    "read StepEvent.latents before advancing the generator"
                )
            self.copy = self.session.read_latents()
        return self.copy


@dataclass
class _Progress:
    completed: int = 0


def device_denoise_loop(runtime: DeviceRuntime, tensors: LoopTensors, plan: Plan) -> Iterator[StepEvent]:
    """Run every step of `plan` on the device; the last event's latents are already on the host."""
    progress = _Progress()
    with runtime.open(tensors) as session:
        for index in range(plan.num_steps):
            started = time.perf_counter()
            session.step(index)
            progress.completed = index + 1
            latents = DeviceLatents(index, progress, session)
            if index == plan.num_steps - 1:
                latents()  # the one copy back to the host, before the session frees the buffers
            yield StepEvent(index, plan.num_steps, float(plan.timesteps[index]),
                            time.perf_counter() - started, read_latents=latents)


def select_device_runtime(unet, wanted: bool | None) -> DeviceRuntime | None:
    """The runtime that keeps `unet`'s loop on its device, per `wanted`.

    None: on when the UNet runs on a GPU, off on the CPU (where the host loop is as fast and needs
    no kernel session). True: on wherever the backend can (the tests use it on the CPU). False: off.
    """
    if wanted is False:
        return None
    make = getattr(unet, "device_runtime", None)
    if make is None:
        if wanted:
            raise OutpaintError(f"the {type(unet).__name__} backend has no device-resident loop; "
                                "use an ort-* or tensorrt backend, or leave device_loop unset")
        return None
    runtime = make()
    if wanted is None and runtime.device == "cpu":
        return None
    return runtime
