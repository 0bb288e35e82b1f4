"""`outpaint info`: what this machine can run, and what `--fast` would choose here and why; with
`--model DIR`, also what that model folder holds and which backends and levers it supports."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

from outpaint.engine.cpu_features import cpu_features, fast_backend


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def runtimes() -> dict[str, dict[str, Any]]:
    """Each graph runtime: its version (None = not installed) and what it offers on this machine."""
    features = cpu_features()
    out: dict[str, dict[str, Any]] = {}
    try:
        import onnxruntime

        out["onnxruntime"] = {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
    except ImportError:
        out["onnxruntime"] = {"version": None, "providers": []}
    out["openvino"] = {"version": (_version("openvino") or "unknown") if features.openvino else None,
                       "cpu_capabilities": list(features.openvino_capabilities or ())}
    # Only the package's presence: importing TensorRT loads CUDA, which is slow and fails without a GPU.
    out["tensorrt"] = {"version": _version("tensorrt")}
    return out


def describe() -> dict[str, Any]:
    features = cpu_features()
    choice = fast_backend(features)
    return {
        "cpu_model": features.model,
        "logical_cpus": features.logical_cpus,
        "usable_cpus": features.usable_cpus,
        "capabilities": features.capabilities(),
        "native_bf16_source": features.bf16_source(),
        "runtimes": runtimes(),
        "fast": {"backend": choice.backend, "precision": choice.precision, "reason": choice.reason},
    }


LEGACY_INT8 = "an earlier recipe, the edges in int8 too: quantize again"


def describe_model(folder: Path) -> dict[str, Any]:
    """What a model folder holds, read from its manifest (an optimum export's is built from its graphs),
    and whether every graph's files are as the export wrote them (sizes; `outpaint export` checks hashes)."""
    from outpaint.core.graphs import FEATURE_CACHE_GRAPHS, QUANTIZABLE_GRAPHS, int8_key
    from outpaint.core.manifest import read_manifest

    manifest = read_manifest(folder)
    graphs = manifest.graphs
    plain = [name for name in graphs if "." not in name]
    files = {name: record.size for graph in graphs.values() for name, record in (graph.files or {}).items()}
    problems = [problem for graph in graphs.values() for problem in graph.problems(folder, hashes=False)]
    split = all(name in graphs for name in FEATURE_CACHE_GRAPHS)
    # A twin without a recorded recipe predates them: every layer int8, the UNet's edges too.
    int8_modes = {name: graphs[int8_key(name)].int8_mode or LEGACY_INT8
                  for name in QUANTIZABLE_GRAPHS if int8_key(name) in graphs}
    return {
        "folder": str(folder),
        "layout": manifest.layout,
        "source": manifest.source,
        "unet_in_channels": manifest.unet_in_channels,
        "native_size": manifest.native_size,
        "graphs": plain,
        "fused_attention_twins": [name for name in plain if f"{name}.mha" in graphs],
        "int8_twins": list(int8_modes),
        "int8_modes": int8_modes,
        "feature_cache_split": split,
        "bytes_on_disk": sum(files.values()),  # the files the manifest records, each once
        "problems": problems,
        "notes": list(manifest.notes),
        "repair": manifest.export_command(folder) if problems else None,
    }


def format_model(model: dict[str, Any]) -> str:
    kind = "9-channel inpainting UNet" if model["unet_in_channels"] == 9 else "4-channel UNet"
    int8 = ", ".join(f"{name} ({mode})" for name, mode in model["int8_modes"].items())
    lines = [
        f"model          {model['folder']} ({model['layout']} layout, from {model['source']})",
        f"unet           {kind}, native {model['native_size']} px",
        f"graphs         {', '.join(model['graphs'])} ({model['bytes_on_disk'] / 2**30:.2f} GiB on disk)",
        f"fused attn     {', '.join(model['fused_attention_twins']) or 'none'} (what the ONNX Runtime backends read)",
        "feature cache  " + ("yes (the fast path's default)" if model["feature_cache_split"] else
                             "no: the fast path runs every UNet call whole; `outpaint export` adds the split"),
        "int8           " + (f"{int8} (--backend openvino-int8)" if int8 else "none (`outpaint quantize` adds them)"),
    ]
    lines += [f"note           {note}" for note in model["notes"]]
    if model["problems"]:
        lines.append(f"DAMAGED        {'; '.join(model['problems'])}; repair: {model['repair']}")
    else:
        lines.append("files          as the export wrote them (sizes checked)")
    return "\n".join(lines)


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def format_info(info: dict[str, Any]) -> str:
    caps = info["capabilities"]
    lines = [
        f"cpu            {info['cpu_model']}",
        f"cores          {info['logical_cpus']} logical, {info['usable_cpus']} usable by this process",
    ]
    lines += [f"{name:<14} {_yes(value)}" for name, value in caps.items() if name != "native_bf16"]
    lines.append(f"{'native bf16':<14} {_yes(caps['native_bf16'])} ({info['native_bf16_source']})")
    ort, ov, trt = (info["runtimes"][name] for name in ("onnxruntime", "openvino", "tensorrt"))
    lines.append("onnxruntime    " + (f"{ort['version']}: {', '.join(ort['providers'])}" if ort["version"]
                                      else "not installed"))
    lines.append("openvino       " + (f"{ov['version']}: CPU reports {', '.join(ov['cpu_capabilities'])}"
                                      if ov["version"] else "not installed (pip install 'outpaint[cpu-fast]')"))
    lines.append("tensorrt       " + (trt["version"] or "not installed (NVIDIA GPUs: docs/gpu.md)"))
    fast = info["fast"]
    lines.append(f"--fast         {fast['backend']} ({fast['precision']}): {fast['reason']}")
    return "\n".join(lines)


def add_info(sub) -> None:
    p = sub.add_parser("info", help="this CPU's capabilities, the installed runtimes, and what --fast would choose")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.add_argument("--model", type=Path, help="also describe this model folder (an export or an optimum folder)")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args) -> int:
    from outpaint.core.errors import ModelError

    info = describe()
    try:
        model = None if args.model is None else describe_model(args.model)
    except ModelError as exc:
        raise SystemExit(f"outpaint info: {exc}") from None
    if args.json:
        print(json.dumps(info if model is None else {**info, "model": model}, indent=1))
    else:
        print(format_info(info) + ("" if model is None else "\n" + format_model(model)))
    return 1 if model is not None and model["problems"] else 0
