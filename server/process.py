"""`outpaint serve` as a child process on a loopback port (tests, benchmarks, embedding).

Only the standard library here: a caller needs no HTTP client package to start and probe it.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str  # http://host:port, no trailing slash
    log_path: Path
    command: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
        """Send `sig` and wait for the exit code (SIGKILL after `timeout_s`)."""
        if self.running():
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout=30)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_server(
    model: Path,
    *,
    log_path: Path,
    db: Path | str | None = None,  # an SQLite file or a postgresql:// URL
    args: Sequence[str] = (),
    host: str = "127.0.0.1",
    ready_timeout_s: float = 120.0,
    env: dict[str, str] | None = None,
    subcommand: str = "serve",
    ready_line: str | None = None,
) -> ServerProcess:
    """Start `outpaint serve` (or `subcommand`, e.g. serve-ray) and return once /readyz answers 200 and,
    if given, `ready_line` is in its log (raise with its log otherwise)."""
    for _attempt in range(3):  # another process may take the free port between our probe and its bind
        port = free_port(host)
        command = [sys.executable, "-m", "outpaint.cli", subcommand, "--model", str(model), "--host", host,
                   "--port", str(port), *(["--db", str(db)] if db is not None else []), *args]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        server = ServerProcess(process, f"http://{host}:{port}", log_path, command)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline and server.running():
            if _ready(server.url) and (ready_line is None or ready_line in server.log()):
                return server
            time.sleep(0.1)
        if server.running():
            server.stop(signal.SIGKILL)
            raise RuntimeError(f"outpaint serve was not ready after {ready_timeout_s:g} s:\n{server.log()[-4000:]}")
        if "address already in use" not in server.log().lower():
            break
    with contextlib.suppress(Exception):
        server.stop(signal.SIGKILL)
    raise RuntimeError(f"outpaint serve exited with {server.process.returncode}:\n{server.log()[-4000:]}")
