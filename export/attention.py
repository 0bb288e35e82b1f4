"""Attention exported as ONNX Runtime's fused `com.microsoft.MultiHeadAttention` (the "mha" variant).

The TorchScript exporter writes SD's attention as MatMul -> Softmax -> MatMul, which materialises
the (2B x heads, HW/64, HW/64) score matrix: at a 1024x1024 canvas that is 16384^2 floats per head,
more memory than a 24 GB machine has for SD 1.5's first UNet level. ONNX Runtime's MultiHeadAttention
kernel (CPU FlashAttention since 1.19, flash/memory-efficient kernels on CUDA) never holds it. Those
ops are ONNX Runtime's own, so the variant is exported beside the standard graph, which TensorRT and
OpenVINO keep reading.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


class _MultiHeadAttention(torch.autograd.Function):
    """softmax(q k^T / sqrt(d)) v over `num_heads` heads; (B, S, C), (B, L, C), (B, L, C) -> (B, S, C)."""

    @staticmethod
    def forward(ctx, query, key, value, num_heads: int):
        batch, length, channels = query.shape
        head_dim = channels // num_heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, num_heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(query), heads(key), heads(value))
        return out.transpose(1, 2).reshape(batch, length, channels)

    @staticmethod
    def symbolic(g, query, key, value, num_heads: int):
        out = g.op("com.microsoft::MultiHeadAttention", query, key, value, num_heads_i=num_heads)
        # The output has the query's dtype and shape (B, S, C). Saying so is what torch's ONNX shape
        # inference asks for: without it, it cannot infer a com.microsoft op and prints a C++ warning
        # ("shape inference of com.microsoft::MultiHeadAttention type is missing") per attention layer,
        # dozens per export, which Python's warnings filters cannot reach.
        out.setType(query.type())
        return out


class FusedAttentionProcessor:
    """diffusers' AttnProcessor2_0 for SD 1.5's attention layers, with the core as one fused op.

    Covers what SD 1.5's UNet and VAE use: optional group norm, 4-D inputs, residual connection and
    output rescale. Anything else (attention masks, q/k norms) is refused rather than mis-exported.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        if attention_mask is not None or getattr(attn, "norm_q", None) is not None or attn.spatial_norm is not None:
            raise NotImplementedError("fused attention export covers SD 1.5 attention layers only")
        residual = hidden_states
        is_image = hidden_states.ndim == 4
        if is_image:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        out = _MultiHeadAttention.apply(attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), attn.heads)
        out = attn.to_out[1](attn.to_out[0](out))  # linear, dropout (identity in eval)
        if is_image:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def fused_attention(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, every attention layer of a diffusers `model` runs FusedAttentionProcessor."""
    original = model.attn_processors
    model.set_attn_processor(FusedAttentionProcessor())
    try:
        yield
    finally:
        model.set_attn_processor(original)
