"""`outpaint bench --quality`: every case x held-out scene x system, scored against the ground truth;
writes the JSON, the markdown table and the contact sheet."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from outpaint.scenes import held_out_seeds, scene_from_seed

from ..machine import describe_machine
from .cases import CASES, Case
from .metrics import seam_score
from .report import contact_sheet, markdown
from .score import score
from .systems import STEPS, Cohered, ColourMatched, Diffusers, Fill, Ours, Retiled, System

DEFAULT_WEIGHTS = Path("weights/scenes")
DEFAULT_MODEL = Path("models/scenes")  # the exported graphs (made from the weights when missing)
# The 9-channel inpainting variant of the same model (docs/training.md, "The inpainting model").
DEFAULT_INPAINT_WEIGHTS = Path("weights/scenes-inpaint")
DEFAULT_INPAINT_MODEL = Path("models/scenes-inpaint")
INPAINT9 = "outpaint-inpaint9"
# The contact sheet's columns, of the systems that ran (the gray baseline shows the source on its canvas).
SHEET_SYSTEMS = ("gray", "infill", "outpaint-ort-cpu", "outpaint-fast", "diffusers-inpaint")
SYSTEMS = ("infill", "gray", "outpaint-ort-cpu", "outpaint-openvino-fp32", "outpaint-fast", "diffusers-inpaint")
# Also accepted: "outpaint-ort-cpu-reseed" (the full path with other noise: its seed-to-seed spread),
# "outpaint-fast:WINDOW:INTERVAL:TAIL" (the fast path at other lever settings; WINDOW may be "off"),
# either with ":bf16", ":fp32" or ":int8" (openvino-bf16 / -fp32 / -int8 instead of what `--fast` picks) and
# "outpaint-ort-cpu+colour-MODE" (its images with the colour match MODE; after outpaint-ort-cpu) and
# "outpaint-ort-cpu+large-off" / "outpaint-ort-cpu+large-STRENGTH" (the large-canvas strategy off / forced) and
# "outpaint-ort-cpu+coherence-WIDTH-STRENGTH-STEPS" (its images with the default colour match and the
# coherence pass at those settings; after outpaint-ort-cpu; "+colour-band" is the same with the pass off).
# "outpaint-ort-cpu+tile-N" is outpaint-ort-cpu's latents decoded with the fast path's tiled decode at N cells;
# "outpaint-ort-cpu+encode-tile-N" the exact path generating again with the tiled VAE encode at N cells.
# "outpaint-inpaint9" is the exact path on the 9-channel inpainting model, and takes the same "+colour-MODE"
# and "+coherence-..." suffixes; "diffusers-inpaint9" is diffusers' pipeline on that model.
RESEED = "outpaint-ort-cpu-reseed"
LARGE_PREFIX = "outpaint-ort-cpu+large-"
COHERENCE_PREFIX = "outpaint-ort-cpu+coherence-"
TILE_PREFIX = "outpaint-ort-cpu+tile-"  # its images' latents decoded again in tiles of N latent cells
ENCODE_TILE_PREFIX = "outpaint-ort-cpu+encode-tile-"  # generated again from a source encoded in tiles
POST_BASES = ("outpaint-ort-cpu", INPAINT9)  # the systems whose images "+colour-" / "+coherence-" post-process
# (9-channel, 4-channel) pairs whose paired differences the report shows when both ran: raw, at the engine's
# defaults (colour match and coherence pass), and in diffusers' pipeline.
NINE_CHANNEL_PAIRS = ((INPAINT9, "outpaint-ort-cpu"),
                      (f"{INPAINT9}+coherence-32-0.5-4", "outpaint-ort-cpu+coherence-32-0.5-4"),
                      ("diffusers-inpaint9", "diffusers-inpaint"))


class UnknownSystem(ValueError):
    """A --quality-systems name that names no system (or a variant with bad settings)."""


def coherence_variant(name: str):
    """The Coherence of "BASE+coherence-WIDTH-STRENGTH-STEPS" (the band mode at those settings)."""
    from outpaint.core.errors import InvalidRequest
    from outpaint.engine.coherence import Coherence

    try:
        width, strength, steps = name.split("+coherence-", 1)[1].split("-")
        return Coherence(mode="band", width=int(width), strength=float(strength), steps=int(steps))
    except (ValueError, InvalidRequest) as exc:
        raise UnknownSystem(f"{name!r}: a coherence variant is {COHERENCE_PREFIX}WIDTH-STRENGTH-STEPS, e.g. "
                         f"{COHERENCE_PREFIX}32-0.35-4 ({exc})") from None


def large_canvas_variant(name: str):
    """The LargeCanvas of "outpaint-ort-cpu+large-off" (never) or "outpaint-ort-cpu+large-S" (the upscale
    strategy on every canvas past the native area, refined at strength S)."""
    from outpaint.engine.large_canvas import LARGE_CANVAS_OFF, LargeCanvas

    setting = name.removeprefix(LARGE_PREFIX)
    if setting == "off":
        return LARGE_CANVAS_OFF
    try:
        return LargeCanvas(mode="upscale", threshold=1.0, refine_strength=float(setting))
    except ValueError:
        raise UnknownSystem(f"{name!r}: a large-canvas variant is {LARGE_PREFIX}off or {LARGE_PREFIX}STRENGTH, "
                         f"e.g. {LARGE_PREFIX}0.5") from None


def tile_variant(name: str) -> int:
    """The VAE tile (latent cells) of "outpaint-ort-cpu+tile-N" (decode) or "...+encode-tile-N"."""
    from outpaint.core.errors import InvalidRequest
    from outpaint.engine.fast_path import FastPathOptions

    encode = name.startswith(ENCODE_TILE_PREFIX)
    prefix, field = (ENCODE_TILE_PREFIX, "encode_tile") if encode else (TILE_PREFIX, "decode_tile")
    try:
        tile = int(name.removeprefix(prefix))
        FastPathOptions(**{field: tile})  # the engine's own bounds
        return tile
    except (ValueError, InvalidRequest) as exc:
        what = "tiled-encode" if encode else "tiled-decode"
        raise UnknownSystem(f"{name!r}: a {what} variant is {prefix}N, N latent cells >= 8, e.g. "
                            f"{prefix}32 ({exc})") from None


# ":int8" runs the int8 twins `outpaint quantize` adds to the model folder (export/quantize.py).
FAST_PRECISIONS = {"bf16": "openvino-bf16", "fp32": "openvino-fp32", "int8": "openvino-int8"}


def fast_variant(name: str):
    """(FastPathOptions, backend) of "outpaint-fast[:WINDOW:INTERVAL:TAIL][:PRECISION]": the defaults
    without the three levers; the backend `--fast` picks on this CPU without a precision, else
    openvino-bf16 (bf16), openvino-fp32 (fp32) or openvino-int8 (int8)."""
    from outpaint.engine.cpu_features import fast_backend
    from outpaint.engine.fast_path import FastPathOptions

    fields = name.split(":")[1:]
    backend = fast_backend().backend
    if fields and fields[-1] in FAST_PRECISIONS:
        backend = FAST_PRECISIONS[fields.pop()]
    if name.split(":")[0] != "outpaint-fast" or len(fields) not in (0, 3):
        raise UnknownSystem(f"{name!r}: a fast-path variant is "
                            "outpaint-fast[:WINDOW:INTERVAL:TAIL][:bf16|:fp32|:int8], "
                            "e.g. outpaint-fast:7:3:0, outpaint-fast:off:1:2 or outpaint-fast:fp32")
    if not fields:
        return FastPathOptions(), backend
    try:
        window, interval, tail = fields
        options = FastPathOptions(window_margin=None if window == "off" else int(window),
                                  feature_cache_interval=int(interval), unguided_tail_steps=int(tail))
    except ValueError:
        raise UnknownSystem(f"{name!r}: WINDOW is a number of latent cells or off, INTERVAL >= 1 and TAIL >= 0 "
                         "are whole numbers, e.g. outpaint-fast:7:3:0") from None
    return options, backend


@dataclass
class QualityConfig:
    weights: Path = DEFAULT_WEIGHTS
    model: Path = DEFAULT_MODEL
    inpaint_weights: Path = DEFAULT_INPAINT_WEIGHTS
    inpaint_model: Path = DEFAULT_INPAINT_MODEL
    systems: Sequence[str] = SYSTEMS
    cases: Sequence[Case] = CASES
    scenes: int | None = None  # cap on held-out scenes per case (None: each case's own count)
    out_json: Path = Path("benchmarks/quality.json")
    out_markdown: Path = Path("benchmarks/quality.md")
    out_sheet: Path = Path("docs/images/quality-contact-sheet.jpg")
    command: str = "outpaint bench --quality"
    extra: dict[str, Any] = field(default_factory=dict)


def ensure_exported(weights: Path, model: Path) -> Path:
    """Export the trained weights once (idempotent: an up-to-date export is kept)."""
    from outpaint.export.onnx_export import export_components
    from outpaint.export.sources import load_components

    export_components(load_components(str(weights)), model)
    return model


def build_systems(config: QualityConfig) -> list[System]:
    from outpaint.engine.coherence import COHERENCE_OFF
    from outpaint.engine.fast_path import EXACT
    from outpaint.engine.pipeline import OutpaintPipeline

    def ours(backend: str, model: Path = config.model, **options: Any) -> OutpaintPipeline:
        # Colour match off: the engine's own images, which the "+colour-MODE" systems post-process, so
        # every colour mode (the default "band" included) is a row of its own beside "off".
        # Coherence off likewise: the "+coherence-..." systems run the pass over these images.
        return OutpaintPipeline.load(model, backend, colour_match="off",
                                     **{"options": EXACT, "coherence": COHERENCE_OFF, **options})

    def post_base(name: str) -> Ours:
        base_name = name.split("+", 1)[0]
        base = next((s for s in systems if s.name == base_name), None)
        if base_name not in POST_BASES or not isinstance(base, Ours):
            raise UnknownSystem(f"{name} post-processes the images of one of {', '.join(POST_BASES)}: list that "
                             "system before it")
        return base

    systems: list[System] = []
    for name in config.systems:
        if name.startswith(LARGE_PREFIX):
            systems.append(Ours(name, ours("ort-cpu", large_canvas=large_canvas_variant(name))))
        elif "+colour-" in name:
            systems.append(ColourMatched(name, post_base(name), name.split("+colour-", 1)[1]))
        elif "+coherence-" in name:
            systems.append(Cohered(name, post_base(name), coherence_variant(name)))
        elif name.startswith(TILE_PREFIX):
            systems.append(Retiled(name, post_base(name), tile_variant(name)))
        elif name.startswith(ENCODE_TILE_PREFIX):
            tiled = dataclasses.replace(EXACT, encode_tile=tile_variant(name))
            systems.append(Ours(name, ours("ort-cpu", options=tiled)))
        elif name == INPAINT9:
            systems.append(Ours(name, ours("ort-cpu", config.inpaint_model)))
        elif name == "diffusers-inpaint9":
            systems.append(Diffusers(config.inpaint_weights, name))
        elif name == "infill":
            systems.append(Fill(name, "pushpull"))
        elif name == "gray":
            systems.append(Fill(name, "gray"))
        elif name == "outpaint-ort-cpu":
            systems.append(Ours(name, ours("ort-cpu")))
        elif name == "outpaint-openvino-fp32":
            systems.append(Ours(name, ours("openvino-fp32")))
        elif name == RESEED:
            systems.append(Ours(name, ours("ort-cpu"), seed_offset=1))
        elif name.startswith("outpaint-fast"):
            options, backend = fast_variant(name)
            systems.append(Ours(name, ours(backend, options=options)))
        elif name == "diffusers-inpaint":
            systems.append(Diffusers(config.weights))
        else:
            raise UnknownSystem(f"unknown quality system {name!r}; the systems are {', '.join(SYSTEMS)}")
    return systems


def mean_scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means of the numeric scores of `rows` and the structure pass rate."""
    out: dict[str, Any] = {"n": len(rows)}
    for key in ("psnr_db", "ssim", "seam", "ciede2000_band", "seconds"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = round(float(np.mean(values)), 4) if values else None
    out["structure_ok"] = round(float(np.mean([r["structure"]["ok"] for r in rows])), 3)
    return out


# The scores the fast path is judged on, each as (row key, +1 when higher is better else -1).
JUDGED = {"psnr": ("psnr_db", 1), "seam": ("seam", -1), "delta_e": ("ciede2000_band", -1)}


def paired_loss(rows: list[dict[str, Any]], system: str, key: str = "psnr_db", sign: int = 1,
                reference: str = "outpaint-ort-cpu") -> list[float]:
    """Per (case, seed) where both have the score: how much worse `system` is than the reference
    (positive: worse), e.g. the reference's PSNR minus `system`'s, or `system`'s seam minus the reference's."""
    ref = {(r["case"], r["seed"]): r[key] for r in rows if r["system"] == reference and r.get(key) is not None}
    return [sign * (ref[(r["case"], r["seed"])] - r[key]) for r in rows
            if r["system"] == system and r.get(key) is not None and (r["case"], r["seed"]) in ref]


def paired_psnr_drop(rows: list[dict[str, Any]], system: str, reference: str = "outpaint-ort-cpu") -> list[float]:
    """Per (case, seed): the reference's new-area PSNR minus `system`'s (positive: `system` is worse)."""
    return paired_loss(rows, system, reference=reference)


def unet_work(pipeline: Any, result: Any) -> dict[str, Any]:
    """The UNet calls a fast-path image took (by the engine's own rules: unet_calls, unet_window) and the
    latent window they ran on, against the canvas; with the same settings' full-size estimate."""
    from outpaint.engine import canvas as cv
    from outpaint.engine.fast_path import unet_calls, unet_window

    mask = cv.latent_mask(result.canvas.mask)
    window = unet_window(pipeline.options, mask, pipeline.unet_in_channels)
    calls = unet_calls(pipeline.options, STEPS)
    return {"whole": calls.whole, "shallow": calls.shallow, "unguided": calls.unguided,
            "canvas_cells": list(mask.shape[2:]),
            "window_cells": None if window is None else [window.height, window.width]}


def fast_path_verdicts(rows: list[dict[str, Any]], systems: dict[str, Any]) -> dict[str, Any] | None:
    """The bars the fast path must stay within, from the full path's own spread, and each fast variant's
    losses against them. Reseeding the full path changes each image's scores by a spread whose mean over
    the n images is known to within 2 standard errors (95 %); a lever whose mean loss on a score is
    inside that is indistinguishable from drawing other noise, which no user can tell from a quality
    loss either. PSNR decides "within the bar"; seam and ΔE past theirs are "materially worse".
    `systems`: name -> the system (a fast variant's pipeline says its options and backend)."""
    from ..fast_cost import estimate_full_size

    spreads = {score: paired_loss(rows, RESEED, key, sign) for score, (key, sign) in JUDGED.items()}
    if len(spreads["psnr"]) < 2:  # no spread to measure yet
        return None
    bars = {score: 2 * float(np.std(v, ddof=1)) / np.sqrt(len(v)) for score, v in spreads.items()}
    verdicts = {}
    for name, system in systems.items():
        if not name.startswith("outpaint-fast"):
            continue
        losses = {score: float(np.mean(paired_loss(rows, name, key, sign))) for score, (key, sign) in JUDGED.items()}
        pipeline = system.pipeline
        estimate = estimate_full_size(pipeline.options)
        verdicts[name] = {
            "backend": pipeline.backend, "n": len(paired_loss(rows, name)),
            "mean_psnr_drop_db": round(losses["psnr"], 3), "within_bar": bool(losses["psnr"] <= bars["psnr"]),
            "mean_seam_rise": round(losses["seam"], 3), "seam_within_bar": bool(losses["seam"] <= bars["seam"]),
            "mean_delta_e_rise": round(losses["delta_e"], 3),
            "delta_e_within_bar": bool(losses["delta_e"] <= bars["delta_e"]),
            "full_size": vars(estimate),
        }
    return {"reseed_mean_abs_db": round(float(np.mean(np.abs(spreads["psnr"]))), 3),
            "reseed_std_db": round(float(np.std(spreads["psnr"], ddof=1)), 3), "n": len(spreads["psnr"]),
            "bar_db": round(bars["psnr"], 3), "seam_bar": round(bars["seam"], 3),
            "delta_e_bar": round(bars["delta_e"], 3), "fast": verdicts}


def quality_result(config: QualityConfig, systems: list[System], rows: list[dict[str, Any]],
                   machine: dict[str, Any], done: int, planned: int) -> dict[str, Any]:
    """The JSON of a run after `done` of its `planned` (case, scene) items; `partial` while short of them."""
    summary: dict[str, Any] = {}
    cases = [c for c in config.cases if any(r["case"] == c.name for r in rows)]
    for system in systems:
        mine = [r for r in rows if r["system"] == system.name]
        summary[system.name] = {"total": mean_scores(mine),
                                **{c.name: mean_scores([r for r in mine if r["case"] == c.name]) for c in cases}}
    truth_seams = [r["truth_seam"] for r in rows if r["truth_seam"] is not None]
    return {
        "command": config.command,
        "machine": machine,
        "weights": str(config.weights),
        "cases": [{"name": c.name, "canvas": f"{c.width}x{c.height}", "source": vars(c.source), "scale": c.scale,
                   "view_height": c.view_height} for c in cases],
        "settings": {"steps": 25, "scheduler": "DDIM", "guidance_scale": 7.5, "mask_expand": 8, "infill": "pushpull"},
        **({"partial": f"{done} of {planned} scenes x cases"} if done < planned else {}),
        "truth_seam_mean": round(float(np.mean(truth_seams)), 3) if truth_seams else None,
        "summary": summary,
        "fast_path_bar": fast_path_verdicts(rows, {s.name: s for s in systems}),
        "coherence": coherence_verdicts(rows, [s.name for s in systems]),
        "paired": paired_verdicts(rows, [s.name for s in systems]),
        "rows": rows,
        **config.extra,
    }


def paired_differences(rows: list[dict[str, Any]], system: str, reference: str) -> dict[str, Any]:
    """Per score, `system` minus `reference` on the same (case, seed): the mean and two standard errors."""
    ref = {(r["case"], r["seed"]): r for r in rows if r["system"] == reference}
    mine = [(r, ref[(r["case"], r["seed"])]) for r in rows if r["system"] == system and (r["case"], r["seed"]) in ref]
    out: dict[str, Any] = {"n": len(mine)}
    for key in ("psnr_db", "ssim", "seam", "ciede2000_band"):
        diffs = [a[key] - b[key] for a, b in mine if a.get(key) is not None and b.get(key) is not None]
        two_se = 2 * float(np.std(diffs, ddof=1)) / np.sqrt(len(diffs)) if len(diffs) > 1 else None
        out[key] = {"mean": round(float(np.mean(diffs)), 4) if diffs else None,
                    "two_se": None if two_se is None else round(two_se, 4)}
    return out


def coherence_verdicts(rows: list[dict[str, Any]], systems: list[str]) -> dict[str, Any] | None:
    """Each coherence variant against the same engine with the pass off (the default colour match,
    "+colour-band") on the same first passes: paired differences, so the first pass's noise cancels."""
    from outpaint.engine.colour_match import COLOUR_MATCH_DEFAULT

    reference = f"outpaint-ort-cpu+colour-{COLOUR_MATCH_DEFAULT}"
    variants = [name for name in systems if name.startswith(COHERENCE_PREFIX)]
    if not variants or reference not in systems:
        return None
    return {"reference": reference, "variants": {name: paired_differences(rows, name, reference) for name in variants}}


def paired_verdicts(rows: list[dict[str, Any]], systems: list[str]) -> dict[str, Any] | None:
    """Each 9-channel system against its 4-channel counterpart (NINE_CHANNEL_PAIRS) and each tiled
    decode or encode against the whole one, on the same (case, seed): paired differences overall and per
    case."""
    pairs = [(nine, four) for nine, four in NINE_CHANNEL_PAIRS if nine in systems and four in systems]
    if "outpaint-ort-cpu" in systems:
        pairs += [(name, "outpaint-ort-cpu") for name in systems
                  if name.startswith((TILE_PREFIX, ENCODE_TILE_PREFIX))]
    if not pairs:
        return None
    cases = list(dict.fromkeys(r["case"] for r in rows))
    return {f"{system} vs {reference}": {
                "total": paired_differences(rows, system, reference),
                **{case: paired_differences([r for r in rows if r["case"] == case], system, reference)
                   for case in cases}}
            for system, reference in pairs}


def run_quality(config: QualityConfig) -> dict[str, Any]:
    if any(name.startswith("outpaint-") and not name.startswith(INPAINT9) for name in config.systems):
        ensure_exported(config.weights, config.model)
    if any(name.startswith(INPAINT9) for name in config.systems):
        ensure_exported(config.inpaint_weights, config.inpaint_model)
    systems = build_systems(config)
    rows: list[dict[str, Any]] = []
    sheet: dict[str, dict[str, np.ndarray]] = {}
    work = [(case, seed) for case in config.cases
            for seed in held_out_seeds(min(case.scenes, config.scenes or case.scenes))]
    machine = describe_machine()
    for path in (config.out_json, config.out_markdown, config.out_sheet):
        path.parent.mkdir(parents=True, exist_ok=True)
    for case, seed in tqdm(work, desc="quality", unit="scene"):
        scene = scene_from_seed(seed)
        truth, source = case.truth(scene), case.source_image(scene)
        truth_seam = seam_score(truth, case.source)
        for system in systems:
            started = time.perf_counter()
            image = system.outpaint(case, source, scene.caption(), seed)
            seconds = time.perf_counter() - started
            rows.append({"case": case.name, "seed": seed, "kind": type(scene).__name__.lower(),
                         "system": system.name, "seconds": round(seconds, 3) if system.generative else None,
                         "truth_seam": truth_seam, **score(case, scene, image, truth)})
            if system.name.startswith("outpaint-fast") and isinstance(system, Ours):
                rows[-1]["unet"] = unet_work(system.pipeline, system.last)
            if seed == held_out_seeds(1)[0]:
                sheet.setdefault(case.name, {"truth": truth})[system.name] = image
        # After every scene, so a run stopped early (or killed) keeps what it measured.
        result = quality_result(config, systems, rows, machine, done=len(rows) // len(systems), planned=len(work))
        config.out_json.write_text(json.dumps(result, indent=1) + "\n")
        config.out_markdown.write_text(markdown(result))
    result = quality_result(config, systems, rows, machine, done=len(work), planned=len(work))
    config.out_json.write_text(json.dumps(result, indent=1) + "\n")
    config.out_markdown.write_text(markdown(result))
    shown = [s.name for s in systems
             if s.name in SHEET_SYSTEMS or s.name.startswith((LARGE_PREFIX, COHERENCE_PREFIX, INPAINT9))]
    shown = shown or [s.name for s in systems]
    contact_sheet(config.out_sheet, sheet, shown)
    return result
