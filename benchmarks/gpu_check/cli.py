"""`outpaint bench --gpu-check`: the options of the GPU check and the command that runs it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .settings import DIFFUSERS, OUR_GPU_BACKENDS

DEFAULT_OUT = Path("out/gpu-check.json")
CHOICES = (*OUR_GPU_BACKENDS, DIFFUSERS)


def _backends(text: str) -> tuple[str, ...]:
    names = tuple(n for n in text.split(",") if n)
    unknown = [n for n in names if n not in CHOICES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or 'nothing'} given; choose from {', '.join(CHOICES)}")
    return names


def _budget(text: str) -> float:
    value = float(text)
    if not 60 <= value <= 7200:
        raise argparse.ArgumentTypeError(f"must be 60..7200 seconds, got {value:g}")
    return value


def add_gpu_check_args(p: argparse.ArgumentParser) -> None:
    from .run import DEFAULT_BUDGET_S

    g = p.add_argument_group("GPU check (--gpu-check; docs/gpu.md, \"One GPU check\")")
    g.add_argument("--gpu-check", action="store_true",
                   help="on an NVIDIA GPU: run the gpu-marked tests, compare each GPU backend's image with the "
                        "CPU fp32 image, time the guided UNet step at 512x512 against diffusers fp16; one JSON "
                        f"report (--out, default {DEFAULT_OUT}); --model: the full-size random model (exported "
                        "there if missing; default ~/.cache/outpaint/random-full-gpu-check)")
    g.add_argument("--check-budget-s", type=_budget, default=DEFAULT_BUDGET_S,
                   help=f"the whole check's time limit, seconds (default {DEFAULT_BUDGET_S:.0f})")
    g.add_argument("--check-backends", type=_backends, default=CHOICES,
                   help=f"comma-separated, of {','.join(CHOICES)} (default all)")
    g.add_argument("--check-steps", type=int, default=10, help="DDIM steps of the compared request (default 10)")
    g.add_argument("--check-no-tests", dest="check_tests", action="store_false",
                   help="leave out the pytest -m gpu run")


def cmd_gpu_check(args, command: str) -> int:
    from .report import summary
    from .run import run_check
    from .settings import CheckSettings, default_model_dir

    if args.quality:
        raise SystemExit("outpaint bench: --gpu-check and --quality are separate runs; give one of them")
    if args.check_steps < 1:
        raise SystemExit(f"outpaint bench: --check-steps must be at least 1, got {args.check_steps}")
    settings = CheckSettings(model_dir=str(args.model or default_model_dir()), steps=args.check_steps)
    out = args.out or DEFAULT_OUT
    report = run_check(settings, out, command, budget_s=args.check_budget_s, run_tests=args.check_tests,
                       backends=args.check_backends)
    print(summary(report))
    print(f"\nwrote {out}")
    return 1 if report["problems"] else 0
