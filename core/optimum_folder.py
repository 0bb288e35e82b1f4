"""An optimum / Hugging Face ONNX export folder read in place as a model: its manifest, built from its graphs.

The layout `optimum-cli export onnx` (and `ORTStableDiffusionPipeline.save_pretrained`) writes:

    model_index.json              the diffusers pipeline class and its components
    text_encoder/model.onnx       input_ids (B, S) int64 -> last_hidden_state (B, S, D), pooler_output
    unet/model.onnx[_data]        sample (B, C, h, w), timestep () scalar, encoder_hidden_states -> out_sample
    vae_encoder/model.onnx        sample (B, 3, H, W) -> latent_parameters (B, 2 x 4, h, w): mean, log-variance
    vae_decoder/model.onnx        latent_sample (B, 4, h, w) -> sample (B, 3, H, W)
    */config.json                 each component's diffusers / transformers config
    tokenizer/                    vocab.json + merges.txt (CLIP's slow-tokenizer files), maybe tokenizer.json
    scheduler/scheduler_config.json

Nothing is written into the folder (it may be read-only, and a manifest of ours there would claim an
export we did not make): the manifest is rebuilt at every load from the graphs' declared inputs and
outputs (core/onnx_signature.py, milliseconds) and the components' configs. Every graph must take what
the engine feeds, modulo names and the timestep's rank; what cannot be used is a ModelError naming what
was found and what is expected. docs/optimum.md tells the whole story.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import ModelError
from .geometry import LATENT_CHANNELS, LATENT_FACTOR, TEXT_TOKENS
from .graphs import (
    ENCODER_HIDDEN_STATES,
    FEATURE_CACHE_GRAPHS,
    IMAGE,
    INPUT_IDS,
    LAST_HIDDEN_STATE,
    LATENT,
    LATENT_MEAN,
    OUT_SAMPLE,
    SAMPLE,
    TEXT_ENCODER,
    TIMESTEP,
    UNET,
    VAE_DECODER,
    VAE_ENCODER,
)
from .manifest import FORMAT_VERSION, GraphRecord, Manifest, TensorBinding
from .onnx_signature import GraphSignature, TensorSignature, read_signature

MODEL_INDEX = "model_index.json"
# SD 1.5's VAE latent scaling (its vae/config.json); used when a folder's VAE configs state none.
SD15_SCALING_FACTOR = 0.18215
SD15_NATIVE_SIZE = 512
# model_index.json classes whose components are SD 1.5's (text encoder, UNet, VAE of one architecture).
SD15_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionImg2ImgPipeline")
_FIX = "export an SD 1.5 diffusers folder with `optimum-cli export onnx --model SRC --task inpainting OUT` " \
       "(fp32, the default), or export it with `outpaint export SRC OUT`"


def is_optimum_folder(folder: Path) -> bool:
    """A folder without our manifest that looks like an optimum export (its index or its UNet graph)."""
    return (folder / MODEL_INDEX).is_file() or (folder / UNET / "model.onnx").is_file()


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def _check_pipeline_class(folder: Path, index: dict[str, Any]) -> None:
    name = str(index.get("_class_name", "")).removeprefix("ORT").removeprefix("OV")
    if "text_encoder_2" in index or "XL" in name:
        raise ModelError(f"{folder} is an SDXL export ({name or 'text_encoder_2 present'}); this engine runs the "
                         f"SD 1.5 architecture (one CLIP text encoder, 4-channel 64x64 latents at 512 px): {_FIX}")
    if name and name not in SD15_PIPELINES:
        raise ModelError(f"{folder}/{MODEL_INDEX} names the pipeline {name}; this engine reads SD 1.5 pipelines "
                         f"({', '.join(SD15_PIPELINES)}): {_FIX}")


def _describe(tensor: TensorSignature) -> str:
    return f"{tensor.name} {tensor.dtype} {list(tensor.shape)}"


def _names(tensors: tuple[TensorSignature, ...]) -> str:
    return ", ".join(_describe(t) for t in tensors) or "none"


def _require(graph: str, signature: GraphSignature, name: str, *, output: bool = False) -> TensorSignature:
    tensor = signature.output(name) if output else signature.input(name)
    if tensor is None:
        kind = "outputs" if output else "inputs"
        found = signature.outputs if output else signature.inputs
        raise ModelError(f"{graph}/model.onnx has no {kind[:-1]} named {name!r} (its {kind}: {_names(found)}); "
                         f"an optimum SD 1.5 export's {graph} has one: {_FIX}")
    return tensor


def _check(graph: str, tensor: TensorSignature, rank: int, dtypes: tuple[str, ...], fixed: dict[int, int]) -> None:
    """Rank, dtype and the fixed axes `fixed` (axis -> size; a symbolic axis passes)."""
    problems = []
    if tensor.dtype not in dtypes:
        half = " (an fp16 export: the CPU backends run fp32 graphs; re-export with `--dtype fp32`)" \
            if tensor.dtype == "float16" else ""
        problems.append(f"dtype {tensor.dtype}, expected {' or '.join(dtypes)}{half}")
    if len(tensor.shape) != rank:
        problems.append(f"rank {len(tensor.shape)}, expected {rank}")
    else:
        for axis, size in fixed.items():
            found = tensor.shape[axis]
            if isinstance(found, int) and found != size:
                problems.append(f"axis {axis} is {found}, expected {size}")
    if problems:
        raise ModelError(f"{graph}/model.onnx: {_describe(tensor)}: {'; '.join(problems)}")


def _channels(graph: str, tensor: TensorSignature, axis: int = 1) -> int:
    size = tensor.shape[axis]
    if not isinstance(size, int):
        raise ModelError(f"{graph}/model.onnx: {_describe(tensor)}: axis {axis} (channels) must be fixed")
    return size


def _unexpected(graph: str, signature: GraphSignature, expected: tuple[str, ...]) -> None:
    extra = [t for t in signature.inputs if t.name not in expected]
    if extra:
        hint = {"text_embeds": "an SDXL UNet", "time_ids": "an SDXL UNet", "timestep_cond": "an LCM UNet"}
        what = next((hint[t.name] for t in extra if t.name in hint), "not SD 1.5's UNet")
        raise ModelError(f"{graph}/model.onnx takes inputs the engine does not feed: {_names(tuple(extra))} "
                         f"({what}); an SD 1.5 {graph} takes {', '.join(expected)} only")


def _bind(tensor: TensorSignature, channels: int | None = None) -> TensorBinding:
    return TensorBinding(name=tensor.name, dtype=tensor.dtype, rank=len(tensor.shape), channels=channels)


def _record(graph: str, signature: GraphSignature, bindings: dict[str, TensorBinding]) -> GraphRecord:
    return GraphRecord(
        file=f"{graph}/model.onnx",
        inputs=[{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in signature.inputs],
        outputs=[{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in signature.outputs],
        parity={},  # no parity check: we did not export it; optimum's exporter validates against PyTorch
        files=None,  # only presence is checked: sizes and hashes are what we record of our own exports
        bindings=bindings,
    )


def _fingerprint(folder: Path, files: list[Path]) -> str:
    """Names and sizes of the graph files (and their external data): which export this is, without reading
    gigabytes at every load."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path.relative_to(folder)}\0{path.stat().st_size}\0".encode())
    return "optimum:sha256:" + digest.hexdigest()[:16]


