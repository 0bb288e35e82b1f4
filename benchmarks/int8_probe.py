"""int8 probe: the UNet quantized by NNCF (post-training, SmoothQuant) and run by OpenVINO with VNNI.

    pip install nncf        # not a dependency of outpaint: the probe is the only user
    python -m outpaint.benchmarks.int8_probe --model /work/models/full

Calibration data is the UNet's real inputs: the feeds of one outpaint (the benchmark's request, 12
DDIM steps) on openvino-bf16. The quantized UNet is compiled with int8 layers and bf16 (then fp32)
elsewhere and timed at 512x512, batch 2, after one warm call. Its output is compared with our fp32
UNet (ort-cpu graph) on the benchmark's UNet inputs, as max |error| / max |fp32 output|, the measure
the benchmark's `agreement` section reports for bf16.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .config import BenchConfig
from .workload import outpaint_request, source_image, unet_inputs


def _calibration_feeds(model: Path, steps: int) -> list[dict[str, np.ndarray]]:
    from outpaint.engine.pipeline import OutpaintPipeline
    from outpaint.engine.request import OutpaintRequest

    pipe = OutpaintPipeline.load(model, "openvino-bf16")  # the exact path: every call is the whole UNet
    unet, seen = pipe.graphs["unet"], []

    class Capture:  # a GraphRunner that keeps a copy of every feed
        name, input_names, output_names = unet.name, unet.input_names, unet.output_names

        def run(self, feeds):
            seen.append({name: np.array(value) for name, value in feeds.items()})
            return unet.run(feeds)

    config = BenchConfig(model_dir=str(model))
    request = OutpaintRequest(**{**outpaint_request(config).__dict__, "num_inference_steps": steps})
    pipe.graphs["unet"] = Capture()  # this instance only
    pipe(source_image(config), request)
    if not seen:
        raise SystemExit("the calibration outpaint made no UNet call through graphs['unet']")
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m outpaint.benchmarks.int8_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the exported full random model")
    parser.add_argument("--calibration-steps", type=int, default=12)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        import nncf
    except ImportError:
        raise SystemExit("the int8 probe needs NNCF: pip install nncf") from None
    import onnxruntime as ort
    import openvino as ov

    from outpaint.core.manifest import Manifest

    hidden = Manifest.load(args.model).text_hidden_size
    feeds = _calibration_feeds(args.model, args.calibration_steps)
    core = ov.Core()
    model = core.read_model(str(args.model / "unet" / "model.onnx"))
    model.reshape({"sample": [2, 4, 64, 64], "timestep": [1], "encoder_hidden_states": [2, 77, hidden]})
    started = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(feeds), fast_bias_correction=True)
    print(json.dumps({"calibration_feeds": len(feeds), "quantize_s": round(time.perf_counter() - started, 1)}))
    probe = unet_inputs("512x512", hidden)
    session = ort.InferenceSession(str(args.model / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
    reference = session.run(None, probe)[0]
    del session
    for label, precision in (("int8+bf16", "bf16"), ("int8+fp32", "f32")):
        compiled = core.compile_model(quantized, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                         "INFERENCE_PRECISION_HINT": precision})
        request = compiled.create_infer_request()
        request.infer(probe)
        seconds = []
        for _ in range(args.runs):
            started = time.perf_counter()
            request.infer(probe)
            seconds.append(time.perf_counter() - started)
        out = request.get_output_tensor(0).data
        error = float(np.abs(out - reference).max() / np.abs(reference).max())
        print(json.dumps({"variant": label, "median_s": round(float(np.median(seconds)), 3),
                          "runs": [round(s, 3) for s in seconds], "max_rel_error_vs_fp32": round(error, 4)}))
        del compiled, request
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
