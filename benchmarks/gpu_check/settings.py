"""What every part of the check runs on: one model, one request, one seed, one timing recipe."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..workload import NEGATIVE_PROMPT, PROMPT, source_rgb

OUR_GPU_BACKENDS = ("ort-cuda", "ort-trt", "tensorrt")
DIFFUSERS = "diffusers-fp16"
REFERENCE = "ort-cpu"


@dataclass(frozen=True)
class CheckSettings:
    model_dir: str
    width: int = 512
    height: int = 512
    steps: int = 10  # of the compared request; the timed run gives one sample per step
    seed: int = 1234
    guidance: float = 7.5
    warmup: int = 3  # untimed guided steps before diffusers' timed ones (ours: a whole untimed request)
    runs: int = 10  # timed guided steps of diffusers

    @property
    def canvas(self) -> str:
        return f"{self.width}x{self.height}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CheckSettings:
        return cls(**json.loads(text))

    def request(self):
        """The compared request: the source on the canvas's left half, the right half regenerated."""
        from outpaint.engine.request import OutpaintRequest

        return OutpaintRequest(prompt=PROMPT, negative_prompt=NEGATIVE_PROMPT, num_inference_steps=self.steps,
                               img_width=self.width, img_height=self.height, guidance_scale=self.guidance,
                               seed=self.seed, strength=1.0, mask_expand=8)

    def source(self):
        import numpy as np

        from outpaint.engine.canvas import SourceImage

        rgb = source_rgb(self.width, self.height)
        return SourceImage(rgb=rgb, known=np.ones(rgb.shape[:2], dtype=bool))


def default_model_dir() -> Path:
    """Its own folder: the check exports without the feature-cache graphs `outpaint bench --size full` needs."""
    from ..run import DEFAULT_MODEL_ROOT

    return DEFAULT_MODEL_ROOT / "random-full-gpu-check"
