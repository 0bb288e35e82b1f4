"""One DDIM step of the loop as ONE small ONNX graph: guidance, the DDIM update, the masked blend.

Running it in the same runtime as the UNet (ONNX Runtime on any provider, or a TensorRT engine)
keeps the latents on the device for the whole loop: the graph reads the UNet's output buffer and
writes both the next latents and the next UNet input (the guidance-doubled batch), so no host
code touches a tensor between steps. On a CPU the very same graph runs, which is how it is tested
against the numpy reference (`kernels/reference.py`).

Formulas, in the order the numpy reference evaluates them (so float32 results agree):

    eps        = eps_u + g (eps_c - eps_u)                          guided only (engine/loop.py guide)
    x0_pred    = (x_t - sqrt(1 - alpha_t) eps) / sqrt(alpha_t)      DDIM formula (12)
    x_prev     = sqrt(alpha_prev) x0_pred + sqrt(1 - alpha_prev) eps
    known      = sqrt(alpha_next) x0 + sqrt(1 - alpha_next) noise   DDPM eq. (4) (DDIM.noised)
    latents    = (1 - m) known + m x_prev                           blend only (engine/loop.py blend)

`alpha_next` is the alpha-bar of the *next* step's timestep (1.0 after the last step, which makes
`known` the init latents exactly), not `alpha_prev`: the two differ for trailing/linspace spacing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import overload

from outpaint.core.graphs import GraphSpec, TensorSpec

Dim = int | str
OPSET = 17
IR_VERSION = 8  # the oldest IR that carries opset 17: every ONNX Runtime and TensorRT parser we support reads it

# Tensor names, shared by the graph builder, the device loops and the TensorRT profiles.
EPS = "eps"  # (N, 4, h, w) float32, the UNet's output; N = 2 guided ([uncond, cond]), 1 unguided
LATENTS = "latents"  # (1, 4, h, w) float32, x_t
INIT_LATENTS = "init_latents"  # (1, 4, h, w) float32, clean latents of the canvas
NOISE = "noise"  # (1, 4, h, w) float32, the request's noise
MASK = "mask"  # (1, 1, h, w) float32, soft latent mask, 1 = regenerate
EXTRA_CHANNELS = "extra_channels"  # (1, 5, h, w) float32, mask + masked-image latents (9-channel UNet)
ALPHA_T, ALPHA_PREV, ALPHA_NEXT, GUIDANCE = "alpha_t", "alpha_prev", "alpha_next", "guidance_scale"  # (1,) f32
LATENTS_NEXT = "latents_next"  # (1, 4, h, w) float32, x_{t-1} after the blend
UNET_SAMPLE_NEXT = "unet_sample_next"  # (N, C, h, w) float32, the next UNet call's `sample`


@dataclass(frozen=True)
class StepKernel:
    """Which form of the step a request needs; each form is its own small graph."""

    guided: bool  # guidance != 1: the UNet ran on [uncond, cond], eps has batch 2
    blend: bool  # 4-channel UNet: put the known region back (a 9-channel UNet inpaints by itself)
    unet_in_channels: int = 4  # 4 (SD 1.5) or 9 (inpainting: latents + extra_channels)

    def __post_init__(self) -> None:
        if self.unet_in_channels not in (4, 9):
            raise ValueError(f"unet_in_channels must be 4 or 9, got {self.unet_in_channels}")

    @property
    def name(self) -> str:
        return f"ddim_step_{'guided' if self.guided else 'unguided'}_{'blend' if self.blend else 'noblend'}" \
               f"_c{self.unet_in_channels}"

    @property
    def eps_batch(self) -> int:
        return 2 if self.guided else 1

    def input_names(self) -> tuple[str, ...]:
        names = [EPS, LATENTS]
        if self.blend:
            names += [INIT_LATENTS, NOISE, MASK]
        if self.unet_in_channels == 9:
            names.append(EXTRA_CHANNELS)
        names += [ALPHA_T, ALPHA_PREV]
        if self.blend:
            names.append(ALPHA_NEXT)
        if self.guided:
            names.append(GUIDANCE)
        return tuple(names)

    @overload
    def input_shapes(self, latent_h: int, latent_w: int) -> dict[str, tuple[int, ...]]: ...
    @overload
    def input_shapes(self, latent_h: Dim, latent_w: Dim) -> dict[str, tuple[Dim, ...]]: ...

    def input_shapes(self, latent_h: Dim, latent_w: Dim) -> dict[str, tuple[Dim, ...]]:
        """Input shapes for a (latent_h, latent_w) latent grid (ints, or names of symbolic axes)."""
        shapes = {
            EPS: (self.eps_batch, 4, latent_h, latent_w),
            LATENTS: (1, 4, latent_h, latent_w),
            INIT_LATENTS: (1, 4, latent_h, latent_w),
            NOISE: (1, 4, latent_h, latent_w),
            MASK: (1, 1, latent_h, latent_w),
            EXTRA_CHANNELS: (1, 5, latent_h, latent_w),
        }
        return {name: shapes.get(name, (1,)) for name in self.input_names()}

    def spec(self) -> GraphSpec:
        """The kernel as a GraphSpec (latent axes H/8, W/8), for TensorRT profiles."""
        return GraphSpec(
            name=self.name,
            inputs=tuple(TensorSpec(n, "float32", s) for n, s in self.input_shapes("H/8", "W/8").items()),
            outputs=tuple(TensorSpec(n, "float32", s) for n, s in self.output_shapes("H/8", "W/8").items()),
            max_rel_error=1e-6,
        )

    def output_shapes(self, latent_h: Dim, latent_w: Dim) -> dict[str, tuple[Dim, ...]]:
        return {
            LATENTS_NEXT: (1, 4, latent_h, latent_w),
            UNET_SAMPLE_NEXT: (self.eps_batch, self.unet_in_channels, latent_h, latent_w),
        }


def build_step_graph(kernel: StepKernel):
    """The onnx.ModelProto of `kernel`, with symbolic h/w so one graph serves every canvas."""
    from onnx import TensorProto, helper

    nodes = []
    consts = []

    def const(name: str, value: float | list[int], dtype=TensorProto.FLOAT) -> str:
        values = value if isinstance(value, list) else [value]
        consts.append(helper.make_tensor(name, dtype, [len(values)], values))
        return name

    def op(kind: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(kind, inputs, [output], name=output, **attrs))
        return output

    one = const("one", 1.0)
    if kernel.guided:
        nodes.append(helper.make_node("Split", [EPS, const("split_1_1", [1, 1], TensorProto.INT64)],
                                      ["eps_uncond", "eps_cond"], name="split_guidance", axis=0))
        delta = op("Sub", ["eps_cond", "eps_uncond"], "eps_delta")
        eps = op("Add", ["eps_uncond", op("Mul", [GUIDANCE, delta], "eps_delta_scaled")], "eps_guided")
    else:
        eps = EPS

    sqrt_alpha_t = op("Sqrt", [ALPHA_T], "sqrt_alpha_t")
    sqrt_one_minus_alpha_t = op("Sqrt", [op("Sub", [one, ALPHA_T], "one_minus_alpha_t")], "sqrt_one_minus_alpha_t")
    sqrt_alpha_prev = op("Sqrt", [ALPHA_PREV], "sqrt_alpha_prev")
    sqrt_one_minus_alpha_prev = op("Sqrt", [op("Sub", [one, ALPHA_PREV], "one_minus_alpha_prev")],
                                   "sqrt_one_minus_alpha_prev")
    noise_part = op("Mul", [sqrt_one_minus_alpha_t, eps], "noise_part")
    x0_pred = op("Div", [op("Sub", [LATENTS, noise_part], "x_minus_noise"), sqrt_alpha_t], "x0_pred")
    direction = op("Mul", [sqrt_one_minus_alpha_prev, eps], "direction")
    stepped = op("Add", [op("Mul", [sqrt_alpha_prev, x0_pred], "x0_scaled"), direction], "x_prev")

    if kernel.blend:
        sqrt_alpha_next = op("Sqrt", [ALPHA_NEXT], "sqrt_alpha_next")
        sqrt_one_minus_alpha_next = op("Sqrt", [op("Sub", [one, ALPHA_NEXT], "one_minus_alpha_next")],
                                       "sqrt_one_minus_alpha_next")
        known = op("Add", [op("Mul", [sqrt_alpha_next, INIT_LATENTS], "init_scaled"),
                           op("Mul", [sqrt_one_minus_alpha_next, NOISE], "noise_scaled")], "known")
        keep = op("Mul", [op("Sub", [one, MASK], "one_minus_mask"), known], "kept")
        new = op("Mul", [MASK, stepped], "regenerated")
        op("Add", [keep, new], LATENTS_NEXT)
    else:
        op("Identity", [stepped], LATENTS_NEXT)

    sample = LATENTS_NEXT
    if kernel.unet_in_channels == 9:
        sample = op("Concat", [LATENTS_NEXT, EXTRA_CHANNELS], "sample_single", axis=1)
    if kernel.guided:
        op("Concat", [sample, sample], UNET_SAMPLE_NEXT, axis=0)
    else:
        op("Identity", [sample], UNET_SAMPLE_NEXT)

    def tensor(name: str, shape) -> object:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(
        nodes,
        kernel.name,
        [tensor(name, shape) for name, shape in kernel.input_shapes("h", "w").items()],
        [tensor(name, shape) for name, shape in kernel.output_shapes("h", "w").items()],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="outpaint")
    model.ir_version = IR_VERSION
    return model
