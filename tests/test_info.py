"""`outpaint info --model`: what a model folder holds, and a damaged one named with its repair."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from outpaint.info import describe_model, format_model


def _info(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "outpaint.cli", "info", *args], capture_output=True, text=True,
                          check=False)


def test_a_model_folder_is_described_from_its_manifest(tiny_model_dir):
    model = describe_model(tiny_model_dir)
    assert model["layout"] == "outpaint" and model["unet_in_channels"] == 4
    assert model["graphs"] == ["text_encoder", "unet", "vae_encoder", "vae_decoder", "unet_deep", "unet_shallow"]
    assert model["feature_cache_split"] and model["int8_twins"] == [] and model["problems"] == []
    on_disk = sum(p.stat().st_size for p in tiny_model_dir.rglob("*") if p.suffix in (".onnx", ".data"))
    assert 0 < model["bytes_on_disk"] <= on_disk
    text = format_model(model)
    assert "feature cache  yes" in text and "none (`outpaint quantize` adds them)" in text

    done = _info("--json", "--model", str(tiny_model_dir))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["model"]["graphs"] == model["graphs"]


def test_a_damaged_folder_is_named_with_its_repair_and_fails(tiny_model_dir, tmp_path):
    damaged = tmp_path / "model"
    shutil.copytree(tiny_model_dir, damaged)
    victim = next(p for p in sorted((damaged / "unet").iterdir()) if p.suffix == ".onnx")
    victim.write_bytes(victim.read_bytes()[:100])
    done = _info("--model", str(damaged))
    assert done.returncode == 1
    assert "DAMAGED" in done.stdout and victim.name in done.stdout and "outpaint export" in done.stdout


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_a_folder_that_is_no_model_is_a_clear_error(tmp_path, folder):
    target = tmp_path / folder
    if folder == "empty":
        target.mkdir()
    done = _info("--model", str(target))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "outpaint info:" in done.stderr and "outpaint export" in done.stderr
