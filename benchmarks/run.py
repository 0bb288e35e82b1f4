"""Run every system in its own process, then write results.json and print the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from outpaint.engine.cpu_features import CpuFeatures, cpu_features, fast_backend, model_has_int8_twins

from . import report
from .config import NEEDS_NATIVE_BF16, BenchConfig
from .machine import describe_machine, library_versions, load_average

DEFAULT_MODEL_ROOT = Path.home() / ".cache" / "outpaint"
SCHEMA_VERSION = 1


def default_model_dir(size: str) -> Path:
    return DEFAULT_MODEL_ROOT / f"random-{size}"


def ensure_model(model_dir: Path, size: str) -> None:
    """Export the seed-0 random model of `size` unless `model_dir` already holds all of it.

    The peers rebuild the same weights with build_random_components(size, seed=0), so a folder with
    other weights would compare different functions: that is an error, not something to overwrite.
    """
    from outpaint.core.errors import ModelError
    from outpaint.core.graphs import GRAPHS
    from outpaint.core.manifest import Manifest
    from outpaint.export.run import export_model

    if (model_dir / "manifest.json").is_file():
        manifest = Manifest.load(model_dir)
        if manifest.fingerprint != f"random:{size}:seed=0:in_channels=4":
            raise ModelError(
                f"{model_dir} holds {manifest.source!r}, not the seed-0 random {size} model the peers rebuild; "
                "give another --model folder"
            )
        if all(name in manifest.graphs for name in GRAPHS):
            return
    print(f"exporting the random {size} model to {model_dir} (once; reused by later runs)", flush=True)
    export_model(None, model_dir, random=size, seed=0)


def wait_for_quiet(max_load: float, max_wait_s: float, poll_s: float = 15.0) -> list[float]:
    """Wait (up to max_wait_s) until the 1-minute load average is below max_load; return the last reading."""
    deadline = time.monotonic() + max_wait_s
    load = load_average()
    while load[0] >= max_load and time.monotonic() < deadline:
        print(f"load average {load[0]:.2f} >= {max_load}: waiting for the machine to quieten", flush=True)
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        load = load_average()
    return load


def skipped_systems(systems: tuple[str, ...], features: CpuFeatures) -> dict[str, str]:
    """System -> why it does not run on this CPU (recorded in results.json, not an error)."""
    if features.native_bf16:
        return {}
    reason = f"needs native bf16, which this CPU lacks ({features.bf16_source()})"
    return {system: reason for system in systems if system in NEEDS_NATIVE_BF16}


def choose_fast_backend(config: BenchConfig, features: CpuFeatures) -> tuple[BenchConfig, dict[str, str]]:
    """outpaint-fast's backend: `--fast-backend` if given, else what `--fast` picks on this CPU."""
    if config.fast.backend is not None:
        backend = config.fast.backend
        precision = next((p for p in ("bf16", "int8") if backend.endswith(p)), "fp32")
        return config, {"backend": backend, "precision": precision, "reason": "given with --fast-backend"}
    twins = bool(config.model_dir) and model_has_int8_twins(Path(config.model_dir))
    choice = fast_backend(features, int8_twins=twins)
    fast = {"backend": choice.backend, "precision": choice.precision, "reason": choice.reason}
    return replace(config, fast=replace(config.fast, backend=choice.backend)), fast


def prepare_optimum_peer(model_dir: Path, size: str) -> tuple[str | None, str | None, list[str]]:
    """Optimum's export of the seed-0 random weights in MODEL/optimum-peer/, made once (optimum's own
    exporter in its own virtualenv) and reused. (skip reason, error, notes): a machine without optimum's
    virtualenv skips the peer with the reason; an export that fails is that system's error."""
    from outpaint.core.errors import ModelError
    from outpaint.export.optimum_export import SOURCE_FILE, ensure_optimum_export, optimum_unavailable
    from outpaint.export.random_models import build_random_components

    from .systems_optimum import peer_folder

    problem = optimum_unavailable()
    if problem is not None:
        return problem, None, []
    folder = peer_folder(model_dir)
    fingerprint = f"random:{size}:seed=0:in_channels=4"  # what ensure_model checked the graphs are
    if not (folder / SOURCE_FILE).is_file():
        print(f"exporting the random {size} model with optimum's exporter to {folder} (once; reused)", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="outpaint-optimum-tok-") as tmp:
            ensure_optimum_export(lambda: build_random_components(size, seed=0, workdir=Path(tmp)), fingerprint,
                                  folder)
    except ModelError as exc:
        return None, str(exc), []
    record = json.loads((folder / SOURCE_FILE).read_text())
    return None, None, [f"optimum export of the same weights: {folder} ({record['export_seconds']} s by optimum's "
                        f"exporter, {record['diffusers_folder_seconds']} s to write the diffusers folder it read)"]


