"""The GPU check's order of work, each part in a child process bounded by its share of the budget.

    find the GPU (NoGpu: stop here) -> export the model (if missing) -> ort-cpu reference image ->
    ort-cuda -> diffusers fp16 -> pytest -m gpu -> ort-trt -> tensorrt engine build -> tensorrt

The cheap, always-useful parts go first and the engine builds last, where they take what is left or
are skipped with the reason. The report is rewritten after every part, so a run cut short keeps what
it measured.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import report as reporting
from .budget import Allotment, Budget, Part
from .compare import PRECISION, bar_for, compare_images
from .probe import Gpu, find_gpu, missing_for, ort_providers, package_versions
from .process import run_bounded
from .pytest_run import run_pytest
from .settings import DIFFUSERS, OUR_GPU_BACKENDS, REFERENCE, CheckSettings

DEFAULT_BUDGET_S = 480.0  # the 8 minutes, everything included
TRT_BUILD = "tensorrt-build"
# Estimates (not measured here: no GPU) of building a full-size fp16 engine set on a current data-centre
# GPU: the UNet dominates, a few minutes at builder level 3. A build that does not fit is skipped.
UNCACHED_BUILD_FLOOR_S = 150.0

# name -> (cap, floor) seconds; see budget.py. The export's floor: exporting less than a minute's worth
# is pointless, the graphs are kept and a re-run finishes it.
CAPS = {"export": (270.0, 60.0), REFERENCE: (100.0, 25.0), "ort-cuda": (120.0, 30.0), DIFFUSERS: (90.0, 30.0),
        "pytest": (120.0, 30.0), "ort-trt": (240.0, 40.0), TRT_BUILD: (240.0, 20.0), "tensorrt": (60.0, 20.0)}
ORDER = ("export", REFERENCE, "ort-cuda", DIFFUSERS, "pytest", "ort-trt", TRT_BUILD, "tensorrt")


def repo_root() -> Path:
    """The checkout this package runs from (outpaint/ beside tests/), where `pytest -m gpu` runs."""
    return Path(__file__).resolve().parents[2]


def model_ready(model_dir: Path) -> bool:
    from outpaint.core.errors import ModelError
    from outpaint.core.graphs import GRAPHS
    from outpaint.core.manifest import Manifest

    if not (model_dir / "manifest.json").is_file():
        return False
    manifest = Manifest.load(model_dir)
    if manifest.fingerprint != "random:full:seed=0:in_channels=4":
        # diffusers rebuilds the seed-0 random weights: other weights would time another function.
        raise ModelError(f"{model_dir} holds {manifest.source!r}, not the seed-0 random full-size model the "
                         "diffusers peer rebuilds; give another --model folder (it is exported there)")
    return all(name in manifest.graphs for name in GRAPHS)


def ort_trt_cached(model_dir: Path) -> bool:
    return any((model_dir / "engines" / "ort-trt" / "unet").glob("*.engine"))


def tensorrt_cached(settings: CheckSettings) -> bool:
    return any((Path(settings.model_dir) / "engines").glob(f"*_{settings.height}x{settings.width}/build.json"))


def plan(settings: CheckSettings, need_export: bool, runnable: set[str], run_tests: bool) -> list[Part]:
    """The parts that will be tried, in order, with their caps and floors."""
    parts = []
    ours = runnable & set(OUR_GPU_BACKENDS)
    for name in ORDER:
        if name in ("export", REFERENCE) and not ours:
            continue  # the model and the reference image serve only the comparison of our backends
        if name == "export" and not need_export:
            continue
        if name == "pytest" and not run_tests:
            continue
        if name in (*OUR_GPU_BACKENDS, DIFFUSERS) and name not in runnable:
            continue
        if name == TRT_BUILD and "tensorrt" not in runnable:
            continue
        cap, floor = CAPS[name]
        kept = True
        if name == "ort-trt" and not ort_trt_cached(Path(settings.model_dir)):
            floor, kept = UNCACHED_BUILD_FLOOR_S, False
        if name == TRT_BUILD:
            kept = False
            if not tensorrt_cached(settings):
                floor = UNCACHED_BUILD_FLOOR_S
        parts.append(Part(name, max(cap, floor), floor, kept))
    return parts


def machine(gpu: Gpu) -> dict[str, Any]:
    import os

    return {"gpu": gpu.to_dict(), "cuda_driver_api": gpu.cuda_driver_api, "platform": platform.platform(),
            "python": platform.python_version(), "logical_cpus": os.cpu_count()}


def worker_part(part: str, seconds: float, settings_path: Path, workdir: Path) -> dict[str, Any]:
    out_dir = workdir / part
    finished = run_bounded([sys.executable, "-m", "outpaint.benchmarks.gpu_check.worker", part, str(settings_path),
                            str(out_dir)], seconds)
    result_file = out_dir / "result.json"
    if finished.exit_code is None:
        return {"status": "timed_out", "reason": f"did not finish within its {seconds:g} s budget",
                "output_tail": finished.tail()}
    if not result_file.is_file():
        how = f"killed by signal {-finished.exit_code}" if finished.exit_code < 0 else f"exit {finished.exit_code}"
        return {"status": "error", "reason": f"the worker died without a result ({how}): {finished.tail(3)}"}
    result = json.loads(result_file.read_text())
    for key in ("image", "region"):
        if key in result:
            result[key + "_file"] = str(out_dir / result.pop(key))
    return result


def build_tensorrt(settings: CheckSettings, seconds: float) -> dict[str, Any]:
    """`outpaint build-engines --static WxH`: existing engine files are kept, so a cached set takes seconds."""
    command = [sys.executable, "-m", "outpaint.cli", "build-engines", "--model", settings.model_dir,
               "--static", settings.canvas]
    finished = run_bounded(command, seconds)
    entry: dict[str, Any] = {"command": "outpaint " + " ".join(command[3:]), "seconds": finished.seconds}
    if finished.exit_code is None:
        return {**entry, "status": "timed_out", "reason": (
            f"the engine build did not finish within its {seconds:g} s budget; run `{entry['command']}` once "
            "(engines are kept in the model folder), then the check again with --model")}
    if finished.exit_code != 0:
        return {**entry, "status": "error", "reason": f"exit {finished.exit_code}: {finished.tail(4)}"}
    return {**entry, "status": "ok"}


def export_model(settings: CheckSettings, seconds: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "outpaint.cli", "export", settings.model_dir, "--random", "full", "--seed", "0",
               "--no-feature-cache", "--no-attention-twins"]
    finished = run_bounded(command, seconds)
    entry: dict[str, Any] = {"dir": settings.model_dir, "export_s": finished.seconds}
    if finished.exit_code is None:
        return {**entry, "status": "timed_out", "reason": (
            f"the export did not finish within its {seconds:g} s budget; the finished graphs are kept: run "
            f"`outpaint export {settings.model_dir} --random full --no-feature-cache --no-attention-twins` to "
            f"finish it, then the check again with --model {settings.model_dir}")}
    if finished.exit_code != 0:
        return {**entry, "status": "error", "reason": f"exit {finished.exit_code}: {finished.tail(4)}"}
    return {**entry, "status": "ok"}


def compare_with_reference(reference: dict[str, Any], name: str, entry: dict[str, Any]) -> None:
    """Set entry's image comparison and its passed/failed status (in place)."""
    if entry.get("status") != "ok":
        return
    if reference.get("status") != "ok":
        entry.update(status="failed", reason=f"no {REFERENCE} reference image to compare with "
                                              f"({reference.get('status')}: {reference.get('reason', '')})")
        return
    comparison = compare_images(np.load(reference["image_file"]), np.load(entry["image_file"]),
                                np.load(reference["region_file"]), bar_for(name), finite=bool(entry.get("finite")))
    entry["image"] = comparison.to_dict()
    entry["status"] = "passed" if comparison.passed else "failed"
    if not comparison.passed:
        entry["reason"] = comparison.verdict


