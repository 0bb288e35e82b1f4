"""Clean an exported ONNX graph before TensorRT parses it: fold constants, drop dead nodes, sort.

The TorchScript exporter leaves shape arithmetic (Shape -> Gather -> Unsqueeze -> Concat chains
around every reshape of attention) and constant subgraphs in the graph. Polygraphy's constant
folder evaluates whatever does not depend on an input with ONNX Runtime on the CPU; onnx-graphsurgeon
then removes the nodes nothing reads and re-sorts the graph. TensorRT builds faster and sometimes picks
better fusions on the result, and the ONNX Runtime TensorRT provider gets fewer partitions.

Everything here runs on a CPU; `tests/test_onnx_clean.py` checks the cleaned graphs give the same
outputs as the exported ones in ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from outpaint.core.errors import BackendUnavailable, ModelError

# Past this the protobuf limit (2 GiB) is near: weights go to one external file beside the graph.
EXTERNAL_DATA_THRESHOLD = 1536 * 1024 * 1024
# Folding a constant bigger than this (a Tile/Expand of weights) would bloat the file for no speed.
FOLD_SIZE_THRESHOLD = 64 * 1024 * 1024


@dataclass(frozen=True)
class CleanReport:
    graph: str
    nodes_before: int
    nodes_after: int
    seconds: float


def _tools():
    try:
        import onnx
        import onnx_graphsurgeon as gs
        from polygraphy.backend.onnx import fold_constants
        from polygraphy.logger import G_LOGGER
    except ImportError as exc:
        raise BackendUnavailable(
            f"cleaning ONNX graphs needs onnx, polygraphy and onnx-graphsurgeon ({exc.name} is missing): "
            "pip install 'outpaint[export]' (or '[gpu]')"
        ) from None
    G_LOGGER.module_severity = G_LOGGER.WARNING  # its per-pass INFO lines would drown the progress bar
    return onnx, gs, fold_constants


@contextlib.contextmanager
def _quiet_onnxruntime():
    """The folder evaluates subgraphs in ONNX Runtime, whose optimizer warns about every Unsqueeze it keeps."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # errors only
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings


def save_model(model, path: Path) -> None:
    """Write `model` at `path`; weights to `path`.data when the graph would be too big for one protobuf."""
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".data")):
        stale.unlink(missing_ok=True)
    if model.ByteSize() > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def clean_model(model):
    """(cleaned onnx.ModelProto, node counts before/after) of an in-memory model."""
    onnx, gs, fold_constants = _tools()
    before = len(model.graph.node)
    graph = gs.import_onnx(model)
    graph.cleanup().toposort()
    with _quiet_onnxruntime():
        folded = fold_constants(gs.export_onnx(graph), error_ok=False, size_threshold=FOLD_SIZE_THRESHOLD,
                                allow_onnxruntime_shape_inference=False)
    graph = gs.import_onnx(folded)
    graph.cleanup().toposort()
    cleaned = gs.export_onnx(graph)
    # onnx-graphsurgeon writes the newest IR version it knows; keep the exporter's, which every runtime reads.
    cleaned.ir_version = model.ir_version
    if cleaned.ByteSize() < EXTERNAL_DATA_THRESHOLD:  # the checker cannot take a >2 GiB protobuf
        onnx.checker.check_model(cleaned)
    return cleaned, before, len(cleaned.graph.node)


def clean_onnx(src: Path, dst: Path, name: str | None = None) -> CleanReport:
    """Clean the graph at `src` (external data beside it is read) and write it to `dst`."""
    onnx, _, _ = _tools()
    if not src.is_file():
        raise ModelError(f"{src} is missing; re-export the model")
    started = time.perf_counter()
    model = onnx.load(str(src), load_external_data=True)
    cleaned, before, after = clean_model(model)
    save_model(cleaned, dst)
    return CleanReport(name or src.parent.name, before, after, time.perf_counter() - started)
