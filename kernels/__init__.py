"""The sampler's per-step arithmetic as device kernels, each checked against its numpy reference."""
