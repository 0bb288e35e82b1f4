"""The exported graphs: their names, their tensor names, and one frozen spec per graph (symbolic
shapes, parity tolerance, sample inputs).

Symbolic dimensions: `B` is the prompt batch, `2B` the guidance-doubled batch the UNet sees,
`H`/`W` the canvas in pixels and `H/8`/`W/8` the latent grid. The same specs drive the export, the
runtime's feeds, the step kernel's TensorRT profiles and the optimum-folder reader.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .geometry import LATENT_CHANNELS, LATENT_FACTOR, TEXT_TOKENS

# Graph names: the manifest's keys and the model folder's subfolders.
TEXT_ENCODER = "text_encoder"
UNET = "unet"
VAE_ENCODER = "vae_encoder"
VAE_DECODER = "vae_decoder"
UNET_DEEP = "unet_deep"  # the whole UNet that also returns its deep feature (export/feature_cache.py)
UNET_SHALLOW = "unet_shallow"  # the UNet's shallow path on a cached deep feature
GRAPHS = (TEXT_ENCODER, UNET, VAE_ENCODER, VAE_DECODER)  # what every pipeline runs
FEATURE_CACHE_GRAPHS = (UNET_DEEP, UNET_SHALLOW)  # the UNet split feature caching runs; exported by default
UNET_GRAPHS = (UNET, *FEATURE_CACHE_GRAPHS)
VAE_GRAPHS = (VAE_ENCODER, VAE_DECODER)
# `outpaint quantize` (export/quantize.py) writes an int8 twin `<graph>.int8` of these, which the
# openvino-int8 backend runs in their place (the UNet's are required, the VAE's used where present); the
# text encoder, a fraction of a second per request, stays in fp32.
QUANTIZABLE_GRAPHS = (*UNET_GRAPHS, *VAE_GRAPHS)
INT8 = "int8"  # the twin's variant: manifest key `unet_deep.int8`, file `unet_deep/model.int8.xml`


def fast_path_unet_graphs(exported: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The UNet graphs the fast path runs in a folder that exported `exported`: the split where the
    export made it, else the whole UNet."""
    return FEATURE_CACHE_GRAPHS if all(g in exported for g in FEATURE_CACHE_GRAPHS) else (UNET,)


def int8_key(graph: str) -> str:
    """The manifest key of `graph`'s int8 twin."""
    return f"{graph}.{INT8}"


def int8_file(graph: str) -> str:
    """Where `graph`'s int8 twin lives in the model folder: OpenVINO IR (its .bin beside it)."""
    return f"{graph}/model.{INT8}.xml"

# Tensor names of those graphs.
INPUT_IDS = "input_ids"  # (B, 77) int64, text encoder in
LAST_HIDDEN_STATE = "last_hidden_state"  # (B, 77, D) float32, text encoder out
SAMPLE = "sample"  # (2B, C, H/8, W/8) float32, UNet in: latents (C = 4), + mask and masked latents (C = 9)
TIMESTEP = "timestep"  # (1,) float32, UNet in
ENCODER_HIDDEN_STATES = "encoder_hidden_states"  # (2B, 77, D) float32, UNet in
OUT_SAMPLE = "out_sample"  # (2B, 4, H/8, W/8) float32, UNet out: the noise prediction
DEEP_FEATURE = "deep_feature"  # (2B, F, H/8, W/8) float32, unet_deep out and unet_shallow in
IMAGE = "image"  # (B, 3, H, W) float32 in [-1, 1], VAE encoder in and decoder out
LATENT_MEAN = "latent_mean"  # (B, 4, H/8, W/8) float32, VAE encoder out (before the scaling factor)
LATENT = "latent"  # (B, 4, H/8, W/8) float32, VAE decoder in (after dividing by the scaling factor)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int | str, ...]  # ints are fixed, strings are symbolic axes