def _tokenizer_problem(folder: Path) -> str | None:
    tokenizer = folder / "tokenizer"
    if (tokenizer / "tokenizer.json").is_file():
        return None
    missing = [n for n in ("vocab.json", "merges.txt") if not (tokenizer / n).is_file()]
    return f"tokenizer/ lacks {' and '.join(missing)} (and tokenizer.json)" if missing else None


def optimum_manifest(folder: Path) -> Manifest:
    """Our manifest for an optimum export folder, from its graphs; a ModelError for what cannot be used."""
    index = _json(folder / MODEL_INDEX)
    _check_pipeline_class(folder, index)
    notes: list[str] = []
    if not index:
        notes.append(f"no {MODEL_INDEX}: the components were taken from their subfolders")
    graphs = (TEXT_ENCODER, UNET, VAE_ENCODER, VAE_DECODER)
    missing = [f"{g}/model.onnx" for g in graphs if not (folder / g / "model.onnx").is_file()]
    if (problem := _tokenizer_problem(folder)) is not None:
        missing.append(problem)
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        missing.append("scheduler/scheduler_config.json")
    if missing:
        why = (" (outpainting encodes the source image: an export without vae_encoder, such as a "
               "text-to-image-only one, cannot outpaint)") if f"{VAE_ENCODER}/model.onnx" in missing else ""
        raise ModelError(f"{folder} looks like an optimum ONNX export but lacks {', '.join(missing)}{why}. "
                         f"Expected text_encoder/, unet/, vae_encoder/, vae_decoder/ (each a model.onnx), "
                         f"tokenizer/ and scheduler/: {_FIX}")
    signatures = {g: read_signature(folder / g / "model.onnx") for g in graphs}

    text = signatures[TEXT_ENCODER]
    _unexpected(TEXT_ENCODER, text, (INPUT_IDS, "attention_mask"))
    if text.input("attention_mask") is not None:
        raise ModelError(f"{TEXT_ENCODER}/model.onnx takes an attention_mask; SD 1.5's CLIP text encoder runs on "
                         f"padded input_ids alone: {_FIX}")
    ids = _require(TEXT_ENCODER, text, INPUT_IDS)
    _check(TEXT_ENCODER, ids, 2, ("int64", "int32"), {1: TEXT_TOKENS})
    hidden_state = _require(TEXT_ENCODER, text, LAST_HIDDEN_STATE, output=True)
    _check(TEXT_ENCODER, hidden_state, 3, ("float32",), {1: TEXT_TOKENS})
    hidden = _channels(TEXT_ENCODER, hidden_state, axis=2)

    unet = signatures[UNET]
    _unexpected(UNET, unet, (SAMPLE, TIMESTEP, ENCODER_HIDDEN_STATES))
    sample = _require(UNET, unet, SAMPLE)
    _check(UNET, sample, 4, ("float32",), {})
    in_channels = _channels(UNET, sample)
    if in_channels not in (4, 9):
        raise ModelError(f"{UNET}/model.onnx: {_describe(sample)}: {in_channels} input channels; SD 1.5's UNet has "
                         "4 (text-to-image) or 9 (inpainting: latents, mask, masked-image latents)")
    timestep = _require(UNET, unet, TIMESTEP)
    # A scalar (current optimum) or (1,) / (steps,) (older exports, ours); fed as our (1,) reshaped to it.
    _check(UNET, timestep, min(len(timestep.shape), 1), ("float32", "int64"), {0: 1} if timestep.shape else {})
    context = _require(UNET, unet, ENCODER_HIDDEN_STATES)
    _check(UNET, context, 3, ("float32",), {1: TEXT_TOKENS, 2: hidden})
    noise = _require(UNET, unet, OUT_SAMPLE, output=True)
    _check(UNET, noise, 4, ("float32",), {1: LATENT_CHANNELS})

    encoder = signatures[VAE_ENCODER]
    _unexpected(VAE_ENCODER, encoder, (SAMPLE,))
    pixels = _require(VAE_ENCODER, encoder, SAMPLE)
    _check(VAE_ENCODER, pixels, 4, ("float32",), {1: 3})
    if encoder.output("latent_sample") is not None and encoder.output("latent_parameters") is None:
        raise ModelError(f"{VAE_ENCODER}/model.onnx returns latent_sample, a random draw from the latent "
                         "distribution (optimum before 1.23); the engine needs its mean: re-export with a current "
                         "optimum, whose vae_encoder returns latent_parameters (mean and log-variance)")
    parameters = _require(VAE_ENCODER, encoder, "latent_parameters", output=True)
    _check(VAE_ENCODER, parameters, 4, ("float32",), {1: 2 * LATENT_CHANNELS})

    decoder = signatures[VAE_DECODER]
    _unexpected(VAE_DECODER, decoder, ("latent_sample",))
    latent = _require(VAE_DECODER, decoder, "latent_sample")
    _check(VAE_DECODER, latent, 4, ("float32",), {1: LATENT_CHANNELS})
    image = _require(VAE_DECODER, decoder, SAMPLE, output=True)
    _check(VAE_DECODER, image, 4, ("float32",), {1: 3})

    unet_config = _json(folder / UNET / "config.json")
    if "in_channels" in unet_config and unet_config["in_channels"] != in_channels:
        raise ModelError(f"{UNET}/config.json says in_channels {unet_config['in_channels']}, its graph takes "
                         f"{in_channels}: the folder mixes two exports")
    vae_config = _json(folder / VAE_DECODER / "config.json") or _json(folder / VAE_ENCODER / "config.json")
    scaling = vae_config.get("scaling_factor")
    if scaling is None:
        scaling = SD15_SCALING_FACTOR
        notes.append(f"VAE scaling factor {SD15_SCALING_FACTOR} (SD 1.5's): no scaling_factor in "
                     f"{VAE_DECODER}/config.json or {VAE_ENCODER}/config.json")
    sample_size = unet_config.get("sample_size")
    if sample_size is None:
        native = SD15_NATIVE_SIZE
        notes.append(f"native size {SD15_NATIVE_SIZE} px (SD 1.5's): no sample_size in {UNET}/config.json")
    else:
        native = (max(sample_size) if isinstance(sample_size, list) else int(sample_size)) * LATENT_FACTOR
    notes.append(f"no {' or '.join(FEATURE_CACHE_GRAPHS)} (feature caching needs the UNet split only "
                 "`outpaint export` makes): the fast path runs here without feature caching")

    records = {
        TEXT_ENCODER: _record(TEXT_ENCODER, text, {INPUT_IDS: _bind(ids), LAST_HIDDEN_STATE: _bind(hidden_state)}),
        UNET: _record(UNET, unet, {SAMPLE: _bind(sample), TIMESTEP: _bind(timestep),
                                   ENCODER_HIDDEN_STATES: _bind(context), OUT_SAMPLE: _bind(noise)}),
        VAE_ENCODER: _record(VAE_ENCODER, encoder,
                             {IMAGE: _bind(pixels), LATENT_MEAN: _bind(parameters, channels=LATENT_CHANNELS)}),
        VAE_DECODER: _record(VAE_DECODER, decoder, {LATENT: _bind(latent), IMAGE: _bind(image)}),
    }
    files = [p for g in graphs for p in (folder / g).iterdir() if p.is_file() and p.name.startswith("model.onnx")]
    versions = {"diffusers (export)": str(index.get("_diffusers_version", "unknown"))}
    return Manifest(
        format_version=FORMAT_VERSION,
        source=f"optimum ONNX export {folder} ({index.get('_class_name', 'no model_index.json')})",
        fingerprint=_fingerprint(folder, files),
        versions=versions,
        unet_in_channels=in_channels,
        text_hidden_size=hidden,
        latent_channels=_channels(VAE_DECODER, latent),
        vae_scaling_factor=float(scaling),
        graphs=records,
        native_size=native,
        notes=notes,
        layout="optimum",
    )
