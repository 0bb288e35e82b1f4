"""Everything `outpaint serve` can be told, with the defaults docs/server.md documents."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from outpaint.engine.canvas import DEFAULT_MAX_PIXELS
from outpaint.engine.coherence import COHERENCE_DEFAULT, Coherence
from outpaint.engine.colour_match import COLOUR_MATCH_DEFAULT
from outpaint.engine.fast_path import EXACT, MIN_VAE_TILE, FastPathOptions
from outpaint.engine.large_canvas import LARGE_CANVAS_DEFAULT, LargeCanvas
from outpaint.engine.pan import MAX_PANORAMA_WIDTH

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    model: Path
    # The credits store: an SQLite file or a postgresql:// URL (store.open_store); required unless no_auth.
    db: str | Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    # None: ort-cpu, or with `fast` the fastest precision this CPU runs natively (engine/cpu_features.py).
    backend: str | None = None
    fast: bool = False  # the fast path's levers (engine/fast_path.py) on the pipeline
    # Latent cells of a VAE-decode and a VAE-encode tile (engine/tiled_vae.py); "auto": the fast path's
    # default with `fast`, one piece without it (the exact path); None: never tile. Tiling bounds the
    # VAE's memory on large canvases at a small cost in the picture (docs/benchmarks.md, "Memory").
    decode_tile: int | Literal["auto"] | None = "auto"
    encode_tile: int | Literal["auto"] | None = "auto"
    large_canvas: LargeCanvas = LARGE_CANVAS_DEFAULT  # canvases past the model's native size
    colour_match: str = COLOUR_MATCH_DEFAULT  # engine/colour_match.py
    coherence: Coherence = COHERENCE_DEFAULT  # engine/coherence.py
    no_auth: bool = False
    price: int = 1  # credits per delivered image
    concurrency: int = 1  # generations running at once on the one pipeline
    max_queue: int = 8  # generations waiting beyond those running; more is a 503
    timeout_s: float = 300.0  # per-request deadline, queue wait included
    # A client has this long to send its request head, then this long for its body (16 MiB at
    # 1 Mbit/s takes ~134 s: a slower sender must not hold a queue slot longer).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 120.0
    # Open connections beyond this are answered 503 and closed at once (file descriptors are finite).
    max_connections: int = 256
    drain_timeout_s: float = 300.0  # how long a SIGTERM waits for admitted work before exiting
    # A base64 1024x1024 PNG is ~4-6 MB; 16 MiB leaves room for large JPEG/WebP sources.
    max_body_bytes: int = 16 * MIB
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # decoded source limit (width x height), from the header
    jpeg_quality: int = 95
    # Zooms and panoramas (server/sequences.py): each is a chain of outpaints in one slot, charged per outpaint.
    max_zoom_steps: int = 8
    max_pan_width: int = 4096
    max_pan_outpaints: int = 32
    # Frames x pixels of one zoom video: Pillow holds every frame (4 bytes a pixel) until it encodes, so
    # this bounds a zoom's memory (~400 MiB at the default: 385 frames of 512x512, or 100 of 1024x1024).
    max_video_pixels: int = 100 * MIB
    # Asynchronous jobs (server/jobs.py): unfinished (queued + running) jobs per API key and in the whole
    # store (each holds its source image in the store until it runs), and how long a finished job's
    # status and result are kept.
    max_jobs_per_key: int = 4
    max_queued_jobs: int = 64
    job_retention_s: float = 3600.0

    def fast_path_options(self) -> FastPathOptions:
        """The levers the pipeline runs: the fast path's defaults or none, with the VAE tiles applied."""
        options = FastPathOptions() if self.fast else EXACT
        if self.decode_tile != "auto":
            options = replace(options, decode_tile=self.decode_tile)
        if self.encode_tile != "auto":
            options = replace(options, encode_tile=self.encode_tile)
        return options

    def problems(self) -> list[str]:
        """What is wrong with this configuration, as messages naming the flag (empty when fine)."""
        found = []
        if not self.no_auth and self.db is None:
            found.append("--db is required (the credits store: an SQLite file or a postgresql:// URL), "
                         "or --no-auth for local use without keys")
        if self.price < 1:
            found.append(f"--price must be >= 1 credit, got {self.price}")
        if self.concurrency < 1:
            found.append(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.max_queue < 0:
            found.append(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.timeout_s <= 0:
            found.append(f"--timeout must be > 0 seconds, got {self.timeout_s}")
        if self.header_timeout_s <= 0 or self.body_timeout_s <= 0:
            found.append(f"--header-timeout and --body-timeout must be > 0 seconds, got "
                         f"{self.header_timeout_s} and {self.body_timeout_s}")
        if self.max_connections < self.concurrency + self.max_queue + 2:
            found.append(f"--max-connections must leave room for the queue and health checks: at least "
                         f"{self.concurrency + self.max_queue + 2}, got {self.max_connections}")
        if self.drain_timeout_s < 0:
            found.append(f"--drain-timeout must be >= 0 seconds, got {self.drain_timeout_s}")
        if self.max_body_bytes < 1024:
            found.append(f"--max-body-bytes must be >= 1024, got {self.max_body_bytes}")
        if self.max_image_pixels < 64 * 64:
            found.append(f"--max-image-pixels must be >= 4096, got {self.max_image_pixels}")
        if not 1 <= self.jpeg_quality <= 100:
            found.append(f"--jpeg-quality must be 1 to 100, got {self.jpeg_quality}")
        for flag, value in (("--max-zoom-steps", self.max_zoom_steps), ("--max-pan-outpaints", self.max_pan_outpaints)):
            if value < 1:
                found.append(f"{flag} must be >= 1, got {value}")
        if not 512 <= self.max_pan_width <= MAX_PANORAMA_WIDTH:
            found.append(f"--max-pan-width must be 512 to {MAX_PANORAMA_WIDTH}, got {self.max_pan_width}")
        if self.max_video_pixels < 256 * 256 * 2:
            found.append(f"--max-video-pixels must be >= {256 * 256 * 2} (two frames of the smallest canvas), "
                         f"got {self.max_video_pixels}")
        if self.max_jobs_per_key < 1 or self.max_queued_jobs < 1:
            found.append(f"--max-jobs-per-key and --max-queued-jobs must be >= 1, got {self.max_jobs_per_key} "
                         f"and {self.max_queued_jobs}")
        if self.job_retention_s <= 0:
            found.append(f"--job-retention-s must be > 0 seconds, got {self.job_retention_s}")
        for flag, tile in (("--decode-tile", self.decode_tile), ("--encode-tile", self.encode_tile)):
            if isinstance(tile, int) and tile < MIN_VAE_TILE:
                found.append(f"{flag} must be off, auto or >= {MIN_VAE_TILE} latent cells, got {tile}")
        if not 0 <= self.port <= 65535:
            found.append(f"--port must be 0 to 65535, got {self.port}")
        return found
