"""What this CPU runs natively, detected once per process, and the fast path's backend that follows.

Why one module: whether bf16 is native decides whether `openvino-bf16` may run at all (emulated bf16
is slower than fp32), which backend `--fast` picks, which benchmark systems run and which tests
skip. Each of those asks here, so they cannot disagree.

Native bf16 is what OpenVINO reports (`BF16` in the CPU plugin's OPTIMIZATION_CAPABILITIES) when
openvino is importable, because OpenVINO is what runs bf16; without openvino it is the kernel's
cpuinfo flags `avx512_bf16` / `amx_bf16` (AVX-512 BF16: Zen 4+, Cooper Lake; AMX: Sapphire Rapids+).
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from outpaint.core.errors import ModelError
from outpaint.core.manifest import read_manifest

# The cpuinfo flags that decide the speed of our CPU backends; all are recorded by the benchmark.
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16",
                     "amx_int8")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_OPENVINO_HINT = "pip install 'outpaint[cpu-fast]'"


@dataclass(frozen=True)
class CpuFeatures:
    """One CPU's model, core counts and capabilities; `openvino_capabilities` None = openvino not importable."""

    model: str
    logical_cpus: int
    usable_cpus: int
    flags: frozenset[str]  # the FLAGS_OF_INTEREST that /proc/cpuinfo lists
    openvino_capabilities: tuple[str, ...] | None

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def vnni(self) -> bool:
        """int8 dot products: AVX-512 VNNI (Ice Lake+, Zen 4+) or AVX-VNNI (Alder Lake+, Zen 5)."""
        return self.has("avx512_vnni") or self.has("avx_vnni")

    @property
    def openvino(self) -> bool:
        return self.openvino_capabilities is not None

    @property
    def native_bf16(self) -> bool:
        if self.openvino_capabilities is not None:
            return "BF16" in self.openvino_capabilities
        return any(self.has(flag) for flag in _BF16_FLAGS)

    def bf16_source(self) -> str:
        """Where `native_bf16` comes from, for messages: "OpenVINO reports ..." or the cpuinfo flags."""
        if self.openvino_capabilities is not None:
            return f"OpenVINO reports {', '.join(self.openvino_capabilities) or 'nothing'}"
        present = [flag for flag in _BF16_FLAGS if self.has(flag)]
        if present:
            return f"cpuinfo flags {', '.join(present)}"
        return f"cpuinfo lists neither {' nor '.join(_BF16_FLAGS)}"

    def capabilities(self) -> dict[str, bool]:
        """Each capability yes/no, in the order `outpaint info` prints them."""
        return {
            "avx2": self.has("avx2"),
            "avx512f": self.has("avx512f"),
            "avx512_bf16": self.has("avx512_bf16"),
            "amx_tile": self.has("amx_tile"),
            "amx_bf16": self.has("amx_bf16"),
            "amx_int8": self.has("amx_int8"),
            "vnni": self.vnni,
            "native_bf16": self.native_bf16,
        }

    def summary(self) -> dict[str, Any]:
        """The capabilities and the fast path's choice, as results.json's machine section records them."""
        choice = fast_backend(self)
        return {
            **self.capabilities(),
            "openvino_capabilities": None if self.openvino_capabilities is None else list(self.openvino_capabilities),
            "fast_backend": choice.backend,
            "fast_precision": choice.precision,
            "fast_reason": choice.reason,
        }


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    precision: str  # what the UNet computes in: bf16 or fp32
    reason: str  # one line for a human: why this backend


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, FLAGS_OF_INTEREST present) from /proc/cpuinfo's text; the first processor speaks for all."""
    model, flags = "", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = value
    present = set(flags.split())
    return model, frozenset(flag for flag in FLAGS_OF_INTEREST if flag in present)


