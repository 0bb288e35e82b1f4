"""API-field validation: one place for ranges, a clear message naming the field and the allowed range."""

from __future__ import annotations

import pytest

from outpaint.core.errors import InvalidRequest
from outpaint.engine.request import OutpaintRequest

NAMES = ("DDIM",)


def test_defaults_follow_the_api():
    r = OutpaintRequest.from_fields({"prompt": "x"}, schedulers=NAMES)
    assert (r.num_inference_steps, r.img_width, r.img_height, r.scale, r.strength) == (25, 1024, 1024, 1.0, 1.0)
    assert (r.guidance_scale, r.mask_expand, r.seed, r.scheduler, r.negative_prompt) == (7.5, 8, -1, "DDIM", "")


def test_reference_client_body_is_accepted_and_unknown_fields_ignored():
    body = {"image": "...", "prompt": "streets in italy", "negative_prompt": "NONE", "scheduler": "DDIM",
            "num_inference_steps": 25, "img_width": 1024, "img_height": 1024, "scale": 1, "strength": 1,
            "offset_x": 256, "offset_y": 256, "guidance_scale": 7.5, "mask_expand": 8, "seed": 124567,
            "something_new": True}
    r = OutpaintRequest.from_fields(body, schedulers=NAMES)
    assert r.seed == 124567 and r.offset_x == 256 and isinstance(r.scale, float)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("num_inference_steps", 24, "from 25 to 100"),
        ("num_inference_steps", 101, "from 25 to 100"),
        ("img_width", 300, "multiple of 64"),
        ("img_height", 2048, "from 256 to 1024"),
        ("scale", 0.0, "from 0.1 to 10"),
        ("strength", 1.5, "from 0.1 to 1"),
        ("offset_x", -1, "from 0 to 1024"),
        ("guidance_scale", 30, "from 0.1 to 25"),
        ("mask_expand", 300, "from 0 to 256"),
        ("seed", -2, "-1 or int"),
        ("seed", 2**32, "-1 or int"),
        ("num_inference_steps", "25", "must be a number"),
        ("num_inference_steps", 25.5, "whole number"),
        ("scale", True, "must be a number"),
        ("guidance_scale", float("nan"), "finite"),
    ],
)
def test_out_of_range_or_mistyped_fields_name_the_field_and_the_range(field, value, needle):
    with pytest.raises(InvalidRequest) as info:
        OutpaintRequest.from_fields({"prompt": "x", field: value}, schedulers=NAMES)
    assert info.value.field == field
    assert needle in info.value.message


def test_missing_prompt_and_unknown_scheduler():
    with pytest.raises(InvalidRequest, match="prompt: is required"):
        OutpaintRequest.from_fields({}, schedulers=NAMES)
    with pytest.raises(InvalidRequest, match="must be one of DDIM"):
        OutpaintRequest.from_fields({"prompt": "x", "scheduler": "Euler"}, schedulers=NAMES)


def test_whole_floats_are_accepted_for_ints():
    assert OutpaintRequest.from_fields({"prompt": "x", "seed": 3.0}, schedulers=NAMES).seed == 3


# -- text that is not text, values that are huge (issue 11) -------------------------------------


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("text", ["\ud800", "a lighthouse \udfff", "\udc80" * 3])
def test_a_lone_surrogate_is_an_invalid_request_naming_the_field(field, text):
    """JSON "\\ud800" decodes to a lone surrogate; it reached the tokenizer and became a 500."""
    fields = {"prompt": "x", field: text}
    with pytest.raises(InvalidRequest) as info:
        OutpaintRequest.from_fields(fields, schedulers=NAMES)
    assert info.value.field == field
    assert "surrogate" in info.value.message and "U+D" in info.value.message
    info.value.message.encode("utf-8")  # the message itself is valid text (it goes into a JSON body)


def test_control_characters_and_characters_beyond_the_bmp_are_accepted():
    # JSON's "\ud83d\ude02" (a surrogate pair) decodes to this one character: valid text.
    r = OutpaintRequest.from_fields({"prompt": "a\x00b\x1c", "negative_prompt": "😂"}, schedulers=NAMES)
    assert r.prompt == "a\x00b\x1c" and r.negative_prompt == "😂"


@pytest.mark.parametrize("field", ["scheduler", "infill"])
def test_a_huge_rejected_value_is_not_echoed_back_whole(field):
    with pytest.raises(InvalidRequest) as info:
        OutpaintRequest.from_fields({"prompt": "x", field: "y" * 1_000_000}, schedulers=NAMES)
    assert info.value.field == field and len(info.value.message) < 300
    assert "1000002 characters" in info.value.message


def test_a_huge_number_is_not_echoed_back_whole():
    with pytest.raises(InvalidRequest) as info:
        OutpaintRequest.from_fields({"prompt": "x", "seed": 10**3999}, schedulers=NAMES)
    assert info.value.field == "seed" and len(info.value.message) < 300
