"""The machine a benchmark ran on: CPU model, cores, the instruction sets that decide bf16 speed, load.

The CPU part comes from engine/cpu_features.py, the detection `--fast` and the backends use too.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from outpaint.engine.cpu_features import FLAGS_OF_INTEREST, cpu_features


def _mem_total_gib() -> float | None:
    path = Path("/proc/meminfo")
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: how busy the shared machine was."""
    return [round(v, 2) for v in os.getloadavg()]


# Environment variables that cap the instruction sets the runtimes use (oneDNN in OpenVINO and torch,
# torch's own kernels, MKL): a run with any of them set measured a smaller CPU than its flags say.
ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def describe_machine() -> dict[str, Any]:
    features = cpu_features()
    return {
        "cpu_model": features.model,
        "logical_cpus": features.logical_cpus,
        "usable_cpus": features.usable_cpus,
        "flags": {flag: features.has(flag) for flag in FLAGS_OF_INTEREST},
        # Capabilities yes/no, native bf16, what OpenVINO reports and the backend `--fast` picks here.
        "capabilities": features.summary(),
        "isa_caps": {name: os.environ[name] for name in ISA_CAPS if name in os.environ},
        "memory_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def library_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {}
    for name in ("outpaint", "numpy", "onnxruntime", "openvino", "torch", "diffusers", "transformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
