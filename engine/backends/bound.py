"""A loaded graph fed and read through our tensor names when it has others of its own (an optimum export).

The pipeline feeds `image` and reads `latent_mean`; an optimum vae_encoder takes `sample` and returns
`latent_parameters` (mean and log-variance, 8 channels). The manifest's TensorBinding per tensor
(core/optimum_folder.py) says which name, dtype and rank the graph has, and which channels of an output
are ours; this wrapper renames, casts and reshapes on the way in and out, around any backend's runner.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from outpaint.core.manifest import TensorBinding

from .base import GraphRunner


class BoundGraph:
    """`runner` seen through `bindings` (our name -> the graph's tensor). Thread-safe as the runner is."""

    def __init__(self, runner: GraphRunner, bindings: Mapping[str, TensorBinding]) -> None:
        self.runner = runner
        self.name = runner.name
        theirs_in = set(runner.input_names)
        self._inputs = {ours: b for ours, b in bindings.items() if b.name in theirs_in}
        self._outputs = {ours: b for ours, b in bindings.items() if b.name in runner.output_names and ours not in
                         self._inputs}
        self.input_names = tuple(self._inputs)
        self.output_names = tuple(self._outputs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        theirs = {}
        for ours, value in feeds.items():
            binding = self._inputs.get(ours)
            if binding is None:  # not ours to translate: the runner's own check names what it takes
                theirs[ours] = value
                continue
            if value.ndim != binding.rank and value.size == 1:
                value = value.reshape((1,) * binding.rank)  # our (1,) timestep -> the graph's scalar
            theirs[binding.name] = value.astype(binding.dtype, copy=False)
        out = self.runner.run(theirs)
        result = {}
        for ours, binding in self._outputs.items():
            value = out[binding.name]
            if binding.channels is not None:
                value = np.ascontiguousarray(value[:, : binding.channels])  # the mean of (mean, log-variance)
            result[ours] = value.astype(np.float32, copy=False) if value.dtype != np.float32 and \
                np.issubdtype(value.dtype, np.floating) else value
        return result
