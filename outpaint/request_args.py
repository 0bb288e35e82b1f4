"""The command-line flags of one request (one per API field) and the engine options several commands share."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from outpaint.engine.canvas import SourceImage
    from outpaint.engine.pipeline import OutpaintPipeline
    from outpaint.engine.request import OutpaintRequest

FAST_HELP = ("CPU fast path: UNet window around the new area, deep UNet features reused across steps; "
             "approximate inside the new area (docs/benchmarks.md). Without --backend it runs the fastest "
             "precision this CPU runs natively (bf16 on openvino-bf16 where the CPU has AVX-512 BF16 or AMX, "
             "else fp32; `outpaint info` shows the choice) and prints which")
BACKEND_HELP = ("graph runtime (default ort-cpu; with --fast the fastest this CPU runs natively, see "
                "`outpaint info`; GPU ones: docs/gpu.md)")


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


def request_from_args(args: argparse.Namespace, schedulers: tuple[str, ...]) -> OutpaintRequest:
    from outpaint.engine.request import FIELDS, OutpaintRequest

    fields = {name: getattr(args, name) for name in FIELDS}
    fields.update(prompt=args.prompt, negative_prompt=args.negative_prompt, scheduler=args.scheduler,
                  infill=args.infill)
    return OutpaintRequest.from_fields(fields, schedulers=schedulers)


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --backend, --fast, colour match, the large-canvas and coherence options: how the pipeline is loaded."""
    from outpaint.engine import coherence, colour_match, large_canvas
    from outpaint.engine.backends.registry import BACKENDS

    p.add_argument("--model", type=Path, required=True, help="exported model folder")
    p.add_argument("--backend", default=None, choices=tuple(BACKENDS), help=BACKEND_HELP)
    p.add_argument("--fast", action="store_true", help=FAST_HELP)
    colour_match.add_argument(p)
    large_canvas.add_arguments(p)
    coherence.add_arguments(p)


def pipeline_from_args(args: argparse.Namespace) -> OutpaintPipeline:
    """The pipeline add_engine_arguments' flags describe; says on stderr which backend --fast picked."""
    from outpaint.engine import coherence, large_canvas
    from outpaint.engine.cpu_features import resolve_backend
    from outpaint.engine.fast_path import EXACT, FastPathOptions
    from outpaint.engine.pipeline import OutpaintPipeline

    large = large_canvas.from_arguments(args)
    cohere = coherence.from_arguments(args)
    backend, reason = resolve_backend(args.backend, args.fast, args.model)
    if reason:
        print(f"--fast: {reason}", file=sys.stderr)
    return OutpaintPipeline.load(args.model, backend, options=FastPathOptions() if args.fast else EXACT,
                                 colour_match=args.colour_match, large_canvas=large,
                                 coherence=cohere)



def prepare(
    args: argparse.Namespace, command: str, check_output: Callable[[Path], object]
) -> tuple[OutpaintRequest, SourceImage, OutpaintPipeline]:
    """What run, zoom and pan do first: the request, the source and the pipeline. Everything the user
    can get wrong (the image, the output path, a field) is checked before the model loads (seconds to
    minutes)."""
    from outpaint.engine.canvas import decode_image
    from outpaint.engine.schedulers import SCHEDULERS

    if not args.image.is_file():
        raise SystemExit(f"outpaint {command}: --image {args.image} does not exist")
    check_output(args.out)
    request = request_from_args(args, tuple(SCHEDULERS))
    source = decode_image(args.image.read_bytes())
    return request, source, pipeline_from_args(args)
