"""Paging out a weight file's mapping: which mappings qualify, and that the data stays readable."""

from __future__ import annotations

import mmap
import sys

import numpy as np
import pytest

from outpaint.engine.backends.mapped_files import page_out_mapped_files, read_only_mappings

MAPS = """\
7f0000000000-7f0000100000 r--p 00000000 fd:01 42 /models/unet/model.onnx.data
7f0000100000-7f0000200000 rw-p 00000000 fd:01 42 /models/unet/model.onnx.data
7f0000200000-7f0000300000 r--s 00000000 fd:01 43 /models/vae/model.onnx
7f0000300000-7f0000400000 r-xp 00000000 fd:01 44 /usr/lib/libc.so.6
7f0000400000-7f0000500000 rw-p 00000000 00:00 0
"""


def test_only_read_only_mappings_of_the_named_files():
    ranges = read_only_mappings(["/models/unet/model.onnx.data", "/models/vae/model.onnx"], MAPS)
    # The writable private mapping of the same file may hold changes of its own: never advised.
    assert ranges == [(0x7F0000000000, 0x100000), (0x7F0000200000, 0x100000)]
    assert read_only_mappings(["/models/other.onnx"], MAPS) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_PAGEOUT is Linux's")
def test_paged_out_mapping_reads_back_the_same_bytes(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, 8 * mmap.PAGESIZE, dtype=np.uint8)
    path = tmp_path / "weights.bin"
    path.write_bytes(data.tobytes())
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = np.frombuffer(mapped, dtype=np.uint8)
        assert int(view.sum()) == int(data.sum())  # every page resident now
        assert page_out_mapped_files([path]) == len(data)
        np.testing.assert_array_equal(view, data)  # the pages come back from the file
        del view
