"""`outpaint bench --gpu-check`: everything of it that runs without a GPU.

The GPU parts themselves (loading ort-cuda / ort-trt / tensorrt, CUDA events, diffusers on the GPU)
run only on a GPU machine; here: the no-GPU refusal, the argument checks, the budget, the image
comparison and the event timing on CPU data, the pytest subprocess, the CPU reference worker on the
tiny model, and a whole run whose GPU parts are all unavailable (this machine's real state).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from outpaint.benchmarks.cli import add_bench
from outpaint.benchmarks.gpu import EventLog, instrument
from outpaint.benchmarks.gpu_check import report as reporting
from outpaint.benchmarks.gpu_check.budget import Budget, Part
from outpaint.benchmarks.gpu_check.clock import WallEvent, summarize, time_with_events
from outpaint.benchmarks.gpu_check.compare import BARS, bar_for, compare_images
from outpaint.benchmarks.gpu_check.probe import (
    Gpu,
    NoGpu,
    missing_for,
    package_versions,
    parse_cuda_version,
    parse_smi_query,
    visible_gpu,
)
from outpaint.benchmarks.gpu_check.pytest_run import outcome_of, parse_counts, run_pytest
from outpaint.benchmarks.gpu_check.run import (
    TRT_BUILD,
    UNCACHED_BUILD_FLOOR_S,
    compare_with_reference,
    plan,
    run_check,
    worker_part,
)
from outpaint.benchmarks.gpu_check.settings import DIFFUSERS, OUR_GPU_BACKENDS, REFERENCE, CheckSettings

ROOT = Path(__file__).resolve().parents[1]

SMI_QUERY = """0, GPU-5d1c7c39-aaaa-bbbb-cccc-0123456789ab, NVIDIA H200, 580.159.03, 143771
1, GPU-77e0c1d2-aaaa-bbbb-cccc-0123456789ab, NVIDIA H200, 580.159.03, 143771
"""
SMI_HEADER = "| NVIDIA-SMI 580.159.03    Driver Version: 580.159.03    CUDA Version: 13.0     |"


# -- the command line --------------------------------------------------------------------------


def parse(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    add_bench(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *argv])


def test_gpu_check_options_parse_with_their_defaults():
    args = parse("--gpu-check")
    assert args.gpu_check and args.check_budget_s == 480 and args.check_steps == 10 and args.check_tests
    assert args.check_backends == (*OUR_GPU_BACKENDS, DIFFUSERS)
    args = parse("--gpu-check", "--check-backends", "ort-cuda,diffusers-fp16", "--check-budget-s", "900",
                 "--check-no-tests", "--model", "m")
    assert args.check_backends == ("ort-cuda", DIFFUSERS) and args.check_budget_s == 900
    assert not args.check_tests and args.model == Path("m")
    assert not parse().gpu_check  # the plain benchmark is unchanged


@pytest.mark.parametrize("argv, message", [
    (("--check-backends", "ort-cpu"), "choose from"),
    (("--check-backends", ","), "nothing given"),
    (("--check-budget-s", "10"), "60..7200"),
])
def test_bad_gpu_check_options_are_refused_naming_what_is_allowed(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse("--gpu-check", *argv)
    assert message in capsys.readouterr().err


def _outpaint(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "outpaint.cli", *argv], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, check=False)


def test_without_a_gpu_the_check_stops_before_any_work(tmp_path):
    """No nvidia-smi on the PATH (as on this machine): a clear error, exit 2, no model, no report."""
    bare = tmp_path / "bin"
    bare.mkdir()
    env = dict(os.environ, PATH=str(bare))
    model, out = tmp_path / "model", tmp_path / "report.json"
    done = _outpaint("bench", "--gpu-check", "--model", str(model), "--out", str(out), env=env)
    assert done.returncode == 2, done.stderr
    assert "no NVIDIA GPU here: `nvidia-smi` is not on the PATH" in done.stderr
    assert "Traceback" not in done.stderr
    assert not model.exists() and not out.exists()


def test_a_driver_that_does_not_answer_is_the_same_clean_refusal(tmp_path):
    """nvidia-smi present but failing, as it does when the kernel module is not loaded."""
    bare = tmp_path / "bin"
    bare.mkdir()
    smi = bare / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                   "driver.\"\nexit 9\n")
    smi.chmod(0o755)
    env = dict(os.environ, PATH=f"{bare}:{os.environ['PATH']}")
    done = _outpaint("bench", "--gpu-check", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "r.json"),
                     env=env)
    assert done.returncode == 2
    assert "nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate" in done.stderr
    assert not (tmp_path / "m").exists()


# -- finding the GPU -----------------------------------------------------------------------------


def test_nvidia_smi_rows_and_cuda_version_are_read():
    gpus = parse_smi_query(SMI_QUERY, parse_cuda_version(SMI_HEADER))
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].name == "NVIDIA H200" and gpus[0].driver == "580.159.03" and gpus[0].memory_mib == 143771
    assert gpus[0].cuda_driver_api == "13.0"
    assert parse_cuda_version("no header here") is None
    with pytest.raises(NoGpu, match="cannot read"):
        parse_smi_query("0, NVIDIA H200\n")


def test_the_report_names_outpaints_version_also_from_a_source_tree(monkeypatch):
    import outpaint

    assert package_versions()["outpaint"].startswith(outpaint.__version__)
    real_version = metadata.version

    def version(name: str) -> str:  # as when the check runs from the visit's clean copy on PYTHONPATH
        if name == "outpaint":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(metadata, "version", version)
    assert package_versions()["outpaint"] == f"{outpaint.__version__} (source tree, not installed)"


def test_cuda_visible_devices_picks_or_hides_gpus_as_cuda_does():
    gpus = parse_smi_query(SMI_QUERY)
    assert visible_gpu(gpus, None).index == 0
    assert visible_gpu(gpus, "1,0").index == 1
    assert visible_gpu(gpus, "GPU-77e0c1d2").index == 1
    for hidden in ("", "-1", "7", "GPU-ffffffff"):
        with pytest.raises(NoGpu, match="hides every GPU"):
            visible_gpu(gpus, hidden)
    with pytest.raises(NoGpu, match="lists no GPU"):
        visible_gpu([], None)


def test_a_missing_provider_or_package_is_named_before_any_loading():
    assert "no CUDAExecutionProvider" in (missing_for("ort-cuda", ["CPUExecutionProvider"]) or "")
    assert "onnxruntime-gpu" in (missing_for("ort-trt", ["CUDAExecutionProvider", "CPUExecutionProvider"]) or "")
    assert missing_for("ort-cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) is None
    if shutil.which("nvidia-smi") is None:  # this machine: no TensorRT wheel can be installed
        assert "tensorrt" in (missing_for("tensorrt", []) or "")


# -- the budget ----------------------------------------------------------------------------------


class FakeClock:
    """A clock the test moves by hand: the budget's arithmetic without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_part_gets_its_cap_when_time_is_plenty():
    budget = Budget(480, margin_s=15, clock=FakeClock())
    assert budget.allot(Part("a", 100, 20), [Part("b", 50, 30)]).seconds == 100


