"""`outpaint quantize`: int8 twins of the UNet graphs (the VAE's on request) for the openvino-int8 backend.

Post-training quantization by NNCF (SmoothQuant and fast bias correction, its transformer preset):
weights and activations of the convolutions and matrix products in int8 but for each graph's edges
(FLOAT_LAYERS, VAE_FLOAT_LAYERS), calibrated on the graph's own inputs. Those come from calibration
outpaints the model itself runs here through the fast path in fp32, so the deep and shallow graphs see
exactly the windowed shapes, timesteps and latents they see in service, and the VAE the canvases and
latents of real requests. The twin is OpenVINO IR with the graph's dynamic dimensions kept
(`unet_deep/model.int8.xml` beside `unet_deep/model.onnx`), recorded in the manifest as `unet_deep.int8`
with its recipe and its parity against the fp32 graph; the runtime needs only OpenVINO to run it, NNCF
only here.

Why int8: on CPUs with VNNI and no native bf16, OpenVINO runs the int8 UNet calls in 0.3-0.6x fp32's
time and the int8 VAE in under half (benchmarks/RESULTS.md; where bf16 is native, bf16 is as fast).
What it costs in the picture is measured on the small trained model against ground truth (docs/quality.md,
"int8"); the calibration here is what any user's weights get. The VAE's twins are not made by default:
there its int8 decoder moved the new area's colour past the fast path's bar, so they are a
speed-for-colour trade the owner asks for (`--graphs vae_encoder,vae_decoder`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from outpaint.core.errors import ModelError
from outpaint.core.graphs import (
    FEATURE_CACHE_GRAPHS,
    INT8,
    QUANTIZABLE_GRAPHS,
    UNET,
    VAE_GRAPHS,
    fast_path_unet_graphs,
    int8_file,
    int8_key,
)
from outpaint.core.manifest import GraphRecord, Manifest, describe_file

log = logging.getLogger("outpaint.export")

CALIBRATION_STEPS = 12  # DDIM steps per calibration outpaint: the deep graph sees every third of them
# Prompts of different subjects: the text conditioning is the UNet's cross-attention input.
CALIBRATION_PROMPTS = (
    "a photo of a street in italy, sunny afternoon",
    "a mountain lake at dawn, mist over the water, pine forest",
    "a cosy living room with a sofa and bookshelves, warm light",
)
# Max |int8 - fp32| / max |fp32| over a calibration feed; past it the twin is not written. The full-size
# random UNet measures about 0.11 (bf16 alone: 0.08), the trained small model less.
INT8_MAX_REL_ERROR = 0.3
MODES = ("full", "hybrid")  # what is int8: see quantize_openvino
DEFAULT_MODE = "full"
# Kept in float in every mode: the UNet's edges, a sliver of its work. conv_in reads the nine input
# channels (noisy latents, the mask, the masked image's latents), whose ranges differ too much for one
# activation scale; conv_out writes the prediction itself; the time embedding sets every block's scale
# and shift. On held-out feeds of the small trained model (deep graph), conv_in in float cut the max
# error from 0.153 to 0.031 of the output's range (PSNR 50.2 -> 52.9 dB), all of them to 0.027 (53.8 dB);
# conv_out or the time embedding alone changed nothing measurable (benchmarks/int8_recipes.py; the
# picture: docs/quality.md, "int8").
FLOAT_LAYERS = ("/conv_in/", "/conv_out/", "/time_embedding/", "/time_emb_proj/")
# The VAE's edges, likewise: the convolutions reading the image or the latents and writing the other, and
# the 1x1 convolutions between the latents and the VAE's own channels; a few percent of its work.
VAE_FLOAT_LAYERS = ("/conv_in/", "/conv_out/", "/quant_conv/", "/post_quant_conv/")
Feeds = dict[str, np.ndarray]  # one graph call's inputs, by tensor name


@dataclass(frozen=True)
class Calibration:
    """The outpaints whose UNet inputs calibrate the quantization."""

    steps: int = CALIBRATION_STEPS
    prompts: tuple[str, ...] = CALIBRATION_PROMPTS
    images: tuple[Path, ...] = ()  # sources to extend; none: a synthetic photo-like gradient image


def _synthetic_source(width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8: smooth colour fields with edges, a stand-in photo for calibration."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / 23.0) * np.cos(y / 31.0)
    g = 96 + 80 * np.cos((x + y) / 47.0) + 40 * (x > width * 0.6)
    b = 160 + 60 * np.sin(y / 19.0)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def calibration_outpaints(native_size: int, calibration: Calibration):
    """(SourceImage, OutpaintRequest) pairs: each source half the native canvas, extended to it in turn
    to the right, downwards and to the left, one prompt each."""
    from outpaint.engine import canvas as cv
    from outpaint.engine.request import OutpaintRequest

    size = native_size
    if calibration.images:
        from PIL import Image, ImageOps

        # Scaled and centre-cropped to half the canvas, not squashed: calibration should see natural images.
        sources = [np.asarray(ImageOps.fit(Image.open(path).convert("RGB"), (size // 2, size)))
                   for path in calibration.images]
    else:
        sources = [_synthetic_source(size // 2, size)]
    # (offset_x, offset_y, source rotated to fit): right, down, left.
    layouts = ((0, 0, False), (0, 0, True), (size // 2, 0, False))
    pairs = []
    for i, prompt in enumerate(calibration.prompts):
        rgb = sources[i % len(sources)]
        offset_x, offset_y, transpose = layouts[i % len(layouts)]
        if transpose:
            rgb = np.ascontiguousarray(rgb.transpose(1, 0, 2))
        request = OutpaintRequest(prompt=prompt, negative_prompt="blurry", num_inference_steps=calibration.steps,
                                  img_width=size, img_height=size, offset_x=offset_x, offset_y=offset_y,
                                  guidance_scale=7.5, seed=1000 + i, strength=1.0, mask_expand=8)
        pairs.append((cv.SourceImage(rgb=rgb, known=np.ones(rgb.shape[:2], bool)), request))
    return pairs


class _Capture:
    """A GraphRunner that keeps a copy of every feed it runs (the calibration dataset)."""

    def __init__(self, inner, seen: list[Feeds]) -> None:
        self.inner, self.seen = inner, seen
        self.name, self.input_names, self.output_names = inner.name, inner.input_names, inner.output_names

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.seen.append({name: np.array(value) for name, value in feeds.items()})
        return self.inner.run(feeds)


def capture_feeds(folder: Path, graphs: Sequence[str], calibration: Calibration) -> dict[str, list[Feeds]]:
    """The inputs each of `graphs` is fed over the calibration outpaints, run in fp32 by the fast path
    (the exact path for the whole `unet`), with no post-processing stage around them. The VAE is fed in
    the first of those runs only (both paths feed it the same canvases), whole rather than in tiles."""
    from outpaint.engine.coherence import COHERENCE_OFF
    from outpaint.engine.fast_path import EXACT, FastPathOptions
    from outpaint.engine.large_canvas import LARGE_CANVAS_OFF
    from outpaint.engine.pipeline import OutpaintPipeline

    seen: dict[str, list[Feeds]] = {name: [] for name in graphs}
    runs = []
    if any(name in (*FEATURE_CACHE_GRAPHS, *VAE_GRAPHS) for name in graphs):
        runs.append(FastPathOptions(decode_tile=None, encode_tile=None))
    if UNET in graphs:
        runs.append(EXACT)
    for run, options in enumerate(runs):
        pipe = OutpaintPipeline.load(folder, "openvino-fp32", options=options, colour_match="off",
                                     large_canvas=LARGE_CANVAS_OFF, coherence=COHERENCE_OFF)
        for name in graphs:
            if name in pipe.graphs and (run == 0 or name not in VAE_GRAPHS):
                pipe.graphs[name] = _Capture(pipe.graphs[name], seen[name])
        for source, request in calibration_outpaints(pipe.native_size, calibration):
            pipe(source, request)
    empty = [name for name, feeds in seen.items() if not feeds]
    if empty:
        raise ModelError(f"the calibration outpaints never ran {', '.join(empty)}")
    return seen


def _parity(fp32_path: Path, int8_path: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The int8 twin against its fp32 graph on one calibration feed, both compiled in fp32 so that only
    the quantization differs: the worst output's max |error| relative to its max |fp32| value."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    outputs = []
    for path in (fp32_path, int8_path):
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        result = compiled(dict(feeds))
        outputs.append({o.get_any_name(): np.asarray(result[o]) for o in compiled.outputs})
        del compiled
    expected, actual = outputs
    worst = {"max_abs_error": 0.0, "max_rel_error": 0.0, "psnr_db": 999.0}
    for name, reference in expected.items():
        error = output_error(reference, actual[name])
        worst = {"max_abs_error": max(worst["max_abs_error"], error["max_abs_error"]),
                 "max_rel_error": max(worst["max_rel_error"], error["max_rel_error"]),
                 "psnr_db": min(worst["psnr_db"], round(error["psnr_db"], 2))}
    return worst


def output_error(reference: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """How far a quantized graph's output is from its fp32 output: max |error|, that as a share of the
    fp32 output's max |value|, and the PSNR with twice that max as the peak (999 where identical)."""
    error = np.abs(actual.astype(np.float64) - reference)
    peak = float(np.abs(reference).max()) or 1.0
    mse = float((error**2).mean())
    return {"max_abs_error": float(error.max()), "max_rel_error": float(error.max()) / peak,
            "psnr_db": 999.0 if mse == 0 else float(10 * np.log10((2 * peak) ** 2 / mse))}


