"""One system's measurements in a process of its own, so its peak RSS is its own.

    python -m outpaint.benchmarks.worker SYSTEM CONFIG.json OUT.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .config import BenchConfig
from .recorder import Recorder


def run_system(system: str, config: BenchConfig, workdir: Path, out: Path | None = None) -> Recorder:
    rec = Recorder(system, config, workdir, out)
    if system.startswith("outpaint"):
        from . import systems_ours as module
    elif system.startswith("diffusers"):
        from . import systems_diffusers as module  # type: ignore[no-redef]
    elif system.startswith("openvino"):
        from . import systems_openvino as module  # type: ignore[no-redef]
    elif system.startswith("optimum"):
        from . import systems_optimum as module  # type: ignore[no-redef]
    else:
        raise ValueError(f"no runner for system {system!r}")
    module.run(system, config, rec)
    return rec


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    system, config_path, out_path = argv
    config = BenchConfig.from_json(Path(config_path).read_text())
    out = Path(out_path)
    started = time.perf_counter()
    rec = run_system(system, config, out.parent, out)
    rec.flush(seconds=round(time.perf_counter() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
