"""`outpaint build-engines`: TensorRT engines for an exported model (docs/gpu.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from outpaint.core.trt_key import PRECISIONS
from outpaint.core.trt_profiles import AxisRange, CanvasRange


def _canvas_range(text: str) -> AxisRange:
    """'256:512:1024' -> min/opt/max pixels of each canvas side."""
    try:
        low, opt, high = (int(v) for v in text.split(":"))
        return AxisRange(low, opt, high)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected MIN:OPT:MAX pixels like 256:512:1024 ({exc})") from None


def _static_canvas(text: str) -> tuple[int, int]:
    """'768x512' (width x height, as the API's img_width/img_height) -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 768x512, got {text!r}") from None
    return height, width


def add_build_engines(sub) -> None:
    p = sub.add_parser(
        "build-engines",
        help="build TensorRT engines for --backend tensorrt (NVIDIA GPU + `pip install 'outpaint[gpu]'`)",
        description="Clean the model's ONNX graphs and build one TensorRT engine per graph for this GPU. "
                    "Engines are named by GPU, compute capability, TensorRT version, precision and shape "
                    "profile; the last set built is the one `--backend tensorrt` loads.",
    )
    p.add_argument("--model", type=Path, required=True, help="exported model folder (`outpaint export`)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16",
                   help="graphs' precision (default fp16; bf16 needs Ampere+; int8 needs a Q/DQ-quantized export)")
    p.add_argument("--canvas", type=_canvas_range, default=AxisRange(256, 512, 1024), metavar="MIN:OPT:MAX",
                   help="canvas side range in pixels, each side (default 256:512:1024); multiples of 64")
    p.add_argument("--static", type=_static_canvas, metavar="WxH",
                   help="build for exactly one canvas instead (static shapes: fastest, CUDA graphs)")
    p.add_argument("--batch", type=int, default=1, help="prompt batch (the UNet sees twice this; default 1)")
    p.add_argument("--workspace-gb", type=float, default=0.0, help="TensorRT workspace limit (default: no limit)")
    p.add_argument("--opt-level", type=int, default=3, choices=range(6), metavar="0..5",
                   help="TensorRT builder optimisation level (default 3; 5 builds slowest, may run fastest)")
    p.add_argument("--gpu", type=int, default=0, help="CUDA device index (default 0)")
    p.add_argument("--force", action="store_true", help="rebuild engines whose files exist")
    p.add_argument("--no-clean", action="store_true",
                   help="give TensorRT the exported graphs as they are (if cleaning fails on a model)")
    p.add_argument("--clean-only", action="store_true",
                   help="only write the cleaned ONNX graphs (CPU; no TensorRT needed)")
    p.set_defaults(func=_cmd_build_engines)


def _cmd_build_engines(args) -> int:
    from outpaint.core.manifest import Manifest

    from .tensorrt import BuildOptions, build_engines, build_items, prepare_onnx

    try:
        canvas = CanvasRange.static(*args.static) if args.static else CanvasRange(args.canvas, args.canvas)
    except ValueError as exc:
        raise SystemExit(f"outpaint build-engines: {exc}") from None
    if args.clean_only:
        manifest = Manifest.load(args.model)
        paths = prepare_onnx(args.model, manifest, build_items(manifest, args.precision), force=args.force)
        for name, path in paths.items():
            print(f"{name}: {path}")
        return 0
    options = BuildOptions(precision=args.precision, canvas=canvas, batch=args.batch, workspace_gb=args.workspace_gb,
                           optimization_level=args.opt_level, gpu=args.gpu, force=args.force,
                           clean=not args.no_clean)
    record = build_engines(args.model, options)
    print(f"built {len(record.graphs)} engines in {args.model / 'engines' / record.key.slug}")
    print(f"run with: outpaint run --model {args.model} --backend tensorrt ...")
    return 0