def _require_nncf() -> None:
    """Before minutes of calibration, not after them."""
    import importlib.util

    missing = [name for name in ("nncf", "openvino") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(f"outpaint quantize needs NNCF and OpenVINO ({', '.join(missing)} missing): "
                         "pip install 'outpaint[export]'")


def _weighted_matmuls(model) -> list[str]:
    """Names of the MatMuls with a constant operand (the linear layers: attention projections, feed-
    forward, time and text projections), as against those multiplying two activations (QK^T, AV)."""
    passthrough = {"Convert", "Transpose", "Reshape", "Unsqueeze", "Squeeze"}

    def constant_behind(node) -> bool:
        while node.get_type_name() in passthrough:
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant"

    return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() == "MatMul"
            and any(constant_behind(op.input_value(i).get_node()) for i in range(2))]


def float_layers(model, parts: Sequence[str] = FLOAT_LAYERS) -> list[str]:
    """The convolutions and matrix products in `model` whose names contain one of `parts`."""
    return [op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in ("Convolution", "MatMul")
            and any(part in op.get_friendly_name() for part in parts)]


def quantize_openvino(model, feeds: list[Feeds], mode: str = DEFAULT_MODE, keep_float: Sequence[str] = FLOAT_LAYERS,
                      smooth_quant: bool = True):
    """NNCF on one OpenVINO model, the layers named by `keep_float` left in float. "full": weights and
    activations of every other convolution and matrix product in int8 (SmoothQuant unless turned off,
    fast bias correction). "hybrid", optimum-intel's recipe for diffusion UNets: the linear layers'
    weights alone in int8 (computed in the float precision), the convolutions' weights and activations in
    int8, SmoothQuant off; the linear layers' inputs (attention and feed-forward activations, with their
    outlier channels) stay in float. On the small trained model the two were as close to fp32 as each
    other (benchmarks/int8_recipes.py), and full is the faster."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    dataset = nncf.Dataset(feeds)
    edges = float_layers(model, keep_float) if keep_float else []
    if keep_float and not edges:
        raise ModelError(f"found none of the layers to keep in float ({', '.join(keep_float)}): this graph was "
                         "not written by `outpaint export`")
    no_smoothing = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(convolution=-1, matmul=-1))
    if mode == "full":
        return nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
                             fast_bias_correction=True, ignored_scope=nncf.IgnoredScope(names=edges),
                             advanced_parameters=None if smooth_quant else no_smoothing)
    linear = _weighted_matmuls(model)  # named before compression, which adds decompression ops in front
    compressed = nncf.compress_weights(
        model, mode=nncf.CompressWeightsMode.INT8_ASYM,
        ignored_scope=nncf.IgnoredScope(names=edges, types=["Convolution"], validate=False))
    return nncf.quantize(compressed, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds),
                         fast_bias_correction=True,
                         ignored_scope=nncf.IgnoredScope(names=sorted(set(linear) | set(edges)), validate=False),
                         advanced_parameters=no_smoothing)


def quantize_graph(folder: Path, manifest: Manifest, name: str, feeds: list[Feeds],
                   mode: str = DEFAULT_MODE) -> GraphRecord:
    """Write `name`'s int8 twin from its calibration feeds and return its manifest record."""
    _require_nncf()
    import openvino as ov

    if mode not in MODES:
        raise ModelError(f"unknown int8 mode {mode!r}: one of {', '.join(MODES)}")
    base = manifest.graphs[name]
    started = time.perf_counter()
    model = ov.Core().read_model(str(folder / base.file))
    quantized = quantize_openvino(model, feeds, mode, VAE_FLOAT_LAYERS if name in VAE_GRAPHS else FLOAT_LAYERS)
    target = folder / int8_file(name)
    # fp32 constants: the int8 weights are made at compile time from them and the FakeQuantize ranges.
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    del quantized, model
    parity = _parity(folder / base.file, target, feeds[-1])
    parity["tolerance"] = INT8_MAX_REL_ERROR
    parity["calibration_feeds"] = len(feeds)
    parity["seconds"] = round(time.perf_counter() - started, 2)
    files = [int8_file(name), int8_file(name).removesuffix(".xml") + ".bin"]
    if parity["max_rel_error"] > INT8_MAX_REL_ERROR or not np.isfinite(parity["max_rel_error"]):
        for file in files:
            (folder / file).unlink(missing_ok=True)
        raise ModelError(f"{int8_key(name)}: int8 differs from fp32 by {parity['max_rel_error']:.3g} of the output's "
                         f"range, over the tolerance {INT8_MAX_REL_ERROR:g}; the twin was not written")
    return GraphRecord(file=int8_file(name), inputs=base.inputs, outputs=base.outputs, parity=parity,
                       files={file: describe_file(folder / file) for file in files}, int8_mode=mode)


