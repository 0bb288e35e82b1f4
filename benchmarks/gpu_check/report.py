"""The check's JSON report (one file) and its short human summary; the verdict the exit code follows.

Per backend the status is one of: "passed" / "failed" (it ran; failed = below its image bar, or no
finite image), "unavailable" (a package, provider or library is missing: its reason), "error" (it
started and broke: the reason and the traceback's end), "timed_out" (it outran its budget), "skipped"
(the budget left too little to start it), "not_run" (what it needs failed earlier: the reason).
Unavailable and skipped parts do not fail the check; they are listed in the summary with their reason.
"""

from __future__ import annotations

from typing import Any

from .settings import DIFFUSERS, OUR_GPU_BACKENDS, REFERENCE

SCHEMA = "outpaint-gpu-check/1"
NOT_FAILING = ("passed", "ok", "unavailable", "skipped")


def speedups(backends: dict[str, dict[str, Any]]) -> dict[str, float]:
    """diffusers fp16's median guided step / each of our backends' (above 1: ours is faster)."""
    peer = backends.get(DIFFUSERS, {}).get("step")
    if not peer:
        return {}
    return {name: round(peer["median_ms"] / entry["step"]["median_ms"], 2)
            for name, entry in backends.items()
            if name in OUR_GPU_BACKENDS and entry.get("step") and entry["step"]["median_ms"] > 0}


def verdict(report: dict[str, Any]) -> list[str]:
    """Why the check failed (empty: it passed)."""
    problems = []
    model = report.get("model", {})
    if model.get("status") not in (None, "ok", "not_needed"):
        problems.append(f"model: {model.get('reason', model.get('status'))}")
    reference = report.get("reference", {})
    if reference.get("status") not in (None, "ok", "not_run"):
        problems.append(f"{REFERENCE} reference: {reference.get('status')}: {reference.get('reason', '')}")
    backends = report.get("backends", {})
    for name, entry in backends.items():
        if entry.get("status") not in NOT_FAILING:
            problems.append(f"{name}: {entry.get('status')}: {entry.get('reason', '')}")
    if not any(backends.get(name, {}).get("status") == "passed" for name in OUR_GPU_BACKENDS):
        problems.append("none of our GPU backends (" + ", ".join(OUR_GPU_BACKENDS) + ") ran and passed here")
    tests = report.get("pytest", {})
    if tests.get("outcome") not in ("passed", "skipped", "skipped_by_budget", "not_run_by_request"):
        problems.append(f"pytest -m gpu: {tests.get('outcome')}: {tests.get('summary', tests.get('reason', ''))}")
    return problems


def _image_cell(entry: dict[str, Any]) -> str:
    image = entry.get("image")
    if not image:
        return "-"
    return f"{image['psnr_db']:.1f} dB (bar {image['bar_psnr_db']:.0f}), max |diff| {image['max_abs_diff']}"


def _step_cell(entry: dict[str, Any]) -> str:
    step = entry.get("step")
    if not step:
        return "-"
    return f"{step['median_ms']:.1f} ms median ({step['min_ms']:.1f}-{step['max_ms']:.1f}, n={step['runs']})"


def summary(report: dict[str, Any]) -> str:
    machine = report.get("machine", {})
    gpu = machine.get("gpu", {})
    lines = [f"GPU check: {gpu.get('name', '?')} (driver {gpu.get('driver', '?')}, CUDA {gpu.get('cuda_driver_api')})"
             f" in {report.get('duration_s', 0):.0f} s of the {report.get('budget_s', 0):.0f} s budget"]
    model = report.get("model", {})
    lines.append(f"  model {model.get('dir')}: {model.get('status')}"
                 + (f" (exported in {model['export_s']:.0f} s)" if model.get("export_s") else "")
                 + (f": {model['reason']}" if model.get("reason") else ""))
    canvas = report.get("settings", {})
    lines.append(f"  guided step at {canvas.get('width')}x{canvas.get('height')}; image: "
                 f"{canvas.get('steps')} steps, seed {canvas.get('seed')}, against {REFERENCE} fp32")
    lines.append(f"  {'backend':<15} {'precision':<10} {'status':<12} {'image vs ' + REFERENCE:<40} guided step")
    rows = [(REFERENCE, report.get("reference", {})), *report.get("backends", {}).items()]
    for name, entry in rows:
        status = entry.get("status", "?")
        reason = entry.get("reason")
        if status in ("passed", "failed", "ok"):
            lines.append(f"  {name:<15} {entry.get('precision', ''):<10} {status:<12} {_image_cell(entry):<40} "
                         f"{_step_cell(entry)}")
        else:
            lines.append(f"  {name:<15} {entry.get('precision', ''):<10} {status:<12} {reason or ''}")
    for name, ratio in report.get("speedups", {}).items():
        lines.append(f"  {name} guided step: {ratio:.2f}x diffusers fp16's")
    tests = report.get("pytest", {})
    lines.append(f"  pytest -m gpu: {tests.get('outcome')}: {tests.get('summary') or tests.get('reason', '')}")
    for name in tests.get("failures", [])[:10]:
        lines.append(f"    failed: {name}")
    problems = report.get("problems", [])
    lines.append("PASS: every backend that could run passed" if not problems else "FAIL:")
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)
