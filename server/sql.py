"""What the stores' shared SQL needs of a database connection: sqlite3's and psycopg's both fit.

The statements are written once, with `?` placeholders and SQL that SQLite (3.35+) and PostgreSQL
(13+) both run; the PostgreSQL store translates the placeholders (credits_postgres.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol


class Rows(Protocol):
    """A cursor after one statement."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Tx(Protocol):
    """A connection inside a transaction (or, for reads, outside one)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Rows: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Rows: ...
