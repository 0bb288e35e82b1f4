"""manifest.json: what an exported model folder holds, how it was made, and that it was checked."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError
from .graphs import fast_path_unet_graphs, int8_key

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class FileRecord:
    """One file of a graph as the export wrote it."""

    size: int  # bytes
    sha256: str  # hex


def describe_file(path: Path) -> FileRecord:
    """Size and SHA-256 of a file, read in 1 MiB pieces (a UNet's weights are 3.4 GB)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return FileRecord(size=path.stat().st_size, sha256=digest.hexdigest())


@dataclass(frozen=True)
class TensorBinding:
    """Where one of our tensors (core/graphs.py) is in a graph that names or shapes it otherwise.

    Our exports need none: their graphs take and return our names. A folder someone else exported (an
    optimum export, core/optimum_folder.py) gets one per tensor, and the runtime feeds and reads the
    graph through them (engine/backends/bound.py)."""

    name: str  # the graph's own name for the tensor
    dtype: str  # the graph's dtype (numpy name): an input is cast to it, an output back to ours
    rank: int  # the graph's rank: our (1,) timestep is fed as a scalar to a graph that takes one
    channels: int | None = None  # an output: keep the first `channels` along axis 1 (a VAE's mean of mean, logvar)


@dataclass
class GraphRecord:
    file: str  # relative to the model folder
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    parity: dict[str, float]  # max_abs_error, max_rel_error, tolerance, psnr_db, at shapes
    # Every file the graph is made of (the .onnx and its external data file, if any), relative to the
    # model folder. None in manifests written before they were recorded: then only `file`'s presence
    # can be checked.
    files: dict[str, FileRecord] | None = None
    # Our tensor name -> where it is in this graph, for a graph that does not use our names (an optimum
    # export's); None for the graphs our export writes.
    bindings: dict[str, TensorBinding] | None = None
    # An int8 twin's recipe, "full" or "hybrid" (export/quantize.py); None for a float graph, and for
    # twins written before there was a choice (those are "full").
    int8_mode: str | None = None

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> GraphRecord:
        files = record.pop("files", None)
        bindings = record.pop("bindings", None)
        return cls(**record, files=None if files is None else {k: FileRecord(**v) for k, v in files.items()},
                   bindings=None if bindings is None else {k: TensorBinding(**v) for k, v in bindings.items()})

    def problems(self, folder: Path, *, hashes: bool) -> list[str]:
        """What is wrong with this graph's files in `folder`: [] when they are as the export wrote them.

        Sizes cost a stat per file; `hashes` reads every byte (seconds for a full-size UNet).
        """
        if self.files is None:
            return [] if (folder / self.file).is_file() else [f"{self.file} is missing"]
        found = []
        for name, expected in self.files.items():
            path = folder / name
            if not path.is_file():
                found.append(f"{name} is missing")
            elif (size := path.stat().st_size) != expected.size:
                found.append(f"{name} has {size} bytes where the export wrote {expected.size} (truncated or replaced)")
            elif hashes and describe_file(path).sha256 != expected.sha256:
                found.append(f"{name} differs from what the export wrote (its SHA-256 changed)")
        return found


@dataclass
class Manifest:
    format_version: int
    source: str
    fingerprint: str
    versions: dict[str, str]
    unet_in_channels: int
    text_hidden_size: int
    latent_channels: int
    vae_scaling_factor: float
    graphs: dict[str, GraphRecord] = field(default_factory=dict)
    # px per side the UNet was trained at (its config's sample_size x 8): where the large-canvas
    # strategy starts (engine/large_canvas.py). Manifests written before this field are SD 1.5's 512.
    native_size: int = 512
    # What a reader had to assume or leave out (an optimum folder's defaults, its missing graphs).
    notes: list[str] = field(default_factory=list)
    # "outpaint": a folder `outpaint export` wrote; "optimum": an optimum / Hugging Face ONNX export read
    # in place (core/optimum_folder.py), whose manifest is built from its graphs at every load.
    layout: str = "outpaint"

    def save(self, folder: Path) -> None:
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(folder / MANIFEST)  # atomic: a crash mid-write never leaves half a manifest

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        if not path.is_file():
            raise ModelError(
                f"{folder} has no {MANIFEST}: it is not an exported outpaint model. "
                f"Create one with `outpaint export SRC {folder}` (or `outpaint export --random tiny {folder}`); "
                "an optimum ONNX export folder (model_index.json, unet/model.onnx, ...) is read as it is"
            )
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:  # a half-written or damaged file
            raise ModelError(f"{path} is not valid JSON ({exc}); re-export the model") from None
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelError(
                f"{path} has format version {data.get('format_version')}, this outpaint reads {FORMAT_VERSION}; "
                "re-export the model"
            )
        graphs = {name: GraphRecord.from_json(record) for name, record in data.pop("graphs").items()}
        return cls(**data, graphs=graphs)

    def int8_fast_path(self) -> bool:
        """Whether every UNet graph the fast path runs has an int8 twin of the current recipe (the UNet's
        edges in float). Twins without a recorded recipe predate it: their picture fell outside the fast
        path's bar (docs/quality.md, "int8"), so `--fast` does not pick them."""
        twins = [self.graphs.get(int8_key(name)) for name in fast_path_unet_graphs(list(self.graphs))]
        return all(twin is not None and twin.int8_mode is not None for twin in twins)

    def export_command(self, folder: Path) -> str:
        """The command that re-exports into `folder` what is damaged or missing there (and only that)."""
        parts = self.fingerprint.split(":")
        if parts[0] == "random" and len(parts) == 4:  # random:SIZE:seed=N:in_channels=C (export/random_models.py)
            seed, channels = parts[2].removeprefix("seed="), parts[3].removeprefix("in_channels=")
            inpainting = " --inpainting" if channels == "9" else ""
            return f"outpaint export --random {parts[1]} --seed {seed}{inpainting} {folder}"
        return f"outpaint export SRC {folder} (SRC: the {self.source})"

    def check_files(self, folder: Path, keys: Iterable[str]) -> None:
        """Raise a ModelError naming every damaged or missing file of the graphs `keys`, and the fix.

        Sizes only: a truncated or half-copied graph (what happens to 3.4 GB files) changes its size,
        and a stat per file keeps loading instant where hashing would read gigabytes every start.
        `outpaint export` into the folder compares hashes too.
        """
        found = [problem for key in keys for problem in self.graphs[key].problems(folder, hashes=False)]
        if found:
            raise ModelError(
                f"the model folder {folder} is damaged: {'; '.join(found)}. Re-export the damaged graphs "
                f"(the intact ones are kept): {self.export_command(folder)}"
            )


def read_manifest(folder: Path) -> Manifest:
    """A model folder's manifest: the one `outpaint export` wrote, or, for a folder without one that looks
    like an optimum ONNX export, one built from its graphs (core/optimum_folder.py)."""
    if not (folder / MANIFEST).is_file():
        from .optimum_folder import is_optimum_folder, optimum_manifest  # it builds on this module

        if is_optimum_folder(folder):
            return optimum_manifest(folder)
    return Manifest.load(folder)
