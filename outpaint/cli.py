"""The `outpaint` command: export, run, demo (and the subcommands other modules register)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from outpaint.benchmarks.cli import add_bench as _add_bench
from outpaint.core.errors import OutpaintError
from outpaint.engine.backends.registry import BACKENDS
from outpaint.export.trt_cli import add_build_engines
from outpaint.info import add_info
from outpaint.server.cli import add_keys as _add_keys
from outpaint.server.cli import add_serve as _add_serve
from outpaint.server.cli import add_serve_ray as _add_serve_ray
from outpaint.training.cli import add_train

FAST_HELP = ("CPU fast path: UNet window around the new area, deep UNet features reused across steps; "
             "approximate inside the new area (docs/benchmarks.md). Without --backend it runs the fastest "
             "precision this CPU runs natively (bf16 on openvino-bf16 where the CPU has AVX-512 BF16 or AMX, "
             "else fp32; `outpaint info` shows the choice) and prints which")
BACKEND_HELP = ("graph runtime (default ort-cpu; with --fast the fastest this CPU runs natively, see "
                "`outpaint info`; GPU ones: docs/gpu.md)")


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
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from outpaint.export.run import export_model

    if (args.source is None) == (args.random is None):
        raise SystemExit("outpaint export: give either SRC or --random tiny|full (not both)")
    export_model(args.source, args.out, random=args.random, seed=args.seed,
                 unet_in_channels=9 if args.inpainting else 4, config=args.config, feature_cache=args.feature_cache)
    print(f"exported to {args.out}")
    return 0


def add_request_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per API field (api.md); defaults and ranges come from engine/request.py."""
    from outpaint.engine.canvas import INFILL_MODES
    from outpaint.engine.request import FIELDS
    from outpaint.engine.schedulers import SCHEDULERS

    p.add_argument("--prompt", required=True, help="what to render in the new area")
    p.add_argument("--negative-prompt", default="", help="what to steer away from (default: none)")
    p.add_argument("--scheduler", default="DDIM", choices=tuple(SCHEDULERS), metavar="NAME",
                   help=f"one of: {', '.join(SCHEDULERS)} (default DDIM; docs/schedulers.md)")
    flags = {
        "num_inference_steps": "--steps", "img_width": "--width", "img_height": "--height", "scale": "--scale",
        "strength": "--strength", "offset_x": "--offset-x", "offset_y": "--offset-y",
        "guidance_scale": "--guidance", "mask_expand": "--mask-expand", "seed": "--seed",
    }
    for field, flag in flags.items():
        spec = FIELDS[field]
        p.add_argument(flag, dest=field, type=spec.kind, default=spec.default,
                       help=f"{field}: {spec.describe()} (default {spec.default})")
    p.add_argument("--infill", default=INFILL_MODES[0], choices=INFILL_MODES,
                   help=f"infill of the new area before encoding: {', '.join(INFILL_MODES)} "
                        f"(default {INFILL_MODES[0]})")


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="outpaint one image")
    p.add_argument("--model", type=Path, required=True, help="exported model folder")
    p.add_argument("--image", type=Path, required=True, help="source image (PNG, JPEG or WebP)")
    p.add_argument("--out", type=Path, required=True, help="output file (.jpg, .png, .webp)")
    p.add_argument("--backend", default=None, choices=tuple(BACKENDS), help=BACKEND_HELP)
    p.add_argument("--fast", action="store_true", help=FAST_HELP)
    add_request_arguments(p)
    p.set_defaults(func=_cmd_run)


def _request_from_args(args, schedulers):
    from outpaint.engine.request import FIELDS, OutpaintRequest

    fields = {name: getattr(args, name) for name in FIELDS}
    fields.update(prompt=args.prompt, negative_prompt=args.negative_prompt, scheduler=args.scheduler,
                  infill=args.infill)
    return OutpaintRequest.from_fields(fields, schedulers=schedulers)


def _cmd_run(args) -> int:
    from outpaint.engine.canvas import decode_image
    from outpaint.engine.cpu_features import resolve_backend
    from outpaint.engine.fast_path import EXACT, FastPathOptions
    from outpaint.engine.pipeline import OutpaintPipeline
    from outpaint.engine.schedulers import SCHEDULERS
    from outpaint.run_request import check_output_path, run_with_progress, save_image

    # Everything the user can get wrong is checked before the model loads (seconds to minutes).
    if not args.image.is_file():
        raise SystemExit(f"outpaint run: --image {args.image} does not exist")
    check_output_path(args.out)
    request = _request_from_args(args, tuple(SCHEDULERS))
    source = decode_image(args.image.read_bytes())
    backend, reason = resolve_backend(args.backend, args.fast)
    if reason:
        print(f"--fast: {reason}", file=sys.stderr)
    pipeline = OutpaintPipeline.load(args.model, backend, options=FastPathOptions() if args.fast else EXACT)
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
    for add in (_add_export, _add_run, _add_demo, _add_serve, _add_serve_ray, _add_keys, _add_bench, add_build_engines,
                add_info, add_train):
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
