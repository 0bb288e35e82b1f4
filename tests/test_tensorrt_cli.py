"""`outpaint build-engines` and the --backend choices, on the CPU."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from outpaint.cli import build_parser, main
from outpaint.engine.backends.registry import BACKENDS


@pytest.fixture(scope="module")
def model_copy(tiny_model_dir, tmp_path_factory) -> Path:
    """A private copy of the tiny model: these tests write engines/ into it."""
    target = tmp_path_factory.mktemp("model-copy") / "model"
    return Path(shutil.copytree(tiny_model_dir, target, ignore=shutil.ignore_patterns("engines")))



def test_run_help_lists_every_registered_backend(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    help_text = capsys.readouterr().out
    for name in BACKENDS:
        assert name in help_text


def test_an_unknown_backend_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--model", "m", "--image", "i", "--out", "o", "--prompt", "p",
                                   "--backend", "cuda"])
    assert "ort-trt" in capsys.readouterr().err


def test_clean_only_prepares_every_graph_on_the_cpu(model_copy, capsys):
    assert main(["build-engines", "--model", str(model_copy), "--clean-only"]) == 0
    out = capsys.readouterr().out
    for name in ("text_encoder", "unet", "vae_encoder", "vae_decoder", "ddim_step_guided_blend_c4"):
        assert f"{name}: " in out
        assert (model_copy / "engines" / "onnx-clean" / name / "model.onnx").is_file()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_building_here_exits_2_naming_what_is_missing(tiny_model_dir, capsys):
    assert main(["build-engines", "--model", str(tiny_model_dir)]) == 2
    assert "`tensorrt` Python package" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--static", "300x256"], "not a multiple of 64"),
    (["--canvas", "512:256:1024"], "min <= opt <= max"),
    (["--static", "big"], "WIDTHxHEIGHT"),
])
def test_bad_shapes_are_refused_before_any_work(tiny_model_dir, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["build-engines", "--model", str(tiny_model_dir), *args])
    assert message in str(exit_info.value) + capsys.readouterr().err
