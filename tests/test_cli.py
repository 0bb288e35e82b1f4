"""The `outpaint` command, run as a user runs it (a subprocess)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image, ImageSequence

from .conftest import make_png


def _outpaint(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "outpaint.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_run_writes_an_image_of_the_requested_size_and_prints_the_seed(tiny_model_dir, tmp_path):
    image = tmp_path / "in.png"
    image.write_bytes(make_png(100, 120))
    out = tmp_path / "out.jpg"
    done = _outpaint("run", "--model", str(tiny_model_dir), "--image", str(image), "--prompt", "a harbour",
                     "--out", str(out), "--width", "320", "--height", "256", "--offset-x", "200", "--seed", "9")
    assert done.returncode == 0, done.stderr
    assert "seed 9" in done.stdout
    assert Image.open(out).size == (320, 256)


def test_run_rejects_out_of_range_values_naming_the_field(tiny_model_dir, tmp_path):
    image = tmp_path / "in.png"
    image.write_bytes(make_png(64, 64))
    done = _outpaint("run", "--model", str(tiny_model_dir), "--image", str(image), "--prompt", "x",
                     "--out", str(tmp_path / "o.jpg"), "--width", "300")
    assert done.returncode == 2
    assert "img_width" in done.stderr and "multiple of 64" in done.stderr


def test_run_on_a_file_that_is_not_an_image(tiny_model_dir, tmp_path):
    bogus = tmp_path / "in.png"
    bogus.write_text("hello")
    done = _outpaint("run", "--model", str(tiny_model_dir), "--image", str(bogus), "--prompt", "x",
                     "--out", str(tmp_path / "o.jpg"), "--width", "256", "--height", "256")
    assert done.returncode == 2 and "not a decodable image" in done.stderr


def test_run_with_a_missing_model_folder(tmp_path):
    image = tmp_path / "in.png"
    image.write_bytes(make_png(64, 64))
    done = _outpaint("run", "--model", str(tmp_path / "none"), "--image", str(image), "--prompt", "x",
                     "--out", str(tmp_path / "o.jpg"))
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_demo_reuses_a_model_and_reports_stages(tiny_model_dir, tmp_path):
    out = tmp_path / "demo.jpg"
    done = _outpaint("demo", "--model", str(tiny_model_dir), "--out", str(out), "--width", "256", "--height", "256")
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (256, 256)
    assert Image.open(tmp_path / "demo-compare.jpg").size == (3 * 256 + 32, 256 + 28)  # source | ours | truth
    for stage in ("text_encoder", "vae_encode", "denoise", "vae_decode", "per denoising step"):
        assert stage in done.stdout


def test_run_fast_changes_only_the_new_area(tiny_model_dir, tmp_path):
    import numpy as np

    from outpaint.engine import canvas as cv
    from outpaint.engine.cpu_features import fast_backend
    from outpaint.engine.request import FIELDS

    image = tmp_path / "in.png"
    image.write_bytes(make_png(128, 256))
    args = ("--model", str(tiny_model_dir), "--image", str(image), "--prompt", "a harbour", "--width", "256",
            "--height", "256", "--seed", "3")
    outputs = []
    for extra in ((), ("--fast",)):
        out = tmp_path / f"out{len(extra)}.png"
        done = _outpaint("run", *args, "--out", str(out), *extra)
        assert done.returncode == 0, done.stderr
        outputs.append(np.asarray(Image.open(out).convert("RGB")))
    # Without --backend, --fast says which backend and precision it chose for this CPU, and why.
    assert f"--fast: {fast_backend().reason}" in done.stderr
    placed = cv.make_canvas(cv.decode_image(image.read_bytes()), width=256, height=256,
                            mask_expand=int(FIELDS["mask_expand"].default))
    new_area = placed.mask > 0
    np.testing.assert_array_equal(outputs[1][~new_area], outputs[0][~new_area])
    assert np.any(outputs[1][new_area] != outputs[0][new_area]), "--fast did not change the generation"


def test_info_shows_the_capabilities_and_what_fast_would_choose():
    from outpaint.engine.cpu_features import cpu_features, fast_backend

    done = _outpaint("info", timeout=60)
    assert done.returncode == 0, done.stderr
    for capability, present in cpu_features().capabilities().items():
        label = "native bf16" if capability == "native_bf16" else capability
        assert any(line.startswith(label) and f" {'yes' if present else 'no'}" in line
                   for line in done.stdout.splitlines()), (capability, done.stdout)
    assert "onnxruntime" in done.stdout and "CPUExecutionProvider" in done.stdout
    assert fast_backend().reason in done.stdout


def test_run_help_lists_the_schedulers_and_the_defaults():
    from outpaint.engine.schedulers import API_SCHEDULER_NAMES

    done = _outpaint("run", "--help", timeout=60)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())  # argparse wraps lines anywhere
    for name in API_SCHEDULER_NAMES:
        assert name in text, name
    assert "(default DDIM" in text and "(default pushpull)" in text and "(default 25)" in text


def test_explicit_bf16_backend_without_native_bf16_fails_with_the_reason(tiny_model_dir, tmp_path):
    from outpaint.engine.cpu_features import cpu_features

    features = cpu_features()
    if not features.openvino or features.native_bf16:
        pytest.skip("needs openvino on a CPU without native bf16")
    image = tmp_path / "in.png"
    image.write_bytes(make_png(64, 64))
    done = _outpaint("run", "--model", str(tiny_model_dir), "--image", str(image), "--prompt", "x", "--fast",
                     "--backend", "openvino-bf16", "--out", str(tmp_path / "o.jpg"))
    assert done.returncode == 2 and "this CPU has no native bf16 (OpenVINO reports" in done.stderr


@pytest.mark.parametrize("out", ["x.bmp", "x", "folder"])
def test_a_bad_output_path_is_refused_before_the_model_loads(tiny_model_dir, tmp_path, out):
    """`--out x.bmp` was refused only after the whole generation."""
    import time

    image = tmp_path / "in.png"
    image.write_bytes(make_png(64, 64))
    (tmp_path / "folder.jpg").mkdir()
    target = tmp_path / ("folder.jpg" if out == "folder" else out)
    # A model folder that does not exist: loading it would fail with its own message, so the --out
    # message proves the output path was checked first.
    started = time.perf_counter()
    done = _outpaint("run", "--model", str(tmp_path / "no-model"), "--image", str(image), "--prompt", "x",
                     "--out", str(target), timeout=120)
    assert done.returncode != 0 and "does not exist" not in done.stderr, done.stderr
    assert str(target) in done.stderr and ".jpg, .jpeg, .png, .webp" in done.stderr
    # With a real model it is refused as fast: no denoising step ran.
    done = _outpaint("run", "--model", str(tiny_model_dir), "--image", str(image), "--prompt", "x",
                     "--out", str(target), "--steps", "100", timeout=120)
    assert done.returncode != 0 and "denoising" not in done.stderr and "seed" not in done.stdout
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_truncated_graph_is_a_clear_error_from_run_and_serve(tiny_model_dir, tmp_path, command):
    """It was an ONNX Runtime protobuf traceback."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    graph = model / "unet" / "model.mha.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    image = tmp_path / "in.png"
    image.write_bytes(make_png(64, 64))
    args = (["run", "--image", str(image), "--prompt", "x", "--out", str(tmp_path / "o.jpg")] if command == "run"
            else ["serve", "--no-auth", "--port", "0"])
    done = _outpaint(*args, "--model", str(model), timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "unet/model.mha.onnx has 1000 bytes" in done.stderr
    assert f"outpaint export --random tiny --seed 0 {model}" in done.stderr


def test_scene_zoom_and_pan_from_the_command_line(tiny_model_dir, tmp_path):
    scene = tmp_path / "scene.png"
    done = _outpaint("scene", "--seed", "1000003", "--width", "128", "--height", "128", "--out", str(scene))
    assert done.returncode == 0, done.stderr
    assert Image.open(scene).size == (128, 128) and len(done.stdout.strip()) > 10  # the caption
    video, frames = tmp_path / "zoom.webp", tmp_path / "keyframes"
    done = _outpaint("zoom", "--model", str(tiny_model_dir), "--image", str(scene), "--out", str(video),
                     "--prompt", "x", "--width", "256", "--height", "256", "--zoom-steps", "2",
                     "--frames-per-step", "3", "--keyframes", str(frames), "--seed", "4")
    assert done.returncode == 0, done.stderr
    assert "seeds 4..5" in done.stdout
    with Image.open(video) as clip:
        frame_count = sum(1 for _ in ImageSequence.Iterator(clip))
        assert frame_count == 7 and clip.size == (256, 256)
    assert sorted(p.name for p in frames.iterdir()) == [f"keyframe-0{k}.png" for k in range(3)]
    pano = tmp_path / "pano.jpg"
    done = _outpaint("pan", "--model", str(tiny_model_dir), "--image", str(scene), "--out", str(pano),
                     "--prompt", "x", "--width", "256", "--height", "256", "--pan-width", "400")
    assert done.returncode == 0, done.stderr
    assert Image.open(pano).size == (400, 256)


def test_zoom_refuses_a_video_format_it_cannot_write_before_the_model_loads(tmp_path):
    image = tmp_path / "in.png"
    image.write_bytes(make_png(64, 64))
    done = _outpaint("zoom", "--model", str(tmp_path / "no-model"), "--image", str(image), "--prompt", "x",
                     "--out", str(tmp_path / "zoom.avi"))
    assert done.returncode != 0
    assert "suffix must be one of .webp, .gif, .mp4" in done.stderr
