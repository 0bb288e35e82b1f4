"""`outpaint train`: the small model of SD 1.5's architecture, on procedural scenes (docs/training.md)."""

from __future__ import annotations

import json
from pathlib import Path

from .config import Recipe


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train the small SD-1.5-architecture model on procedural scenes (~2 h on 2 cores)")
    p.add_argument("--out", type=Path, help="diffusers folder to write (default weights/scenes-128; with "
                   "--inpainting weights/scenes-inpaint)")
    p.add_argument("--work", type=Path, default=Path("out/train"),
                   help="checkpoints and the latent cache; rerunning resumes from them")
    p.add_argument("--record", type=Path, default=Path("docs/training"), help="loss curves, figures, training.json")
    p.add_argument("--vae-steps", type=int, help="fewer VAE steps than the recipe (smoke runs)")
    p.add_argument("--unet-steps", type=int, help="fewer UNet steps than the recipe (smoke runs)")
    p.add_argument("--cache-images", type=int, help="fewer cached latents than the recipe (smoke runs)")
    p.add_argument("--inpainting", action="store_true",
                   help="instead: fine-tune the 9-channel inpainting UNet from --base (docs/training.md, "
                        "\"The inpainting model\"); --out defaults to weights/scenes-inpaint")
    p.add_argument("--base", type=Path, default=Path("weights/scenes"), help="with --inpainting: the trained model")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from .run import quick_recipe, train

    if args.inpainting:
        return _train_inpainting(args)

    recipe = Recipe()
    if args.vae_steps or args.unet_steps or args.cache_images:
        recipe = quick_recipe(args.vae_steps or recipe.vae.steps, args.unet_steps or recipe.unet.steps,
                              args.cache_images or recipe.unet.cache_images)
    summary = train(args.out or Path("weights/scenes-128"), args.work, args.record, recipe)
    print(json.dumps({k: summary[k] for k in ("scaling_factor", "vae_heldout_psnr_db", "model_bytes")}))
    print(f"wrote {args.out or 'weights/scenes-128'} and {args.record}")
    return 0


def _train_inpainting(args) -> int:
    from dataclasses import replace

    from .config import InpaintRecipe
    from .inpaint import train_inpainting_model

    recipe = InpaintRecipe()
    if args.unet_steps:
        recipe = replace(recipe, steps=args.unet_steps, warmup=min(recipe.warmup, args.unet_steps))
    if args.cache_images:
        recipe = replace(recipe, cache_images=args.cache_images)
    out = args.out or Path("weights/scenes-inpaint")
    summary = train_inpainting_model(out, args.base, args.work, args.record, recipe)
    print(json.dumps({k: summary[k] for k in ("final_loss_mean_last_200", "unet_bytes", "seconds_this_process")}))
    print(f"wrote {out} and {args.record}")
    return 0
