"""`outpaint bench --size tiny`: every system runs end to end and results.json keeps its schema.

Nothing here asserts a speed: the tiny model's timings mean nothing. What is checked is the shape of
the results, that every system measured every stage it claims, and that all systems computed the
same functions (same weights: fp32 outputs agree with diffusers to float rounding). The bf16 systems
run only where this CPU has native bf16 (engine/cpu_features.py); elsewhere they must be recorded as
skipped, with the reason.
"""

from __future__ import annotations

import json
import re

import pytest

from outpaint.benchmarks.config import NEEDS_NATIVE_BF16, OPTIMUM, OURS, PEERS, BenchConfig
from outpaint.benchmarks.report import ratios, summary, targets
from outpaint.benchmarks.timing import ROW_KEYS
from outpaint.engine.cpu_features import cpu_features, fast_backend

from .conftest import optimum_problem

pytest.importorskip("openvino")
pytest.importorskip("diffusers")

CANVAS = re.compile(r"^\d+x\d+$")
# The systems this CPU runs: all of them where bf16 is native, else all but the bf16 ones.
# The optimum peer runs where optimum's virtualenv is (`make test` installs it; elsewhere it is skipped).
OPTIMUM_PROBLEM = optimum_problem()
RUNNABLE = {s for s in (*PEERS, *OURS) if (cpu_features().native_bf16 or s not in NEEDS_NATIVE_BF16)
            and not (s == OPTIMUM and OPTIMUM_PROBLEM)}


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
        assert row["system"].startswith(("outpaint", "diffusers", "openvino", "optimum"))
        assert row["canvas"] == "-" or CANVAS.match(row["canvas"]), row
        assert 0 <= row["min_s"] <= row["median_s"] <= row["max_s"]
        assert isinstance(row["runs"], int) and row["runs"] >= 1
        assert row["peak_rss_gb"] > 0


def test_every_system_measured_its_stages(results):
    assert results["errors"] == {}
    stages = {(r["system"], r["stage"]) for r in results["rows"]}
    assert {r["system"] for r in results["rows"]} == RUNNABLE
    for system in RUNNABLE - {"outpaint-fast"}:
        assert {(system, "unet_step"), (system, "vae_decode")} <= stages, system
    for system in {"diffusers-torch-fp32", OPTIMUM, "outpaint-ort-cpu", "outpaint-openvino-bf16", "outpaint-fast"
                   } & RUNNABLE:
        assert {(system, "outpaint_2_steps"), (system, "sampler_overhead_step")} <= stages, system
    assert {("outpaint-fast", "unet_step_window"), ("outpaint-fast", "vae_decode_region")} <= stages


def test_bf16_systems_are_skipped_with_the_reason_only_without_native_bf16(results):
    if cpu_features().native_bf16:
        assert results["skipped"] == {}
        return
    assert set(results["skipped"]) - {OPTIMUM} == set(NEEDS_NATIVE_BF16)
    for system, reason in results["skipped"].items():
        assert "native bf16" in reason and cpu_features().bf16_source() in reason, (system, reason)
    # Skipped is not failed, and no bf16 row claims a measurement.
    assert not set(results["errors"]) & set(NEEDS_NATIVE_BF16)
    assert not {r["system"] for r in results["rows"]} & set(NEEDS_NATIVE_BF16)


def test_the_fast_path_records_the_backend_and_precision_it_ran(results):
    choice = fast_backend()
    assert results["fast_path"] == {"backend": choice.backend, "precision": choice.precision, "reason": choice.reason}
    assert results["config"]["fast"]["backend"] == choice.backend
    assert f"outpaint-fast ran on {choice.backend} ({choice.precision})" in summary(results)


def test_machine_and_load_are_recorded(results):
    machine = results["machine"]
    assert machine["cpu_model"] and machine["logical_cpus"] >= 1
    assert {"avx512_bf16", "amx_bf16"} <= set(machine["flags"])
    capabilities = machine["capabilities"]
    assert {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "vnni"} <= set(capabilities)
    assert capabilities["native_bf16"] == cpu_features().native_bf16
    assert capabilities["fast_backend"] == results["fast_path"]["backend"]
    for key in ("load_average_start", "load_average_end"):
        assert len(machine[key]) == 3
    assert results["command"].startswith(("outpaint", "python", "/"))
    assert results["config"]["size"] == "tiny"


