"""What a TensorRT engine was built for, how its files are named, and whether it loads here.

A serialized engine runs only on the GPU architecture (compute capability) and the exact TensorRT
version that built it, so every engine set lives in a folder named by its build key:

    MODEL/engines/<gpu>_sm<cc>_trt<version>_<precision>_b<batch>_<canvas>/<graph>.plan
    MODEL/engines/<...same...>/build.json       the key, the canvas range, the graphs
    MODEL/engines/selected.json                 the set `--backend tensorrt` loads (the last one built)

All of it is pure (no TensorRT, no GPU), so it is tested on a CPU.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import BackendUnavailable, ModelError
from .trt_profiles import AxisRange, CanvasRange

ENGINES_DIR = "engines"
SELECTED = "selected.json"
BUILD_RECORD = "build.json"
PRECISIONS = ("fp16", "bf16", "int8", "fp32")


@dataclass(frozen=True)
class DeviceIdentity:
    """The facts a serialized engine depends on."""

    gpu_name: str  # as CUDA reports it, e.g. "NVIDIA GeForce RTX 4090"
    compute_capability: tuple[int, int]  # (major, minor), e.g. (8, 9)
    tensorrt_version: str  # tensorrt.__version__, e.g. "10.16.1.11"

    @property
    def sm(self) -> str:
        return f"sm{self.compute_capability[0]}{self.compute_capability[1]}"

    def describe(self) -> str:
        return f"{self.gpu_name} ({self.sm}) with TensorRT {self.tensorrt_version}"


@dataclass(frozen=True)
class BuildKey:
    device: DeviceIdentity
    precision: str  # fp16 | bf16 | int8 | fp32 (the graphs; the step kernel is always fp32)
    canvas: CanvasRange
    batch: int  # prompt batch B (the UNet sees up to 2B)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")

    @property
    def slug(self) -> str:
        version = self.device.tensorrt_version.replace(".", "-")
        return (f"{gpu_slug(self.device.gpu_name)}_{self.device.sm}_trt{version}_{self.precision}"
                f"_b{self.batch}_{self.canvas.tag}")


def gpu_slug(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'nvidia-geforce-rtx-4090' (safe in a file name on every OS)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unknown-gpu"


def engine_dir(model_dir: Path, key: BuildKey) -> Path:
    return Path(model_dir) / ENGINES_DIR / key.slug


def engine_path(model_dir: Path, key: BuildKey, graph: str) -> Path:
    return engine_dir(model_dir, key) / f"{graph}.plan"


def timing_cache_path(model_dir: Path, device: DeviceIdentity) -> Path:
    """Timing caches are per GPU architecture and TensorRT version too; precisions and profiles share one."""
    version = device.tensorrt_version.replace(".", "-")
    return Path(model_dir) / ENGINES_DIR / f"timing_{gpu_slug(device.gpu_name)}_{device.sm}_trt{version}.cache"


@dataclass(frozen=True)
class BuildRecord:
    key: BuildKey
    graphs: tuple[str, ...]  # engine names in the set (the four graphs and the step kernels)

    def to_json(self) -> str:
        data = asdict(self)
        data["slug"] = self.key.slug
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BuildRecord:
        data = json.loads(text)
        key = data["key"]
        device = DeviceIdentity(key["device"]["gpu_name"], tuple(key["device"]["compute_capability"]),
                                key["device"]["tensorrt_version"])
        canvas = CanvasRange(AxisRange(**key["canvas"]["height"]), AxisRange(**key["canvas"]["width"]))
        return cls(BuildKey(device, key["precision"], canvas, int(key["batch"])), tuple(data["graphs"]))


def save_record(model_dir: Path, record: BuildRecord, select: bool = True) -> None:
    folder = engine_dir(model_dir, record.key)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / BUILD_RECORD).write_text(record.to_json())
    if select:
        tmp = Path(model_dir) / ENGINES_DIR / (SELECTED + ".tmp")
        tmp.write_text(json.dumps({"slug": record.key.slug}) + "\n")
        tmp.replace(Path(model_dir) / ENGINES_DIR / SELECTED)


def _rebuild_hint(model_dir: Path) -> str:
    return f"run `outpaint build-engines --model {model_dir}` on this machine, or use --backend ort-cuda"


def selected_record(model_dir: Path) -> BuildRecord:
    """The engine set `--backend tensorrt` loads; ModelError naming the command when there is none."""
    selected = Path(model_dir) / ENGINES_DIR / SELECTED
    if not selected.is_file():
        raise ModelError(f"{model_dir} has no TensorRT engines yet: {_rebuild_hint(model_dir)}")
    slug = json.loads(selected.read_text())["slug"]
    record_path = Path(model_dir) / ENGINES_DIR / slug / BUILD_RECORD
    if not record_path.is_file():
        raise ModelError(f"{record_path} is missing (the engine set {slug} is incomplete): {_rebuild_hint(model_dir)}")
    return BuildRecord.from_json(record_path.read_text())


def check_compatible(record: BuildRecord, here: DeviceIdentity, model_dir: Path) -> list[str]:
    """Raise when the engines cannot load here; return warnings when they load but were tuned elsewhere.

    Engines need the same compute capability and TensorRT version; the same architecture on another
    GPU model loads but TensorRT's tactic choices were timed on the other card.
    """
    built = record.key.device
    if built.compute_capability != here.compute_capability or built.tensorrt_version != here.tensorrt_version:
        raise BackendUnavailable(
            f"the TensorRT engines in {engine_dir(model_dir, record.key)} were built for {built.describe()}; "
            f"this machine has {here.describe()}. A TensorRT engine loads only on the GPU architecture and "
            f"TensorRT version that built it: {_rebuild_hint(model_dir)}"
        )
    if built.gpu_name != here.gpu_name:
        return [f"TensorRT engines were tuned on {built.gpu_name}, running on {here.gpu_name} (same {here.sm}): "
                f"they work, a rebuild here may be faster (`outpaint build-engines --model {model_dir}`)"]
    return []
