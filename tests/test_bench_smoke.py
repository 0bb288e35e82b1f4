"""`outpaint bench --size tiny`: every system runs end to end and results.json keeps its schema.

Nothing here asserts a speed: the tiny model's timings mean nothing. What is checked is the shape of
the results, that every system measured every stage it claims, and that all systems computed the
same functions (same weights: fp32 outputs agree with diffusers to float rounding).
"""

from __future__ import annotations

import json
import re

import pytest
from outpaint.benchmarks.config import OURS, PEERS, BenchConfig
from outpaint.benchmarks.report import ratios
from outpaint.benchmarks.timing import ROW_KEYS

pytest.importorskip("openvino")
pytest.importorskip("diffusers")

CANVAS = re.compile(r"^\d+x\d+$")


@pytest.fixture(scope="module")
def results(tiny_model_dir, tmp_path_factory):
    from outpaint.cli import main

    out = tmp_path_factory.mktemp("bench") / "results.json"
    code = main([
        "bench", "--size", "tiny", "--model", str(tiny_model_dir), "--out", str(out), "--steps", "2",
        "--warmup", "0", "--runs", "1", "--runs-large", "1", "--unet-canvases", "256x256",
    ])
    assert code == 0
    return json.loads(out.read_text())


def test_rows_follow_the_schema(results):
    assert results["rows"], "no rows"
    for row in results["rows"]:
        assert tuple(row) == ROW_KEYS
        assert row["system"].startswith(("outpaint", "diffusers", "openvino"))
        assert row["canvas"] == "-" or CANVAS.match(row["canvas"]), row
        assert 0 <= row["min_s"] <= row["median_s"] <= row["max_s"]
        assert isinstance(row["runs"], int) and row["runs"] >= 1
        assert row["peak_rss_gb"] > 0


def test_every_system_measured_its_stages(results):
    assert results["errors"] == {}
    stages = {(r["system"], r["stage"]) for r in results["rows"]}
    for system in (*PEERS, *OURS):
        if system != "outpaint-fast":
            assert {(system, "unet_step"), (system, "vae_decode")} <= stages, system
    for system in ("diffusers-torch-fp32", "outpaint-ort-cpu", "outpaint-openvino-bf16", "outpaint-fast"):
        assert {(system, "outpaint_2_steps"), (system, "sampler_overhead_step")} <= stages, system
    assert {("outpaint-fast", "unet_step_window"), ("outpaint-fast", "vae_decode_region")} <= stages


def test_machine_and_load_are_recorded(results):
    machine = results["machine"]
    assert machine["cpu_model"] and machine["logical_cpus"] >= 1
    assert {"avx512_bf16", "amx_bf16"} <= set(machine["flags"])
    for key in ("load_average_start", "load_average_end"):
        assert len(machine[key]) == 3
    assert results["command"].startswith(("outpaint", "python", "/"))
    assert results["config"]["size"] == "tiny"


def test_all_systems_compute_the_same_unet(results):
    errors = {a["system"]: a["max_rel_error_vs_diffusers"] for a in results["agreement"]}
    assert set(errors) == {"openvino-fp32", "openvino-bf16", "outpaint-ort-cpu", "outpaint-openvino-fp32",
                           "outpaint-openvino-bf16"}
    for system, error in errors.items():
        assert error < (0.5 if "bf16" in system else 1e-4), (system, error)


def test_quality_is_measured_against_our_fp32_image(results):
    quality = {q["system"]: q for q in results["quality"]}
    assert set(quality) == {"diffusers-torch-fp32", "outpaint-openvino-bf16", "outpaint-fast"}
    for q in quality.values():
        assert q["identical_outside_mask"], q
        assert q["psnr_db_regenerated"] > 10, q
    assert {t["unit"] for t in results["targets"]} >= {"dB", "speed-up"}


def test_ratios_are_peer_time_over_own_time():
    rows = [
        {"system": "diffusers-torch-fp32", "stage": "unet_step", "canvas": "512x512", "median_s": 12.0},
        {"system": "openvino-bf16", "stage": "unet_step", "canvas": "512x512", "median_s": 4.0},
        {"system": "outpaint-fast", "stage": "unet_step_window", "canvas": "512x512", "median_s": 2.0},
        {"system": "outpaint-fast", "stage": "vae_encode", "canvas": "512x512", "median_s": 1.0},
    ]
    by_system = {(r["system"], r["stage"]): r for r in ratios(rows)}
    assert by_system[("outpaint-fast", "unet_step_window")]["speedup_vs_diffusers"] == 6.0
    assert by_system[("outpaint-fast", "unet_step_window")]["speedup_vs_openvino_bf16"] == 2.0
    assert by_system[("openvino-bf16", "unet_step")]["speedup_vs_diffusers"] == 3.0
    assert by_system[("outpaint-fast", "vae_encode")]["speedup_vs_diffusers"] is None


@pytest.mark.parametrize("kwargs,message", [
    ({"unet_canvases": ("500x512",)}, "multiples of 64"),
    ({"systems": ("outpaint-gpu",)}, "unknown systems"),
    ({"runs": 0}, "runs must be at least 1"),
    ({"size": "huge"}, "size must be one of"),
])
def test_bad_config_is_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(**kwargs)
