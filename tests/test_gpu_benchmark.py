"""benchmarks/gpu.py: the table and the error path run anywhere; the measurement itself needs a GPU."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from outpaint.benchmarks.gpu import format_table, main
from outpaint.benchmarks.timing import row_from_samples
from outpaint.engine.coherence import COHERENCE_DEFAULT


def test_table_shows_milliseconds_per_stage():
    rows = [row_from_samples("outpaint-tensorrt", "denoise_step", "512x512", [0.0201, 0.0199, 0.0200])]
    table = format_table(rows)
    assert "denoise_step" in table and "20.00" in table and "19.90" in table


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="a GPU ONNX Runtime is here")
def test_without_a_gpu_the_benchmark_says_what_is_missing(tiny_model_dir, capsys):
    assert main(["--model", str(tiny_model_dir), "--backend", "ort-cuda", "--runs", "1"]) == 2
    assert "CUDAExecutionProvider" in capsys.readouterr().err


@pytest.mark.gpu
def test_gpu_benchmark_times_every_stage(tiny_model_dir, tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["--model", str(tiny_model_dir), "--backend", "ort-cuda", "--width", "256", "--height", "256",
                 "--steps", "3", "--runs", "1", "--warmup", "1", "--out", str(out)]) == 0
    rows = {r["stage"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"text_encoder", "vae_encode", "denoise_step", "vae_decode", "total"}
    # The default coherence pass (engine/coherence.py) runs its own steps after the main 3.
    assert rows["denoise_step"]["runs"] == 3 + COHERENCE_DEFAULT.steps
    assert rows["total"]["median_s"] > rows["denoise_step"]["median_s"]
