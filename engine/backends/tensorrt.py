"""Native TensorRT backend: serialized engines (built by `outpaint build-engines`) run on one CUDA stream.

An engine's life: load (deserialize) -> activate (an execution context on the backend's one
activation buffer) -> allocate buffers for a shape -> infer on the stream -> unload. The four graphs
run one after another, never at the same time, so they share ONE activation buffer sized for the
largest engine (contexts created without their own device memory) instead of holding four; a lock
keeps concurrent requests from running two graphs on it at once. With a static-shape engine set the
inference of each engine is captured once as a CUDA graph and replayed.

`TrtGraph.run` (host arrays in and out) serves the text encoder and the VAE; the denoising loop runs
on device buffers through `TrtDeviceRuntime` (engine/device_loop.py): UNet and step kernel read and
write each other's buffers by address, and nothing crosses to the host between steps.

Needs the `tensorrt` (10.x) and `cuda-python` packages and an NVIDIA GPU; without them loading fails
with BackendUnavailable naming what is missing. None of this file can run on a CPU-only machine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from outpaint.core.errors import BackendUnavailable, ModelError, OutpaintError
from outpaint.core.graphs import ENCODER_HIDDEN_STATES, OUT_SAMPLE, SAMPLE, TIMESTEP, UNET
from outpaint.core.manifest import Manifest
from outpaint.core.trt_key import DeviceIdentity, check_compatible, engine_path, selected_record
from outpaint.kernels.ddim_step import EPS, LATENTS, LATENTS_NEXT, UNET_SAMPLE_NEXT

from ..device_loop import LoopTensors
from . import cuda
from .base import check_feeds

log = logging.getLogger("outpaint")
SUPPORTED_MAJOR = 10


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(
            "the tensorrt backend needs the `tensorrt` Python package (TensorRT 10) and an NVIDIA GPU with its "
            "driver: pip install 'outpaint[gpu]' on such a machine (without one, `outpaint run` and "
            "`outpaint serve` run on the CPU: --backend ort-cpu, or --fast)"
        ) from None
    major = int(trt.__version__.split(".")[0])
    if major != SUPPORTED_MAJOR:
        raise BackendUnavailable(
            f"TensorRT {trt.__version__} is installed; this backend is written for TensorRT {SUPPORTED_MAJOR}.x: "
            f"pip install 'tensorrt>={SUPPORTED_MAJOR},<{SUPPORTED_MAJOR + 1}'"
        )
    return trt


def device_identity(gpu: int = 0) -> DeviceIdentity:
    trt = import_tensorrt()
    info = cuda.gpu_info(gpu)
    return DeviceIdentity(info.name, info.compute_capability, trt.__version__)


_LOGGER = None


def trt_logger() -> Any:
    """One TensorRT logger for the process (TensorRT requires it to outlive every object made with it)."""
    global _LOGGER
    if _LOGGER is None:
        trt = import_tensorrt()
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


class TrtEngine:
    """One engine: load -> activate -> allocate_buffers -> infer -> unload."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.engine: Any = None
        self.context: Any = None
        self.inputs: tuple[str, ...] = ()
        self.outputs: tuple[str, ...] = ()
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self._owned: dict[str, cuda.DeviceBuffer] = {}
        self._graph: cuda.CudaGraph | None = None
        self._graph_key: tuple = ()

    # -- lifecycle --------------------------------------------------------------------------

    def load(self, runtime: Any) -> TrtEngine:
        trt = import_tensorrt()
        if not self.path.is_file():
            raise ModelError(f"{self.path} is missing: run `outpaint build-engines --model {self.path.parents[2]}`")
        engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise ModelError(
                f"TensorRT could not load {self.path} (see its log above: usually a TensorRT version or GPU "
                f"mismatch); run `outpaint build-engines --model {self.path.parents[2]}` again"
            )
        self.engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.inputs = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.outputs = tuple(n for n in names if n not in self.inputs)
        return self

    @property
    def device_memory_bytes(self) -> int:
        """Activation memory this engine needs at its largest profile shapes."""
        size = getattr(self.engine, "device_memory_size_v2", None)  # TensorRT >= 10.1
        return int(size if size is not None else self.engine.device_memory_size)

    def activate(self, activations: cuda.DeviceBuffer) -> None:
        """An execution context that uses the shared `activations` instead of allocating its own."""
        trt = import_tensorrt()
        strategy = getattr(trt, "ExecutionContextAllocationStrategy", None)
        if strategy is not None:
            context = self.engine.create_execution_context(strategy.USER_MANAGED)
        else:
            context = self.engine.create_execution_context_without_device_memory()
        if hasattr(context, "set_device_memory"):  # TensorRT >= 10.1
            context.set_device_memory(activations.ptr, activations.nbytes)
        else:
            context.device_memory = activations.ptr
        self.context = context

    def unload(self) -> None:
        self.free_buffers()
        self.context = None
        self.engine = None

    # -- shapes and buffers -----------------------------------------------------------------

    def declared(self) -> list[tuple[str, str, list[int | None]]]:
        """(name, numpy dtype, shape with None for dynamic axes) per input, for check_feeds."""
        trt = import_tensorrt()
        return [
            (n, np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))).name,
             [d if d >= 0 else None for d in self.engine.get_tensor_shape(n)])
            for n in self.inputs
        ]

    def dtype(self, name: str) -> np.dtype:
        trt = import_tensorrt()
        return np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        low, _, high = (tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))
        if len(shape) != len(low) or any(not lo <= d <= hi for d, lo, hi in zip(shape, low, high, strict=True)):
            raise OutpaintError(
                f"{self.name}: {name} of shape {shape} is outside the engine's profile {low}..{high}; rebuild the "
                "engines for this canvas (`outpaint build-engines --min-canvas/--max-canvas` or --static)"
            )

    def allocate_buffers(self, shapes: Mapping[str, tuple[int, ...]], aliases: Mapping[str, int] | None = None,
                         ) -> None:
        """Set the input shapes and give every tensor an address: its own buffer, or `aliases[name]`."""
        aliases = dict(aliases or {})
        wanted = {n: tuple(int(d) for d in shapes[n]) for n in self.inputs}
        if wanted == {n: self.shapes.get(n) for n in self.inputs} and all(
            self.addresses.get(n) == a for n, a in aliases.items()
        ):
            return
        for name, shape in wanted.items():
            self.check_shape(name, shape)
            if not self.context.set_input_shape(name, shape):
                raise OutpaintError(f"{self.name}: TensorRT refused shape {shape} for {name}")
        self.free_buffers()
        for name in (*self.inputs, *self.outputs):
            shape = tuple(self.context.get_tensor_shape(name))
            self.shapes[name] = shape
            if name in aliases:
                self.addresses[name] = aliases[name]
            else:
                buffer = cuda.DeviceBuffer(int(np.prod(shape)) * self.dtype(name).itemsize)
                self._owned[name] = buffer
                self.addresses[name] = buffer.ptr
            self.context.set_tensor_address(name, self.addresses[name])

    def free_buffers(self) -> None:
        if self._graph is not None:
            self._graph.close()
            self._graph = None
        for buffer in self._owned.values():
            buffer.free()
        self._owned.clear()
        self.addresses.clear()
        self.shapes.clear()

    def nbytes(self, name: str) -> int:
        return int(np.prod(self.shapes[name])) * self.dtype(name).itemsize

    # -- inference --------------------------------------------------------------------------

    def _enqueue(self, stream: cuda.Stream) -> None:
        if not self.context.execute_async_v3(stream.ptr):
            raise OutpaintError(f"TensorRT inference of {self.name} failed (see its log above)")

    def infer(self, stream: cuda.Stream, use_cuda_graph: bool = False) -> None:
        """Queue one inference on `stream` with the current shapes and addresses."""
        if not use_cuda_graph:
            self._enqueue(stream)
            return
        key = (tuple(sorted(self.shapes.items())), tuple(sorted(self.addresses.items())))
        if self._graph is not None and self._graph_key == key:
            self._graph.launch()
            return
        # The first run after a shape change is a plain one (TensorRT sets itself up for the shapes,
        # which must not be captured); the capture is what later calls replay.
        self._enqueue(stream)
        if self._graph is not None:
            self._graph.close()
        graph = cuda.CudaGraph(stream)
        graph.begin_capture()
        try:
            self._enqueue(stream)
        finally:
            graph.end_capture()
        self._graph, self._graph_key = graph, key


