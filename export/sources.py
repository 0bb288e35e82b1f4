"""Load SD 1.5 weights from what a user brings: a diffusers folder, a single .safetensors file, a hub id."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from outpaint.core.errors import ModelError

from .components import Components

_FINGERPRINT_CHUNK = 1 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt")


def fingerprint_files(paths: list[Path], root: Path) -> str:
    """sha256 over each file's relative name, size, first and last MiB (configs in full).

    Hashing whole multi-GB weight files would take longer than some exports; size plus both ends
    catches every re-download, conversion and fine-tune we know of.
    """
    digest = hashlib.sha256()
    for path in sorted(paths):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(root)}\0{size}\0".encode())
        with path.open("rb") as handle:
            if size <= 2 * _FINGERPRINT_CHUNK or path.suffix not in _WEIGHT_SUFFIXES:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_FINGERPRINT_CHUNK))
                handle.seek(size - _FINGERPRINT_CHUNK)
                digest.update(handle.read(_FINGERPRINT_CHUNK))
    return "sha256:" + digest.hexdigest()


def _from_diffusers_folder(folder: Path) -> Components:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    missing = [sub for sub in ("text_encoder", "tokenizer", "unet", "vae", "scheduler") if not (folder / sub).is_dir()]
    if missing:
        raise ModelError(
            f"{folder} is not a diffusers-format SD 1.5 folder: missing {', '.join(m + '/' for m in missing)} "
            "(expected model_index.json, text_encoder/, tokenizer/, unet/, vae/, scheduler/)"
        )
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_file.is_file():
        raise ModelError(f"{scheduler_file} is missing")
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return Components(
        # float32 whatever the files hold: fp16 weights (SD 1.5's fp16 variant, the trained small
        # model) would otherwise load as fp16 modules and export mixed-precision graphs.
        text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32).eval(),
        unet=UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32).eval(),
        vae=AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32).eval(),
        tokenizer_dir=folder / "tokenizer",
        scheduler_config=json.loads(scheduler_file.read_text()),
        fingerprint=fingerprint_files(files, folder),
        description=f"diffusers folder {folder}",
    )


def _from_single_file(path: Path, config: Path | None) -> Components:
    """A single-file checkpoint (original SD layout). Its configs come from `config` (a diffusers
    folder of the same architecture) because the file carries weights only and no hub is reachable."""
    from diffusers import StableDiffusionPipeline

    kwargs: dict[str, object] = {"local_files_only": config is not None}
    if config is not None:
        kwargs["config"] = str(config)
    try:
        pipe = StableDiffusionPipeline.from_single_file(str(path), safety_checker=None, **kwargs)
    except Exception as exc:
        hint = "" if config else " Pass --config with a diffusers-format SD 1.5 folder to read the configs from."
        raise ModelError(f"could not load single-file checkpoint {path}: {exc}.{hint}") from exc
    workdir = Path(tempfile.mkdtemp(prefix="outpaint-single-"))
    pipe.tokenizer.save_pretrained(workdir / "tokenizer")
    return Components(
        text_encoder=pipe.text_encoder.eval(),
        unet=pipe.unet.eval(),
        vae=pipe.vae.eval(),
        tokenizer_dir=workdir / "tokenizer",
        scheduler_config=dict(pipe.scheduler.config),
        fingerprint=fingerprint_files([path], path.parent),
        description=f"single-file checkpoint {path}",
    )


def _from_hub(repo_id: str) -> Components:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            repo_id, allow_patterns=["*.json", "*.txt", "text_encoder/*", "unet/*", "vae/*", "tokenizer/*"]
        )
    except Exception as exc:
        raise ModelError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(exc).__name__}); "
            "without network access, pass a local diffusers-format folder or a .safetensors file instead"
        ) from None
    return _from_diffusers_folder(Path(folder))


def load_components(source: str, *, config: Path | None = None) -> Components:
    """Load from a diffusers folder, a single-file checkpoint, or a hub id (in that order of checks)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_diffusers_folder(path)
    if path.is_file():
        if path.suffix not in (".safetensors", ".ckpt"):
            raise ModelError(f"{path} is not a .safetensors or .ckpt checkpoint")
        return _from_single_file(path, config)
    looks_like_repo = source.count("/") == 1 and not path.suffix and not source.startswith((".", "/", "~"))
    if looks_like_repo:
        return _from_hub(source)
    raise ModelError(
        f"{source} does not exist; pass a diffusers-format SD 1.5 folder, a .safetensors file, or a hub id"
    )
