"""core/heap.py: the C heap's free pages go back to the system, and the gate asks for it when the last
running generation ends."""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time

import numpy as np
import pytest

from outpaint.benchmarks.memory import process_memory_gib
from outpaint.core.heap import can_return_free_heap, return_free_heap


def resident_mib() -> float:
    return process_memory_gib()["VmRSS"] * 1024


@pytest.mark.skipif(not can_return_free_heap(), reason="the C library has no malloc_trim (not glibc)")
def test_freed_heap_blocks_stay_resident_until_returned():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block, count = 64 * 1024, 4096  # 256 MiB in blocks under glibc's mmap threshold: heap, not mmap

    def churn() -> None:  # a thread of its own, like a server's worker: its own arena
        blocks = [libc.malloc(block) for _ in range(count)]
        for address in blocks:
            ctypes.memset(address, 1, block)  # touched: resident
        keep = libc.malloc(block)  # above them all, so free() cannot shrink the heap from its top
        for address in blocks:
            libc.free(address)
        ctypes.memset(keep, 1, block)
        held.append(keep)

    held: list[int] = []
    before = resident_mib()
    worker = threading.Thread(target=churn)
    worker.start()
    worker.join()
    freed_but_resident = resident_mib() - before
    assert return_free_heap()
    returned = freed_but_resident - (resident_mib() - before)
    libc.free(held[0])
    assert freed_but_resident > 128, f"glibc kept {freed_but_resident:.0f} MiB of freed blocks"
    assert returned > 128, f"{returned:.0f} of {freed_but_resident:.0f} MiB returned"


def test_the_gate_returns_the_heap_once_nothing_runs(tiny_pipeline):
    from outpaint.engine.canvas import SourceImage
    from outpaint.engine.request import OutpaintRequest
    from outpaint.server.gate import Gate, Ticket

    calls: list[int] = []
    gate = Gate(tiny_pipeline, concurrency=2, when_idle=lambda: calls.append(gate.running))
    rgb = np.full((128, 128, 3), 120, dtype=np.uint8)
    source = SourceImage(rgb=rgb, known=np.ones((128, 128), dtype=bool))
    request = OutpaintRequest(prompt="a street", num_inference_steps=2, img_width=256, img_height=256, seed=1)

    async def two_at_once() -> None:
        gate.admit()
        gate.admit()
        await asyncio.gather(*(gate.run(source, request, Ticket(deadline=time.monotonic() + 60), lambda r: None)
                               for _ in range(2)))
        gate.release()
        gate.release()

    asyncio.run(two_at_once())
    gate.shutdown()
    # Once per time the gate ran dry, with nothing running: after the second of two overlapping
    # generations, or after each if they did not overlap.
    assert calls in ([0], [0, 0]), calls
