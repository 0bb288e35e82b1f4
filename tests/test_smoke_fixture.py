from outpaint.engine.request import OutpaintRequest


def test_tiny_pipeline_outpaints_requested_size(tiny_pipeline, png_256):
    request = OutpaintRequest(prompt="a cat", img_width=384, img_height=256, num_inference_steps=3, seed=7)
    result = tiny_pipeline(png_256, request)
    assert result.image.shape == (256, 384, 3)
    assert result.seed == 7