def _plain(value: Any) -> Any:
    """A numpy scalar that slipped into the report as its Python value: a report is never lost to one."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"the report cannot hold a {type(value).__name__}")


def run_check(settings: CheckSettings, out_json: Path, command: str, budget_s: float = DEFAULT_BUDGET_S,
              run_tests: bool = True, backends: tuple[str, ...] = (*OUR_GPU_BACKENDS, DIFFUSERS),
              say: Callable[[str], None] = print, gpu: Gpu | None = None) -> dict[str, Any]:
    """The whole check; `gpu` skips the search for one (the tests' CPU-side runs describe it themselves)."""
    gpu = gpu or find_gpu()  # NoGpu before anything is exported or started
    budget = Budget(budget_s)
    started = time.time()
    providers = ort_providers()
    model_dir = Path(settings.model_dir)
    need_export = not model_ready(model_dir)
    data: dict[str, Any] = {
        "schema": reporting.SCHEMA, "command": command,
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "finished": False, "budget_s": budget_s, "machine": machine(gpu), "versions": package_versions(),
        "onnxruntime_providers": providers, "settings": json.loads(settings.to_json()),
        "bars": {name: {"min_psnr_db": bar_for(name).min_psnr_db, "why": bar_for(name).why}
                 for name in OUR_GPU_BACKENDS},
        "model": {"dir": str(model_dir), "status": "ok" if not need_export else "pending"},
        "parts": {}, "reference": {"status": "pending", "precision": PRECISION[REFERENCE]}, "backends": {},
        "pytest": {"outcome": "pending"} if run_tests else {"outcome": "not_run_by_request"},
    }
    runnable = set()
    for name in backends:
        reason = missing_for(name, providers)
        entry = {"precision": PRECISION.get(name, "fp16")}
        if reason:
            data["backends"][name] = {**entry, "status": "unavailable", "reason": reason}
        else:
            data["backends"][name] = {**entry, "status": "pending"}
            runnable.add(name)

    def write() -> None:
        data["duration_s"] = round(time.time() - started, 1)
        data["speedups"] = reporting.speedups(data["backends"])
        data["problems"] = reporting.verdict(data)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(data, indent=1, default=_plain) + "\n")

    parts = plan(settings, need_export, runnable, run_tests)
    if not runnable & set(OUR_GPU_BACKENDS):
        why = "none of our GPU backends can run here (see their reasons): nothing to compare with"
        data["reference"].update(status="not_run", reason=why)
        if need_export:
            data["model"].update(status="not_needed", reason=why)
    with tempfile.TemporaryDirectory(prefix="outpaint-gpu-check-") as tmp:
        workdir = Path(tmp)
        settings_path = workdir / "settings.json"
        settings_path.write_text(settings.to_json())
        for index, part in enumerate(parts):
            allotment = budget.allot(part, parts[index + 1:])
            data["parts"][part.name] = {"allotted_s": allotment.seconds}
            say(f"[{budget.elapsed():5.0f} s] {part.name}: "
                + (allotment.reason if allotment.skipped else f"up to {allotment.seconds:.0f} s"))
            part_started = time.monotonic()
            _run_part(part.name, allotment, settings, settings_path, workdir, data)
            budget.record(part.name, time.monotonic() - part_started)
            data["parts"][part.name]["seconds"] = budget.spent[part.name]
            write()
        for name in OUR_GPU_BACKENDS:
            if name in data["backends"]:
                compare_with_reference(data["reference"], name, data["backends"][name])
        for entry in (data["reference"], *data["backends"].values()):
            entry.pop("image_file", None)  # the images lived in the temporary folder
            entry.pop("region_file", None)
        data["finished"] = True
        write()
    return data



