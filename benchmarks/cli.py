"""`outpaint bench`: the command-line face of benchmarks/run.py."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from outpaint.engine.backends.registry import BACKENDS

from .config import ON_REQUEST, SYSTEMS, WHOLE_DEFAULT, BenchConfig, FastSettings
from .gpu_check.cli import add_gpu_check_args, cmd_gpu_check
from .quality.cli import add_quality_args, cmd_quality

TINY_DEFAULTS = {"unet_canvases": ("256x256", "384x256"), "outpaint_canvas": "256x256"}
# Only the full-size run writes the committed results; a smoke run's timings mean nothing.
DEFAULT_OUT = {"full": Path("benchmarks/results.json"), "tiny": Path("out/bench-tiny/results.json")}


def _margin(text: str) -> int | None:
    if text.lower() in ("off", "none"):
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 'off' or a number of latent cells >= 0, got {value}")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.split(",") if name)


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="benchmark our backends against diffusers and OpenVINO (random weights)",
                       description="Per-stage and whole-outpaint timings after warm-up; writes a JSON file.")
    p.add_argument("--size", choices=("tiny", "full"), default="full",
                   help="tiny: smoke run in seconds; full: SD 1.5-size random weights, real timings (~35 min)")
    p.add_argument("--model", type=Path, help="random-weight model folder (exported there if missing); "
                   "default ~/.cache/outpaint/random-SIZE")
    p.add_argument("--out", type=Path, help=f"JSON results file (default {DEFAULT_OUT['full']}; "
                   f"with --size tiny {DEFAULT_OUT['tiny']}, so a smoke run never overwrites the committed one)")
    p.add_argument("--systems", type=_names, default=SYSTEMS,
                   help=f"comma-separated, of {','.join(SYSTEMS)} (the default: all) and {','.join(ON_REQUEST)}")
    p.add_argument("--whole-systems", type=_names, default=WHOLE_DEFAULT,
                   help="systems that also run the whole outpaint (the most expensive row)")
    p.add_argument("--large-systems", type=_names, default=SYSTEMS,
                   help="systems that also run the UNet at canvases of 1024x1024 or more (default all)")
    p.add_argument("--unet-canvases", type=_names, help="comma-separated WxH canvases for the UNet step "
                   "(default 512x512,768x512,1024x1024; tiny 256x256,384x256)")
    p.add_argument("--outpaint-canvas", help="WxH canvas of the whole outpaint, source on its left half "
                   "(default 512x512; tiny 256x256)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps of the whole outpaint")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before each timed stage")
    p.add_argument("--runs", type=int, default=3, help="timed calls per stage")
    p.add_argument("--runs-large", type=int, default=2, help="timed UNet calls at canvases of 1024x1024 or more")
    p.add_argument("--whole-runs", type=int, default=1, help="timed whole outpaints per system")
    p.add_argument("--fast-backend", choices=tuple(BACKENDS),
                   help="backend of outpaint-fast (default: what `--fast` picks on this CPU, `outpaint info`)")
    p.add_argument("--fast-decode-margin", type=_margin, default=FastSettings.decode_margin,
                   help="latent cells of VAE-decoder context around the mask, or 'off' (decode everything)")
    p.add_argument("--fast-window-margin", type=_margin, default=FastSettings.window_margin,
                   help="latent cells of UNet context around the mask, or 'off' (whole canvas)")
    p.add_argument("--fast-unguided-tail", type=int, default=FastSettings.unguided_tail_steps,
                   help="final steps of outpaint-fast without classifier-free guidance")
    p.add_argument("--fast-feature-cache", type=int, default=FastSettings.feature_cache_interval,
                   help="outpaint-fast runs the whole UNet every k-th call and its shallow path between; 1 = off")
    p.add_argument("--fast-decode-tile", type=_margin, default=FastSettings.decode_tile,
                   help="latent cells of outpaint-fast's VAE-decode tiles on larger canvases, or 'off' (one piece)")
    p.add_argument("--fast-encode-tile", type=_margin, default=FastSettings.encode_tile,
                   help="latent cells of outpaint-fast's VAE-encode tiles on larger canvases, or 'off' (one piece)")
    p.add_argument("--wait-load", type=float, default=None,
                   help="before starting, wait until the 1-minute load average is below this")
    p.add_argument("--wait-max-s", type=float, default=600.0, help="longest wait for --wait-load, seconds")
    add_quality_args(p)
    add_gpu_check_args(p)
    p.set_defaults(func=cmd_bench)


def config_from_args(args) -> BenchConfig:
    from .run import default_model_dir

    tiny = args.size == "tiny"
    unet_canvases = args.unet_canvases or (TINY_DEFAULTS["unet_canvases"] if tiny else
                                           ("512x512", "768x512", "1024x1024"))
    outpaint_canvas = args.outpaint_canvas or (TINY_DEFAULTS["outpaint_canvas"] if tiny else "512x512")
    try:
        return BenchConfig(
            size=args.size, model_dir=str(args.model or default_model_dir(args.size)), systems=args.systems,
            whole_systems=args.whole_systems, large_systems=args.large_systems, unet_canvases=unet_canvases,
            outpaint_canvas=outpaint_canvas,
            steps=args.steps, warmup=args.warmup, runs=args.runs, runs_large=args.runs_large,
            whole_runs=args.whole_runs,
            fast=FastSettings(backend=args.fast_backend, decode_margin=args.fast_decode_margin,
                              window_margin=args.fast_window_margin, unguided_tail_steps=args.fast_unguided_tail,
                              feature_cache_interval=args.fast_feature_cache, decode_tile=args.fast_decode_tile,
                              encode_tile=args.fast_encode_tile),
        )
    except ValueError as exc:
        raise SystemExit(f"outpaint bench: {exc}") from None


def results_path(args) -> Path:
    return args.out or DEFAULT_OUT[args.size]


def cmd_bench(args) -> int:
    from . import report
    from .run import run_benchmark, wait_for_quiet

    command = "outpaint " + shlex.join(sys.argv[1:]) if sys.argv[0].endswith("outpaint") else shlex.join(sys.argv)
    if args.gpu_check:
        return cmd_gpu_check(args, command)
    if args.quality:
        return cmd_quality(args, command)
    config = config_from_args(args)
    out = results_path(args)
    if args.wait_load is not None:
        wait_for_quiet(args.wait_load, args.wait_max_s)
    results = run_benchmark(config, out, command)
    print(report.summary(results))
    print(f"\nwrote {out}")
    return 1 if results["errors"] else 0
