"""Engine build keys, file names and the load-time compatibility check: pure, checked on the CPU."""

from __future__ import annotations

import re

import pytest

from outpaint.core.errors import BackendUnavailable, ModelError
from outpaint.core.trt_key import (
    BuildKey,
    BuildRecord,
    DeviceIdentity,
    check_compatible,
    engine_path,
    gpu_slug,
    save_record,
    selected_record,
    timing_cache_path,
)
from outpaint.core.trt_profiles import CanvasRange

RTX_4090 = DeviceIdentity("NVIDIA GeForce RTX 4090", (8, 9), "10.16.1.11")
L4 = DeviceIdentity("NVIDIA L4", (8, 9), "10.16.1.11")
A100 = DeviceIdentity("NVIDIA A100-SXM4-80GB", (8, 0), "10.16.1.11")


def _record(device=RTX_4090, precision="fp16", canvas=None) -> BuildRecord:
    key = BuildKey(device, precision, canvas or CanvasRange.square(256, 512, 1024), batch=1)
    return BuildRecord(key, ("text_encoder", "unet", "vae_encoder", "vae_decoder"))


def test_engine_file_name_carries_gpu_architecture_version_precision_and_profile(tmp_path):
    record = _record()
    path = engine_path(tmp_path, record.key, "unet")
    slug = "nvidia-geforce-rtx-4090_sm89_trt10-16-1-11_fp16_b1_h256-512-1024.w256-512-1024"
    assert path == tmp_path / "engines" / slug / "unet.plan"


def test_every_part_of_the_key_changes_the_name():
    base = _record().key.slug
    others = {
        _record(device=L4).key.slug, _record(device=A100).key.slug,
        _record(device=DeviceIdentity(RTX_4090.gpu_name, (8, 9), "10.3.0")).key.slug,
        _record(precision="bf16").key.slug, _record(canvas=CanvasRange.static(512, 768)).key.slug,
        BuildKey(RTX_4090, "fp16", CanvasRange.square(256, 512, 1024), batch=2).slug,
    }
    assert base not in others and len(others) == 6


def test_static_profile_names_the_canvas():
    assert _record(canvas=CanvasRange.static(512, 768)).key.slug.endswith("_fp16_b1_512x768")


def test_gpu_names_become_safe_file_names():
    assert gpu_slug("NVIDIA A100-SXM4-80GB") == "nvidia-a100-sxm4-80gb"
    assert gpu_slug("  ") == "unknown-gpu"


def test_timing_cache_is_per_architecture_and_version_not_per_precision(tmp_path):
    assert timing_cache_path(tmp_path, RTX_4090) != timing_cache_path(tmp_path, A100)
    assert timing_cache_path(tmp_path, RTX_4090).parent == tmp_path / "engines"


def test_record_round_trips_through_json_and_is_selected(tmp_path):
    record = _record(canvas=CanvasRange.static(512, 768))
    save_record(tmp_path, record)
    assert selected_record(tmp_path) == record
    newer = _record(precision="fp32")
    save_record(tmp_path, newer)
    assert selected_record(tmp_path) == newer, "the last build is the one loaded"


def test_no_engines_says_which_command_builds_them(tmp_path):
    with pytest.raises(ModelError, match=re.escape(f"outpaint build-engines --model {tmp_path}")):
        selected_record(tmp_path)


def test_engines_of_another_architecture_refuse_to_load_and_say_what_to_run(tmp_path):
    with pytest.raises(BackendUnavailable) as error:
        check_compatible(_record(device=A100), RTX_4090, tmp_path)
    message = str(error.value)
    assert "NVIDIA A100-SXM4-80GB (sm80)" in message and "NVIDIA GeForce RTX 4090 (sm89)" in message
    assert f"outpaint build-engines --model {tmp_path}" in message


def test_engines_of_another_tensorrt_version_refuse_to_load(tmp_path):
    other = DeviceIdentity(RTX_4090.gpu_name, (8, 9), "10.3.0")
    with pytest.raises(BackendUnavailable, match=r"TensorRT 10\.3\.0"):
        check_compatible(_record(device=other), RTX_4090, tmp_path)


def test_same_architecture_on_another_card_loads_with_a_warning(tmp_path):
    assert check_compatible(_record(), RTX_4090, tmp_path) == []
    warnings = check_compatible(_record(device=L4), RTX_4090, tmp_path)
    assert len(warnings) == 1 and "NVIDIA L4" in warnings[0]


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp16, bf16, int8, fp32"):
        BuildKey(RTX_4090, "fp8", CanvasRange.square(), 1)
