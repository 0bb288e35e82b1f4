"""Memory of a server holding several canvases: the fast path's peak resident set, per shape mode.

    python -m outpaint.benchmarks.memory --model /work/models/full --out benchmarks/memory.json

A server keeps what it compiled for every canvas it has served. This runs, in one fresh process per
setting, what `outpaint serve --fast` runs for a request at each canvas in turn (the fast path on the
backend `--fast` picks here, the large-canvas strategy and colour match at their defaults) and reads the
process's memory after each: the peak (VmHWM), the resident set now (VmRSS) and its anonymous and
file-backed parts (a memory-mapped weight file counts as long as it is mapped), then the resident set at
rest (`idle_VmRSS`: after the heap's free pages go back, as the server's gate does once nothing runs,
core/heap.py). The step count does not change the memory: what does is which shapes were compiled, so
the requests use few steps (`--steps`). Each setting is an OpenVINO shape mode
(engine/backends/openvino.py): "static" compiles, and holds weights for, every input shape; "dynamic"
one model per batch size. `--decode-tile off` / `--encode-tile off` measure without the tiled VAE decode
/ encode. Each row also says which graph run held the highest resident set sampled in that request
(every 10 ms, per graph and input shape; "after" a run is the time until the next, its buffers held
until released): where the next lever must act.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .config import FastSettings, parse_canvas

MEMORY_KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")  # /proc/self/status, reported in GiB
DEFAULT_CANVASES = ("512x512", "768x512", "1024x1024")


def process_memory_gib() -> dict[str, float]:
    """This process's peak and current resident memory, GiB (Linux)."""
    values: dict[str, float] = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in MEMORY_KEYS:
                values[key] = round(int(rest.split()[0]) / 2**20, 3)  # kB
    return values


