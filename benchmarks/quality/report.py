"""The quality benchmark's markdown table and contact sheet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SHEET_ROW_PX = 160


def _cell(value: Any, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    summary = result["summary"]
    systems = list(summary)
    cases = [c["name"] for c in result["cases"]]
    lines = [
        "# Outpainting quality against ground truth",
        "",
        f"Made by `{result['command']}` on {result['machine'].get('cpu', 'this machine')}; "
        f"weights `{result['weights']}`; DDIM, 25 steps, guidance 7.5, the pipeline's defaults otherwise. "
        "Held-out scenes only (docs/quality.md says what each score means).",
        "",
        "PSNR and SSIM over the new area (higher is better); seam: gradient energy across the source's "
        f"edges over that beside them (the ground truth scores {result['truth_seam_mean']}; lower is "
        "smoother); ΔE: mean CIEDE2000 to the truth in the 32 px band next to the source (lower is "
        "better); structure: share of scenes whose horizon, number of suns or pattern period is kept; "
        "s: seconds per image.",
        "",
        "## Totals (mean over every case and scene)",
        "",
        "| system | PSNR dB | SSIM | seam | ΔE band | structure | s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in systems:
        t = summary[name]["total"]
        lines.append(f"| {name} | {_cell(t['psnr_db'], 2)} | {_cell(t['ssim'], 3)} | {_cell(t['seam'], 2)} | "
                     f"{_cell(t['ciede2000_band'], 2)} | {_cell(t['structure_ok'], 2)} | {_cell(t['seconds'], 2)} |")
    bar = result.get("fast_path_bar")
    if bar:
        lines += ["", "## The fast path against the full path's own spread", "",
                  f"Reseeding the full path (`outpaint-ort-cpu` with the next seed) moves an image's new-area PSNR "
                  f"by {bar['reseed_mean_abs_db']} dB on average (std {bar['reseed_std_db']} dB over {bar['n']} "
                  f"images); the bar is two standard errors of that mean: **{bar['bar_db']} dB**. A fast-path "
                  "setting whose mean PSNR drop against the full path on the same seeds is within it cannot be "
                  "told from drawing other noise.", "",
                  "| setting | mean PSNR drop dB | within the bar |", "|---|---:|---|"]
        for name, v in bar["fast"].items():
            lines.append(f"| {name} | {v['mean_psnr_drop_db']:.3f} | {'yes' if v['within_bar'] else 'no'} |")
    coherence = result.get("coherence")
    if coherence:
        lines += ["", "## The coherence pass against the same images without it", "",
                  f"Each `+coherence-WIDTH-STRENGTH-STEPS` row is `{coherence['reference']}`'s images (the engine's "
                  "default colour match) with the pass at those settings, so the differences are paired: the "
                  "mean over the same cases and seeds, ± two standard errors. PSNR, SSIM: higher is better; "
                  "seam, ΔE: lower is better.", "",
                  "| setting | n | Δ PSNR dB | Δ SSIM | Δ seam | Δ ΔE band |", "|---|---:|---:|---:|---:|---:|"]
        for name, v in coherence["variants"].items():
            cells = [f"{v[k]['mean']:+.3f} ± {v[k]['two_se']:.3f}" if v[k]["two_se"] is not None else ""
                     for k in ("psnr_db", "ssim", "seam", "ciede2000_band")]
            lines.append(f"| {name} | {v['n']} | " + " | ".join(cells) + " |")
    lines += ["", "## Per case", "", "| case | system | n | PSNR dB | SSIM | seam | ΔE band | structure | s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case in cases:
        for name in systems:
            c = summary[name][case]
            lines.append(f"| {case} | {name} | {c['n']} | {_cell(c['psnr_db'], 2)} | {_cell(c['ssim'], 3)} | "
                         f"{_cell(c['seam'], 2)} | {_cell(c['ciede2000_band'], 2)} | {_cell(c['structure_ok'], 2)} | "
                         f"{_cell(c['seconds'], 2)} |")
    return "\n".join(lines) + "\n"


def contact_sheet(path: Path, sheet: dict[str, dict[str, np.ndarray]], systems: list[str]) -> None:
    """One row per case (its first held-out scene): each system's image, then the ground truth.
    The gray baseline doubles as "the source on the canvas"."""
    columns = [*systems, "truth"]
    rows = []
    for case, images in sheet.items():
        cells = []
        for name in columns:
            img = Image.fromarray(images[name])
            cells.append(img.resize((max(1, round(img.width * SHEET_ROW_PX / img.height)), SHEET_ROW_PX),
                                    Image.Resampling.LANCZOS))
        rows.append((case, cells))
    widths = [max(cells[i].width for _, cells in rows) for i in range(len(columns))]
    gap, label_w, top = 6, 90, 20
    sheet_img = Image.new("RGB", (label_w + sum(widths) + gap * len(columns), top + len(rows) * (SHEET_ROW_PX + gap)),
                          "white")
    draw = ImageDraw.Draw(sheet_img)
    x = label_w
    for name, w in zip(columns, widths, strict=True):
        draw.text((x, 4), name, fill="black")
        x += w + gap
    for r, (case, cells) in enumerate(rows):
        y = top + r * (SHEET_ROW_PX + gap)
        draw.text((4, y + SHEET_ROW_PX // 2), case, fill="black")
        x = label_w
        for cell, w in zip(cells, widths, strict=True):
            sheet_img.paste(cell, (x, y))
            x += w + gap
    sheet_img.save(path, quality=88)