def test_a_part_is_trimmed_to_keep_the_floors_of_later_parts():
    clock = FakeClock()
    budget = Budget(480, margin_s=15, clock=clock)
    clock.now += 300  # 180 s left; 15 s margin; later floors 30 + 60 = 90 -> 75 s
    later = [Part("b", 50, 30), Part("c", 200, 60)]
    assert budget.allot(Part("a", 100, 20), later).seconds == 75
    # A part that is not kept (an engine build) reserves nothing for itself.
    assert budget.allot(Part("a", 100, 20), [Part("b", 50, 30), Part("c", 200, 150, kept=False)]).seconds == 100


def test_a_part_that_cannot_get_its_floor_is_skipped_with_the_numbers():
    clock = FakeClock()
    budget = Budget(480, margin_s=15, clock=clock)
    clock.now += 400  # 80 s left
    allotment = budget.allot(Part("tensorrt-build", 240, 150, kept=False))
    assert allotment.skipped and allotment.seconds is None
    assert "80 s of the 480 s budget were left" in allotment.reason and "150 s it needs" in allotment.reason
    clock.now += 100  # past the deadline
    assert budget.allot(Part("x", 10, 0)).skipped


def test_a_budget_must_leave_time_after_its_margin():
    with pytest.raises(ValueError, match="margin"):
        Budget(10, margin_s=15)
    with pytest.raises(ValueError, match="floor"):
        Part("x", 10, 20)