def quantize_model(
    folder: Path,
    graphs: Sequence[str] | None = None,
    calibration: Calibration = Calibration(),
    progress: Callable[[str, str], None] | None = None,
    mode: str = DEFAULT_MODE,
) -> Manifest:
    """Calibrate and quantize `graphs` (default: the UNet graphs the fast path runs; the VAE only when
    named) of the model in `folder`, recording each twin in its manifest. `progress(graph, status)` hears
    "calibrating", "quantizing", "done"."""
    report = progress or (lambda graph, status: None)
    _require_nncf()
    manifest = Manifest.load(folder)  # our exports only: an optimum folder has no manifest to record in
    names = tuple(graphs) if graphs else fast_path_unet_graphs(list(manifest.graphs))
    wrong = [name for name in names if name not in QUANTIZABLE_GRAPHS]
    if wrong:
        raise ModelError(f"cannot quantize {', '.join(wrong)}: the int8 twins are of {', '.join(QUANTIZABLE_GRAPHS)}")
    missing = [name for name in names if name not in manifest.graphs]
    if missing:
        raise ModelError(f"{folder} lacks the graphs {', '.join(missing)}: {manifest.export_command(folder)}")
    manifest.check_files(folder, names)
    for name in names:
        report(name, "calibrating")
    feeds = capture_feeds(folder, names, calibration)
    for name in names:
        report(name, "quantizing")
        manifest.graphs[int8_key(name)] = quantize_graph(folder, manifest, name, feeds.pop(name), mode)
        manifest.save(folder)
        report(name, "done")
    return manifest


