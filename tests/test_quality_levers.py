"""The quality benchmark's fast-path variants, their verdicts against the reseed bars, and the
full-size cost estimate they are ranked by (docs/quality.md, benchmarks/fast_cost.py)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from outpaint.benchmarks.fast_cost import estimate_full_size
from outpaint.benchmarks.quality.report import markdown
from outpaint.benchmarks.quality.run import RESEED, fast_path_verdicts, fast_variant
from outpaint.engine.cpu_features import fast_backend
from outpaint.engine.fast_path import FastPathOptions


def test_fast_variants_name_their_levers_and_precision():
    assert fast_variant("outpaint-fast") == (FastPathOptions(), fast_backend().backend)
    assert fast_variant("outpaint-fast:fp32") == (FastPathOptions(), "openvino-fp32")
    assert fast_variant("outpaint-fast:int8") == (FastPathOptions(), "openvino-int8")
    options, backend = fast_variant("outpaint-fast:off:5:2:bf16")
    assert backend == "openvino-bf16"
    assert (options.window_margin, options.feature_cache_interval, options.unguided_tail_steps) == (None, 5, 2)
    assert fast_variant("outpaint-fast:4:4:0")[0].window_margin == 4


@pytest.mark.parametrize("name", ["outpaint-fast:7:3", "outpaint-fast:7:3:0:fp16", "outpaint-fast:x:3:0",
                                  "outpaint-fast:7:0:0", "outpaint-fastest"])
def test_a_bad_fast_variant_says_the_syntax(name):
    with pytest.raises(ValueError, match="outpaint-fast"):
        fast_variant(name)


# The lever probe's measured whole outpaints (docs/benchmarks.md: full-size model, bf16, tail 2).
PROBE = {(7, 1): 70.6, (7, 2): 47.6, (7, 3): 39.2, (7, 5): 32.9,
         (None, 3): 64.0, (None, 2): 81.4, (None, 4): 59.7, (None, 6): 55.2}


@pytest.mark.parametrize("window,interval", list(PROBE))
def test_the_full_size_estimate_reproduces_the_lever_probe(window, interval):
    estimate = estimate_full_size(FastPathOptions(window_margin=window, feature_cache_interval=interval,
                                                  unguided_tail_steps=2))
    assert estimate.window_columns == (40 if window == 7 else 64)
    assert abs(estimate.total_s - PROBE[(window, interval)]) <= 4.5


def test_the_estimate_ranks_the_levers():
    def seconds(**kw):
        return estimate_full_size(FastPathOptions(**kw)).total_s

    assert seconds(feature_cache_interval=5) < seconds(feature_cache_interval=4) < seconds(feature_cache_interval=3)
    assert seconds(unguided_tail_steps=2) < seconds()
    assert seconds(window_margin=12) > seconds(window_margin=7) == seconds(window_margin=4)  # 40 columns either way
    assert seconds(window_margin=None) > seconds(window_margin=12)


def _rows(system, psnr, seam, delta_e):
    return [{"case": "c", "seed": s, "system": system, "psnr_db": psnr[s], "seam": seam[s],
             "ciede2000_band": delta_e[s]} for s in range(len(psnr))]


def test_verdicts_judge_psnr_seam_and_colour_against_the_reseed_spread():
    rng = np.random.default_rng(0)
    n = 32
    psnr, seam, de = 16 + rng.normal(0, 2, n), 2.3 + rng.normal(0, 0.3, n), 14 + rng.normal(0, 2, n)
    rows = (_rows("outpaint-ort-cpu", psnr, seam, de)
            + _rows(RESEED, psnr + rng.normal(0, 2, n), seam + rng.normal(0, 0.3, n), de + rng.normal(0, 2, n))
            + _rows("outpaint-fast", psnr - 0.2, seam + 0.01, de + 0.1)
            + _rows("outpaint-fast:off:5:0", psnr - 3.0, seam + 1.0, de + 5.0))
    fast = SimpleNamespace(pipeline=SimpleNamespace(options=FastPathOptions(window_margin=7, feature_cache_interval=3),
                                                    backend="openvino-bf16"))
    cheap_options = FastPathOptions(window_margin=None, feature_cache_interval=5)
    cheap = SimpleNamespace(pipeline=SimpleNamespace(options=cheap_options, backend="openvino-bf16"))
    bar = fast_path_verdicts(rows, {"outpaint-ort-cpu": None, "outpaint-fast": fast, "outpaint-fast:off:5:0": cheap})
    assert bar is not None and 0 < bar["bar_db"] < 2 and 0 < bar["seam_bar"] < 0.5 and 0 < bar["delta_e_bar"] < 2
    good, bad = bar["fast"]["outpaint-fast"], bar["fast"]["outpaint-fast:off:5:0"]
    assert good["within_bar"] and good["seam_within_bar"] and good["delta_e_within_bar"]
    assert not (bad["within_bar"] or bad["seam_within_bar"] or bad["delta_e_within_bar"])
    assert good["mean_psnr_drop_db"] == pytest.approx(0.2) and bad["mean_seam_rise"] == pytest.approx(1.0)
    assert good["full_size"]["whole"] == 9 and bad["full_size"]["window_columns"] == 64
    table = markdown({"command": "c", "machine": {}, "weights": "w", "truth_seam_mean": 1.5, "cases": [],
                      "summary": {}, "fast_path_bar": bar, "rows": rows})
    assert "| outpaint-fast:off:5:0 | openvino-bf16 | 3.000 | no | +1.000 | no | +5.000 | no | 5/20/0 |" in table
