"""`outpaint serve --db postgresql://...` end to end: keys made with `outpaint keys` on the database,
a paid request served over HTTP, the ledger audited afterwards; a key without credits costs nothing."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("requests")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from outpaint.server.process import start_server

from .store_backends import Backend, make_backend
from .test_server import assert_json_error, cheap_body, jpeg_size, post


@pytest.fixture
def backend(request, tmp_path) -> Backend:
    return make_backend("postgres", tmp_path, request)


def _keys(db: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "outpaint.cli", "keys", *args, "--db", db],
                          capture_output=True, text=True, timeout=60)


def test_serve_on_postgresql_charges_one_delivered_image_and_nothing_else(backend, tiny_model_dir, tmp_path):
    paid = _keys(backend.db, "create", "--credits", "2", "--name", "paid")
    broke = _keys(backend.db, "create", "--credits", "0", "--name", "broke")
    assert paid.returncode == 0 and broke.returncode == 0, paid.stderr + broke.stderr
    server = start_server(tiny_model_dir, db=backend.db, log_path=tmp_path / "server.log",
                          args=["--timeout", "120", "--log-level", "info"])
    try:
        r = post(server, cheap_body(), paid.stdout.strip())
        assert jpeg_size(r) == (256, 256)
        assert r.headers["x-remaining-credits"] == "1"
        refused = post(server, cheap_body(), broke.stdout.strip())
        assert "not enough credits" in assert_json_error(refused, 406)["error"]
        assert refused.headers["x-remaining-credits"] == "0"
        assert "credits in postgresql://outpaint@127.0.0.1" in server.log()
    finally:
        assert server.stop() == 0, server.log()[-3000:]
    # The ledger, read from the database: one charge of one credit, nothing open, nothing else.
    assert backend.query("SELECT name, balance FROM api_keys ORDER BY id") == [("paid", 1), ("broke", 0)]
    assert backend.query("SELECT key_id, amount FROM charges") == [(1, 1)]
    assert backend.query("SELECT COUNT(*) FROM reservations") == [(0,)]
    listing = _keys(backend.db, "list")
    assert listing.returncode == 0 and "paid" in listing.stdout and "broke" in listing.stdout
