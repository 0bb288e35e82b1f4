"""Which int8 recipe keeps the UNet's output closest to fp32: an ablation on held-out UNet inputs.

    python -m outpaint.benchmarks.int8_recipes --model /work/models/scenes-qh \
        --image scene-11.png --image scene-222.png --image scene-3333.png \
        --prompt "..." --prompt "..." --prompt "..." --out benchmarks/int8-recipes.json

Each recipe quantizes the deep and shallow UNet graphs from the same calibration feeds (the fast path's
own UNet inputs over outpaints of `--image` with `--prompt`, as `outpaint quantize` does) and is scored
on other feeds: outpaints of the built-in synthetic image with two prompts of other subjects. Both graphs
are compiled in fp32, so only the quantization differs. Scores per graph: the mean and worst PSNR of the
output over the held-out feeds (peak: twice the fp32 output's max |value|), and the mean max |error| as a
share of that max. Nothing is written into the model folder.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from outpaint.core.graphs import FEATURE_CACHE_GRAPHS
from outpaint.core.manifest import Manifest
from outpaint.export.quantize import (
    CALIBRATION_PROMPTS,
    FLOAT_LAYERS,
    Calibration,
    capture_feeds,
    output_error,
    quantize_openvino,
)

HELD_OUT_PROMPTS = ("a red barn in a snowy field at dusk", "a beach with palm trees, turquoise sea")


@dataclass(frozen=True)
class Recipe:
    mode: str
    keep_float: tuple[str, ...]
    smooth_quant: bool = True


RECIPES = {
    "every-layer": Recipe("full", ()),
    "every-layer-no-smoothquant": Recipe("full", (), smooth_quant=False),
    "conv_in-float": Recipe("full", ("/conv_in/",)),
    "conv_out-float": Recipe("full", ("/conv_out/",)),
    "time-embedding-float": Recipe("full", ("/time_embedding/", "/time_emb_proj/")),
    "edges-float": Recipe("full", FLOAT_LAYERS),  # `outpaint quantize`'s default
    "hybrid": Recipe("hybrid", FLOAT_LAYERS),  # `outpaint quantize --mode hybrid`
}


def score(reference: list[np.ndarray], quantized: list[np.ndarray]) -> dict[str, float]:
    """`outpaint quantize`'s parity measure (export/quantize.py `output_error`), over every held-out feed."""
    errors = [output_error(expected, actual) for expected, actual in zip(reference, quantized, strict=True)]
    psnrs = [error["psnr_db"] for error in errors]
    return {"psnr_db_mean": round(float(np.mean(psnrs)), 2), "psnr_db_worst": round(float(np.min(psnrs)), 2),
            "max_rel_error_mean": round(float(np.mean([error["max_rel_error"] for error in errors])), 4)}


def run(model: Path, calibration: Calibration, recipes: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    import openvino as ov

    graphs = FEATURE_CACHE_GRAPHS
    calibrate = capture_feeds(model, graphs, calibration)
    held_out = capture_feeds(model, graphs, Calibration(steps=calibration.steps, prompts=HELD_OUT_PROMPTS))
    manifest = Manifest.load(model)
    core = ov.Core()
    fp32 = {"INFERENCE_PRECISION_HINT": "f32"}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for graph in graphs:
        path = str(model / manifest.graphs[graph].file)
        plain = core.compile_model(core.read_model(path), "CPU", fp32)
        reference = [np.asarray(plain(dict(feeds))[0]) for feeds in held_out[graph]]
        del plain
        for name in recipes:
            recipe = RECIPES[name]
            started = time.perf_counter()
            quantized = quantize_openvino(core.read_model(path), calibrate[graph], recipe.mode, recipe.keep_float,
                                          recipe.smooth_quant)
            compiled = core.compile_model(quantized, "CPU", fp32)
            outputs = [np.asarray(compiled(dict(feeds))[0]) for feeds in held_out[graph]]
            row = {**score(reference, outputs), "seconds": round(time.perf_counter() - started, 1)}
            results.setdefault(name, {})[graph] = row
            print(graph, name, json.dumps(row), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m outpaint.benchmarks.int8_recipes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model folder `outpaint export` wrote")
    parser.add_argument("--image", type=Path, action="append", default=[], help="a calibration source (repeatable)")
    parser.add_argument("--prompt", action="append", default=[], help="a calibration prompt (repeatable)")
    parser.add_argument("--steps", type=int, default=12, help="DDIM steps of each outpaint (default 12)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--out", type=Path, help="write the report to this JSON file")
    args = parser.parse_args(argv)
    recipes = args.recipes.split(",")
    unknown = [name for name in recipes if name not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {', '.join(unknown)}: one of {', '.join(RECIPES)}")
    calibration = Calibration(steps=args.steps, prompts=tuple(args.prompt) or CALIBRATION_PROMPTS,
                              images=tuple(args.image))
    report = {"model": str(args.model), "calibration_images": [str(p) for p in args.image],
              "held_out_prompts": list(HELD_OUT_PROMPTS), "results": run(args.model, calibration, recipes)}
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
