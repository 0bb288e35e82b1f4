"""What the tiled VAE decode or encode costs in time: the fast pipeline's decode (`--stage decode`)
or encode (`--stage encode`) at each canvas, whole and in tiles, alternating in one process after a
warm-up of each (docs/benchmarks.md, "Memory"). Named decode_tiles before the encode was tiled too.

    python -m outpaint.benchmarks.vae_tiles --model /work/models/full --out benchmarks/decode-tiles.json
    python -m outpaint.benchmarks.vae_tiles --stage encode --model /work/models/full --out benchmarks/encode-tiles.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from .config import FastSettings, parse_canvas

# --stage -> the FastPathOptions field it tiles, and the pipeline method it times
STAGES = {"decode": ("decode_tile", "decode_latents"), "encode": ("encode_tile", "encode_image")}


def measure(model: Path, canvases: list[tuple[int, int]], tile: int, runs: int, stage: str = "decode") -> list[dict]:
    import numpy as np

    from outpaint.engine.cpu_features import fast_backend
    from outpaint.engine.fast_path import FastPathOptions
    from outpaint.engine.pipeline import OutpaintPipeline

    field, method = STAGES[stage]
    whole = OutpaintPipeline.load(model, fast_backend().backend,
                                  options=dataclasses.replace(FastPathOptions(), **{field: None}))
    tiled_pipe = copy.copy(whole)  # the same loaded graphs; only the tile differs
    tiled_pipe.options = dataclasses.replace(whole.options, **{field: tile})
    rows = []
    for width, height in canvases:
        rng = np.random.default_rng(0)
        if stage == "decode":
            data = rng.standard_normal((1, 4, height // 8, width // 8), dtype=np.float32)  # latents
        else:
            data = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)  # an image
        seconds: dict[str, list[float]] = {"whole": [], "tiled": []}
        for pipe in (whole, tiled_pipe):  # warm-up: the first call at a shape builds its kernels
            getattr(pipe, method)(data)
        for _ in range(runs):
            for name, pipe in (("whole", whole), ("tiled", tiled_pipe)):
                started = time.perf_counter()
                getattr(pipe, method)(data)
                seconds[name].append(time.perf_counter() - started)
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        rows.append({"stage": stage, "canvas": f"{width}x{height}", "tile_cells": tile, "runs": runs,
                     "whole_s": round(medians["whole"], 3), "tiled_s": round(medians["tiled"], 3),
                     "tiled_over_whole": round(medians["tiled"] / medians["whole"], 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m outpaint.benchmarks.vae_tiles", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the exported full random model")
    parser.add_argument("--canvases", type=parse_canvas, nargs="+",
                        default=[parse_canvas(c) for c in ("768x512", "1024x1024")])
    parser.add_argument("--stage", choices=tuple(STAGES), default="decode", help="the VAE half to time")
    parser.add_argument("--tile", type=int, default=None,
                        help=f"latent cells (default: the fast path's, {FastSettings.decode_tile} for the decode, "
                             f"{FastSettings.encode_tile} for the encode)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each kind per canvas")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    from .machine import describe_machine

    tile = args.tile or getattr(FastSettings, STAGES[args.stage][0])
    rows = measure(args.model, args.canvases, tile, args.runs, args.stage)
    if args.out:
        report = {"command": "python -m outpaint.benchmarks.vae_tiles " + " ".join(argv or sys.argv[1:]),
                  "machine": describe_machine(), "rows": rows}
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