def test_the_default_plan_fits_the_8_minutes_when_engines_are_cached(tmp_path):
    """Every kept part's floor fits in the default budget, and an uncached build is not kept."""
    from outpaint.benchmarks.gpu_check.run import DEFAULT_BUDGET_S

    settings = CheckSettings(model_dir=str(tmp_path))
    parts = plan(settings, need_export=True, runnable={*OUR_GPU_BACKENDS, DIFFUSERS}, run_tests=True)
    assert [p.name for p in parts] == ["export", REFERENCE, "ort-cuda", DIFFUSERS, "pytest", "ort-trt", TRT_BUILD,
                                       "tensorrt"]
    builds = {p.name: p for p in parts if p.name in ("ort-trt", TRT_BUILD)}
    assert all(p.floor_s == UNCACHED_BUILD_FLOOR_S and not p.kept for p in builds.values())
    assert sum(p.floor_s for p in parts if p.kept) < DEFAULT_BUDGET_S - 15
    # With engines in the model folder the builds are cheap and kept.
    (tmp_path / "engines" / "ort-trt" / "unet").mkdir(parents=True)
    (tmp_path / "engines" / "ort-trt" / "unet" / "TensorrtExecutionProvider_x.engine").write_bytes(b"x")
    (tmp_path / "engines" / "NVIDIA_H200_sm90_trt10.16_fp16_b1_512x512").mkdir(parents=True)
    (tmp_path / "engines" / "NVIDIA_H200_sm90_trt10.16_fp16_b1_512x512" / "build.json").write_text("{}")
    cached = {p.name: p for p in plan(settings, True, {*OUR_GPU_BACKENDS, DIFFUSERS}, True)}
    assert cached["ort-trt"].kept and cached["ort-trt"].floor_s < UNCACHED_BUILD_FLOOR_S
    assert cached[TRT_BUILD].floor_s < UNCACHED_BUILD_FLOOR_S


def test_without_a_runnable_backend_of_ours_neither_model_nor_reference_is_made(tmp_path):
    parts = plan(CheckSettings(model_dir=str(tmp_path)), need_export=True, runnable={DIFFUSERS}, run_tests=False)
    assert [p.name for p in parts] == [DIFFUSERS]


# -- image comparison and timing on CPU data -----------------------------------------------------


