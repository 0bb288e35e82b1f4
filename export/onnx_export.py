"""Export the four graphs to ONNX, check each against PyTorch, write the model folder.

The folder it writes:
    manifest.json                 what is here, versions, fingerprint, parity results
    text_encoder/model.onnx       (B, 77) int64 -> (B, 77, D)
    unet/model.onnx[.data]        (2B, C, H/8, W/8), (1,), (2B, 77, D) -> (2B, 4, H/8, W/8)
    vae_encoder/model.onnx        (B, 3, H, W) -> latent mean (B, 4, H/8, W/8), unscaled
    vae_decoder/model.onnx        (B, 4, H/8, W/8), unscaled -> (B, 3, H, W)
    unet_deep/, unet_shallow/     the UNet split for feature caching (feature_cache.py)
    */model.mha.onnx              fused-attention twins of the graphs with attention (attention.py)
    tokenizer/tokenizer.json      + tokenizer_config.json
    scheduler/scheduler_config.json
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from outpaint.core.errors import ModelError
from outpaint.core.geometry import LATENT_FACTOR
from outpaint.core.graphs import (
    ATTENTION_GRAPHS,
    GraphSpec,
    canvas_dims,
    feature_cache_specs,
    fused_attention_specs,
    graph_specs,
    int8_key,
)
from outpaint.core.manifest import FORMAT_VERSION, GraphRecord, Manifest, describe_file

from .attention import fused_attention
from .components import Components

OPSET = 17
# protobuf cannot serialise a message past 2 GiB; stay well below it.
EXTERNAL_DATA_THRESHOLD = 1_500_000_000
# Parity runs at a canvas different from the export's trace shape, so dynamic axes are exercised.
TRACE_CANVAS = (64, 64)
PARITY_CANVAS = (128, 192)


log = logging.getLogger("outpaint")


class ParityError(ModelError):
    """An exported graph disagrees with PyTorch beyond its tolerance."""


def _native_size(sample_size: int | list[int] | tuple[int, ...]) -> int:
    """Pixels per side the UNet was trained at; a (height, width) sample_size counts by its longer side."""
    latent = max(sample_size) if isinstance(sample_size, list | tuple) else int(sample_size)
    return latent * LATENT_FACTOR

def _versions() -> dict[str, str]:
    import diffusers
    import onnx
    import onnxruntime
    import torch
    import transformers

    import outpaint

    return {
        "outpaint": outpaint.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "opset": str(OPSET),
    }


def _torch_inputs(spec: GraphSpec, dims: dict[str, int], seed: int):
    import torch

    return {name: torch.from_numpy(value) for name, value in spec.sample_inputs(dims, seed).items()}


def export_graph(module, spec: GraphSpec, path: Path) -> None:
    """Trace `module` to ONNX at `path` with the spec's names and dynamic axes; external data past 1.5 GB."""
    import onnx
    import torch

    inputs = _torch_inputs(spec, canvas_dims(1, *TRACE_CANVAS), seed=0)
    with tempfile.TemporaryDirectory(prefix="outpaint-export-", dir=path.parent) as tmp:
        traced = Path(tmp) / "model.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about every Python-level branch in diffusers; the parity check below is
            # what tells whether the trace generalises, so the warnings are noise for a user.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                tuple(inputs[t.name] for t in spec.inputs),
                str(traced),
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_axes=spec.dynamic_axes(),
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,  # the TorchScript exporter handles SD's dynamic H/W; see docs/decisions.md
            )
        model = onnx.load(str(traced), load_external_data=True)
        size = sum(len(t.raw_data) for t in model.graph.initializer)
        for stale in (path, path.with_name(path.name + ".data")):
            stale.unlink(missing_ok=True)
        if size > EXTERNAL_DATA_THRESHOLD:
            onnx.save_model(
                model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                location=path.name + ".data", size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(path))


def graph_files(folder: Path, file: str) -> list[str]:
    """The files (relative to `folder`) that make up the graph `file`: it and its external data, if any.

    The external data is always the one file `export_graph` names `<graph>.data`.
    """
    data = f"{file}.data"
    return [file, data] if (folder / data).is_file() else [file]