def _openvino_capabilities() -> tuple[str, ...] | None:
    try:
        import openvino as ov
    except ImportError:
        return None
    try:
        return tuple(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except RuntimeError:  # no usable CPU plugin: the openvino backends cannot run here either
        return None


@functools.cache
def cpu_features() -> CpuFeatures:
    """This machine's CpuFeatures, detected on the first call (an OpenVINO Core costs ~0.1 s)."""
    path = Path("/proc/cpuinfo")
    model, flags = parse_cpuinfo(path.read_text()) if path.is_file() else ("", frozenset())
    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    return CpuFeatures(model=model or platform.processor() or "unknown", logical_cpus=logical, usable_cpus=usable,
                       flags=flags, openvino_capabilities=_openvino_capabilities())


def has_native_bf16() -> bool:
    return cpu_features().native_bf16


def fast_backend(features: CpuFeatures | None = None, int8_twins: bool = False) -> BackendChoice:
    """The fast path's backend: bf16 on OpenVINO where it is native; else int8 on OpenVINO where the CPU
    has int8 dot products (VNNI) and the model has int8 twins (`int8_twins`: `outpaint quantize`,
    Manifest.int8_fast_path); else ONNX Runtime in fp32.

    int8 where bf16 is not native: its UNet calls took a fraction of fp32's time with the ISA capped to
    AVX-512 VNNI (benchmarks/RESULTS.md, "int8 with the edges in float"), and on the trained model its
    fast path scores as the fp32 fast path does (docs/quality.md, "int8"). Not where bf16 is native (the
    int8 call was no faster than bf16 on AMX) nor without VNNI (no faster than fp32 capped to AVX2).

    Without native bf16 ONNX Runtime is the faster fp32 runtime: its guided UNet step at 512x512
    took 15.75 s against OpenVINO fp32's 18.15 s on an AVX2-only machine, and 8.57 s against 8.53 s
    (parity) on AVX-512 (docs/benchmarks.md); one session also serves every shape with one copy of
    the weights."""
    f = cpu_features() if features is None else features
    if f.openvino and f.native_bf16:
        return BackendChoice("openvino-bf16", "bf16", f"this CPU runs bf16 natively ({f.bf16_source()}): "
                                                      "the fast path runs in bf16 on openvino-bf16")
    if f.openvino and f.vnni and int8_twins:
        return BackendChoice("openvino-int8", "int8", f"this CPU has no native bf16 ({f.bf16_source()}) but has "
                                                      "VNNI, and the model has int8 twins: the fast path's UNet "
                                                      "runs in int8 on openvino-int8, the rest in fp32")
    if f.openvino:
        twins = " (`outpaint quantize` would add the int8 twins openvino-int8 runs here)" if f.vnni else ""
        return BackendChoice("ort-cpu", "fp32", f"this CPU has no native bf16 ({f.bf16_source()}): the fast "
                                                f"path runs in fp32 on ort-cpu, the faster fp32 runtime{twins}")
    bf16 = " although this CPU has native bf16" if f.native_bf16 else ""
    return BackendChoice("ort-cpu", "fp32", f"openvino is not installed ({_OPENVINO_HINT}){bf16}: "
                                            "the fast path runs in fp32 on ort-cpu")


def model_has_int8_twins(model: Path) -> bool:
    """Whether the model folder has the int8 twins `fast_backend` may pick; False where it cannot be read
    (loading it says why)."""
    try:
        return read_manifest(model).int8_fast_path()
    except (ModelError, OSError):
        return False


def resolve_backend(backend: str | None, fast: bool, model: Path | None = None) -> tuple[str, str | None]:
    """The CLI's --backend: given, it is used as is (an impossible one fails when it loads); omitted, it is
    ort-cpu, or with --fast `fast_backend()` for `model`. Returns (backend, the reason to print, or None)."""
    if backend is not None:
        return backend, None
    if not fast:
        return "ort-cpu", None
    choice = fast_backend(int8_twins=model is not None and model_has_int8_twins(model))
    return choice.backend, choice.reason