def _images(noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    reference = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    region = np.zeros((64, 64), dtype=bool)
    region[:, 32:] = True
    candidate = np.clip(reference + rng.normal(0, noise, reference.shape), 0, 255).astype(np.uint8)
    candidate[:, :32] = 0  # outside the regenerated area: must not count
    return reference, candidate, region


def test_psnr_and_max_diff_cover_the_regenerated_area_only():
    reference, candidate, region = _images(noise=0.0)
    same = compare_images(reference, candidate, region, BARS["fp32"])
    assert same.psnr_db == 999.0 and same.max_abs_diff == 0 and same.pixels == 64 * 32 and same.passed
    reference, candidate, region = _images(noise=4.0)  # RMS ~4/255: ~36 dB
    result = compare_images(reference, candidate, region, BARS["fp16"])
    assert 34 < result.psnr_db < 38 and result.passed and result.verdict.startswith("pass")
    assert 3.5 < result.rms_diff < 4.5 and result.max_abs_diff >= 10
    strict = compare_images(reference, candidate, region, BARS["fp32"])
    assert not strict.passed and strict.verdict == f"fail: {strict.psnr_db:.2f} dB < 40 dB"


def test_non_finite_latents_fail_whatever_the_pixels_say():
    reference, candidate, region = _images(noise=0.0)
    result = compare_images(reference, candidate, region, BARS["fp16"], finite=False)
    assert not result.passed and "NaN" in result.verdict


def test_comparison_refuses_mismatched_inputs():
    reference, candidate, region = _images(noise=0.0)
    with pytest.raises(ValueError, match="one shape"):
        compare_images(reference, candidate[:32], region, BARS["fp16"])
    with pytest.raises(ValueError, match="empty"):
        compare_images(reference, candidate, np.zeros_like(region), BARS["fp16"])


def test_the_bars_follow_the_precision():
    assert bar_for("ort-cuda").min_psnr_db == 40 and bar_for("ort-trt").min_psnr_db == 30
    assert bar_for("tensorrt") is BARS["fp16"]


def test_event_timing_skips_the_warmup_and_reads_each_run():
    calls = []

    def work():
        calls.append(time.perf_counter())
        time.sleep(0.02 if len(calls) <= 2 else 0.005)  # the warm-up calls are slow

    seconds = time_with_events(work, warmup=2, runs=4, new_event=WallEvent)
    assert len(calls) == 6 and len(seconds) == 4
    assert all(0.004 < s < 0.015 for s in seconds), seconds
    stats = summarize(seconds, "host clock")
    assert stats["runs"] == 4 and stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"] < 15
    with pytest.raises(ValueError):
        time_with_events(work, warmup=0, runs=0, new_event=WallEvent)
    with pytest.raises(ValueError):
        summarize([], "x")


def test_an_event_read_before_it_is_recorded_is_an_error():
    with pytest.raises(RuntimeError, match="recorded"):
        WallEvent().elapsed_ms(WallEvent())


def test_the_device_loop_is_timed_one_sample_per_step(tiny_model_dir):
    """The instrumentation the check puts on a GPU backend, on the CPU device loop with the host clock."""
    from outpaint.engine.coherence import COHERENCE_OFF
    from outpaint.engine.pipeline import OutpaintPipeline

    from .conftest import make_png, make_request

    # The check's own pipelines run without the coherence pass (its worker's _load): one sample per step.
    pipeline = OutpaintPipeline.load(tiny_model_dir, "ort-cpu", device_loop=True, coherence=COHERENCE_OFF)
    log = instrument(pipeline, EventLog(None, new_event=WallEvent))
    pipeline(make_png(128, 128), make_request(num_inference_steps=3))
    times = log.seconds()
    assert len(times["denoise_step"]) == 3 and all(t > 0 for t in times["denoise_step"])
    assert set(times) >= {"text_encoder", "vae_encode", "vae_decode"}
    assert log.seconds() == {}  # read once: the next request starts afresh


# -- pytest as a subprocess ----------------------------------------------------------------------


SAMPLE_TESTS = '''
import time
import pytest

@pytest.mark.gpu
def test_passes():
    assert True

@pytest.mark.gpu
def test_fails():
    assert 1 == 2

@pytest.mark.gpu
def test_skips():
    pytest.skip("no tensorrt here")

def test_not_gpu():
    raise AssertionError("deselected: must not run")
'''


def _sample_suite(tmp_path: Path, body: str) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -q\nmarkers =\n    gpu: needs a GPU\n")
    (tmp_path / "test_sample.py").write_text(body)
    return tmp_path


def test_the_gpu_tests_run_in_pytest_and_their_summary_is_read(tmp_path):
    suite = _sample_suite(tmp_path, SAMPLE_TESTS)
    result = run_pytest(suite, "gpu", timeout_s=60, cwd=suite)
    assert result.outcome == "failed" and result.exit_code == 1 and not result.ok
    assert result.counts == {"passed": 1, "failed": 1, "skipped": 1, "deselected": 1}
    assert result.failures == ["test_sample.py::test_fails"]
    assert "1 failed, 1 passed, 1 skipped, 1 deselected" in result.summary
    assert "no tensorrt here" in result.tail  # -rs: the skip reasons are kept
    # Quieter still (-qq) pytest prints no closing line: the counts come from its JUnit XML.
    quiet = run_pytest(suite, "gpu", timeout_s=60, cwd=suite, extra=("-q",))
    assert quiet.counts == {"passed": 1, "failed": 1, "skipped": 1} and "JUnit" in quiet.summary


def test_a_pytest_run_past_its_time_is_killed_and_says_so(tmp_path):
    suite = _sample_suite(tmp_path, "import time, pytest\n\n@pytest.mark.gpu\ndef test_hangs():\n"
                                    "    time.sleep(60)\n")
    started = time.monotonic()
    result = run_pytest(suite, "gpu", timeout_s=3, cwd=suite)
    assert time.monotonic() - started < 20
    assert result.outcome == "timed_out" and result.exit_code is None
    assert result.summary.startswith("timed out after 3 s")


def test_pytest_exit_codes_and_closing_lines_map_to_outcomes():
    assert outcome_of(0, {"passed": 3}) == "passed"
    assert outcome_of(0, {"skipped": 3}) == "skipped"
    assert outcome_of(5, {}) == "no_tests" and outcome_of(2, {}) == "error" and outcome_of(None, {}) == "timed_out"
    counts, line = parse_counts("stuff\n===== 2 passed, 1 error, 3 warnings in 4.10s =====\n")
    assert counts == {"passed": 2, "errors": 1, "warnings": 3} and line == "2 passed, 1 error, 3 warnings in 4.10s"
    assert parse_counts("no summary") == ({}, "")


# -- the worker and the report -------------------------------------------------------------------


def test_the_cpu_reference_worker_and_the_comparison(tiny_model_dir, tmp_path):
    """The reference part in its own process on the tiny model; a second run compared with it is identical
    (the CPU is deterministic), and a damaged copy of the image fails its bar with the reason."""
    settings = CheckSettings(model_dir=str(tiny_model_dir), width=256, height=256, steps=2)
    settings_path = tmp_path / "settings.json"
    settings_path.write_text(settings.to_json())
    reference = worker_part(REFERENCE, 120, settings_path, tmp_path / "a")
    assert reference["status"] == "ok", reference
    assert reference["finite"] and reference["step"]["runs"] == 2 and reference["step"]["median_ms"] > 0
    image = np.load(reference["image_file"])
    region = np.load(reference["region_file"])
    assert image.shape == (256, 256, 3) and region[:, 200].all() and not region[:, 10].any()

    again = worker_part(REFERENCE, 120, settings_path, tmp_path / "b")
    damaged = {**again, "image_file": str(tmp_path / "damaged.npy")}
    compare_with_reference(reference, "ort-cuda", again)
    assert again["status"] == "passed" and again["image"]["psnr_db"] == 999.0

    pixels = np.load(again["image_file"])
    pixels[region] = 255 - pixels[region]
    np.save(damaged["image_file"], pixels)
    compare_with_reference(reference, "ort-trt", damaged)
    assert damaged["status"] == "failed" and damaged["reason"].startswith("fail:")
    assert damaged["image"]["bar_psnr_db"] == 30
    # Plain Python values: the report is JSON (a numpy bool here once ended a GPU run's report).
    assert json.loads(json.dumps([again["image"], damaged["image"]])) == [again["image"], damaged["image"]]


def test_a_worker_that_outruns_its_budget_is_reported_not_waited_for(tiny_model_dir, tmp_path):
    settings_path = tmp_path / "settings.json"
    settings_path.write_text(CheckSettings(model_dir=str(tiny_model_dir)).to_json())
    result = worker_part(REFERENCE, 0.5, settings_path, tmp_path)
    assert result["status"] == "timed_out" and "within its 0.5 s budget" in result["reason"]


def test_a_run_whose_gpu_parts_are_unavailable_reports_each_reason_and_fails(tmp_path):
    """This machine's real state: the CPU onnxruntime wheel, no TensorRT, PyTorch without CUDA."""
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is usable here: the GPU parts would run")
    out = tmp_path / "report.json"
    gpu = Gpu(0, "GPU-none", "described by the test", "0.0", 0, None)
    messages: list[str] = []
    data = run_check(CheckSettings(model_dir=str(tmp_path / "model")), out, "test", budget_s=300, run_tests=False,
                     gpu=gpu, say=messages.append)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(data))
    assert written["schema"] == reporting.SCHEMA and written["finished"] is True
    for key in ("machine", "versions", "onnxruntime_providers", "settings", "bars", "model", "reference",
                "backends", "pytest", "parts", "speedups", "problems", "duration_s", "budget_s"):
        assert key in written, key
    assert written["machine"]["gpu"]["name"] == "described by the test"
    assert written["versions"]["onnxruntime"] != "not installed"
    backends = written["backends"]
    assert set(backends) == {*OUR_GPU_BACKENDS, DIFFUSERS}
    for name in OUR_GPU_BACKENDS:
        assert backends[name]["status"] == "unavailable" and backends[name]["reason"], name
    # diffusers' packages are here, so its worker ran and found no CUDA in PyTorch.
    assert backends[DIFFUSERS]["status"] == "unavailable"
    assert "sees no CUDA GPU" in backends[DIFFUSERS]["reason"]
    assert written["model"]["status"] == "not_needed" and not (tmp_path / "model").exists()
    assert written["reference"]["status"] == "not_run"
    assert written["pytest"]["outcome"] == "not_run_by_request"
    assert written["problems"] == ["none of our GPU backends (ort-cuda, ort-trt, tensorrt) ran and passed here"]
    assert list(written["parts"]) == [DIFFUSERS] and messages and DIFFUSERS in messages[0]

    text = reporting.summary(written)
    assert text.splitlines()[0].startswith("GPU check: described by the test")
    for name in (*OUR_GPU_BACKENDS, DIFFUSERS):
        line = next(line for line in text.splitlines() if line.strip().startswith(name))
        assert "unavailable" in line and backends[name]["reason"][:30] in line
    assert "FAIL:" in text and "none of our GPU backends" in text


