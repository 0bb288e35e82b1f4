"""Lever probe: the fast path's whole outpaint at several settings, timed and compared with our fp32 image.

    python -m outpaint.benchmarks.lever_probe --model /work/models/full 7:1 7:2 7:3 7:5 off:3

Each setting is WINDOW_MARGIN:FEATURE_CACHE_INTERVAL[:UNGUIDED_TAIL_STEPS] (`off` = no UNet window;
the tail defaults to 2, as in the probes of docs/benchmarks.md; FastPathOptions' default is 0). The request is the
benchmark's (`outpaint bench`'s whole outpaint); the reference is OutpaintPipeline on ort-cpu, computed
once and kept in --workdir. Each setting runs once to compile its shapes, then once timed. One JSON
line per setting: total seconds, per-step seconds, stage timings, PSNR over the regenerated area, and
the process's peak RSS so far (run one setting per process to read it per setting).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from .config import BenchConfig
from .workload import outpaint_request, psnr_db, source_image


def _setting(text: str) -> tuple[int | None, int, int]:
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError(text)
        window, interval, tail = parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else 2
        return (None if window == "off" else int(window)), interval, tail
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected WINDOW_MARGIN:INTERVAL[:TAIL], e.g. 7:3, off:3 or 7:3:0") from None


def main(argv: list[str] | None = None) -> int:
    from outpaint.engine.cpu_features import fast_backend
    from outpaint.engine.fast_path import FastPathOptions
    from outpaint.engine.pipeline import OutpaintPipeline

    parser = argparse.ArgumentParser(prog="python -m outpaint.benchmarks.lever_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", type=_setting, help="WINDOW_MARGIN:INTERVAL, e.g. 7:3 off:4")
    parser.add_argument("--model", type=Path, required=True, help="the exported full random model")
    parser.add_argument("--backend", default=None, help="default: what `outpaint run --fast` picks on this CPU")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/outpaint-lever-probe"))
    args = parser.parse_args(argv)

    config = BenchConfig(model_dir=str(args.model))
    source, request = source_image(config), outpaint_request(config)
    args.workdir.mkdir(parents=True, exist_ok=True)
    reference_file, mask_file = args.workdir / "reference.npy", args.workdir / "mask.npy"
    if not reference_file.exists():
        reference = OutpaintPipeline.load(args.model, "ort-cpu")(source, request)
        np.save(reference_file, reference.image)
        np.save(mask_file, reference.canvas.mask > 0)
    reference_image, mask = np.load(reference_file), np.load(mask_file)
    for window, interval, tail in args.settings:
        options = FastPathOptions(window_margin=window, feature_cache_interval=interval, unguided_tail_steps=tail)
        pipe = OutpaintPipeline.load(args.model, args.backend or fast_backend().backend, options=options)
        pipe(source, request)  # compiles every shape the timed run uses
        started = time.perf_counter()
        result = pipe(source, request)
        print(json.dumps({
            "window_margin": window, "feature_cache_interval": interval, "unguided_tail_steps": tail,
            "total_s": round(time.perf_counter() - started, 1),
            "step_s": [round(s, 2) for s in result.step_seconds],
            "timings": {k: round(v, 2) for k, v in result.timings.items()},
            "psnr_db_regenerated": psnr_db(result.image, reference_image, mask),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        }), flush=True)
        del pipe  # its compiled models: one setting's weights in memory at a time
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
