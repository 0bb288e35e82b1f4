"""The options of `outpaint bench --quality` (docs/quality.md)."""

from __future__ import annotations

import json
from pathlib import Path


def add_quality_args(p) -> None:
    from .cases import CASES
    from .run import DEFAULT_INPAINT_MODEL, DEFAULT_INPAINT_WEIGHTS, DEFAULT_MODEL, DEFAULT_WEIGHTS, SYSTEMS

    g = p.add_argument_group("quality (--quality): outpainting of held-out scenes against their ground truth")
    g.add_argument("--quality", action="store_true",
                   help="run the quality benchmark on the trained model instead of the speed benchmark")
    g.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="the trained diffusers folder")
    g.add_argument("--quality-model", type=Path, default=DEFAULT_MODEL,
                   help="its exported graphs (exported there when missing or stale)")
    g.add_argument("--inpaint-weights", type=Path, default=DEFAULT_INPAINT_WEIGHTS,
                   help="the 9-channel inpainting model's folder (the outpaint-inpaint9 systems)")
    g.add_argument("--inpaint-model", type=Path, default=DEFAULT_INPAINT_MODEL,
                   help="its exported graphs (exported there when missing or stale)")
    g.add_argument("--quality-systems", default=",".join(SYSTEMS), help=f"comma-separated, of {','.join(SYSTEMS)}")
    g.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated case names")
    g.add_argument("--scenes", type=int, help="at most this many held-out scenes per case (default: each case's)")
    g.add_argument("--quality-out", type=Path, default=Path("benchmarks/quality.json"),
                   help="JSON results; the markdown tables go beside it (same name, .md)")
    g.add_argument("--contact-sheet", type=Path, default=Path("docs/images/quality-contact-sheet.jpg"))


def cmd_quality(args, command: str) -> int:
    from .cases import case_by_name
    from .run import QualityConfig, UnknownSystem, run_quality

    try:
        cases = [case_by_name(name) for name in args.cases.split(",") if name]
    except ValueError as exc:
        raise SystemExit(f"outpaint bench --quality: {exc}") from None
    config = QualityConfig(
        weights=args.weights, model=args.quality_model, inpaint_weights=args.inpaint_weights,
        inpaint_model=args.inpaint_model,
        systems=tuple(n for n in args.quality_systems.split(",") if n), cases=cases, scenes=args.scenes,
        out_json=args.quality_out, out_markdown=args.quality_out.with_suffix(".md"),
        out_sheet=args.contact_sheet, command=command,
    )
    try:
        result = run_quality(config)
    except UnknownSystem as exc:
        raise SystemExit(f"outpaint bench --quality: {exc}") from None
    print(json.dumps({name: s["total"] for name, s in result["summary"].items()}, indent=1))
    print(f"wrote {config.out_json}, {config.out_markdown}, {config.out_sheet}")
    return 0