def add_quantize(sub) -> None:
    p = sub.add_parser("quantize", help="add int8 twins of the UNet graphs (NNCF) for the openvino-int8 backend")
    p.add_argument("model", type=Path, help="a model folder `outpaint export` wrote")
    p.add_argument("--graphs", help=f"comma-separated, of {', '.join(QUANTIZABLE_GRAPHS)} (default: the UNet graphs "
                   "the fast path runs; vae_encoder,vae_decoder add the VAE's twins: about half its time on "
                   "VNNI CPUs, a colour shift past the fast path's bar on the trained model)")
    p.add_argument("--steps", type=int, default=CALIBRATION_STEPS,
                   help=f"DDIM steps of each calibration outpaint (default {CALIBRATION_STEPS})")
    p.add_argument("--image", type=Path, action="append", default=[],
                   help="a source image to calibrate on (repeatable; default: a synthetic one)")
    p.add_argument("--prompt", action="append", default=[],
                   help="a calibration prompt, one outpaint each (repeatable; default: three built in)")
    p.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                   help="full: weights and activations of the convolutions and matrix products in int8; "
                   "hybrid: int8 convolutions, int8 weights only in the linear layers (optimum-intel's "
                   "recipe for diffusion UNets). Either keeps each graph's edges in float: the UNet's conv_in, "
                   f"conv_out and time embedding, the VAE's first and last convolutions (default {DEFAULT_MODE})")
    p.set_defaults(func=_cmd_quantize)


def _cmd_quantize(args) -> int:
    if args.steps < 3:
        raise SystemExit(f"--steps must be >= 3 (the deep graph runs every third step), got {args.steps}")
    calibration = Calibration(steps=args.steps, prompts=tuple(args.prompt) or CALIBRATION_PROMPTS,
                              images=tuple(args.image))
    graphs = tuple(g.strip() for g in args.graphs.split(",")) if args.graphs else None
    manifest = quantize_model(args.model, graphs, calibration, mode=args.mode,
                              progress=lambda graph, status: print(f"{graph}: {status}", flush=True))
    for key, record in manifest.graphs.items():
        if key.endswith(f".{INT8}"):
            parity = record.parity
            print(f"{key} ({record.int8_mode}): {record.file}, max error {parity['max_rel_error']:.3g} of the "
                  f"output's range (tolerance {parity['tolerance']:g}), {parity['calibration_feeds']:g} "
                  "calibration feeds")
    return 0