class TrtBackend:
    """The selected engine set of a model folder, loaded on one GPU, sharing one activation buffer."""

    def __init__(self, folder: Path, gpu: int = 0) -> None:
        trt = import_tensorrt()
        here = device_identity(gpu)
        self.record = selected_record(folder)
        for warning in check_compatible(self.record, here, folder):
            log.warning(warning)
        cuda.check(cuda.cudart().cudaSetDevice(gpu), "cudaSetDevice")
        self.runtime = trt.Runtime(trt_logger())
        self.stream = cuda.Stream()
        self.engines = {name: TrtEngine(name, engine_path(folder, self.record.key, name)).load(self.runtime)
                        for name in self.record.graphs}
        self.activations = cuda.DeviceBuffer(max(e.device_memory_bytes for e in self.engines.values()))
        for engine in self.engines.values():
            engine.activate(self.activations)
        self.lock = threading.Lock()  # one activation buffer: one engine executes at a time
        self.use_cuda_graphs = self.record.key.canvas.is_static

    def engine(self, name: str) -> TrtEngine:
        try:
            return self.engines[name]
        except KeyError:
            raise ModelError(
                f"the TensorRT engine set {self.record.key.slug} has no {name} engine; "
                "rebuild it with `outpaint build-engines`"
            ) from None


