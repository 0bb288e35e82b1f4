"""The device loop on ONNX Runtime: OrtValues on the session's device, bound through IOBinding.

The same code runs with CPU OrtValues (device "cpu") in the tests and with CUDA OrtValues under the
CUDA and TensorRT execution providers. The step kernel gets its own small session on the same
device: the CUDA provider for a GPU UNet (under ort-trt too: the kernel is a few elementwise ops,
not worth a TensorRT engine and its profiles), the CPU provider otherwise.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import numpy as np

from outpaint.core.graphs import ENCODER_HIDDEN_STATES, OUT_SAMPLE, SAMPLE, TIMESTEP
from outpaint.kernels.ddim_step import EPS, LATENTS, LATENTS_NEXT, UNET_SAMPLE_NEXT, StepKernel, build_step_graph

from ..device_loop import LoopTensors


def _device_of(session) -> tuple[str, int]:
    """("cuda", id) when the session's first provider is a GPU one, else ("cpu", 0)."""
    provider = session.get_providers()[0]
    if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        options = session.get_provider_options().get(provider, {})
        return "cuda", int(options.get("device_id", 0))
    return "cpu", 0


class OrtDeviceRuntime:
    """Builds per-request sessions of device buffers around one UNet InferenceSession."""

    def __init__(self, unet_session) -> None:
        self.unet = unet_session
        self.device, self.device_id = _device_of(unet_session)
        self._kernels: dict[StepKernel, Any] = {}
        self._lock = threading.Lock()

    def kernel_session(self, kernel: StepKernel):
        import onnxruntime as ort

        with self._lock:
            session = self._kernels.get(kernel)
            if session is None:
                providers: list[Any] = ["CPUExecutionProvider"]
                if self.device == "cuda":
                    providers.insert(0, ("CUDAExecutionProvider", {"device_id": str(self.device_id)}))
                session = ort.InferenceSession(build_step_graph(kernel).SerializeToString(), providers=providers)
                self._kernels[kernel] = session
            return session

    def upload(self, array: np.ndarray):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def empty(self, shape: tuple[int, ...]):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, self.device, self.device_id)

    def open(self, tensors: LoopTensors) -> OrtLoopSession:
        return OrtLoopSession(self, tensors)


class OrtLoopSession:
    """Ping-pong buffers: step i reads latents/sample [i % 2] and writes [(i + 1) % 2]."""

    def __init__(self, runtime: OrtDeviceRuntime, tensors: LoopTensors) -> None:
        self.runtime = runtime
        kernel_session = runtime.kernel_session(tensors.kernel)
        latent_shape = tensors.constants[LATENTS].shape
        self.latents = [runtime.upload(tensors.constants[LATENTS]), runtime.empty(latent_shape)]
        self.samples = [runtime.upload(tensors.sample), runtime.empty(tensors.sample.shape)]
        eps_shape = (tensors.sample.shape[0], latent_shape[1], *latent_shape[2:])
        self.eps = runtime.empty(eps_shape)  # (N, 4, h, w): the UNet writes it, the kernel reads it
        embeddings = runtime.upload(tensors.text_embeddings)
        constants = {name: runtime.upload(value) for name, value in tensors.constants.items() if name != LATENTS}
        # Every step's timestep and alphas go to the device now, so that no step uploads anything.
        self.per_step = [{name: runtime.upload(value) for name, value in step.items()} for step in tensors.per_step]
        self.completed = 0

        self.unet_bindings = []
        self.kernel_bindings = []
        for parity in (0, 1):
            unet = runtime.unet.io_binding()
            unet.bind_ortvalue_input(SAMPLE, self.samples[parity])
            unet.bind_ortvalue_input(ENCODER_HIDDEN_STATES, embeddings)
            unet.bind_ortvalue_output(OUT_SAMPLE, self.eps)
            self.unet_bindings.append(unet)

            step = kernel_session.io_binding()
            step.bind_ortvalue_input(EPS, self.eps)
            step.bind_ortvalue_input(LATENTS, self.latents[parity])
            for name, value in constants.items():
                step.bind_ortvalue_input(name, value)
            step.bind_ortvalue_output(LATENTS_NEXT, self.latents[1 - parity])
            step.bind_ortvalue_output(UNET_SAMPLE_NEXT, self.samples[1 - parity])
            self.kernel_bindings.append(step)
        self.kernel_session = kernel_session

    def step(self, index: int) -> None:
        parity = index % 2
        inputs = self.per_step[index]
        unet = self.unet_bindings[parity]
        unet.bind_ortvalue_input(TIMESTEP, inputs[TIMESTEP])
        self.runtime.unet.run_with_iobinding(unet)
        step = self.kernel_bindings[parity]
        for name, value in inputs.items():
            if name != TIMESTEP:
                step.bind_ortvalue_input(name, value)
        self.kernel_session.run_with_iobinding(step)
        self.completed = index + 1

    def read_latents(self) -> np.ndarray:
        return np.array(self.latents[self.completed % 2].numpy(), dtype=np.float32, copy=True)

    def __enter__(self) -> OrtLoopSession:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        # Dropping the bindings and OrtValues frees the device memory of this request.
        self.unet_bindings.clear()
        self.kernel_bindings.clear()
        self.per_step.clear()
