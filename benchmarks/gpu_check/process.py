"""A child process bounded in time: on the timeout its whole process group is killed, its output kept."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Finished:
    exit_code: int | None  # None: killed at the timeout
    output: str  # stdout and stderr together
    seconds: float

    def tail(self, lines: int = 8) -> str:
        return "\n".join(self.output.strip().splitlines()[-lines:])


def run_bounded(command: Sequence[str], timeout_s: float, cwd: Path | None = None,
                env: Mapping[str, str] | None = None) -> Finished:
    started = time.monotonic()
    # Its own session and process group: a timeout ends the child and whatever it started, nothing else.
    process = subprocess.Popen(list(command), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, env=dict(env or os.environ, PYTHONUNBUFFERED="1"))
    try:
        output, _ = process.communicate(timeout=max(timeout_s, 0.1))
        exit_code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        exit_code = None
    return Finished(exit_code, output or "", round(time.monotonic() - started, 1))
