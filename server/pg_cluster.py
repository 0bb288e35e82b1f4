"""A throwaway PostgreSQL cluster on loopback, for the tests and the benchmarks (serve_faults): initdb
into a temporary folder, a free loopback port, a socket folder of its own, trust authentication on
loopback, stopped and deleted afterwards. Not for production: fsync is off and anyone on the host
may connect as the superuser.

PostgreSQL refuses to run as root (and CI runs as root): then the server runs as the Debian
`postgres` user, or as `outpaint-pg`, a system user created here when neither exists. The
binaries come from OUTPAINT_PG_BIN, `pg_config --bindir`, or /usr/lib/postgresql/<newest>/bin.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .process import free_port

SUPERUSER = "outpaint"
SERVICE_USER = "outpaint-pg"


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bindir() -> Path:
    candidates = []
    if os.environ.get("OUTPAINT_PG_BIN"):
        candidates.append(Path(os.environ["OUTPAINT_PG_BIN"]))
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(Path(found.stdout.strip()))
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name)
                      if p.parent.name.isdigit() else 0, reverse=True)
    candidates.extend(versions)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file() and (bindir / "postgres").is_file():
            return bindir
    raise PostgresMissing("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in OUTPAINT_PG_BIN, "
                          "`pg_config --bindir` or /usr/lib/postgresql/*/bin: install them (Debian: "
                          "apt-get install postgresql; .ci/run does), or set OUTPAINT_SKIP_POSTGRES=1 to skip "
                          "the PostgreSQL tests on purpose")


def _service_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", SERVICE_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVICE_USER],
                   check=True, capture_output=True)
    return pwd.getpwnam(SERVICE_USER)


@dataclass
class PostgresCluster:
    folder: Path
    bindir: Path
    port: int
    user: pwd.struct_passwd | None
    databases: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        user = self.user
        return subprocess.run(
            list(args), capture_output=True, text=True, timeout=timeout, cwd=self.folder,
            user=None if user is None else user.pw_uid, group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
        )

    def _check(self, result: subprocess.CompletedProcess, what: str) -> None:
        if result.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{log}")

    def start(self) -> None:
        """initdb, then run the server."""
        self._check(self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
                              "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"), "initdb")
        self.start_server()

    def start_server(self) -> None:
        """Run the server on the existing data folder (after `initdb`, or after `stop_server`)."""
        # fsync off: a throwaway cluster; it changes no locking or transaction semantics.
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200 -c shared_buffers=32MB")
        self._check(self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                              "-l", str(self.log_path), "-w", "-t", "60", "start", timeout=90), "pg_ctl start")

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data. `mode`: "fast" (an operator's restart: open transactions
        rolled back, every connection closed, committed work flushed) or "immediate" (a crash: the
        next start recovers from the WAL, which may lose a commit made with synchronous_commit off)."""
        if mode not in ("fast", "immediate"):
            raise ValueError(f"mode must be 'fast' or 'immediate', got {mode!r}")
        self._check(self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60",
                              "stop", timeout=90), "pg_ctl stop")

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]  # a generated name
        self.databases.append(name)
        return self.url(name)

    def restart(self) -> None:
        """Stop the server at once (every connection dropped, as in a crash) and start it again."""
        self._check(self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-m",
                              "immediate", "-w", "-t", "60", "restart", timeout=90), "pg_ctl restart")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop", timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_cluster() -> PostgresCluster:
    bindir = find_bindir()
    user = _service_user()
    # Not under pytest's tmp_path: its parents are private to root, and the server user must enter.
    folder = Path(tempfile.mkdtemp(prefix="outpaint-pg-"))
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    last: Exception | None = None
    for _attempt in range(3):  # another process may take the free port before the server binds it
        cluster = PostgresCluster(folder, bindir, free_port(), user)
        try:
            cluster.start()
            return cluster
        except RuntimeError as exc:
            last = exc
            cluster.stop()
            folder.mkdir()
            if user is not None:
                os.chown(folder, user.pw_uid, user.pw_gid)
    shutil.rmtree(folder, ignore_errors=True)
    raise RuntimeError(f"could not start a throwaway PostgreSQL: {last}")