def _passing_report() -> dict:
    step = {"median_ms": 20.0, "min_ms": 19.0, "max_ms": 22.0, "runs": 10, "clock": "CUDA events"}
    image = {"psnr_db": 41.2, "max_abs_diff": 9, "bar_psnr_db": 30.0}
    return {
        "model": {"status": "ok", "dir": "m"}, "reference": {"status": "ok"},
        "backends": {"ort-cuda": {"status": "passed", "step": {**step, "median_ms": 40.0}, "image": image},
                     "ort-trt": {"status": "unavailable", "reason": "no provider"},
                     "tensorrt": {"status": "skipped", "reason": "budget"},
                     DIFFUSERS: {"status": "ok", "step": {**step, "median_ms": 50.0}}},
        "pytest": {"outcome": "passed", "summary": "12 passed in 40.0s"},
    }


def test_the_verdict_passes_only_when_every_part_that_ran_passed():
    report = _passing_report()
    assert reporting.verdict(report) == []
    assert reporting.speedups(report["backends"]) == {"ort-cuda": 1.25}
    report["backends"]["ort-cuda"]["status"] = "failed"
    report["backends"]["ort-cuda"]["reason"] = "fail: 20.00 dB < 40 dB"
    problems = reporting.verdict(report)
    assert any("ort-cuda: failed: fail: 20.00 dB" in p for p in problems)
    report = _passing_report()
    report["pytest"] = {"outcome": "timed_out", "summary": "timed out after 120 s"}
    assert reporting.verdict(report) == ["pytest -m gpu: timed_out: timed out after 120 s"]
    report = _passing_report()
    report["backends"][DIFFUSERS] = {"status": "error", "reason": "CUDA out of memory"}
    assert reporting.verdict(report) == ["diffusers-fp16: error: CUDA out of memory"]


