"""The shared vocabulary of every layer: SD 1.5's geometry, the exported graphs and their tensor
names, the model folder's manifest, TensorRT build keys and profiles, and the errors.

It imports nothing of outpaint's: `kernels`, `engine`, `export`, `server` and `benchmarks` build on
it, never the reverse (docs/architecture.md has the picture, tests/test_layering.py enforces it).
"""
