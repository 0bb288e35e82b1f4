"""Who holds a credit reservation, and when its death is certain.

Reservations are settled by their lease (credits.py): one whose lease expired is refunded by
whoever sees it. The identity here only lets a starting server refund *at once* what a process
that is certainly dead left open, instead of waiting out the lease. Certain means: the same boot
and the same PID namespace (so the PID means the same process table) and that PID is gone, is a
zombie (it has exited: it can no longer commit anything), or is another process (a different start
time: the PID was recycled). A hostname proves nothing: re-created containers get new ones, and
containers on the host network share one across PID namespaces. Anything less certain (another
machine, another container, no /proc) waits for the lease.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path

_PROC = Path("/proc")


def _boot_id() -> str | None:
    try:
        return (_PROC / "sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return str(os.stat(_PROC / "self/ns/pid").st_ino)
    except OSError:
        return None


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of `pid`, or None when no such process."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    return fields[0], fields[19]


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(_PROC / str(pid) / "task"))
    except OSError:
        return 0


@functools.cache
def _here() -> tuple[str | None, str | None]:
    return _boot_id(), _pid_namespace()


def identity(pid: int | None = None) -> str:
    """`host:pid:boot=..:ns=..:start=..` for a running process (this one by default); only
    `host:pid` where /proc cannot tell more (then only the lease can settle its reservations)."""
    pid = os.getpid() if pid is None else pid
    text = f"{socket.gethostname()}:{pid}"
    boot, namespace = _here()
    stat = _stat(pid)
    if boot is None or namespace is None or stat is None:
        return text
    return f"{text}:boot={boot}:ns={namespace}:start={stat[1]}"


def this_process() -> str:
    return _identity_of(os.getpid())  # keyed by pid: a forked child is another holder


@functools.cache
def _identity_of(pid: int) -> str:
    return identity(pid)


def is_this_process(owner: str) -> bool:
    """True when `owner` names this very process, provably: with its boot, PID namespace and start
    time. A bare `host:pid` (no /proc) could be a namesake in another container or on another host
    sharing the database, so it is never taken for this process."""
    me = this_process()
    return owner == me and ":start=" in me


def is_certainly_dead(owner: str) -> bool:
    """True only when the process `owner` names can no longer settle anything (see the module doc)."""
    parts = owner.split(":")
    if len(parts) < 2 or not parts[1].isdigit():
        return False
    fields = {name: value for name, _, value in (part.partition("=") for part in parts[2:])}
    boot, namespace = _here()
    if boot is None or fields.get("boot") != boot or fields.get("ns") != namespace or "start" not in fields:
        return False
    stat = _stat(int(parts[1]))
    if stat is None or stat[1] != fields["start"]:
        return True  # gone, or the PID now belongs to another process
    state, _start = stat
    # A zombie has exited. (A leader thread that exited while others run also shows Z: then the
    # task list has more than one entry and the process is alive.)
    return state == "Z" and _threads(int(parts[1])) <= 1
