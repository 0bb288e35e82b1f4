"""manifest.json: what an exported model folder holds, how it was made, and that it was checked."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass
class GraphRecord:
    file: str  # relative to the model folder
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    parity: dict[str, float]  # max_abs_error, max_rel_error, tolerance, psnr_db, at shapes


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
                f"Create one with `outpaint export SRC {folder}` (or `outpaint export --random tiny {folder}`)"
            )
        data = json.loads(path.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelError(
                f"{path} has format version {data.get('format_version')}, this outpaint reads {FORMAT_VERSION}; "
                "re-export the model"
            )
        graphs = {name: GraphRecord(**record) for name, record in data.pop("graphs").items()}
        return cls(**data, graphs=graphs)