def _run_part(name: str, allotment: Allotment, settings: CheckSettings, settings_path: Path, workdir: Path,
              data: dict[str, Any]) -> None:
    """Run one part and record its outcome in `data` (in place)."""
    backends = data["backends"]
    model_failed = data["model"]["status"] not in ("ok", "pending", "not_needed")
    if allotment.skipped:
        if name == "export":
            data["model"].update(status="skipped", reason=allotment.reason)
        elif name == "pytest":
            data["pytest"] = {"outcome": "skipped_by_budget", "reason": allotment.reason}
        elif name == REFERENCE:
            data["reference"].update(status="skipped", reason=allotment.reason)
        elif name == TRT_BUILD:
            backends["tensorrt"].update(status="skipped", reason=f"engine build {allotment.reason}")
        elif backends.get(name, {}).get("status") == "pending":
            backends[name].update(status="skipped", reason=allotment.reason)
        return
    seconds = float(allotment.seconds or 0)
    if name == "export":
        data["model"] = export_model(settings, seconds)
    elif name == "pytest":
        tests = repo_root() / "tests"
        if not tests.is_dir():
            data["pytest"] = {"outcome": "no_tests", "reason": f"no {tests} beside the package (installed from a "
                                                               "wheel?): run the check from a checkout"}
        else:
            data["pytest"] = run_pytest(tests, "gpu", seconds, repo_root()).to_dict()
    elif name == DIFFUSERS:
        backends[name].update(worker_part(name, seconds, settings_path, workdir))
    elif model_failed:
        target = data["reference"] if name == REFERENCE else backends.get(name if name != TRT_BUILD else "tensorrt")
        if target is not None and target.get("status") == "pending":
            target.update(status="not_run", reason=f"the model is not ready ({data['model']['status']})")
    elif name == REFERENCE:
        data["reference"].update(worker_part(name, seconds, settings_path, workdir))
    elif name == TRT_BUILD:
        build = build_tensorrt(settings, seconds)
        backends["tensorrt"]["build"] = build
        if build["status"] != "ok":
            backends["tensorrt"].update(status=build["status"], reason=build["reason"])
    elif backends.get(name, {}).get("status") == "pending":
        backends[name].update(worker_part(name, seconds, settings_path, workdir))
