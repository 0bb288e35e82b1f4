"""SD 1.5's fixed sizes, which the canvas, the graphs, the exporter and the TensorRT profiles share."""

from __future__ import annotations

LATENT_FACTOR = 8  # the VAE's downsampling: one latent cell is 8 x 8 pixels
LATENT_CHANNELS = 4  # channels of the VAE's latent (and of the UNet's noise prediction)
UNET_LATENT_MULTIPLE = 8  # latent cells: the UNet's three downsamplings need sizes divisible by 2**3
CANVAS_MULTIPLE = LATENT_FACTOR * UNET_LATENT_MULTIPLE  # 64 px: the canvas granularity of every request
TEXT_TOKENS = 77  # CLIP's context length: every prompt is tokenized to exactly this many ids
