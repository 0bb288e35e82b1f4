"""TensorRT optimisation profiles (min / opt / max shape per input), derived from the graph specs.

A profile is a pure function of a GraphSpec's symbolic axes, a canvas range and the prompt batch:
`H`/`W` take the canvas range, `H/8`/`W/8` follow it, `B` is the batch and `2B` the guidance-doubled
batch. The `2B` axis's minimum is `B`, not `2B`: at guidance 1 the engine runs only the prompt half
(docs/decisions.md), and an engine whose profile excluded that shape could not serve such requests.
TensorRT picks its kernels for the `opt` shapes, so `opt` is the common case (guided, 512 px).
"""

from __future__ import annotations

from dataclasses import dataclass

from .geometry import CANVAS_MULTIPLE, LATENT_FACTOR
from .graphs import GraphSpec

Shape = tuple[int, ...]


@dataclass(frozen=True)
class AxisRange:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 0 < self.min <= self.opt <= self.max:
            raise ValueError(f"a shape range needs 0 < min <= opt <= max, got {self.min}, {self.opt}, {self.max}")


@dataclass(frozen=True)
class CanvasRange:
    """Canvas sizes in pixels an engine serves: a range per side, or one fixed canvas (static shapes)."""

    height: AxisRange
    width: AxisRange

    def __post_init__(self) -> None:
        for side, axis in (("height", self.height), ("width", self.width)):
            for value in (axis.min, axis.opt, axis.max):
                if value % CANVAS_MULTIPLE:
                    raise ValueError(f"canvas {side} {value} is not a multiple of {CANVAS_MULTIPLE} px")

    @classmethod
    def square(cls, min_px: int = 256, opt_px: int = 512, max_px: int = 1024) -> CanvasRange:
        """Every canvas from min_px to max_px on each side, tuned for opt_px x opt_px."""
        axis = AxisRange(min_px, opt_px, max_px)
        return cls(axis, axis)

    @classmethod
    def static(cls, height: int, width: int) -> CanvasRange:
        """Exactly one canvas: static shapes (fastest kernels; CUDA graphs always apply)."""
        return cls(AxisRange(height, height, height), AxisRange(width, width, width))

    @property
    def is_static(self) -> bool:
        return self.height.min == self.height.max and self.width.min == self.width.max

    def covers(self, height: int, width: int) -> bool:
        return self.height.min <= height <= self.height.max and self.width.min <= width <= self.width.max

    @property
    def tag(self) -> str:
        """Short name for file names: `h256-1024.w256-1024` or `512x768` (static, height x width)."""
        if self.is_static:
            return f"{self.height.min}x{self.width.min}"
        h, w = self.height, self.width
        return f"h{h.min}-{h.opt}-{h.max}.w{w.min}-{w.opt}-{w.max}"


@dataclass(frozen=True)
class ShapeProfile:
    """min / opt / max shape of one input tensor."""

    min: Shape
    opt: Shape
    max: Shape


def axis_values(canvas: CanvasRange, batch: int, guided_only: bool = False) -> dict[str, AxisRange]:
    """Every symbolic axis of core/graphs.py as a range."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    h, w = canvas.height, canvas.width
    return {
        "B": AxisRange(batch, batch, batch),
        "2B": AxisRange(2 * batch if guided_only else batch, 2 * batch, 2 * batch),
        "H": h,
        "W": w,
        "H/8": AxisRange(h.min // LATENT_FACTOR, h.opt // LATENT_FACTOR, h.max // LATENT_FACTOR),
        "W/8": AxisRange(w.min // LATENT_FACTOR, w.opt // LATENT_FACTOR, w.max // LATENT_FACTOR),
    }


def profile_for(spec: GraphSpec, canvas: CanvasRange, batch: int = 1, guided_only: bool = False,
                ) -> dict[str, ShapeProfile]:
    """min / opt / max of every input of `spec` for `canvas` and prompt batch `batch`.

    `guided_only` drops the guidance-1 shape (2B = B) from the UNet's range.
    """
    axes = axis_values(canvas, batch, guided_only)

    def resolve(shape: tuple[int | str, ...], pick: str) -> Shape:
        out = []
        for dim in shape:
            if isinstance(dim, int):
                out.append(dim)
            elif dim in axes:
                out.append(getattr(axes[dim], pick))
            else:
                raise ValueError(f"{spec.name}: axis {dim!r} has no profile rule (known: {', '.join(axes)})")
        return tuple(out)

    return {
        t.name: ShapeProfile(resolve(t.shape, "min"), resolve(t.shape, "opt"), resolve(t.shape, "max"))
        for t in spec.inputs
    }
