"""The scheduler's per-step arithmetic as device kernels, each checked against its numpy reference."""
