"""Stage 2: a cache of scaled VAE latents of rendered views and their captions' token ids, so that
the UNet stage never runs the VAE (the UNet trains on random crops of these)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data import render_examples

ENCODE_BATCH = 32


def tokenize(tokenizer_dir: Path, captions: list[str]) -> np.ndarray:
    """(N, 77) int64 token ids, padded the way SD 1.5's pipelines pad them."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    return np.asarray(tokenizer(captions, padding="max_length", max_length=77, truncation=True).input_ids, np.int64)


def build_latent_cache(vae, scaling_factor: float, tokenizer_dir: Path, count: int, size_px: int, seed: int,
                       path: Path) -> dict[str, np.ndarray]:
    """Render `count` views at `size_px`, encode them (posterior mean x scaling factor), save to `path`.
    An existing cache of the same recipe is reused."""
    import torch

    if path.is_file():
        cached = dict(np.load(path))
        if cached["latents"].shape[0] == count and float(cached["scaling_factor"]) == scaling_factor:
            return cached
    latents, captions = [], []
    for start in tqdm(range(0, count, ENCODE_BATCH), desc="latents", unit="batch"):
        n = min(ENCODE_BATCH, count - start)
        images, batch_captions = render_examples(np.random.default_rng([seed, start]), n, size_px, size_px)
        with torch.no_grad():
            mean = vae.encode(torch.from_numpy(images)).latent_dist.mean
        latents.append((mean * scaling_factor).numpy().astype(np.float32))  # (n, 4, size/8, size/8)
        captions += batch_captions
    cache = {"latents": np.concatenate(latents), "token_ids": tokenize(tokenizer_dir, captions),
             "empty_ids": tokenize(tokenizer_dir, [""])[0], "scaling_factor": np.asarray(scaling_factor, np.float64)}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **cache)
    tmp.replace(path)
    return cache
