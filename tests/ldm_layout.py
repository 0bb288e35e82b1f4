"""Write diffusers SD 1.5 modules as an original (CompVis/LDM) single-file checkpoint, for tests.

No SD checkpoint can be downloaded here and diffusers ships only the other direction, so the tests
build their own from the tiny random model. The names follow the LDM layout as diffusers' single-file
loader reads it: `model.diffusion_model.*` (openaimodel UNet: input_blocks / middle_block /
output_blocks, numbered across levels), `first_stage_model.*` (the autoencoder: down.i.block.j, up
levels in reverse, 1x1-conv mid attention) and `cond_stage_model.transformer.*` (the CLIP text model
under its transformers names). The index arithmetic follows the config's layers_per_block, so the
tiny model (1 layer per block) maps as correctly as SD 1.5 (2).
"""

from __future__ import annotations

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
          "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _moved(state: dict, prefix_from: str, prefix_to: str, rename: dict[str, str] | None = None) -> dict:
    out = {}
    for key, value in state.items():
        if key.startswith(prefix_from):
            rest = key[len(prefix_from):]
            for old, new in (rename or {}).items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
            out[prefix_to + rest] = value
    return out


def unet_to_ldm(unet) -> dict:
    state, config = unet.state_dict(), unet.config
    layers, levels = config.layers_per_block, len(config.block_out_channels)
    moves = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
             ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
             ("mid_block.attentions.0.", "middle_block.1.")]
    resnet_moves = [("mid_block.resnets.0.", "middle_block.0."), ("mid_block.resnets.1.", "middle_block.2.")]
    index = 1
    for level in range(levels):
        for layer in range(layers):
            resnet_moves.append((f"down_blocks.{level}.resnets.{layer}.", f"input_blocks.{index}.0."))
            moves.append((f"down_blocks.{level}.attentions.{layer}.", f"input_blocks.{index}.1."))
            index += 1
        if level < levels - 1:
            moves.append((f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{index}.0.op."))
            index += 1
    index = 0
    for level in range(levels):
        has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in state)
        for layer in range(layers + 1):
            resnet_moves.append((f"up_blocks.{level}.resnets.{layer}.", f"output_blocks.{index}.0."))
            moves.append((f"up_blocks.{level}.attentions.{layer}.", f"output_blocks.{index}.1."))
            if level < levels - 1 and layer == layers:
                slot = 2 if has_attention else 1  # after the resnet, and the attention when there is one
                moves.append((f"up_blocks.{level}.upsamplers.0.", f"output_blocks.{index}.{slot}."))
            index += 1
    out = {}
    for src, dst in moves:
        out |= _moved(state, src, dst)
    for src, dst in resnet_moves:
        out |= _moved(state, src, dst, RESNET)
    if len(out) != len(state):
        raise AssertionError(f"mapped {len(out)} of {len(state)} UNet tensors")
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def vae_to_ldm(vae) -> dict:
    state, config = vae.state_dict(), vae.config
    levels = len(config.block_out_channels)
    moves = [("quant_conv.", "quant_conv."), ("post_quant_conv.", "post_quant_conv.")]
    resnets = []
    for part in ("encoder", "decoder"):
        moves += [(f"{part}.conv_in.", f"{part}.conv_in."), (f"{part}.conv_out.", f"{part}.conv_out."),
                  (f"{part}.conv_norm_out.", f"{part}.norm_out.")]
        resnets += [(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
                    (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.")]
        for level in range(levels):
            ldm_level = level if part == "encoder" else levels - 1 - level
            block = "down_blocks" if part == "encoder" else "up_blocks"
            ldm_block = "down" if part == "encoder" else "up"
            sampler = "downsamplers" if part == "encoder" else "upsamplers"
            ldm_sampler = "downsample" if part == "encoder" else "upsample"
            resnets.append((f"{part}.{block}.{level}.resnets.", f"{part}.{ldm_block}.{ldm_level}.block."))
            moves.append((f"{part}.{block}.{level}.{sampler}.0.", f"{part}.{ldm_block}.{ldm_level}.{ldm_sampler}."))
    out = {}
    for src, dst in moves:
        out |= _moved(state, src, dst)
    for src, dst in resnets:
        for key, value in _moved(state, src, dst).items():
            out[key.replace(".conv_shortcut.", ".nin_shortcut.")] = value
    for part in ("encoder", "decoder"):
        for key, value in _moved(state, f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.",
                                 VAE_ATTENTION).items():
            is_projection = value.ndim == 2  # linear in diffusers, 1x1 conv in LDM
            out[key] = value.reshape(*value.shape, 1, 1) if is_projection else value
    if len(out) != len(state):
        raise AssertionError(f"mapped {len(out)} of {len(state)} VAE tensors")
    return {"first_stage_model." + k: v for k, v in out.items()}


def text_encoder_to_ldm(text_encoder) -> dict:
    # Checkpoints carry transformers' historical names (text_model.*); newer transformers drop that level.
    return {"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
            for k, v in text_encoder.state_dict().items()}


def write_ldm_checkpoint(components, path) -> None:
    """`components` (export.components.Components) as one original-layout .safetensors file."""
    from safetensors.torch import save_file

    state = {**unet_to_ldm(components.unet), **vae_to_ldm(components.vae),
             **text_encoder_to_ldm(components.text_encoder)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