def test_an_instruction_set_cap_is_recorded_with_the_machine(monkeypatch):
    from outpaint.benchmarks.machine import ISA_CAPS, describe_machine

    for name in ISA_CAPS:
        monkeypatch.delenv(name, raising=False)
    assert describe_machine()["isa_caps"] == {}
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert describe_machine()["isa_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_all_systems_compute_the_same_unet(results):
    errors = {a["system"]: a["max_rel_error_vs_diffusers"] for a in results["agreement"]}
    assert set(errors) == {"openvino-fp32", "openvino-bf16", OPTIMUM, "outpaint-ort-cpu", "outpaint-openvino-fp32",
                           "outpaint-openvino-bf16"} & RUNNABLE
    for system, error in errors.items():
        assert error < (0.5 if "bf16" in system else 1e-4), (system, error)


def test_quality_is_measured_against_our_fp32_image(results):
    quality = {q["system"]: q for q in results["quality"]}
    assert set(quality) == {"diffusers-torch-fp32", OPTIMUM, "outpaint-openvino-bf16", "outpaint-fast"} & RUNNABLE
    for q in quality.values():
        assert q["identical_outside_mask"], q
        assert q["psnr_db_regenerated"] > 10, q
    assert {t["unit"] for t in results["targets"]} >= {"dB", "speed-up"}


def test_the_optimum_peer_ran_optimums_pipeline_on_optimums_export_of_the_same_weights(results, tiny_model_dir):
    if OPTIMUM_PROBLEM:
        assert results["skipped"][OPTIMUM] == OPTIMUM_PROBLEM  # said why, not failed
        pytest.skip(OPTIMUM_PROBLEM)
    notes = " ".join(results["notes"][OPTIMUM])
    assert "optimum-onnx" in notes and "scheduler DDIMScheduler" in notes
    assert f"{tiny_model_dir / 'optimum-peer'}" in notes and "by optimum's exporter" in notes
    stages = {r["stage"] for r in results["rows"] if r["system"] == OPTIMUM}
    assert stages == {"text_encoder", "vae_encode", "vae_decode", "unet_step", "outpaint_2_steps",
                      "sampler_overhead_step"}
    # Same weights: its guided UNet step is diffusers' to float rounding (the check above, by name).
    agreement = {a["system"]: a["max_rel_error_vs_diffusers"] for a in results["agreement"]}
    assert agreement[OPTIMUM] < 1e-4


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


def test_without_the_openvino_bf16_peer_its_ratios_and_targets_are_absent():
    rows = [
        {"system": "diffusers-torch-fp32", "stage": "unet_step", "canvas": "256x256", "median_s": 12.0,
         "min_s": 12.0, "max_s": 12.0},
        {"system": "outpaint-fast", "stage": "unet_step_window", "canvas": "256x256", "median_s": 2.0,
         "min_s": 2.0, "max_s": 2.0},
    ]
    (diffusers, fast) = ratios(rows)
    assert fast["speedup_vs_diffusers"] == 6.0 and fast["speedup_vs_openvino_bf16"] is None
    found = targets(rows, [], BenchConfig(size="tiny", outpaint_canvas="256x256", unet_canvases=("256x256",)))
    assert not any("OpenVINO bf16" in t["target"] for t in found)
    text = summary({"rows": [{**r, "runs": 1, "peak_rss_gb": 1.0} for r in rows], "ratios": [diffusers, fast],
                    "config": {"systems": ["outpaint-fast"]},
                    "skipped": {"openvino-bf16": "needs native bf16, which this CPU lacks (...)"}})
    assert "openvino-bf16: needs native bf16" in text


def test_a_smoke_run_does_not_write_the_committed_results_by_default():
    from outpaint.benchmarks.cli import results_path
    from outpaint.cli import build_parser

    def default_out(*argv: str):
        return results_path(build_parser().parse_args(["bench", *argv]))

    assert str(default_out("--size", "tiny")) == "out/bench-tiny/results.json"
    assert str(default_out()) == "benchmarks/results.json"
    assert str(default_out("--size", "tiny", "--out", "x.json")) == "x.json"


@pytest.mark.parametrize("kwargs,message", [
    ({"unet_canvases": ("500x512",)}, "multiples of 64"),
    ({"systems": ("outpaint-gpu",)}, "unknown systems"),
    ({"runs": 0}, "runs must be at least 1"),
    ({"size": "huge"}, "size must be one of"),
])
def test_bad_config_is_refused_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(**kwargs)