class GraphPeaks:
    """The highest resident set sampled while each graph ran, per graph and input shape (GiB).

    A thread samples VmRSS every `interval_s`; each graph's `run` is wrapped to mark when it runs. A
    sample is a lower bound of the true peak between samples (VmHWM is exact but says nothing of
    when): enough to say which run holds a peak of seconds-long activations."""

    def __init__(self, graphs: dict, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self.running: str | None = None
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        for name, graph in graphs.items():
            graph.run = self._wrap(name, graph.run)
        threading.Thread(target=self._sample, daemon=True).start()

    def _wrap(self, name: str, run: Callable) -> Callable:
        def wrapped(feeds):
            first = next(iter(feeds.values()))
            label = f"{name} {'x'.join(map(str, first.shape))}"
            self.running = label
            try:
                return run(feeds)
            finally:
                # Until the next run: its buffers are held until the pipeline releases them.
                self.running = f"after {label}"
        return wrapped

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            key = self.running or "before any graph run"
            self.peaks[key] = max(self.peaks.get(key, 0.0), process_memory_gib()["VmRSS"])

    def stop(self) -> None:
        self._stop.set()

    def take(self) -> dict[str, float]:
        """The peaks since the last take, highest first, and start afresh."""
        taken, self.peaks = self.peaks, {}
        return {k: round(v, 3) for k, v in sorted(taken.items(), key=lambda kv: -kv[1])}


def _tile(text: str) -> int | None:
    return None if text.lower() in ("off", "none") else int(text)


def _canvas(text: str) -> tuple[int, int]:
    try:
        return parse_canvas(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def measure(model: Path, canvases: list[tuple[int, int]], steps: int, backend: str | None,
            decode_tile: int | None, encode_tile: int | None) -> dict:
    """Runs in the measured process: load the fast pipeline, one request per canvas, memory after each."""
    import numpy as np

    from outpaint.core.heap import return_free_heap
    from outpaint.engine.canvas import SourceImage
    from outpaint.engine.cpu_features import fast_backend
    from outpaint.engine.fast_path import FastPathOptions
    from outpaint.engine.pipeline import OutpaintPipeline
    from outpaint.engine.request import OutpaintRequest

    from .workload import source_rgb

    chosen = backend or fast_backend().backend
    started = time.perf_counter()
    pipe = OutpaintPipeline.load(model, chosen,
                                 options=FastPathOptions(decode_tile=decode_tile, encode_tile=encode_tile))
    rows = [{"after": "load", "seconds": round(time.perf_counter() - started, 1), **process_memory_gib()}]
    peaks = GraphPeaks(pipe.graphs)
    for width, height in canvases:
        rgb = source_rgb(width, height)  # the left half of the canvas, as in `outpaint bench`
        source = SourceImage(rgb=rgb, known=np.ones(rgb.shape[:2], dtype=bool))
        request = OutpaintRequest(prompt="a photo of a street in italy", num_inference_steps=steps,
                                  img_width=width, img_height=height, seed=1)
        started = time.perf_counter()
        pipe(source, request)
        row = {"after": f"{width}x{height}", "seconds": round(time.perf_counter() - started, 1),
               **process_memory_gib(), "sampled_peaks": peaks.take()}
        # What the server's gate does once nothing runs (core/heap.py): the resident set of a server at rest.
        return_free_heap()
        rows.append({**row, "idle_VmRSS": process_memory_gib()["VmRSS"]})
    peaks.stop()
    return {"backend": chosen, "decode_tile": decode_tile, "encode_tile": encode_tile, "rows": rows}


def _child(args: argparse.Namespace) -> int:
    result = measure(args.model, args.canvases, args.steps, args.backend, _tile(args.decode_tile),
                     _tile(args.encode_tile))
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m outpaint.benchmarks.memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the exported full random model")
    parser.add_argument("--canvases", type=_canvas, nargs="+", default=[_canvas(c) for c in DEFAULT_CANVASES])
    parser.add_argument("--steps", type=int, default=4,
                        help="denoising steps per request (memory does not depend on it)")
    parser.add_argument("--shapes", default="dynamic,static", help="OpenVINO shape modes to measure, in order")
    parser.add_argument("--backend", default=None, help="default: what `--fast` picks on this CPU")
    parser.add_argument("--decode-tile", default=str(FastSettings.decode_tile),
                        help="the fast path's VAE-decode tile in latent cells, or 'off' (default: the fast path's)")
    parser.add_argument("--encode-tile", default=str(FastSettings.encode_tile),
                        help="the fast path's VAE-encode tile in latent cells, or 'off' (default: the fast path's)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)

    from .machine import describe_machine

    settings = []
    for mode in args.shapes.split(","):
        command = [sys.executable, "-m", "outpaint.benchmarks.memory", "--child", "--model", str(args.model),
                   "--steps", str(args.steps), "--decode-tile", args.decode_tile, "--encode-tile", args.encode_tile,
                   "--canvases", *(f"{w}x{h}" for w, h in args.canvases)]
        if args.backend:
            command += ["--backend", args.backend]
        env = {**os.environ, "OUTPAINT_OV_SHAPES": mode}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"the {mode} run failed (exit {done.returncode})")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        settings.append({"shapes": mode, **result})
        peak = result["rows"][-1]["VmHWM"]
        print(f"{mode:8s} {result['backend']}: peak {peak:.2f} GiB; "
              + ", ".join(f"{r['after']} {r['VmHWM']:.2f}" for r in result["rows"]), flush=True)
        for row in result["rows"][1:]:
            held, gib = next(iter(row["sampled_peaks"].items()), ("-", 0.0))
            print(f"  {row['after']}: highest sampled {gib:.2f} GiB in {held}; resident {row['VmRSS']:.2f} GiB "
                  f"at the end, {row['idle_VmRSS']:.2f} at rest", flush=True)
    report = {"command": "python -m outpaint.benchmarks.memory " + " ".join(argv or sys.argv[1:]),
              "machine": describe_machine(), "steps": args.steps,
              "canvases": [f"{w}x{h}" for w, h in args.canvases], "settings": settings}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
