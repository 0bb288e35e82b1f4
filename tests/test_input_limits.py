"""Bounded time and memory for hostile inputs to the engine, measured in a fresh process (issue 11).

Each measurement runs in its own interpreter so that what earlier tests allocated does not count,
and reads the kernel's peak resident memory (VmHWM) around the one operation.
"""

from __future__ import annotations

import pytest

from .process_memory import measure, require_proc

# What each operation may hold above the process's resident memory before it, in MB. Decoding a
# 4096x4096 source holds about 12 bytes per pixel at its peak (PIL's RGBX image, the orientation copy
# and the RGB array): 200 MB; everything after decoding is bounded by the 1024x1024 canvas.
DECODE_4096_MB = 300
CANVAS_MB = 150
PROMPT_MB = 150

_SOURCE = """
import io
import numpy as np
from PIL import Image
from outpaint.engine import canvas as cv
n = {n}
y, x = np.mgrid[0:n, 0:n]
pixels = np.stack([x * 255 // n, y * 255 // n, (x + y) * 127 // n], -1).astype(np.uint8)
buffer = io.BytesIO()
Image.fromarray(pixels).save(buffer, format="PNG")
data = buffer.getvalue()
del pixels, x, y
"""


@pytest.mark.parametrize("n", [2048, 4096])
def test_scale_10_on_a_large_source_costs_the_canvas_not_the_scaled_source(n):
    """2048x2048 at scale 10 peaked at 4.8 GB and took 23 s; 4096x4096 needed more than the machine had."""
    require_proc()
    decoded = measure(_SOURCE.format(n=n), "source = cv.decode_image(data)")
    placed = measure(
        _SOURCE.format(n=n) + "source = cv.decode_image(data)\n",
        "c = cv.make_canvas(source, width=1024, height=1024, scale=10.0, offset_x=0, offset_y=0)\n"
        "assert c.known.all()",
    )
    print(f"\n{n}x{n} PNG: decode {decoded['seconds']:.2f} s +{decoded['grew_mb']:.0f} MB; "
          f"scale-10 canvas {placed['seconds']:.2f} s +{placed['grew_mb']:.0f} MB")
    assert decoded["grew_mb"] < DECODE_4096_MB and decoded["seconds"] < 10
    assert placed["grew_mb"] < CANVAS_MB and placed["seconds"] < 5


def test_a_15_mb_prompt_is_cut_before_tokenizing(tiny_model_dir):
    """It took 69 s and 3.7 GB (1.7 GB still held afterwards) to keep 77 tokens."""
    require_proc()
    setup = (
        "from pathlib import Path\n"
        "from outpaint.engine.tokenizer import ClipTokenizer\n"
        f"tokenizer = ClipTokenizer(Path({str(tiny_model_dir / 'tokenizer')!r}))\n"
        "prompt = 'a lighthouse on a cliff, ' * (15_000_000 // 25)\n"
    )
    result = measure(setup, "tokens = tokenizer(prompt)\nassert tokens.truncated and tokens.chars_read")
    print(f"\n15 MB prompt: {result['seconds']:.2f} s +{result['grew_mb']:.0f} MB")
    assert result["seconds"] < 5 and result["grew_mb"] < PROMPT_MB


def test_a_15_mb_prompt_and_negative_prompt_through_the_pipeline(tiny_model_dir):
    require_proc()
    setup = (
        "import dataclasses\n"
        "import io\n"
        "from PIL import Image\n"
        "from outpaint.engine.pipeline import OutpaintPipeline\n"
        "from outpaint.engine.request import OutpaintRequest\n"
        f"pipe = OutpaintPipeline.load({str(tiny_model_dir)!r})\n"
        "request = OutpaintRequest(prompt='castle ' * (15_000_000 // 7), negative_prompt='\\u00e9' * 15_000_000,\n"
        "                          img_width=256, img_height=256, num_inference_steps=25, strength=0.1,\n"
        "                          offset_x=64, offset_y=64, seed=1)\n"
        "buffer = io.BytesIO()\n"
        "Image.new('RGB', (128, 128), (90, 140, 200)).save(buffer, format='PNG')\n"
        "source = buffer.getvalue()\n"
        "pipe(source, dataclasses.replace(request, prompt='warm up', negative_prompt=''))\n"
    )
    result = measure(setup, "result = pipe(source, request)\n"
                            "assert sum('was cut' in w for w in result.warnings) == 2, result.warnings")
    print(f"\n15 MB prompt + 15 MB negative prompt, whole request: {result['seconds']:.2f} s "
          f"+{result['grew_mb']:.0f} MB")
    assert result["seconds"] < 20 and result["grew_mb"] < 2 * PROMPT_MB