def worker_python(system: str) -> tuple[str, dict[str, str]]:
    """The interpreter a system's worker runs in, and the environment it adds: ours, or optimum's own
    virtualenv with this source tree on its path (outpaint is not installed there)."""
    if not system.startswith("optimum"):
        return sys.executable, {}
    import outpaint
    from outpaint.export.optimum_export import optimum_python

    root = str(Path(outpaint.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return str(optimum_python()), {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _run_worker(system: str, config_path: Path, out: Path) -> tuple[dict[str, Any] | None, str | None]:
    python, extra_env = worker_python(system)
    command = [python, "-m", "outpaint.benchmarks.worker", system, str(config_path), str(out)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", **extra_env)
    completed = subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True, check=False)
    # The worker rewrites `out` after every row, so a worker that died keeps what it measured.
    partial = json.loads(out.read_text()) if out.is_file() else None
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-5:]
        killed = " (killed by a signal: out of memory?)" if completed.returncode < 0 else ""
        return partial, f"exit {completed.returncode}{killed}: " + " | ".join(tail)
    return partial, None


def run_benchmark(config: BenchConfig, out_json: Path | None, command: str) -> dict[str, Any]:
    """Every system in turn; results.json is rewritten after each one, so a cut-short run keeps its rows."""
    model_dir = Path(config.model_dir)
    ensure_model(model_dir, config.size)
    started = time.time()
    features = cpu_features()
    config, fast_path = choose_fast_backend(config, features)
    skipped = skipped_systems(config.systems, features)
    errors: dict[str, str] = {}
    peer_notes: dict[str, list[str]] = {}
    for system in (s for s in config.systems if s.startswith("optimum")):
        reason, error, peer_notes[system] = prepare_optimum_peer(model_dir, config.size)
        if reason is not None:
            skipped[system] = reason
        if error is not None:
            errors[system] = error
    machine = describe_machine()
    machine["load_average_start"] = load_average()
    rows: list[dict[str, Any]] = []
    images: dict[str, dict[str, str]] = {}
    notes: dict[str, list[str]] = {}

    def results(finished: bool) -> dict[str, Any]:
        quality = report.quality(images)
        return {
            "schema_version": SCHEMA_VERSION,
            "command": command,
            "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "duration_s": round(time.time() - started, 1),
            "finished": finished,
            "machine": {**machine, "load_average_end": load_average()},
            "versions": library_versions(),
            "config": asdict(config),
            "fast_path": fast_path,
            "skipped": skipped,
            "rows": rows,
            "ratios": report.ratios(rows),
            "quality": quality,
            "psnr_threshold_db": report.PSNR_THRESHOLD_DB,
            "agreement": report.agreement(images),
            "targets": report.targets(rows, quality, config),
            "notes": notes,
            "errors": errors,
        }

    def write(data: dict[str, Any]) -> None:
        if out_json is not None:
            out_json.parent.mkdir(parents=True, exist_ok=True)
            out_json.write_text(json.dumps(data, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="outpaint-bench-") as tmp:
        workdir = Path(tmp)
        config_path = workdir / "config.json"
        config_path.write_text(config.to_json())
        if "outpaint-fast" in config.systems:
            print(f"outpaint-fast on {fast_path['backend']} ({fast_path['precision']}): {fast_path['reason']}",
                  flush=True)
        for system in config.systems:
            if system in skipped or system in errors:
                why = f"skipped: {skipped[system]}" if system in skipped else f"failed: {errors[system]}"
                print(f"[{time.time() - started:6.0f} s] {system} {why}", flush=True)
                continue
            print(f"[{time.time() - started:6.0f} s] {system} (load average {load_average()[0]})", flush=True)
            result, error = _run_worker(system, config_path, workdir / f"{system}.json")
            if error:
                errors[system] = error
                print(f"  {system} failed: {error}", flush=True)
            if result is not None:
                rows += result["rows"]
                images[system] = result["artifacts"]
                took = f"worker took {result['seconds']} s" if result["seconds"] is not None else "worker died"
                notes[system] = [*peer_notes.get(system, []), *result["notes"], took]
            write(results(finished=False))
        final = results(finished=True)  # PSNRs need the images, which live in workdir
    write(final)
    return final
