"""Export SD 1.5 weights (a diffusers folder, a single file, a hub id, or random) to checked ONNX graphs."""
