"""What every process that serves the API does first: load the pipeline, open the credits store.

Shared by `outpaint serve` (server/run.py) and each Ray Serve replica (server/ray_serve.py), so a
replica is configured exactly like the single server.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .config import ServerConfig
from .credits import CreditError
from .store import CreditStore, open_store

if TYPE_CHECKING:  # the pipeline (numpy, ONNX Runtime) loads only where a model is served, not in Ray's proxy
    from outpaint.engine.pipeline import OutpaintPipeline

log = logging.getLogger("outpaint.server")


def load_pipeline(config: ServerConfig) -> tuple[ServerConfig, OutpaintPipeline]:
    """The pipeline `config` asks for, and the config with the backend that `--fast` resolved to."""
    from outpaint.engine.cpu_features import resolve_backend
    from outpaint.engine.pipeline import OutpaintPipeline

    backend, reason = resolve_backend(config.backend, config.fast, config.model)
    if reason:
        log.info("--fast: %s", reason)
    config = dataclasses.replace(config, backend=backend)
    started = time.perf_counter()
    pipeline = OutpaintPipeline.load(config.model, backend, options=config.fast_path_options(),
                                     large_canvas=config.large_canvas, colour_match=config.colour_match,
                                     coherence=config.coherence)
    log.info("loaded %s (%s%s) in %.1f s", config.model, backend, ", fast path" if config.fast else "",
             time.perf_counter() - started)
    return config, pipeline


def open_credit_store(db: Path | str) -> CreditStore:
    """The credits store that `--db` names (an SQLite file or a postgresql:// URL, store.open_store);
    SystemExit with the reason where it cannot be opened."""
    try:
        store = open_store(db)
    except CreditError as exc:
        raise SystemExit(f"outpaint serve: --db: {exc}") from None
    log.info("credits in %s", store.where)
    return store


def open_serving_store(config: ServerConfig) -> CreditStore | None:
    """The store, with what a dead process left open refunded, or None under --no-auth."""
    if config.no_auth or config.db is None:
        log.warning("--no-auth: anyone who can reach %s:%d can generate, no credits are counted",
                    config.host, config.port)
        return None
    store = open_credit_store(config.db)
    refunded = store.refund_orphans()
    if refunded:
        log.warning("refunded %d reservations left open by a process that stopped mid-request", refunded)
    # Jobs a dead process was running go back to the queue (or fail, refunded) now; queued ones wait.
    store.job_retention_s = config.job_retention_s
    store.sweep_jobs()
    return store
