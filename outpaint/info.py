"""`outpaint info`: what this machine can run, and what `--fast` would choose here and why."""

from __future__ import annotations

import json
from importlib import metadata
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
    p.set_defaults(func=_cmd_info)


def _cmd_info(args) -> int:
    info = describe()
    print(json.dumps(info, indent=1) if args.json else format_info(info))
    return 0
