"""Samplers, one file each, registered under the hosted API's names."""

from __future__ import annotations

from outpaint.core.errors import InvalidRequest

from .base import Denoiser, Plan, Sampler
from .config import NoiseScheduleConfig
from .ddim import DDIM
from .ddpm import Ddpm
from .dpm_multistep import DpmMultistep
from .dpm_singlestep import DpmSinglestep
from .euler import Euler
from .euler_ancestral import EulerAncestral
from .heun import Heun
from .kdpm2 import KDPM2
from .kdpm2_ancestral import KDPM2Ancestral
from .lms import Lms
from .pndm import Pndm

SAMPLERS: dict[str, Sampler] = {
    sampler.name: sampler
    for sampler in (
        DDIM(), DpmMultistep(), DpmSinglestep(), EulerAncestral(), Euler(), Heun(),
        KDPM2Ancestral(), KDPM2(), Lms(), Pndm(), Ddpm(),
    )
}

# Every name the hosted API lists; tests check each one is registered in SAMPLERS.
API_SCHEDULER_NAMES = (
    "DDIM", "DPM Multi", "DPM Single", "Euler a", "Euler", "Heun",
    "DPM2 a Karras", "DPM2 Karras", "LMS", "PNDM", "DDPM",
)


def get_sampler(name: str) -> Sampler:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise InvalidRequest(
            "scheduler", f"{name!r} is not a scheduler; choose one of {', '.join(SAMPLERS)}"
        ) from None


__all__ = ["API_SCHEDULER_NAMES", "SAMPLERS", "Denoiser", "NoiseScheduleConfig", "Plan", "Sampler", "get_sampler"]
