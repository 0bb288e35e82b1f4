"""Before any work: is there an NVIDIA GPU, which one, and which of the backends' packages are here.

The GPU is found with `nvidia-smi` (it ships with the driver, so it answers without any Python GPU
package), and CUDA_VISIBLE_DEVICES is honoured the way the CUDA runtime reads it: a value whose
first entry names no GPU hides them all. No GPU means a NoGpu error before a model is exported or a
process started. The package checks only look (importlib metadata, ONNX Runtime's provider list);
whether a backend really starts is learnt by loading it in its worker.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

from outpaint.core.errors import OutpaintError

SMI_FIELDS = ("index", "uuid", "name", "driver_version", "memory.total")
PACKAGES = ("outpaint", "numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "polygraphy", "tensorrt",
            "tensorrt-cu12", "tensorrt-cu13", "cuda-python", "cuda-bindings", "torch", "diffusers",
            "transformers", "nvidia-cudnn-cu12", "nvidia-cudnn-cu13")


class NoGpu(OutpaintError):
    """No NVIDIA GPU is usable here: the check stops before doing any work."""


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    driver: str
    memory_mib: int
    cuda_driver_api: str | None  # the newest CUDA the driver supports (nvidia-smi's header)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_smi_query(text: str, cuda: str | None = None) -> list[Gpu]:
    """Rows of `nvidia-smi --query-gpu=index,uuid,name,driver_version,memory.total --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(SMI_FIELDS):
            raise NoGpu(f"nvidia-smi printed a line this check cannot read: {line!r}")
        index, uuid, name, driver, memory = cells
        gpus.append(Gpu(int(index), uuid, name, driver, int(float(memory)), cuda))
    return gpus


def parse_cuda_version(smi_header: str) -> str | None:
    """'CUDA Version: 12.4' from plain `nvidia-smi` output, or None."""
    found = re.search(r"CUDA Version:\s*([0-9.]+)", smi_header)
    return found.group(1) if found else None


def visible_gpu(gpus: list[Gpu], cuda_visible_devices: str | None) -> Gpu:
    """The GPU that CUDA calls device 0 under `cuda_visible_devices` (None: the variable is unset)."""
    if not gpus:
        raise NoGpu("nvidia-smi lists no GPU")
    if cuda_visible_devices is None:
        return gpus[0]
    first = cuda_visible_devices.split(",")[0].strip()
    by_uuid = [g for g in gpus if first and g.uuid.startswith(first)]
    if first.isdigit() and int(first) < len(gpus):
        return gpus[int(first)]
    if first.startswith(("GPU-", "MIG-")) and by_uuid:
        return by_uuid[0]
    raise NoGpu(f"CUDA_VISIBLE_DEVICES={cuda_visible_devices!r} hides every GPU (nvidia-smi lists "
                f"{len(gpus)}: {', '.join(f'{g.index} {g.name}' for g in gpus)}); unset it or name one of them")


def find_gpu(timeout_s: float = 30.0) -> Gpu:
    """The GPU this check will use, or NoGpu naming why there is none."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        raise NoGpu("no NVIDIA GPU here: `nvidia-smi` is not on the PATH (no NVIDIA driver is installed); "
                    "the GPU check runs on a machine with an NVIDIA GPU and `pip install 'outpaint[gpu]'`")
    try:
        query = subprocess.run([smi, f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=timeout_s, check=False)
        header = subprocess.run([smi], capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise NoGpu(f"nvidia-smi did not answer within {timeout_s:.0f} s: the driver is not responding") from None
    if query.returncode != 0:
        said = (query.stdout + query.stderr).strip().splitlines()
        raise NoGpu(f"nvidia-smi failed (exit {query.returncode}): {said[0] if said else 'no output'}")
    gpus = parse_smi_query(query.stdout, parse_cuda_version(header.stdout))
    return visible_gpu(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    if versions["outpaint"] == "not installed":  # run from a source tree (the visit's clean copy)
        import outpaint

        versions["outpaint"] = f"{outpaint.__version__} (source tree, not installed)"
    return versions


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def missing_for(backend: str, providers: list[str]) -> str | None:
    """Why `backend` cannot run here as far as installed packages tell (None: try loading it)."""
    provider = {"ort-cuda": "CUDAExecutionProvider", "ort-trt": "TensorrtExecutionProvider"}.get(backend)
    if provider is not None and provider not in providers:
        return (f"ONNX Runtime here has no {provider} (it has {', '.join(providers) or 'none'}): the CPU wheel "
                "`onnxruntime` is installed; replace it with onnxruntime-gpu (docs/gpu.md, Installing)")
    if backend == "tensorrt":
        if importlib.util.find_spec("tensorrt") is None:
            return "the `tensorrt` package (TensorRT 10) is not installed: pip install 'tensorrt>=10,<11'"
        if importlib.util.find_spec("cuda") is None:
            return "the `cuda-python` package is not installed: pip install cuda-python"
    if backend == "diffusers-fp16":
        for package in ("torch", "diffusers", "transformers"):
            if importlib.util.find_spec(package) is None:
                return f"the `{package}` package is not installed (pip install -e '.[export]')"
    return None
