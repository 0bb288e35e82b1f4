"""outpaint: Stable Diffusion 1.5 outpainting on ONNX Runtime, TensorRT and friends."""

__version__ = "0.1.0"