class TrtGraph:
    """GraphRunner over one engine, host arrays in and out (text encoder, VAE)."""

    def __init__(self, backend: TrtBackend, name: str) -> None:
        self.backend = backend
        self.name = name
        self.engine = backend.engine(name)
        self.input_names = self.engine.inputs
        self.output_names = self.engine.outputs
        self._declared = self.engine.declared()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.name, self._declared, feeds)
        backend, engine = self.backend, self.engine
        with backend.lock:
            engine.allocate_buffers({n: feeds[n].shape for n in engine.inputs})
            contiguous = {n: np.ascontiguousarray(feeds[n]) for n in engine.inputs}  # alive until the sync below
            for name, value in contiguous.items():
                cuda.copy_host_to_device(engine.addresses[name], value, backend.stream)
            engine.infer(backend.stream, backend.use_cuda_graphs)
            return {
                name: cuda.copy_device_to_host(np.empty(engine.shapes[name], engine.dtype(name)),
                                               engine.addresses[name], backend.stream)
                for name in engine.outputs
            }

    def device_runtime(self) -> TrtDeviceRuntime:
        return TrtDeviceRuntime(self.backend)


class TrtDeviceRuntime:
    device = "cuda"

    def __init__(self, backend: TrtBackend) -> None:
        self.backend = backend

    def open(self, tensors: LoopTensors) -> TrtLoopSession:
        return TrtLoopSession(self.backend, tensors)


class TrtLoopSession:
    """The UNet writes eps into the kernel's input; the kernel writes the next sample into the UNet's input.

    Per-step scalars live in one device table uploaded before the loop and are copied device-to-device
    into fixed input buffers, so every engine call sees the same addresses and a CUDA graph replays.
    """

    def __init__(self, backend: TrtBackend, tensors: LoopTensors) -> None:
        self.backend = backend
        self.tensors = tensors
        self.names = tuple(tensors.per_step[0]) if tensors.per_step else ()
        self.table: cuda.DeviceBuffer | None = None

    def __enter__(self) -> TrtLoopSession:
        backend, tensors = self.backend, self.tensors
        backend.lock.acquire()  # held for the whole loop: the loop owns the activation buffer
        try:
            self.unet = unet = backend.engine(UNET)
            self.kernel = kernel = backend.engine(tensors.kernel.name)
            _, _, h, w = tensors.sample.shape
            unet.allocate_buffers({SAMPLE: tensors.sample.shape, TIMESTEP: (1,),
                                   ENCODER_HIDDEN_STATES: tensors.text_embeddings.shape})
            shared = {EPS: unet.addresses[OUT_SAMPLE], UNET_SAMPLE_NEXT: unet.addresses[SAMPLE]}
            kernel.allocate_buffers(tensors.kernel.input_shapes(h, w), aliases=shared)
            stream = backend.stream
            uploads = {unet.addresses[SAMPLE]: tensors.sample,
                       unet.addresses[ENCODER_HIDDEN_STATES]: tensors.text_embeddings}
            uploads.update({kernel.addresses[name]: value for name, value in tensors.constants.items()})
            # (steps, values) float32: row i holds step i's timestep and alphas, in `self.names` order.
            table = np.ascontiguousarray(
                [[step[name][0] for name in self.names] for step in tensors.per_step], dtype=np.float32)
            self.table = cuda.DeviceBuffer(table.nbytes)
            uploads[self.table.ptr] = table
            for address, value in uploads.items():
                cuda.copy_host_to_device(address, value, stream)
            stream.synchronize()  # the host arrays may go once the copies are done
        except BaseException:
            backend.lock.release()
            raise
        return self

    def step(self, index: int) -> None:
        backend, unet, kernel = self.backend, self.unet, self.kernel
        stream, graphs = backend.stream, backend.use_cuda_graphs
        row = self.table.ptr + index * len(self.names) * 4
        for column, name in enumerate(self.names):
            target = unet.addresses[TIMESTEP] if name == TIMESTEP else kernel.addresses[name]
            cuda.copy_device_to_device(target, row + column * 4, 4, stream)
        unet.infer(stream, graphs)
        kernel.infer(stream, graphs)
        cuda.copy_device_to_device(kernel.addresses[LATENTS], kernel.addresses[LATENTS_NEXT],
                                   kernel.nbytes(LATENTS), stream)
        stream.synchronize()  # the step is final: progress events and cancellation are truthful

    def read_latents(self) -> np.ndarray:
        kernel = self.kernel
        return cuda.copy_device_to_host(np.empty(kernel.shapes[LATENTS], np.float32), kernel.addresses[LATENTS],
                                        self.backend.stream)

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if self.table is not None:
                self.table.free()
                self.table = None
        finally:
            self.backend.lock.release()


def load_tensorrt_graphs(folder: Path, manifest: Manifest, graphs: tuple[str, ...], gpu: int = 0,
                         ) -> dict[str, TrtGraph]:
    backend = TrtBackend(folder, gpu)
    return {name: TrtGraph(backend, name) for name in graphs}
