"""The credits store as the server sees it, and the one place that picks a database from `--db`.

`open_store("credits.db")` opens (or creates) an SQLite file: one machine. `open_store("postgresql://
user@host/db")` opens PostgreSQL: replicas on many machines sharing one balance per key (it needs
the `postgres` extra: psycopg 3 and psycopg-pool). Both run the same logic (credits.py) with the
same guarantees; every entry point (`outpaint serve`, `outpaint keys`, a Ray Serve replica) passes
the `--db` string here unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .credits import CreditError, KeyInfo, Reservation
from .idempotency_store import Claim, Limits
from .jobs_store import ClaimedJob, JobLimits, JobRow, NewJob

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class CreditStore(Protocol):
    """API keys, balances, reservations with leases, the Idempotency-Key records (credits.py) and the
    asynchronous jobs (jobs_store.py)."""

    where: str  # the file or the URL without its password, for messages
    lease_s: float  # of new reservations
    job_retention_s: float  # of the jobs the sweep fails

    def close(self) -> None: ...

    def create_key(self, credits: int, name: str = "") -> tuple[int, str]: ...

    def authenticate(self, key: str) -> int | None: ...

    def balance(self, key_id: int) -> int: ...

    def add_credits(self, key_id: int, credits: int) -> int: ...

    def revoke(self, key_id: int) -> None: ...

    def list_keys(self) -> list[KeyInfo]: ...

    def reserve(
        self, key_id: int, amount: int, request_id: str, owner: str | None = None, *,
        lease_s: float | None = None, claim: Claim | None = None,
    ) -> Reservation | None: ...

    def charge(self, request_id: str) -> bool: ...

    def refund(self, request_id: str) -> bool: ...

    def open_reservations(self) -> list[tuple[str, int, int, str]]: ...

    def lease_expiry(self, request_id: str) -> float | None: ...

    def renew_leases(self, lease_s: float | None = None) -> int: ...

    def refund_orphans(self, *, report_waiting: bool = True) -> int: ...

    def keep_leases(
        self, lease_s: float, *, every_s: float | None = None, on_refund: Callable[[int], None] | None = None
    ) -> None: ...

    def stop_leases(self) -> None: ...

    def idempotency_state(self, key_id: int, key: str) -> str | None: ...

    def check_idempotency(self, key_id: int, claim: Claim) -> None: ...

    def store_response(self, request_id: str, headers: dict[str, str], body: bytes) -> bool: ...

    def submit_job(self, key_id: int, amount: int, job: NewJob, limits: JobLimits, *,
                   claim: Claim | None = None) -> Reservation | None: ...

    def get_job(self, job_id: str, key_id: int | None, *, with_preview: bool = False,
                with_result: bool = False) -> JobRow | None: ...

    def list_jobs(self) -> list[JobRow]: ...

    def has_queued_job(self) -> bool: ...

    def claim_job(self, lease_s: float | None = None) -> ClaimedJob | None: ...

    def job_progress(self, job_id: str, step: int, steps: int, preview: bytes | None,
                     preview_size: tuple[int, int] | None, lease_s: float | None = None) -> bool: ...

    def finish_job(self, job_id: str, jpeg: bytes, seam_score: float | None, warnings: list[str],
                   retention_s: float, replay: tuple[dict[str, str], bytes] | None = None) -> int | None: ...

    def fail_job(self, job_id: str, error: str, status: int, retention_s: float) -> bool: ...

    def requeue_job(self, job_id: str) -> bool: ...

    def cancel_job(self, job_id: str, key_id: int, retention_s: float) -> tuple[str, JobRow] | None: ...

    def renew_job_leases(self, lease_s: float | None = None) -> int: ...

    def sweep_jobs(self) -> tuple[int, int, int]: ...


def is_postgres(db: str | Path) -> bool:
    return str(db).startswith(POSTGRES_SCHEMES)


def open_store(db: str | Path, *, idempotency: Limits | None = None, pool_size: int | None = None) -> CreditStore:
    """The credits store `db` names: a `postgresql://` (or `postgres://`) URL, else an SQLite file
    (created if missing).

    The schema is created or migrated. `idempotency`: the bounds of the stored responses.
    `pool_size`: at most this many PostgreSQL connections in this process (default 10). Raises
    CreditError when the store cannot be opened: unreachable, of a newer schema, or psycopg not
    installed.
    """
    text = str(db)
    if text.startswith(("postgresql:", "postgres:")) and not is_postgres(text):
        raise CreditError(f"{text!r} is not a PostgreSQL URL: it must start with postgresql:// "
                          "(pass the --db string as it is: pathlib.Path drops one of the two slashes)")
    if is_postgres(db):
        try:
            from .credits_postgres import DEFAULT_POOL_SIZE, PostgresCreditStore
        except ImportError as exc:
            raise CreditError(f"a postgresql:// credits database needs psycopg ({exc.name} is missing): "
                              "pip install 'outpaint[postgres]'") from None
        return PostgresCreditStore(str(db), idempotency=idempotency, pool_size=pool_size or DEFAULT_POOL_SIZE)
    from .credits_sqlite import SqliteCreditStore

    return SqliteCreditStore(Path(db), idempotency=idempotency)