def test_the_summary_shows_numbers_and_the_pass_line():
    report = {**_passing_report(), "problems": [], "speedups": {"ort-cuda": 1.25},
              "settings": {"width": 512, "height": 512, "steps": 10, "seed": 1234}}
    text = reporting.summary(report)
    assert "41.2 dB (bar 30), max |diff| 9" in text and "40.0 ms median (19.0-22.0, n=10)" in text
    assert "ort-cuda guided step: 1.25x diffusers fp16's" in text
    assert "pytest -m gpu: passed: 12 passed in 40.0s" in text
    assert text.splitlines()[-1] == "PASS: every backend that could run passed"


# -- the prepared visit script -------------------------------------------------------------------


def _wheel(path: Path) -> Path:
    """A minimal pure-Python wheel pip installs (the package `visitprobe`)."""
    import zipfile

    wheel = path / "visitprobe-1.0-py3-none-any.whl"
    files = {"visitprobe/__init__.py": "VALUE = 42\n",
             "visitprobe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: visitprobe\nVersion: 1.0\n",
             "visitprobe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                               "Tag: py3-none-any\n"}
    record = "visitprobe-1.0.dist-info/RECORD"
    files[record] = "".join(f"{name},,\n" for name in [*files, record])
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text * (400 if name.endswith("__init__.py") else 1))
    return wheel


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine would run the whole check")
def test_the_visit_script_joins_wheel_parts_installs_them_and_runs_the_check(tmp_path):
    wheel = _wheel(tmp_path)
    data = wheel.read_bytes()
    third = len(data) // 3 + 1
    parts = {suffix: data[index * third:(index + 1) * third] for index, suffix in enumerate(("aa", "ab", "ac"))}
    wheel.unlink()
    wheels = tmp_path / ".whl"
    env = dict(os.environ, WHEELS=str(wheels), OUT=str(tmp_path / "out"), PYTHON=sys.executable,
               GPU_VISIT_SITE=str(tmp_path / "site"), GPU_VISIT_CLEAN=str(tmp_path / "clean"),
               GPU_VISIT_STASH=str(tmp_path / "stash"))

    def call(mode: str, carried: dict[str, bytes]) -> subprocess.CompletedProcess[str]:
        """One device call: its `carry` replaces .whl/ with the one numbered folder it names."""
        shutil.rmtree(wheels, ignore_errors=True)
        for index, (suffix, part) in enumerate(carried.items()):
            folder = wheels / str(index + 1)
            folder.mkdir(parents=True)
            (folder / f"{wheel.name}.part-{suffix}").write_bytes(part)
        return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_visit.sh"), mode], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=300, check=False)

    assert call("stash", {"aa": parts["aa"]}).returncode == 0
    assert call("stash", {"ab": parts["ab"]}).returncode == 0
    done = call("check", {"ac": parts["ac"]})
    assert done.returncode == 2, done.stdout + done.stderr  # the check's own exit: no GPU here
    assert (tmp_path / "site" / "visitprobe" / "__init__.py").read_text().startswith("VALUE = 42")
    log = (tmp_path / "out" / "gpu-check.log").read_text()
    assert "no NVIDIA GPU here" in log
    assert (tmp_path / "out" / "machine.txt").is_file()
    assert (tmp_path / "clean" / "benchmarks" / "gpu_check" / "run.py").is_file()  # it ran from the copy
    assert not (tmp_path / "clean" / ".venv").exists()

    # A part still to carry: that wheel is left out, with the reason, and the check still runs.
    shutil.rmtree(tmp_path / "stash")
    shutil.rmtree(tmp_path / "site")
    assert call("stash", {"aa": parts["aa"]}).returncode == 0
    done = call("check", {"ac": parts["ac"]})
    assert done.returncode == 2
    assert f"{wheel.name}: its 2 parts do not make a whole wheel" in done.stdout
    assert not (tmp_path / "site" / "visitprobe").exists()
