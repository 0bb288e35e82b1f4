"""int8 against the precision it would replace, per UNet call, in one process.

    outpaint quantize /work/models/full         # once: the int8 twins (export/quantize.py)
    python -m outpaint.benchmarks.int8_probe --model /work/models/full --out benchmarks/int8-probe.json

The fast path's deep and shallow UNet calls at the speed benchmark's window (512x512 canvas, source on
the left half: a 64x40 latent window, batch 2), run by OpenVINO from the plain graphs and from their
int8 twins, alternating call by call so that both see the same machine: on a shared VM the speed of
one process drifts by tens of percent within minutes, more than the difference measured. Each
precision the CPU runs natively is compared: fp32 (what a CPU without native bf16 runs) and bf16.
`ONEDNN_MAX_CPU_ISA` (e.g. AVX512_CORE_VNNI, AVX2), set from outside, caps the instruction set
OpenVINO's kernels use, to approximate a CPU class this machine is not; the report records it.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

WINDOW = (2, 4, 64, 40)  # the speed benchmark's guided UNet window (fast_cost.full_size_window_columns)


def _feeds(hidden: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"sample": rng.standard_normal(WINDOW, dtype=np.float32), "timestep": np.array([501.0], np.float32),
            "encoder_hidden_states": rng.standard_normal((WINDOW[0], 77, hidden), dtype=np.float32)}


def compare(model: Path, precision: str, runs: int) -> dict[str, object]:
    """Median seconds of each call, plain graphs against int8 twins, at `precision` elsewhere."""
    from outpaint.core.graphs import UNET_DEEP, UNET_SHALLOW, int8_key
    from outpaint.core.manifest import Manifest
    from outpaint.engine.backends.openvino import OvOptions, load_openvino_graphs

    manifest = Manifest.load(model)
    names = (UNET_DEEP, UNET_SHALLOW)
    variants = {"plain": {g: manifest.graphs[g].file for g in names},
                "int8": {g: manifest.graphs[int8_key(g)].file for g in names}}
    graphs = {k: load_openvino_graphs(model, files, OvOptions(precision=precision)) for k, files in variants.items()}
    feeds = _feeds(manifest.text_hidden_size)
    seconds: dict[str, dict[str, list[float]]] = {k: {g: [] for g in names} for k in graphs}
    outputs: dict[str, np.ndarray] = {}
    for run in range(runs + 1):  # the first round compiles and warms up
        for variant, loaded in graphs.items():
            started = time.perf_counter()
            deep = loaded[UNET_DEEP].run(feeds)
            middle = time.perf_counter()
            loaded[UNET_SHALLOW].run({**feeds, "deep_feature": deep["deep_feature"]})
            if run:
                seconds[variant][UNET_DEEP].append(middle - started)
                seconds[variant][UNET_SHALLOW].append(time.perf_counter() - middle)
            outputs[variant] = deep["out_sample"]
    medians = {k: {g: round(float(np.median(v)), 3) for g, v in calls.items()} for k, calls in seconds.items()}
    error = float(np.abs(outputs["int8"] - outputs["plain"]).max() / np.abs(outputs["plain"]).max())
    return {"precision": precision, "median_s": medians,
            "int8_time_ratio": {g: round(medians["int8"][g] / medians["plain"][g], 3) for g in names},
            "deep_out_max_rel_error_vs_plain": round(error, 4), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m outpaint.benchmarks.int8_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a model folder with int8 twins")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated; bf16 only where native")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, help="append the report to this JSON file")
    args = parser.parse_args(argv)
    from outpaint.engine.cpu_features import cpu_features

    features = cpu_features()
    report = {"cpu": features.model, "capabilities": features.capabilities(),
              "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "window": list(WINDOW), "results": []}
    for precision in args.precisions.split(","):
        if precision == "bf16" and not features.native_bf16:
            continue
        result = compare(args.model, precision, args.runs)
        report["results"].append(result)
        print(json.dumps(result), flush=True)
    if args.out:
        previous = json.loads(args.out.read_text()) if args.out.is_file() else []
        args.out.write_text(json.dumps([*previous, report], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
