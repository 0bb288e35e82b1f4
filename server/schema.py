"""OpenAPI descriptions of the request and error bodies, built from engine/request.py's FIELDS
so the documented ranges are the enforced ones."""

from __future__ import annotations

from typing import Any

from outpaint.engine.request import FIELDS, FieldSpec

_DESCRIPTIONS = {
    "num_inference_steps": "denoising steps",
    "img_width": "output canvas width (px)",
    "img_height": "output canvas height (px)",
    "scale": "resize factor of the source before it is placed on the canvas",
    "strength": "how far the start point is noised: 1 = pure noise in the new area",
    "offset_x": "x of the source's top-left corner on the canvas (px from the left)",
    "offset_y": "y of the source's top-left corner on the canvas (px from the top)",
    "guidance_scale": "classifier-free guidance weight",
    "mask_expand": "pixels the regenerated region grows into the source (the blend band)",
    "seed": "-1 picks a random seed (returned in x-seed)",
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "what was wrong and what is allowed"},
        "field": {"type": ["string", "null"], "description": "the request field at fault (400 only)"},
    },
    "required": ["error"],
}


def request_schema(schedulers: tuple[str, ...]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "image": {"type": "string", "contentEncoding": "base64",
                  "description": "base64 of a PNG, JPEG or WebP file (the init image)"},
        "prompt": {"type": "string", "description": "what to render in the new area"},
        "negative_prompt": {"type": ["string", "null"], "description": "what to steer away from; empty or null: none"},
        "scheduler": {"type": "string", "enum": list(schedulers), "default": "DDIM",
                      "description": "the scheduler; other names of the hosted API are a 400 listing these"},
    }
    for name, spec in FIELDS.items():
        properties[name] = number_property(spec, _DESCRIPTIONS.get(name, name))
    return {"type": "object", "required": ["image", "prompt"], "properties": properties}


def number_property(spec: FieldSpec, description: str, *, default: bool = True) -> dict[str, Any]:
    """The OpenAPI property of a numeric field, its range from the spec that enforces it."""
    prop: dict[str, Any] = {
        "type": "integer" if spec.kind is int else "number",
        "minimum": min((spec.low, *spec.allowed_extra)),
        "maximum": spec.high,
        "description": f"{description}; {spec.describe()}",
    }
    if default:
        prop["default"] = spec.default
    if spec.multiple_of:
        prop["multipleOf"] = spec.multiple_of
    return prop


def error_response(description: str, *, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    doc: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    if headers:
        doc["headers"] = {h: {"schema": {"type": "string"}} for h in headers}
    return doc
