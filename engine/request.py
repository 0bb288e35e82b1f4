"""One outpainting request: the API's fields, their defaults and their allowed ranges.

The HTTP service, the CLI and the Python API all validate through `OutpaintRequest.from_fields`,
so a range lives in exactly one place (`FIELDS`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from outpaint.core.errors import InvalidRequest

SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class FieldSpec:
    """The type and range of one numeric request field."""

    kind: type  # int or float
    default: int | float
    low: int | float
    high: int | float
    multiple_of: int | None = None
    allowed_extra: tuple[int, ...] = ()  # values outside [low, high] that are also allowed (seed -1)

    def describe(self) -> str:
        rng = f"{self.kind.__name__} from {self.low} to {self.high}"
        if self.multiple_of:
            rng += f", a multiple of {self.multiple_of}"
        if self.allowed_extra:
            rng = " or ".join(str(v) for v in self.allowed_extra) + f" or {rng}"
        return rng


FIELDS: dict[str, FieldSpec] = {
    "num_inference_steps": FieldSpec(int, 25, 25, 100),
    "img_width": FieldSpec(int, 1024, 256, 1024, multiple_of=64),
    "img_height": FieldSpec(int, 1024, 256, 1024, multiple_of=64),
    "scale": FieldSpec(float, 1.0, 0.1, 10.0),
    "strength": FieldSpec(float, 1.0, 0.1, 1.0),
    "offset_x": FieldSpec(int, 0, 0, 1024),
    "offset_y": FieldSpec(int, 0, 0, 1024),
    "guidance_scale": FieldSpec(float, 7.5, 0.1, 25.0),
    "mask_expand": FieldSpec(int, 8, 0, 256),
    "seed": FieldSpec(int, -1, 0, SEED_MAX, allowed_extra=(-1,)),
}


def _coerce_number(name: str, value: Any, spec: FieldSpec) -> int | float:
    # bool is an int subclass in Python; JSON true/false is never a number here.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(name, f"must be a number ({spec.describe()}), got {type(value).__name__}")
    if spec.kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise InvalidRequest(name, f"must be a whole number ({spec.describe()}), got {_shown(value)}")
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise InvalidRequest(name, f"must be finite ({spec.describe()}), got {_shown(value)}")
    if value in spec.allowed_extra:
        return value
    if not spec.low <= value <= spec.high:
        raise InvalidRequest(name, f"must be {spec.describe()}, got {_shown(value)}")
    if spec.multiple_of and value % spec.multiple_of:
        raise InvalidRequest(name, f"must be {spec.describe()}, got {_shown(value)}")
    return value


def field_value(name: str, value: Any, spec: FieldSpec) -> int | float:
    """Field `name`'s value checked against `spec`; None (absent or JSON null) is its default.
    Raises InvalidRequest naming the field and the allowed range."""
    return spec.default if value is None else _coerce_number(name, value, spec)


# A UTF-16 surrogate code point: JSON's "\ud800" escape decodes to one, alone, in a Python str. It
# is not a character, cannot be encoded as UTF-8, and made the tokenizer raise (a 500).
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SHOWN_CHARS = 40  # of a rejected value echoed in an error: a 15 MB "scheduler" must not come back whole


def _check_text(name: str, text: str) -> str:
    """The text if it is valid Unicode (encodable as UTF-8), else an InvalidRequest naming the field.

    Control characters, NUL included, are accepted: they are valid Unicode, CLIP tokenizes them like
    any other character, and nothing downstream treats the text as a C string.
    """
    found = _SURROGATE.search(text)
    if found:
        raise InvalidRequest(
            name,
            f"has a lone UTF-16 surrogate (U+{ord(found.group()):04X} at character {found.start()}), which is "
            "not a character; send valid Unicode text (a JSON string whose \\u escapes pair surrogates)",
        )
    return text


def _shown(value: Any) -> str:
    """A rejected value for an error message, cut to a few dozen characters."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"


@dataclass(frozen=True)
class OutpaintRequest:
    """Everything one outpainting call needs but the source image and the model.

    Geometry is in pixels of the output canvas; `scale` resizes the source before placement.
    """

    prompt: str
    negative_prompt: str = ""
    scheduler: str = "DDIM"
    num_inference_steps: int = 25
    img_width: int = 1024
    img_height: int = 1024
    scale: float = 1.0
    strength: float = 1.0
    offset_x: int = 0
    offset_y: int = 0
    guidance_scale: float = 7.5
    mask_expand: int = 8
    seed: int = -1
    infill: str = "pushpull"

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], *, schedulers: tuple[str, ...]) -> OutpaintRequest:
        """Validate API-style fields (unknown ones ignored) into a request.

        `schedulers` lists the scheduler names this engine implements; any other name is rejected
        with that list.
        """
        from .canvas import INFILL_MODES  # local: canvas imports numpy/PIL, request stays light

        values: dict[str, Any] = {}
        prompt = fields.get("prompt")
        if prompt is None:
            raise InvalidRequest("prompt", "is required (a string)")
        if not isinstance(prompt, str):
            raise InvalidRequest("prompt", f"must be a string, got {type(prompt).__name__}")
        values["prompt"] = _check_text("prompt", prompt)
        negative = fields.get("negative_prompt")
        if negative is not None and not isinstance(negative, str):
            raise InvalidRequest("negative_prompt", f"must be a string or null, got {type(negative).__name__}")
        values["negative_prompt"] = _check_text("negative_prompt", negative or "")
        scheduler = fields.get("scheduler")
        if scheduler is None:
            scheduler = "DDIM"
        if not isinstance(scheduler, str) or scheduler not in schedulers:
            raise InvalidRequest("scheduler", f"must be one of {', '.join(schedulers)}; got {_shown(scheduler)}")
        values["scheduler"] = scheduler
        infill = fields.get("infill")
        if infill is not None:
            if not isinstance(infill, str) or infill not in INFILL_MODES:
                raise InvalidRequest("infill", f"must be one of {', '.join(INFILL_MODES)}; got {_shown(infill)}")
            values["infill"] = infill
        for name, spec in FIELDS.items():
            values[name] = field_value(name, fields.get(name), spec)
        return cls(**values)