@dataclass(frozen=True)
class GraphSpec:
    name: str  # also the subfolder of the exported model
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Parity: max |onnx - torch| must stay below max_rel_error * max |torch| on the sample inputs.
    max_rel_error: float
    # "" for the standard ONNX graph; "mha" for ONNX Runtime's fused-attention twin (export/attention.py).
    variant: str = ""

    @property
    def key(self) -> str:
        """The graph's name in the manifest: `unet`, or `unet.mha` for a variant."""
        return f"{self.name}.{self.variant}" if self.variant else self.name

    @property
    def file(self) -> str:
        """Path of the graph inside the model folder."""
        return f"{self.name}/model.{self.variant}.onnx" if self.variant else f"{self.name}/model.onnx"

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
            if any(isinstance(d, str) for d in t.shape)
        }

    def resolve(self, tensor: TensorSpec, dims: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else dims[d] for d in tensor.shape)

    def sample_inputs(self, dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        """Inputs for a parity check at the concrete sizes `dims` (e.g. {"B": 1, "H/8": 32, ...})."""
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {}
        for tensor in self.inputs:
            shape = self.resolve(tensor, dims)
            if tensor.dtype == "int64":
                feeds[tensor.name] = rng.integers(0, dims.get("vocab", 49408), size=shape, dtype=np.int64)
            elif tensor.name == TIMESTEP:
                feeds[tensor.name] = np.array([801.0], dtype=np.float32)
            else:
                feeds[tensor.name] = rng.standard_normal(shape, dtype=np.float32)
        return feeds


def text_encoder_spec(hidden: int) -> GraphSpec:
    return GraphSpec(
        name=TEXT_ENCODER,
        inputs=(TensorSpec(INPUT_IDS, "int64", ("B", TEXT_TOKENS)),),
        outputs=(TensorSpec(LAST_HIDDEN_STATE, "float32", ("B", TEXT_TOKENS, hidden)),),
        max_rel_error=1e-4,
    )


def unet_spec(in_channels: int, hidden: int) -> GraphSpec:
    return GraphSpec(
        name=UNET,
        inputs=(
            TensorSpec(SAMPLE, "float32", ("2B", in_channels, "H/8", "W/8")),
            TensorSpec(TIMESTEP, "float32", (1,)),
            TensorSpec(ENCODER_HIDDEN_STATES, "float32", ("2B", TEXT_TOKENS, hidden)),
        ),
        outputs=(TensorSpec(OUT_SAMPLE, "float32", ("2B", LATENT_CHANNELS, "H/8", "W/8")),),
        max_rel_error=1e-4,
    )


def vae_encoder_spec() -> GraphSpec:
    return GraphSpec(
        name=VAE_ENCODER,
        inputs=(TensorSpec(IMAGE, "float32", ("B", 3, "H", "W")),),
        outputs=(TensorSpec(LATENT_MEAN, "float32", ("B", LATENT_CHANNELS, "H/8", "W/8")),),
        max_rel_error=1e-4,
    )


def vae_decoder_spec() -> GraphSpec:
    return GraphSpec(
        name=VAE_DECODER,
        inputs=(TensorSpec(LATENT, "float32", ("B", LATENT_CHANNELS, "H/8", "W/8")),),
        outputs=(TensorSpec(IMAGE, "float32", ("B", 3, "H", "W")),),
        max_rel_error=1e-4,
    )


def feature_cache_specs(in_channels: int, hidden: int, feature_channels: int) -> tuple[GraphSpec, GraphSpec]:
    """The UNet split for caching deep features across steps (export/feature_cache.py)."""
    unet = unet_spec(in_channels, hidden)
    feature = TensorSpec(DEEP_FEATURE, "float32", ("2B", feature_channels, "H/8", "W/8"))
    return (
        dataclasses.replace(unet, name=UNET_DEEP, outputs=(*unet.outputs, feature)),
        dataclasses.replace(unet, name=UNET_SHALLOW, inputs=(*unet.inputs, feature)),
    )


def graph_specs(unet_in_channels: int, text_hidden: int) -> tuple[GraphSpec, ...]:
    return (
        text_encoder_spec(text_hidden),
        unet_spec(unet_in_channels, text_hidden),
        vae_encoder_spec(),
        vae_decoder_spec(),
    )


# Graphs with attention over the latent grid, which get a fused-attention ("mha") variant.
ATTENTION_GRAPHS = (UNET, VAE_ENCODER, VAE_DECODER, *FEATURE_CACHE_GRAPHS)


def fused_attention_specs(specs: tuple[GraphSpec, ...]) -> tuple[GraphSpec, ...]:
    return tuple(dataclasses.replace(s, variant="mha") for s in specs if s.name in ATTENTION_GRAPHS)


def canvas_dims(batch: int, height: int, width: int) -> dict[str, int]:
    """Concrete values of every symbolic axis for a canvas of height x width pixels."""
    f = LATENT_FACTOR
    return {"B": batch, "2B": 2 * batch, "H": height, "W": width, "H/8": height // f, "W/8": width // f}
