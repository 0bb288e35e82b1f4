"""`outpaint scene`: render one procedural scene to a file, and print its caption (a source for the
trained model: `outpaint run/zoom/pan --image` with `--prompt` the caption)."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from .scene import HELD_OUT_START, render, scene_from_seed
from .view import View


def add_scene(sub) -> None:
    p = sub.add_parser("scene", help="render a procedural scene (the trained model's world) and print its caption")
    p.add_argument("--seed", type=int, default=HELD_OUT_START,
                   help=f"scene seed; from {HELD_OUT_START} on they are held out of training "
                        f"(default {HELD_OUT_START})")
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--out", type=Path, required=True, help="image file (.png, .jpg, .webp)")
    p.set_defaults(func=_cmd_scene)


def _cmd_scene(args: argparse.Namespace) -> int:
    if args.seed < 0 or args.width < 1 or args.height < 1:
        raise SystemExit("outpaint scene: --seed must be >= 0 and --width/--height at least 1")
    scene = scene_from_seed(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(render(scene, args.width, args.height, View.standard(args.width, args.height))).save(args.out)
    print(scene.caption())
    return 0
