"""Schedulers, one file each, registered under the hosted API's names."""

from __future__ import annotations

from outpaint.core.errors import InvalidRequest

from .base import Denoiser, NoiseSource, Plan, Scheduler
from .config import NoiseScheduleConfig
from .ddim import DDIM
from .ddpm import DDPM
from .dpm_multistep import DPMSolverMultistep
from .dpm_singlestep import DPMSolverSinglestep
from .euler import Euler
from .euler_ancestral import EulerAncestral
from .heun import Heun
from .kdpm2 import KDPM2
from .kdpm2_ancestral import KDPM2Ancestral
from .lms import LMS
from .pndm import PNDM

SCHEDULERS: dict[str, Scheduler] = {
    scheduler.name: scheduler
    for scheduler in (
        DDIM(), DPMSolverMultistep(), DPMSolverSinglestep(), EulerAncestral(), Euler(), Heun(),
        KDPM2Ancestral(), KDPM2(), LMS(), PNDM(), DDPM(),
    )
}

# Every name the hosted API lists; tests check each one is registered in SCHEDULERS.
API_SCHEDULER_NAMES = (
    "DDIM", "DPM Multi", "DPM Single", "Euler a", "Euler", "Heun",
    "DPM2 a Karras", "DPM2 Karras", "LMS", "PNDM", "DDPM",
)


def get_scheduler(name: str) -> Scheduler:
    try:
        return SCHEDULERS[name]
    except KeyError:
        raise InvalidRequest(
            "scheduler", f"{name!r} is not a scheduler; choose one of {', '.join(SCHEDULERS)}"
        ) from None


__all__ = [
    "API_SCHEDULER_NAMES", "SCHEDULERS", "Denoiser", "NoiseScheduleConfig", "NoiseSource", "Plan", "Scheduler",
    "get_scheduler",
]
