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
        *(["", f"**Partial**: written after {result['partial']}; the run goes on (or was stopped)."]
          if result.get("partial") else []),
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
        lines += _fast_path_section(bar, result["rows"])
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
    paired = result.get("paired")
    if paired:
        lines += ["", "## Paired: the 9-channel model against the 4-channel blend, tiled against whole VAE", "",
                  "Each row is the first system's score minus the second's on the same case, scene and noise "
                  "(paired: mean ± two standard errors). PSNR, SSIM: higher is better; seam, ΔE: lower is "
                  "better.", "",
                  "| pair | case | n | Δ PSNR dB | Δ SSIM | Δ seam | Δ ΔE band |", "|---|---|---:|---:|---:|---:|---:|"]
        for pair, by_case in paired.items():
            for case, v in by_case.items():
                cells = [f"{v[k]['mean']:+.3f} ± {v[k]['two_se']:.3f}" if v[k]["two_se"] is not None
                         else ("" if v[k]["mean"] is None else f"{v[k]['mean']:+.3f}")
                         for k in ("psnr_db", "ssim", "seam", "ciede2000_band")]
                lines.append(f"| {pair} | {case} | {v['n']} | " + " | ".join(cells) + " |")
    lines += ["", "## Per case", "", "| case | system | n | PSNR dB | SSIM | seam | ΔE band | structure | s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for case in cases:
        for name in systems:
            c = summary[name][case]
            lines.append(f"| {case} | {name} | {c['n']} | {_cell(c['psnr_db'], 2)} | {_cell(c['ssim'], 3)} | "
                         f"{_cell(c['seam'], 2)} | {_cell(c['ciede2000_band'], 2)} | {_cell(c['structure_ok'], 2)} | "
                         f"{_cell(c['seconds'], 2)} |")
    return "\n".join(lines) + "\n"


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def _windows(rows: list[dict[str, Any]], system: str) -> str:
    """The window's share of the canvas's latent cells per image, as the range over the cases."""
    shares = sorted({1.0 if r["unet"]["window_cells"] is None else
                     (r["unet"]["window_cells"][0] * r["unet"]["window_cells"][1])
                     / (r["unet"]["canvas_cells"][0] * r["unet"]["canvas_cells"][1])
                     for r in rows if r["system"] == system and "unet" in r})
    if not shares:
        return ""
    lo, hi = shares[0], shares[-1]
    return f"{lo:.0%}" if lo == hi else f"{lo:.0%}-{hi:.0%}"


def _fast_path_section(bar: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## The fast path against the full path's own spread", "",
             f"Reseeding the full path (`outpaint-ort-cpu` with the next seed) moves an image's new-area PSNR "
             f"by {bar['reseed_mean_abs_db']} dB on average (std {bar['reseed_std_db']} dB over {bar['n']} "
             f"images); the bar is two standard errors of that mean: **{bar['bar_db']} dB**. A fast-path "
             "setting whose mean PSNR drop against the full path on the same seeds is within it cannot be "
             "told from drawing other noise."]
    if "seam_bar" not in bar:  # a result written before seam and ΔE were judged
        lines += ["", "| setting | mean PSNR drop dB | within the bar |", "|---|---:|---|"]
        for name, v in bar["fast"].items():
            lines.append(f"| {name} | {v['mean_psnr_drop_db']:.3f} | {_yes(v['within_bar'])} |")
        return lines
    lines[-1] += (f" The same rule on the seam and the band's ΔE gives their bars (the reseed's spread of "
                  f"each): seam **{bar['seam_bar']}**, ΔE **{bar['delta_e_bar']}**; a mean rise past them is "
                  "materially worse.")
    lines += ["", "UNet calls per image (25 DDIM steps): whole / shallow (feature cache) / of those unguided "
              "(batch 1); window: the UNet window's share of the canvas's latent cells over these cases; "
              "full-size: the window's latent columns and the whole outpaint's estimated seconds at the speed "
              "benchmark's 512x512 request (source on the left half) in bf16 on 2 Zen 4 cores "
              "(benchmarks/fast_cost.py: the lever probe's per-call costs).", "",
              "| setting | backend | PSNR drop dB | within | seam rise | within | ΔE rise | within "
              "| calls whole/shallow/unguided | window | full-size columns | full-size s |",
              "|---|---|---:|---|---:|---|---:|---|---|---|---:|---:|"]
    for name, v in bar["fast"].items():
        f = v["full_size"]
        lines.append(f"| {name} | {v['backend']} | {v['mean_psnr_drop_db']:.3f} | {_yes(v['within_bar'])} | "
                     f"{v['mean_seam_rise']:+.3f} | {_yes(v['seam_within_bar'])} | {v['mean_delta_e_rise']:+.3f} | "
                     f"{_yes(v['delta_e_within_bar'])} | {f['whole']}/{f['shallow']}/{f['unguided']} | "
                     f"{_windows(rows, name)} | {f['window_columns']} | {f['total_s']:.1f} |")
    return lines


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
