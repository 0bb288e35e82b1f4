"""Keep a graph's scalar-conditioning prologue in fp32 when the rest runs in bf16.

The UNet's timestep path (sinusoidal embedding, time MLP, per-block time projections) computes
sin(t * f) for t up to 999; in bf16 (8 significant bits) t itself rounds to a multiple of 2 to 4
and the high-frequency phases become noise. diffusers keeps this path in fp32 under autocast for
the same reason. OpenVINO's CPU plugin casts everything to the inference precision, so the path is
cut out into its own small fp32 model: the nodes that depend only on `timestep` and constants
(after constant folding of the static shapes), whose outputs become extra inputs of the main model.
It costs a few small matrix-vector products per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROLOGUE_INPUT_PREFIX = "fp32_prologue_"


@dataclass
class SplitModel:
    main: Any  # ov.Model without `input_name`, with one extra input per prologue output
    prologue: Any  # ov.Model: `input_name` -> the prologue outputs, named as main's extra inputs
    output_names: tuple[str, ...]


def split_fp32_prologue(model, input_name: str) -> SplitModel | None:
    """Cut the subgraph that depends only on `input_name` (and constants) out of a static-shape `model`.

    Returns None when the model has no such input or nothing depends on it alone.
    """
    import openvino as ov
    from openvino.passes import ConstantFolding, Manager

    params = [p for p in model.get_parameters() if input_name in p.output(0).get_names()]
    if not params:
        return None
    (param,) = params
    # With static shapes, ShapeOf(sample) and the like fold into constants, so the broadcast of the
    # timestep to the batch no longer depends on `sample`.
    manager = Manager()
    manager.register_pass(ConstantFolding())
    manager.run_passes(model)

    ops = list(model.get_ordered_ops())
    members = {param.get_friendly_name()}
    for op in ops:
        sources = [i.get_source_output().get_node() for i in op.inputs()]
        if not sources or op.get_type_name() == "Result":
            continue
        names = [s.get_friendly_name() for s in sources]
        if any(n in members for n in names) and all(
            n in members or s.get_type_name() == "Constant" for n, s in zip(names, sources, strict=True)
        ):
            members.add(op.get_friendly_name())
    frontier = []
    for op in ops:
        if op.get_friendly_name() not in members:
            continue
        for out in op.outputs():
            external = [t for t in out.get_target_inputs() if t.get_node().get_friendly_name() not in members]
            if external:
                frontier.append((out, external))
    if len(members) == 1:  # nothing but the input itself: no prologue to cut
        return None
    new_params, names = [], []
    for index, (out, external) in enumerate(frontier):
        name = f"{PROLOGUE_INPUT_PREFIX}{index}"
        new = ov.opset13.parameter(out.get_partial_shape(), out.get_element_type(), name=name)
        new.output(0).get_tensor().set_names({name})
        for target in external:
            target.replace_source_output(new.output(0))
        new_params.append(new)
        names.append(name)
    prologue = ov.Model([out for out, _ in frontier], [param], "fp32_prologue")
    for result, name in zip(prologue.outputs, names, strict=True):
        result.get_tensor().set_names({name})
    kept = [p for p in model.get_parameters() if p is not param and p.get_friendly_name() != param.get_friendly_name()]
    main = ov.Model(model.get_results(), kept + new_params, model.get_friendly_name())
    return SplitModel(main=main, prologue=prologue, output_names=tuple(names))
