"""The UNet split for feature caching across steps (DeepCache, Ma et al. 2023, arXiv:2312.00858).

Adjacent denoising steps change the UNet's deep, low-resolution features very little, so a cached
deep feature can stand in for the whole lower UNet on most steps. Two graphs make that possible:

- `unet_deep` is the whole UNet. Besides the noise prediction it returns `deep_feature`: the hidden
  state entering the last up block's final `SHALLOW_LAYERS + 1` layers, i.e. everything the deep
  path contributes to the output.
- `unet_shallow` runs only the shallow path. That is the time embedding, `conv_in`, the first
  `SHALLOW_LAYERS` layers of the first down block (their outputs are the skip connections the
  last up layers read), then those last up layers on top of the cached `deep_feature`, and the
  output head.

At the step and inputs that produced it, `unet_shallow(x, t, c, unet_deep(x, t, c).deep_feature)`
equals `unet(x, t, c)` exactly. At other steps it is DeepCache's approximation. For SD 1.5 at
512x512 the shallow path is one resnet + transformer down and two up at the 64x64 level.
"""

from __future__ import annotations

import torch

SHALLOW_LAYERS = 1  # down-block layers the shallow path runs (DeepCache's cache_block_id 0)


def _check_supported(unet: torch.nn.Module) -> None:
    config = unet.config
    unsupported = [
        name for name, value in (
            ("class_embed_type", config.class_embed_type), ("addition_embed_type", config.addition_embed_type),
            ("time_embedding_act_fn", config.time_embedding_act_fn),
        ) if value is not None
    ]
    if config.center_input_sample:
        unsupported.append("center_input_sample")
    if config.layers_per_block < SHALLOW_LAYERS:
        unsupported.append(f"layers_per_block={config.layers_per_block}")
    if unsupported:
        raise NotImplementedError(
            f"the feature-cache split covers SD 1.5 UNets; this one sets {', '.join(unsupported)}"
        )


def feature_channels(unet_config) -> int:
    """Channels of `deep_feature`: the width of the up layer before the cut, or of the block below."""
    cut = unet_config.layers_per_block - SHALLOW_LAYERS  # as _UNetSplit.cut
    blocks = unet_config.block_out_channels
    return int(blocks[0] if cut > 0 else blocks[1])


def _layers(block: torch.nn.Module) -> list[tuple[torch.nn.Module, torch.nn.Module | None]]:
    attentions = getattr(block, "attentions", None)
    return [(resnet, attentions[i] if attentions else None) for i, resnet in enumerate(block.resnets)]


def _layer(resnet, attention, hidden: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    hidden = resnet(hidden, emb)
    if attention is not None:
        hidden = attention(hidden, encoder_hidden_states=context, return_dict=False)[0]
    return hidden


class _UNetSplit(torch.nn.Module):
    """One side of the split: the UNet and `cut`, the index of the first up layer the shallow path runs."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        _check_supported(unet)
        self.unet = unet
        self.cut = unet.config.layers_per_block - SHALLOW_LAYERS


class UNetDeepGraph(_UNetSplit):
    """The UNet, returning (out_sample, deep_feature)."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor):
        captured: list[torch.Tensor] = []
        last_up = self.unet.up_blocks[-1]
        if self.cut > 0:
            resnet, attention = _layers(last_up)[self.cut - 1]
            handle = (attention or resnet).register_forward_hook(lambda m, args, out: captured.append(
                out[0] if isinstance(out, tuple) else out))
        else:
            handle = last_up.register_forward_pre_hook(lambda m, args, kwargs: captured.append(
                kwargs.get("hidden_states", args[0] if args else None)), with_kwargs=True)
        try:
            out = self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        finally:
            handle.remove()
        return out, captured[0]


class UNetShallowGraph(_UNetSplit):
    """(sample, timestep, encoder_hidden_states, deep_feature) -> out_sample, through the shallow path only."""

    def forward(self, sample, timestep, encoder_hidden_states, deep_feature):
        unet = self.unet
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep))
        hidden = unet.conv_in(sample)
        skips = [hidden]
        for resnet, attention in _layers(unet.down_blocks[0])[:SHALLOW_LAYERS]:
            hidden = _layer(resnet, attention, hidden, emb, encoder_hidden_states)
            skips.append(hidden)
        hidden = deep_feature
        for resnet, attention in _layers(unet.up_blocks[-1])[self.cut:]:
            hidden = torch.cat([hidden, skips.pop()], dim=1)
            hidden = _layer(resnet, attention, hidden, emb, encoder_hidden_states)
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)