def check_parity(module, spec: GraphSpec, path: Path, dims: dict[str, int]) -> dict[str, float]:
    """Run torch and ONNX Runtime on the same sample inputs; raise ParityError past the tolerance.

    Every output is checked; the record holds the worst one's errors.
    """
    import onnxruntime as ort
    import torch

    feeds = spec.sample_inputs(dims, seed=1)
    with torch.no_grad():
        expected_out = module(*(torch.from_numpy(feeds[t.name]) for t in spec.inputs))
    expected_all = expected_out if isinstance(expected_out, tuple) else (expected_out,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual_all = session.run([t.name for t in spec.outputs], feeds)
    result: dict[str, float] = {}
    for tensor, expected_t, actual in zip(spec.outputs, expected_all, actual_all, strict=True):
        expected = expected_t.numpy()
        if actual.shape != expected.shape:
            raise ParityError(f"{spec.key}.{tensor.name}: ONNX output shape {actual.shape} != PyTorch {expected.shape}")
        max_abs = float(np.abs(actual.astype(np.float64) - expected).max())
        peak = float(np.abs(expected).max()) or 1.0
        if max_abs / peak > spec.max_rel_error or not np.isfinite(actual).all():
            raise ParityError(
                f"{spec.key}.{tensor.name}: ONNX differs from PyTorch by {max_abs:.3g} "
                f"(relative {max_abs / peak:.3g}), over the tolerance {spec.max_rel_error:g}; "
                "the export is wrong, not saved as valid"
            )
        if result and max_abs / peak <= result["max_rel_error"]:
            continue
        mse = float(np.mean((actual.astype(np.float64) - expected) ** 2))
        psnr = float("inf") if mse == 0 else 10 * np.log10((2 * peak) ** 2 / mse)
        result = {
            "max_abs_error": max_abs,
            "max_rel_error": max_abs / peak,
            "tolerance": spec.max_rel_error,
            "psnr_db": float(round(psnr, 2)) if np.isfinite(psnr) else 999.0,
            "checked_at": json.dumps({k: v for k, v in dims.items() if k in ("B", "H", "W")}),
        }
    return result


def _drop_int8_twin(out: Path, manifest: Manifest, key: str) -> None:
    """A graph exported again invalidates the int8 twin `outpaint quantize` made from it (export/quantize.py)."""
    twin = manifest.graphs.pop(int8_key(key), None)
    if twin is not None:
        for name in twin.files or {twin.file: None}:
            (out / name).unlink(missing_ok=True)
        manifest.save(out)
        log.warning("%s was exported again: its int8 twin is removed; re-run `outpaint quantize %s`", key, out)


def _write_side_files(components: Components, out: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(components.tokenizer_dir))
    tokenizer.save_pretrained(str(out / "tokenizer"))
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(components.scheduler_config, indent=2))


def export_components(
    components: Components,
    out: Path,
    *,
    progress: Callable[[str, str], None] | None = None,
    parity_canvas: tuple[int, int] = PARITY_CANVAS,
    feature_cache: bool = True,
    attention_twins: bool = True,
) -> Manifest:
    """Export, check and record every graph of `components` into `out`.

    Idempotent: a graph whose manifest entry records a passed check for the same source fingerprint,
    and whose files still have the recorded sizes and SHA-256, is skipped. A graph that fails its check
    is deleted and the export raises.
    `progress(graph, status)` is told "exporting", "checking", "done" or "skipped" for each graph.
    `feature_cache` adds the UNet split for caching deep features across steps (feature_cache.py).
    `attention_twins` adds the fused-attention twins ONNX Runtime's CPU and CUDA providers prefer
    (attention.py); without them those providers run the plain graphs (slower attention, same result).
    """
    report = progress or (lambda graph, status: None)
    out.mkdir(parents=True, exist_ok=True)
    unet_in = int(components.unet.config.in_channels)
    hidden = int(components.text_encoder.config.hidden_size)
    try:
        previous = Manifest.load(out)
    except ModelError:
        previous = None
    reuse = previous is not None and previous.fingerprint == components.fingerprint
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        source=components.description,
        fingerprint=components.fingerprint,
        versions=_versions(),
        unet_in_channels=unet_in,
        text_hidden_size=hidden,
        latent_channels=int(components.vae.config.latent_channels),
        vae_scaling_factor=float(components.vae.config.scaling_factor),
        graphs=dict(previous.graphs) if reuse else {},
        native_size=_native_size(components.unet.config.sample_size),
    )
    _write_side_files(components, out)
    from .torch_modules import graph_modules

    modules = graph_modules(components, feature_cache=feature_cache)
    specs = graph_specs(unet_in, hidden)
    if feature_cache:
        from .feature_cache import feature_channels

        specs += feature_cache_specs(unet_in, hidden, feature_channels(components.unet.config))
    attention_owner = {name: components.vae if name.startswith("vae") else components.unet for name in ATTENTION_GRAPHS}
    for spec in (*specs, *(fused_attention_specs(specs) if attention_twins else ())):
        path = out / spec.file
        done = manifest.graphs.get(spec.key)
        if done is not None:
            # Sizes and hashes: a graph damaged after its export (a truncated copy) is exported again
            # instead of being skipped as done forever.
            problems = done.problems(out, hashes=True) or (
                ["no sizes or hashes recorded (an older export)"] if done.files is None else []
            )
            if not problems:
                report(spec.key, "skipped")
                continue
            log.warning("%s: %s; exporting it again", spec.key, "; ".join(problems))
        path.parent.mkdir(exist_ok=True)
        _drop_int8_twin(out, manifest, spec.key)
        started = time.perf_counter()
        with fused_attention(attention_owner[spec.name]) if spec.variant else contextlib.nullcontext():
            report(spec.key, "exporting")
            export_graph(modules[spec.name], spec, path)
            report(spec.key, "checking")
            try:
                parity = check_parity(modules[spec.name], spec, path, canvas_dims(1, *parity_canvas))
            except ParityError:
                for produced in (path, path.with_name(path.name + ".data")):
                    produced.unlink(missing_ok=True)
                manifest.graphs.pop(spec.key, None)
                manifest.save(out)
                raise
        parity["seconds"] = round(time.perf_counter() - started, 2)
        manifest.graphs[spec.key] = GraphRecord(
            file=spec.file,
            inputs=[asdict(t) for t in spec.inputs],
            outputs=[asdict(t) for t in spec.outputs],
            parity=parity,
            files={name: describe_file(out / name) for name in graph_files(out, spec.file)},
        )
        manifest.save(out)  # after every graph, so an interrupted export resumes where it stopped
        report(spec.key, "done")
    return manifest
