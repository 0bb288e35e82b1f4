"""`outpaint train`: the small model of SD 1.5's architecture, on procedural scenes (docs/training.md)."""

from __future__ import annotations

import json
from pathlib import Path

from .config import Recipe


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train the small SD-1.5-architecture model on procedural scenes (~2 h on 2 cores)")
    p.add_argument("--out", type=Path, default=Path("weights/scenes-128"), help="diffusers folder to write")
    p.add_argument("--work", type=Path, default=Path("out/train"),
                   help="checkpoints and the latent cache; rerunning resumes from them")
    p.add_argument("--record", type=Path, default=Path("docs/training"), help="loss curves, figures, training.json")
    p.add_argument("--vae-steps", type=int, help="fewer VAE steps than the recipe (smoke runs)")
    p.add_argument("--unet-steps", type=int, help="fewer UNet steps than the recipe (smoke runs)")
    p.add_argument("--cache-images", type=int, help="fewer cached latents than the recipe (smoke runs)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from .run import quick_recipe, train

    recipe = Recipe()
    if args.vae_steps or args.unet_steps or args.cache_images:
        recipe = quick_recipe(args.vae_steps or recipe.vae.steps, args.unet_steps or recipe.unet.steps,
                              args.cache_images or recipe.unet.cache_images)
    summary = train(args.out, args.work, args.record, recipe)
    print(json.dumps({k: summary[k] for k in ("scaling_factor", "vae_heldout_psnr_db", "model_bytes")}))
    print(f"wrote {args.out} and {args.record}")
    return 0
