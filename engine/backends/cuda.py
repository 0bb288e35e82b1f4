"""The few CUDA runtime calls the TensorRT backend needs, through cuda-python, each checked.

Every call returns (error, *values) in cuda-python; `check` turns a failure into an OutpaintError
that names the call and CUDA's own message, so no error code is silently dropped. Imported lazily:
this module loads on a machine without CUDA, and fails with BackendUnavailable only when used.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from outpaint.core.errors import BackendUnavailable, OutpaintError

# cudaError_t names that mean "this machine cannot run CUDA at all", and what to tell the user.
_UNAVAILABLE = {
    "cudaErrorNoDevice": "no NVIDIA GPU is visible (check `nvidia-smi` and CUDA_VISIBLE_DEVICES)",
    "cudaErrorInsufficientDriver": "the NVIDIA driver is older than the CUDA runtime; update the driver",
    "cudaErrorInitializationError": "CUDA could not initialise (is the NVIDIA driver loaded? `nvidia-smi`)",
    "cudaErrorSystemDriverMismatch": "the NVIDIA kernel driver and user-space driver versions differ; reboot "
                                     "or reinstall the driver",
}


def unavailable_reason(error_name: str) -> str | None:
    """What is missing, for a CUDA error that means there is no usable GPU here (None for other errors)."""
    return _UNAVAILABLE.get(error_name)


@functools.cache
def cudart() -> Any:
    """cuda-python's runtime module (`cuda.bindings.runtime` since 12.6, `cuda.cudart` before)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise BackendUnavailable(
                "the tensorrt backend needs the `cuda-python` package (and an NVIDIA GPU with its driver): "
                "pip install 'outpaint[gpu]'"
            ) from None
    return runtime


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-python (error, *values) result; raise naming `call` on failure."""
    rt = cudart()
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != rt.cudaError_t.cudaSuccess:
        name = getattr(error, "name", str(error))
        _, message = rt.cudaGetErrorString(error)
        reason = unavailable_reason(name)
        if reason:
            raise BackendUnavailable(f"{call}: {reason} ({name})")
        text = message.decode() if isinstance(message, bytes) else message
        raise OutpaintError(f"CUDA {call} failed: {name}: {text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory_bytes: int


def gpu_info(index: int = 0) -> GpuInfo:
    rt = cudart()
    count = check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if index >= count:
        raise BackendUnavailable(f"GPU {index} was asked for; CUDA sees {count} GPU(s)")
    props = check(rt.cudaGetDeviceProperties(index), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(index, name, (int(props.major), int(props.minor)), int(props.totalGlobalMem))


class Stream:
    """A non-blocking CUDA stream: the backend's work is ordered on it, apart from other libraries'."""

    def __init__(self, handle: Any = None) -> None:
        """A new stream, or (`handle` given) a borrowed one this object never destroys."""
        rt = cudart()
        self.owned = handle is None
        if handle is None:
            handle = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self.handle = handle

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.handle is not None and self.owned:
            check(cudart().cudaStreamDestroy(self.handle), "cudaStreamDestroy")
        self.handle = None


class DeviceBuffer:
    """`nbytes` of device memory, freed by `free()` (or when garbage-collected)."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check(cudart().cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    def free(self) -> None:
        if self.ptr:
            check(cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown the driver frees everything anyway
            self.free()


def copy_host_to_device(dst_ptr: int, array: np.ndarray, stream: Stream) -> None:
    """Queue a copy of `array` (kept alive by the caller until the stream syncs) to `dst_ptr`."""
    rt = cudart()
    array = np.ascontiguousarray(array)
    check(rt.cudaMemcpyAsync(dst_ptr, array.ctypes.data, array.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice,
                             stream.handle), "cudaMemcpyAsync(host->device)")


def copy_device_to_host(array: np.ndarray, src_ptr: int, stream: Stream) -> np.ndarray:
    """Copy into the contiguous `array` and wait: the caller reads it right after."""
    rt = cudart()
    check(rt.cudaMemcpyAsync(array.ctypes.data, src_ptr, array.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                             stream.handle), "cudaMemcpyAsync(device->host)")
    stream.synchronize()
    return array


def copy_device_to_device(dst_ptr: int, src_ptr: int, nbytes: int, stream: Stream) -> None:
    rt = cudart()
    check(rt.cudaMemcpyAsync(dst_ptr, src_ptr, nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.handle),
          "cudaMemcpyAsync(device->device)")


class CudaGraph:
    """One captured sequence of a stream's work, replayed with a single launch."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.exec = None

    def begin_capture(self) -> None:
        rt = cudart()
        check(rt.cudaStreamBeginCapture(self.stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
              "cudaStreamBeginCapture")

    def end_capture(self) -> None:
        rt = cudart()
        graph = check(rt.cudaStreamEndCapture(self.stream.handle), "cudaStreamEndCapture")
        self.exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")  # the executable graph keeps what it needs

    def launch(self) -> None:
        check(cudart().cudaGraphLaunch(self.exec, self.stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        if self.exec is not None:
            check(cudart().cudaGraphExecDestroy(self.exec), "cudaGraphExecDestroy")
            self.exec = None


class Event:
    """A CUDA event with timing, for per-stage device times (benchmarks/gpu.py)."""

    def __init__(self) -> None:
        self.handle = check(cudart().cudaEventCreate(), "cudaEventCreate")

    def record(self, stream: Stream) -> None:
        check(cudart().cudaEventRecord(self.handle, stream.handle), "cudaEventRecord")

    def synchronize(self) -> None:
        check(cudart().cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def elapsed_ms(self, start: Event) -> float:
        """Milliseconds between `start` and this event (both recorded, this one completed)."""
        self.synchronize()
        return float(check(cudart().cudaEventElapsedTime(start.handle, self.handle), "cudaEventElapsedTime"))

    def close(self) -> None:
        if self.handle is not None:
            check(cudart().cudaEventDestroy(self.handle), "cudaEventDestroy")
            self.handle = None
