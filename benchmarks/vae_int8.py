"""The VAE's int8 twins against its fp32 graphs inside the int8 fast path's whole request, alternating.

    outpaint quantize /work/models/full --graphs vae_encoder,vae_decoder   # once (export/quantize.py)
    ONEDNN_MAX_CPU_ISA=AVX2_VNNI python -m outpaint.benchmarks.vae_int8 --model /work/models/full \
        --out benchmarks/vae-int8.json

One pipeline as `outpaint bench` loads `outpaint-fast-int8` (int8 UNet twins, the speed benchmark's
512x512 request, colour match and coherence pass off); between requests its VAE graphs are swapped
between the int8 twins and the fp32 graphs, so both halves of the comparison see the same process and,
run after run, the same drift of a shared VM's speed. The request's own stage timings are recorded
(`OutpaintResult.timings`). `ONEDNN_MAX_CPU_ISA`, set from outside, caps OpenVINO's kernels to
approximate a CPU class this machine is not; the report records it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

STAGES = ("vae_encode", "denoise", "vae_decode")


def compare(model: Path, runs: int) -> dict[str, Any]:
    """Per request: which VAE ran, the total and the stages' seconds; `runs` requests of each, alternating."""
    from outpaint.benchmarks.config import BenchConfig
    from outpaint.benchmarks.systems_ours import _load
    from outpaint.benchmarks.workload import outpaint_request, source_image
    from outpaint.core.errors import ModelError
    from outpaint.core.graphs import VAE_GRAPHS, int8_key
    from outpaint.core.manifest import Manifest
    from outpaint.engine.backends.registry import load_graphs

    manifest = Manifest.load(model)
    lacking = [name for name in VAE_GRAPHS if int8_key(name) not in manifest.graphs]
    if lacking:
        raise ModelError(f"{model} has no int8 twin of {', '.join(lacking)}: "
                         f"outpaint quantize {model} --graphs vae_encoder,vae_decoder")
    config = BenchConfig(model_dir=str(model))
    pipe = _load("outpaint-fast-int8", config)
    vae = {"int8": {name: pipe.graphs[name] for name in VAE_GRAPHS},
           "fp32": load_graphs("openvino-fp32", model, manifest, VAE_GRAPHS)}
    source, request = source_image(config), outpaint_request(config)
    pipe.graphs.update(vae["fp32"])
    pipe(source, request)  # warm-up: the UNet's compilation and first allocations, counted for neither
    rows = []
    for run in range(2 * runs):
        which = ("int8", "fp32")[run % 2]
        pipe.graphs.update(vae[which])
        started = time.perf_counter()
        result = pipe(source, request)
        total = time.perf_counter() - started
        rows.append({"run": run, "vae": which, "total_s": round(total, 2),
                     **{f"{stage}_s": round(result.timings[stage], 2) for stage in STAGES}})
        print(rows[-1], flush=True)
    medians = {which: {key: statistics.median(row[key] for row in rows if row["vae"] == which)
                       for key in ("total_s", *(f"{stage}_s" for stage in STAGES))} for which in vae}
    return {"rows": rows, "median": medians,
            "int8_over_fp32": {key: round(medians["int8"][key] / medians["fp32"][key], 3) for key in medians["int8"]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a full-size model folder with the VAE's int8 twins")
    parser.add_argument("--runs", type=int, default=2, help="requests with each VAE (default 2)")
    parser.add_argument("--out", type=Path, help="the JSON report")
    args = parser.parse_args(argv)
    from outpaint.benchmarks.machine import describe_machine

    report = {"command": "python -m outpaint.benchmarks.vae_int8 " + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": describe_machine(), "isa_cap": os.environ.get("ONEDNN_MAX_CPU_ISA"),
              **compare(args.model, args.runs)}
    print(json.dumps(report["int8_over_fp32"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
