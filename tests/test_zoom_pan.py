"""Unlimited zoom (engine/zoom.py) and panoramas (engine/pan.py) on the tiny model: the consistency
each promises is checked pixel for pixel."""

import io

import numpy as np
import pytest
from PIL import Image

from outpaint.core.errors import InvalidRequest
from outpaint.engine import canvas as cv
from outpaint.engine.coherence import COHERENCE_DEFAULT
from outpaint.engine.pan import panorama, plan_panorama
from outpaint.engine.zoom import render_zoom, zoom_keyframes, zoom_video

from .conftest import make_png, make_request

BAND = 8


def _source(width: int, height: int, seed: int = 0) -> cv.SourceImage:
    return cv.decode_image(make_png(width, height, seed))


@pytest.fixture(scope="module")
def zoom(tiny_pipeline):
    request = make_request(img_width=128, img_height=128, num_inference_steps=2, mask_expand=BAND, seed=9)
    events = []
    frames, results = zoom_keyframes(tiny_pipeline, _source(160, 128), request, steps=2,
                                     on_step=lambda k, event: events.append((k, event.index)))
    return frames, results, events


def test_each_keyframe_holds_the_previous_one_at_half_size_outside_the_band(zoom):
    frames, results, events = zoom
    assert len(frames) == 3 and all(f.shape == (128, 128, 3) for f in frames)
    # Each outpaint's 2 steps, then its coherence pass's (engine/coherence.py).
    assert events == [(k, i) for k in (0, 1) for i in range(2 + COHERENCE_DEFAULT.steps)]
    assert [r.seed for r in results] == [9, 10]
    for k in (1, 2):
        inner = np.asarray(Image.fromarray(frames[k - 1]).resize((64, 64), Image.Resampling.LANCZOS))
        kept = results[k - 1].canvas.alpha[32:96, 32:96] >= 1.0
        assert kept.sum() == (64 - 2 * BAND) ** 2
        np.testing.assert_array_equal(frames[k][32:96, 32:96][kept], inner[kept])


def test_the_zoom_video_starts_on_the_source_and_ends_on_the_last_keyframe(zoom):
    frames, _, _ = zoom
    video = list(zoom_video(frames, frames_per_step=3, band=BAND))
    assert len(video) == 7 and all(f.shape == (128, 128, 3) for f in video)
    np.testing.assert_array_equal(video[0], frames[0])
    # The last frame is the last keyframe, with the inner ones (same picture, more detail) inside its box.
    ring = np.ones((128, 128), bool)
    ring[32 + BAND:96 - BAND, 32 + BAND:96 - BAND] = False
    np.testing.assert_array_equal(video[-1][ring], frames[-1][ring])
    # Just past a keyframe the view is that keyframe again but for its blended ring: the video is continuous.
    near = render_zoom(frames, 1.0001, band=BAND)
    core = (slice(BAND * 3, 128 - BAND * 3),) * 2
    assert np.abs(near[core].astype(int) - render_zoom(frames, 1.0, band=BAND)[core]).mean() < 2.0


def test_a_zoom_refuses_what_it_cannot_do(tiny_pipeline):
    request = make_request(img_width=128, img_height=128, num_inference_steps=2)
    with pytest.raises(InvalidRequest, match="steps"):
        zoom_keyframes(tiny_pipeline, _source(64, 64), request, steps=0)
    with pytest.raises(InvalidRequest, match="scale"):
        zoom_keyframes(tiny_pipeline, _source(64, 64), request, steps=1, scale=1.0)
    rgba = io.BytesIO()
    Image.new("RGBA", (64, 64), (10, 20, 30, 0)).save(rgba, format="PNG")
    with pytest.raises(InvalidRequest, match="transparent"):
        zoom_keyframes(tiny_pipeline, cv.decode_image(rgba.getvalue()), request, steps=1)


def test_a_panorama_is_the_requested_width_with_the_source_kept_in_its_middle(tiny_pipeline):
    request = make_request(img_width=256, img_height=128, num_inference_steps=2, mask_expand=BAND, seed=3)
    source = _source(128, 128, seed=5)
    events = []
    image, (start, stop), results = panorama(tiny_pipeline, source, request, width=600,
                                             on_step=lambda k, event: events.append(k))
    assert image.shape == (128, 600, 3)
    assert stop - start == 128 and abs(start - (600 - stop)) <= 128  # roughly centred
    # Every source pixel but the band the first outpaint on each side blended comes back bit for bit.
    np.testing.assert_array_equal(image[:, start + BAND:stop - BAND], source.rgb[:, BAND:-BAND])
    assert len(results) >= 4 and sorted(set(events)) == list(range(len(results)))
    assert [r.seed for r in results] == list(range(3, 3 + len(results)))
    # The plan made from the sizes alone (what the HTTP service charges) lists exactly the outpaints run.
    plan = plan_panorama(128, 256, 600)
    assert [w.canvas_width for w in plan.windows] == [r.image.shape[1] for r in results]
    assert plan.source_columns == (start, stop)


def test_a_panorama_refuses_a_width_it_cannot_reach_by_extending(tiny_pipeline):
    request = make_request(img_width=256, img_height=128, num_inference_steps=2)
    with pytest.raises(InvalidRequest, match="width"):
        panorama(tiny_pipeline, _source(256, 128), request, width=200)
    with pytest.raises(InvalidRequest, match="chunk"):
        panorama(tiny_pipeline, _source(64, 128), request, width=600, chunk=250)
    with pytest.raises(InvalidRequest, match="width"):
        plan_panorama(256, 256, 256)


def test_a_panorama_plan_adds_exactly_the_columns_asked_for():
    for source, window, width, chunk in [(128, 256, 600, None), (40, 256, 1000, 64), (300, 512, 4096, 200),
                                         (1000, 1024, 1001, None)]:
        plan = plan_panorama(source, window, width, chunk)
        assert all(w.canvas_width <= window and w.canvas_width % 64 == 0 for w in plan.windows)
        grown = source + sum(w.new for w in plan.windows)
        start, stop = plan.source_columns
        assert stop - start == source and start >= 0 and stop <= width
        assert plan.crop_left + width <= grown
