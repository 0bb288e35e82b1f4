"""The DDIM loop with every tensor resident on the device: no host copy between two steps.

Per step the device runs two graphs: the UNet (sample, timestep, text embeddings -> eps) and the
step kernel (`kernels/ddim_step.py`: guidance, DDIM update and masked blend in one graph, which
also writes the next UNet `sample`). Everything a step reads is uploaded once before the loop:
start sample, text embeddings, init latents, noise, mask, and one small tensor per step for the
timestep and the step's alphas. The latents come back to the host once, after the last step;
a StepEvent copies them only if its `latents` is read (a preview), and only before the loop moves on.

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
from outpaint.kernels.ddim_step import (
    EXTRA_CHANNELS,
    INIT_LATENTS,
    LATENTS,
    MASK,
    NOISE,
    StepKernel,
    plan_scalars,
)

from .loop import StepEvent
from .schedulers import Plan, Sampler

TIMESTEP = "timestep"  # the UNet's (1,) float32 timestep input


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


def supports(sampler: Sampler) -> bool:
    """The kernel implements DDIM's update; other samplers run the host loop."""
    return sampler.name == "DDIM"


def unet_sample(latents: np.ndarray, extra_channels: np.ndarray | None, guided: bool) -> np.ndarray:
    """(N, C, h, w) float32 UNet `sample` for (1, 4, h, w) latents, as guided_denoiser builds it."""
    single = latents if extra_channels is None else np.concatenate([latents, extra_channels], axis=1)
    return np.ascontiguousarray(np.concatenate([single, single], axis=0) if guided else single, dtype=np.float32)


def loop_tensors(
    *,
    plan: Plan,
    latents: np.ndarray,  # (1, 4, h, w) float32 start latents
    text_embeddings: np.ndarray,  # (2, 77, D) float32: [uncond, cond]
    guidance_scale: float,
    init_latents: np.ndarray | None,  # (1, 4, h, w): blend when given (4-channel UNet)
    noise: np.ndarray,  # (1, 4, h, w)
    mask: np.ndarray,  # (1, 1, h, w)
    extra_channels: np.ndarray | None,  # (1, 5, h, w), 9-channel UNet
) -> LoopTensors:
    """Everything the device loop uploads, derived exactly as the host loop derives it."""
    # Guidance exactly 1 skips the uncond half, as guided_denoiser does (docs/decisions.md).
    guided = guidance_scale != 1.0
    kernel = StepKernel(
        guided=guided,
        blend=init_latents is not None,
        unet_in_channels=4 if extra_channels is None else 4 + extra_channels.shape[1],
    )
    constants = {LATENTS: latents}
    if kernel.blend:
        constants.update({INIT_LATENTS: init_latents, NOISE: noise, MASK: mask})
    if extra_channels is not None:
        constants[EXTRA_CHANNELS] = extra_channels
    per_step = [
        {TIMESTEP: np.array([plan.timesteps[i]], dtype=np.float32), **plan_scalars(plan, i, guidance_scale, kernel)}
        for i in range(plan.num_steps)
    ]
    return LoopTensors(
        kernel=kernel,
        sample=unet_sample(latents, extra_channels, guided),
        text_embeddings=np.ascontiguousarray(text_embeddings if guided else text_embeddings[1:], dtype=np.float32),
        constants={name: np.ascontiguousarray(value, dtype=np.float32) for name, value in constants.items()},
        per_step=per_step,
    )


class DeviceStepEvent(StepEvent):
    """A StepEvent whose latents stay on the device unless read, and are readable only before the next step."""

    def __init__(self, index: int, total: int, timestep: float, seconds: float, progress: _Progress,
                 session: DeviceLoopSession) -> None:
        for name, value in (("index", index), ("total", total), ("timestep", timestep), ("seconds", seconds)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_progress", progress)
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_copy", None)

    @property
    def latents(self) -> np.ndarray:  # (1, 4, h, w) float32
        if self._copy is None:
            if self._progress.completed != self.index + 1:
                raise OutpaintError(
                    f"the latents of step {self.index} are gone (the loop is at step {self._progress.completed}): "
                    "read StepEvent.latents before advancing the generator"
                )
            object.__setattr__(self, "_copy", self._session.read_latents())
        return self._copy


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
            event = DeviceStepEvent(index, plan.num_steps, float(plan.timesteps[index]),
                                    time.perf_counter() - started, progress, session)
            if index == plan.num_steps - 1:
                event.latents  # noqa: B018 - the one copy back to the host, before the buffers are freed
            yield event


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
