"""The credits store's two databases, for tests that run the same checks on both."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from outpaint.server.pg_cluster import PostgresCluster
from outpaint.server.store import CreditStore, open_store

NAMES = ("sqlite", "postgres")


@dataclass
class Backend:
    name: str
    db: str  # what `--db` gets: a file or a URL
    integrity_error: type[Exception]  # what a CHECK constraint raises
    cluster: PostgresCluster | None = None

    def open(self, **kwargs: Any) -> CreditStore:
        return open_store(self.db, **kwargs)

    def query(self, sql: str, parameters: tuple = ()) -> list[tuple]:
        """One statement on a connection of its own, committed (`?` placeholders on both)."""
        if self.cluster is None:
            conn = sqlite3.connect(self.db)
            try:
                with conn:
                    return conn.execute(sql, parameters).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.db, autocommit=True) as pg:
            cursor = pg.execute(sql.replace("?", "%s"), parameters)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def raw_bytes(self) -> bytes:
        """Everything the database wrote to disk, as the files hold it."""
        if self.cluster is None:
            return b"".join(p.read_bytes() for p in Path(self.db).parent.glob(Path(self.db).name + "*"))
        oid = self.query("SELECT oid FROM pg_database WHERE datname = current_database()")[0][0]
        self.query("CHECKPOINT")  # the tables' pages to their files, not only the WAL
        files = [*(self.cluster.data / "base" / str(oid)).iterdir(), *(self.cluster.data / "pg_wal").glob("0*")]
        return b"".join(p.read_bytes() for p in files if p.is_file())


def make_backend(name: str, folder: Path, request: Any) -> Backend:
    """`request`: pytest's, to start the PostgreSQL cluster only when a test needs it."""
    if name == "sqlite":
        return Backend("sqlite", str(folder / "credits.db"), sqlite3.IntegrityError)
    import psycopg

    cluster = request.getfixturevalue("postgres_cluster")
    return Backend("postgres", cluster.create_database(), psycopg.errors.CheckViolation, cluster)
