"""A process's peak resident memory, from the kernel's own accounting (Linux /proc), for bounds in tests.

`reset_peak(pid)` lowers the kernel's high-water mark (VmHWM) to the current RSS (clear_refs "5",
Linux 4.0+), so the peak read after an operation is the operation's own. Where resetting is not
allowed, the peak is the process's lifetime peak: still an upper bound, so the assertions hold.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _status_kib(pid: int | str, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert found, f"no {field} in /proc/{pid}/status"
    return int(found.group(1))


def rss_mb(pid: int | str = "self") -> float:
    return _status_kib(pid, "VmRSS") / 1024


def peak_mb(pid: int | str = "self") -> float:
    return _status_kib(pid, "VmHWM") / 1024


def reset_peak(pid: int | str = "self") -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def require_proc() -> None:
    if not Path("/proc/self/status").is_file():
        pytest.skip("peak memory is read from Linux's /proc")


# Runs in a fresh interpreter: setup (imports, inputs) first, then the peak is reset and the measured
# statement runs. Prints JSON: seconds and peak-above-baseline of the measured part.
_MEASURE = """
import json, sys, time
sys.path.insert(0, {tests!r})
from process_memory import peak_mb, reset_peak, rss_mb
{setup}
baseline = rss_mb()
reset_peak()
started = time.perf_counter()
{statement}
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "peak_mb": peak_mb(), "baseline_mb": baseline}}))
"""


def measure(setup: str, statement: str, timeout_s: float = 300) -> dict[str, float]:
    """Seconds and peak RSS above the pre-statement RSS of `statement`, run after `setup` in a fresh
    Python (so earlier tests' memory does not count): {"seconds", "peak_mb", "baseline_mb", "grew_mb"}."""
    code = _MEASURE.format(tests=str(Path(__file__).parent), setup=setup, statement=statement)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["grew_mb"] = result["peak_mb"] - result["baseline_mb"]
    result["wall_s"] = time.monotonic() - started
    return result
