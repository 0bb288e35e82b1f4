"""The PyTorch modules that become the ONNX graphs: each wraps one diffusers/transformers model so
that its inputs and outputs are plain tensors named as in core/graphs.py (the feature-cache pair: feature_cache.py)."""

from __future__ import annotations

import torch


class TextEncoderGraph(torch.nn.Module):
    def __init__(self, text_encoder: torch.nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]  # (B, 77, D) last_hidden_state


class UNetGraph(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class VaeEncoderGraph(torch.nn.Module):
    """Image in [-1, 1] -> the mean of the latent distribution (unscaled): deterministic by design."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(image).latent_dist.mean


class VaeDecoderGraph(torch.nn.Module):
    """Unscaled latent (latents / scaling_factor) -> image in about [-1, 1]."""

    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent, return_dict=False)[0]


def graph_modules(components, feature_cache: bool = False) -> dict[str, torch.nn.Module]:
    modules: dict[str, torch.nn.Module] = {
        "text_encoder": TextEncoderGraph(components.text_encoder),
        "unet": UNetGraph(components.unet),
        "vae_encoder": VaeEncoderGraph(components.vae),
        "vae_decoder": VaeDecoderGraph(components.vae),
    }
    if feature_cache:
        from .feature_cache import UNetDeepGraph, UNetShallowGraph

        modules |= {"unet_deep": UNetDeepGraph(components.unet), "unet_shallow": UNetShallowGraph(components.unet)}
    return modules
