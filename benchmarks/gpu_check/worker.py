"""One part of the GPU check in a process of its own:

    python -m outpaint.benchmarks.gpu_check.worker PART SETTINGS.json OUT_DIR

PART is ort-cpu (the fp32 reference image), ort-cuda, ort-trt, tensorrt (image + step timings) or
diffusers-fp16 (step timings). OUT_DIR/result.json gets {"status": "ok" | "unavailable" | "error", ...}
and the images as .npy. A backend that cannot start (BackendUnavailable: a package, a provider, a
library) is "unavailable" with its reason; anything else that goes wrong is "error" with the last
lines of its traceback. Either way this process exits 0 after writing result.json, so only a crash
(a signal) or the time limit leaves no result, and the parent reports that.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from .clock import TorchEvent, ort_events, summarize, time_with_events
from .settings import DIFFUSERS, REFERENCE, CheckSettings

STEP_STAGE = "denoise_step"


def _load(backend: str, settings: CheckSettings):
    from outpaint.engine.coherence import COHERENCE_OFF
    from outpaint.engine.large_canvas import LARGE_CANVAS_OFF
    from outpaint.engine.pipeline import OutpaintPipeline

    # The computation diffusers and the CPU reference make: no colour match, no large-canvas composition,
    # no coherence pass (its steps would be timed as the request's).
    return OutpaintPipeline.load(settings.model_dir, backend, colour_match="off", large_canvas=LARGE_CANVAS_OFF,
                                 coherence=COHERENCE_OFF)


def _save_image(out_dir: Path, result) -> dict[str, Any]:
    np.save(out_dir / "image.npy", result.image)
    np.save(out_dir / "region.npy", result.canvas.mask > 0)
    return {"image": "image.npy", "region": "region.npy", "finite": bool(np.isfinite(result.latents).all())}


def cpu_reference(settings: CheckSettings, out_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    pipeline = _load(REFERENCE, settings)
    load_s = time.perf_counter() - started
    result = pipeline(settings.source(), settings.request())
    return {"load_s": round(load_s, 1), **_save_image(out_dir, result),
            "step": summarize(result.step_seconds, "host clock (perf_counter), whole step, first run")}


def gpu_backend(backend: str, settings: CheckSettings) -> tuple[Any, Any, str]:
    """The loaded pipeline and the event log on the stream its device loop runs on."""
    from ..gpu import EventLog, instrument

    pipeline = _load(backend, settings)
    if pipeline.device_runtime is None:
        raise RuntimeError(f"{backend} did not start the device-resident loop; the check times that loop")
    if backend == "tensorrt":
        from outpaint.engine.backends import cuda

        from ..gpu import backend_stream

        return pipeline, instrument(pipeline, EventLog(backend_stream(pipeline), new_event=cuda.Event)), (
            "CUDA events (cuda-python) on the TensorRT backend's stream")
    new_event, stream, clock = ort_events()
    return pipeline, instrument(pipeline, EventLog(stream, new_event=new_event)), clock


def our_gpu_backend(backend: str, settings: CheckSettings, out_dir: Path) -> dict[str, Any]:
    started = time.perf_counter()
    pipeline, log, clock = gpu_backend(backend, settings)
    load_s = time.perf_counter() - started  # ort-trt: includes building or loading its engines
    source, request = settings.source(), settings.request()
    started = time.perf_counter()
    first = pipeline(source, request)  # the warm-up: cuDNN's algorithm search, TensorRT's first launches
    first_s = time.perf_counter() - started
    log.seconds()
    started = time.perf_counter()
    second = pipeline(source, request)
    second_s = time.perf_counter() - started
    steps = log.seconds().get(STEP_STAGE, [])
    unet = pipeline.graphs["unet"]
    unet_file = getattr(getattr(unet, "inner", unet), "path", None)  # ONNX Runtime's: plain or fused attention
    if not steps:
        raise RuntimeError("no denoising step was timed: the device loop did not run")
    repeat = int(np.abs(first.image.astype(np.int16) - second.image.astype(np.int16)).max())
    return {"load_s": round(load_s, 1), "first_request_s": round(first_s, 2), "second_request_s": round(second_s, 2),
            "repeat_max_abs_diff": repeat, **_save_image(out_dir, first),
            "unet_graph": str(Path(unet_file).relative_to(settings.model_dir)) if unet_file else None,
            "step": summarize(steps, f"{clock}; one sample per step of the second request (the first warms up)")}


def diffusers_fp16(settings: CheckSettings) -> dict[str, Any]:
    """diffusers' UNet in PyTorch fp16 on the same random weights (benchmarks/systems_diffusers.py), one
    guided step: the guidance-doubled batch through the UNet, then the guidance combination."""
    import torch

    from outpaint.core.errors import BackendUnavailable
    from outpaint.export.random_models import build_random_components

    from ..workload import unet_inputs

    if not torch.cuda.is_available():
        raise BackendUnavailable(f"PyTorch {torch.__version__} sees no CUDA GPU (a CPU build, or a CUDA runtime "
                                 "newer than the driver)")
    started = time.perf_counter()
    components = build_random_components("full", seed=0)
    unet = components.unet.to("cuda", torch.float16)
    del components
    build_s = time.perf_counter() - started
    # The CPU benchmark's inputs (batch 2); the step doubles the first sample as guidance does.
    feeds = unet_inputs(settings.canvas, int(unet.config.cross_attention_dim))
    x, timestep, text = (torch.from_numpy(feeds[k]).to("cuda", torch.float16)
                         for k in ("sample", "timestep", "encoder_hidden_states"))
    x = x[:1]

    @torch.inference_mode()
    def step():
        uncond, cond = unet(torch.cat([x, x]), timestep, encoder_hidden_states=text).sample.chunk(2)
        return uncond + settings.guidance * (cond - uncond)

    seconds = time_with_events(step, settings.warmup, settings.runs, TorchEvent)
    return {"load_s": round(build_s, 1), "step": summarize(seconds, "CUDA events (torch.cuda.Event), "
                                                                    "PyTorch's current stream"),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "device": torch.cuda.get_device_name(0)}


def run_part(part: str, settings: CheckSettings, out_dir: Path) -> dict[str, Any]:
    from outpaint.core.errors import BackendUnavailable

    started = time.perf_counter()
    result: dict[str, Any]
    try:
        if part == REFERENCE:
            result = cpu_reference(settings, out_dir)
        elif part == DIFFUSERS:
            result = diffusers_fp16(settings)
        else:
            result = our_gpu_backend(part, settings, out_dir)
        result = {"status": "ok", **result}
    except BackendUnavailable as exc:
        result = {"status": "unavailable", "reason": str(exc)}
    except Exception as exc:  # reported, not raised: the check goes on with the other parts
        tail = traceback.format_exc().strip().splitlines()[-6:]
        result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:2000], "traceback": tail}
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    part, settings_path, out_dir = argv
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = run_part(part, CheckSettings.from_json(Path(settings_path).read_text()), out)
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
