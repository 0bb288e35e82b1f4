"""The `outpaint` command: export, run, demo (and the subcommands other modules register)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from outpaint.benchmarks.cli import add_bench as _add_bench
from outpaint.core.errors import OutpaintError
from outpaint.export.quantize import add_quantize
from outpaint.export.trt_cli import add_build_engines
from outpaint.info import add_info
from outpaint.request_args import add_engine_arguments, add_request_arguments, prepare
from outpaint.scenes.cli import add_scene
from outpaint.server.cli import add_keys as _add_keys
from outpaint.server.cli import add_serve as _add_serve
from outpaint.server.cli import add_serve_ray as _add_serve_ray
from outpaint.training.cli import add_train
from outpaint.zoom_pan_cli import add_pan, add_zoom


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="convert SD 1.5 weights to checked ONNX graphs")
    p.add_argument("source", nargs="?", help="diffusers folder, .safetensors file, or hub id")
    p.add_argument("out", type=Path, help="model folder to write")
    p.add_argument("--random", choices=("tiny", "full"), help="build SD-1.5-architecture random weights instead")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (with --random)")
    p.add_argument("--inpainting", action="store_true", help="with --random: a 9-channel inpainting UNet")
    p.add_argument("--config", type=Path, help="diffusers folder to read configs from (single-file sources)")
    p.add_argument("--no-feature-cache", dest="feature_cache", action="store_false",
                   help="skip the UNet split the CPU fast path's feature caching needs (2 more UNet graphs)")
    p.add_argument("--no-attention-twins", dest="attention_twins", action="store_false",
                   help="skip the fused-attention twins ONNX Runtime's CPU/CUDA providers prefer (1 more UNet "
                        "graph); those providers then run the plain graphs")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from outpaint.export.run import export_model

    if (args.source is None) == (args.random is None):
        raise SystemExit("outpaint export: give either SRC or --random tiny|full (not both)")
    export_model(args.source, args.out, random=args.random, seed=args.seed,
                 unet_in_channels=9 if args.inpainting else 4, config=args.config, feature_cache=args.feature_cache,
                 attention_twins=args.attention_twins)
    print(f"exported to {args.out}")
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="outpaint one image")
    add_engine_arguments(p)
    p.add_argument("--image", type=Path, required=True, help="source image (PNG, JPEG or WebP)")
    p.add_argument("--out", type=Path, required=True, help="output file (.jpg, .png, .webp)")
    add_request_arguments(p)
    p.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    from outpaint.run_request import check_output_path, run_with_progress, save_image

    request, source, pipeline = prepare(args, "run", check_output_path)
    result = run_with_progress(pipeline, source, request)
    for warning in result.warnings:
        print(f"warning: {warning}")
    save_image(result.image, args.out)
    seam = "none (no boundary)" if result.seam is None else f"{result.seam:.3f} (about 1: no visible seam)"
    print(f"seed {result.seed}; seam score {seam}; wrote {args.out}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="outpaint a held-out scene with the small model trained here, beside its truth")
    p.add_argument("--weights", type=Path, default=Path("weights/scenes"), help="the trained diffusers folder")
    p.add_argument("--model", type=Path, default=Path("models/scenes"),
                   help="its exported graphs (exported there on the first run)")
    p.add_argument("--out", type=Path, default=Path("out/demo.jpg"))
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seed", type=int, default=1234)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from outpaint.demo import run_demo

    run_demo(args.weights, args.model, args.out, width=args.width, height=args.height, steps=args.steps,
             seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outpaint", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_export, add_quantize, _add_run, _add_demo, _add_serve, _add_serve_ray, _add_keys, _add_bench,
                add_build_engines, add_info, add_train, add_zoom, add_pan, add_scene):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except OutpaintError as exc:
        print(f"outpaint {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
