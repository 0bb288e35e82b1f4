"""`outpaint serve` and `outpaint keys ...` (registered by outpaint/cli.py).

Nothing here imports FastAPI or uvicorn at module level: the CLI works without the `serve` extra.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Literal

from outpaint.engine import coherence, colour_match, large_canvas
from outpaint.engine.backends.registry import BACKENDS
from outpaint.engine.fast_path import MIN_VAE_TILE, FastPathOptions

from .config import MIB, ServerConfig


def add_serve(sub) -> None:
    defaults = ServerConfig(model=Path("."))
    p = sub.add_parser("serve", help="serve the outpainting HTTP API (drop-in for the hosted SD 1.5 endpoint)")
    p.add_argument("--model", type=Path, required=True, help="exported model folder")
    p.add_argument("--db", help="credits store: an SQLite file (created if missing) or a postgresql://user@host/db "
                   "URL shared by replicas (needs the postgres extra); see `outpaint keys`")
    p.add_argument("--host", default=defaults.host, help=f"address to listen on (default {defaults.host})")
    p.add_argument("--port", type=int, default=defaults.port, help=f"(default {defaults.port})")
    p.add_argument("--backend", default=defaults.backend, choices=tuple(BACKENDS),
                   help="graph runtime (default ort-cpu; with --fast the fastest this CPU runs natively, "
                        "see `outpaint info`)")
    p.add_argument("--fast", action="store_true", help="serve the CPU fast path: approximate inside the new "
                   "area, several times faster (docs/benchmarks.md); without --backend it runs bf16 where "
                   "this CPU has it natively, else fp32, and logs which")
    _add_vae_tiles(p)
    colour_match.add_argument(p)
    large_canvas.add_arguments(p)
    coherence.add_arguments(p)
    p.add_argument("--no-auth", action="store_true", help="no keys, no credits: for local use only")
    p.add_argument("--price", type=int, default=defaults.price, help="credits per delivered image (default 1)")
    p.add_argument("--concurrency", type=int, default=defaults.concurrency,
                   help=f"generations running at once on the one pipeline (default {defaults.concurrency})")
    p.add_argument("--max-queue", type=int, default=defaults.max_queue,
                   help=f"generations allowed to wait beyond the running ones; more get 503 "
                        f"(default {defaults.max_queue})")
    p.add_argument("--timeout", type=float, default=defaults.timeout_s, dest="timeout_s",
                   help=f"per-request deadline in seconds, queue wait included (default {defaults.timeout_s:g})")
    p.add_argument("--header-timeout", type=float, default=defaults.header_timeout_s, dest="header_timeout_s",
                   help=f"seconds a new connection has to send its request head "
                        f"(default {defaults.header_timeout_s:g})")
    p.add_argument("--body-timeout", type=float, default=defaults.body_timeout_s, dest="body_timeout_s",
                   help=f"seconds a request has to send its body (default {defaults.body_timeout_s:g})")
    p.add_argument("--max-connections", type=int, default=defaults.max_connections,
                   help=f"open connections; more are answered 503 and closed (default {defaults.max_connections})")
    p.add_argument("--drain-timeout", type=float, default=defaults.drain_timeout_s, dest="drain_timeout_s",
                   help=f"on SIGTERM, seconds to let admitted work finish (default {defaults.drain_timeout_s:g})")
    p.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes,
                   help=f"request body limit, 413 beyond (default {defaults.max_body_bytes // MIB} MiB)")
    p.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels,
                   help=f"decoded source image limit in pixels, 413 beyond (default {defaults.max_image_pixels})")
    p.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality, help="(default 95)")
    _add_sequence_limits(p, defaults)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args) -> int:
    import logging

    try:
        from .run import serve
    except ImportError as exc:
        raise SystemExit(f"outpaint serve needs the serve extra ({exc.name} is missing): "
                         "pip install 'outpaint[serve]'") from None
    logging.getLogger("outpaint").setLevel(getattr(logging, args.log_level.upper()))
    config = ServerConfig(
        model=args.model, db=args.db, host=args.host, port=args.port, backend=args.backend, fast=args.fast,
        decode_tile=args.decode_tile, encode_tile=args.encode_tile, large_canvas=large_canvas.from_arguments(args),
        coherence=coherence.from_arguments(args),
        colour_match=args.colour_match, no_auth=args.no_auth,
        price=args.price, concurrency=args.concurrency, max_queue=args.max_queue, timeout_s=args.timeout_s,
        drain_timeout_s=args.drain_timeout_s, max_body_bytes=args.max_body_bytes,
        header_timeout_s=args.header_timeout_s, body_timeout_s=args.body_timeout_s,
        max_connections=args.max_connections,
        max_image_pixels=args.max_image_pixels, jpeg_quality=args.jpeg_quality,
        **_sequence_limits(args),
    )
    return serve(config, log_level=args.log_level)


def add_serve_ray(sub) -> None:
    defaults = ServerConfig(model=Path("."))
    p = sub.add_parser("serve-ray", help="serve the same HTTP API on Ray Serve: N replicas behind one endpoint "
                       "(docs/ray.md)")
    p.add_argument("--model", type=Path, required=True, help="exported model folder (on every node)")
    p.add_argument("--db", type=_database, help="credits store shared by the replicas: an SQLite file (one "
                   "machine) or a database URL, passed to every replica unchanged; see `outpaint keys`")
    p.add_argument("--host", default=defaults.host, help=f"address Serve's proxy listens on (default {defaults.host})")
    p.add_argument("--port", type=int, default=defaults.port, help=f"(default {defaults.port})")
    p.add_argument("--replicas", type=int, default=2, help="replicas (processes, each with the model loaded; "
                   "default 2)")
    p.add_argument("--min-replicas", type=int, default=1, help="with --max-replicas: autoscale from this many")
    p.add_argument("--max-replicas", type=int, help="autoscale up to this many replicas (target: --concurrency "
                   "generations running per replica)")
    p.add_argument("--cpus-per-replica", type=float, default=1.0,
                   help="CPU cores Ray reserves for each replica; also its runtime threads (default 1)")
    p.add_argument("--gpus-per-replica", type=float,
                   help="GPUs per replica (default 1 on a GPU backend, else 0)")
    p.add_argument("--max-queued-requests", type=int, default=64,
                   help="requests each Serve proxy holds until a replica has room; more get 503 (default 64)")
    p.add_argument("--address", help="join this running Ray cluster instead of starting a local one on loopback")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: this machine's)")
    p.add_argument("--backend", default=defaults.backend, choices=tuple(BACKENDS),
                   help="graph runtime (default ort-cpu)")
    p.add_argument("--fast", action="store_true", help="serve the CPU fast path (see `outpaint serve --help`)")
    _add_vae_tiles(p)
    colour_match.add_argument(p)
    large_canvas.add_arguments(p)
    coherence.add_arguments(p)
    p.add_argument("--no-auth", action="store_true", help="no keys, no credits: for local use only")
    p.add_argument("--price", type=int, default=defaults.price, help="credits per delivered image (default 1)")
    p.add_argument("--concurrency", type=int, default=defaults.concurrency,
                   help=f"generations running at once in each replica (default {defaults.concurrency})")
    p.add_argument("--max-queue", type=int, default=defaults.max_queue,
                   help=f"generations waiting in each replica; more get 503 (default {defaults.max_queue})")
    p.add_argument("--timeout", type=float, default=defaults.timeout_s, dest="timeout_s",
                   help=f"per-request deadline in seconds, queue wait included (default {defaults.timeout_s:g}); "
                        "a stopping replica waits this long + 30 s for its requests")
    p.add_argument("--body-timeout", type=float, default=defaults.body_timeout_s, dest="body_timeout_s",
                   help=f"seconds a request has to send its body (default {defaults.body_timeout_s:g})")
    p.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes,
                   help=f"request body limit, 413 beyond (default {defaults.max_body_bytes // MIB} MiB)")
    p.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels,
                   help=f"decoded source image limit in pixels, 413 beyond (default {defaults.max_image_pixels})")
    p.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality, help="(default 95)")
    _add_sequence_limits(p, defaults)
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=_cmd_serve_ray)


def _database(text: str) -> Path | str:
    """A file path, or a URL kept as written (Path would fold its `//`)."""
    return text if "://" in text else Path(text)


def _cmd_serve_ray(args) -> int:
    import logging
    import os

    if args.address is None:  # before Ray is imported: it reads the switch then (server/ray_serve.py)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        from .ray_serve import RayOptions, serve_ray
    except ImportError as exc:
        raise SystemExit(f"outpaint serve-ray needs the ray extra ({exc.name} is missing): "
                         "pip install 'outpaint[ray]'") from None
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("outpaint").setLevel(getattr(logging, args.log_level.upper()))
    config = ServerConfig(
        model=args.model, db=args.db, host=args.host, port=args.port, backend=args.backend, fast=args.fast,
        decode_tile=args.decode_tile, encode_tile=args.encode_tile, large_canvas=large_canvas.from_arguments(args),
        coherence=coherence.from_arguments(args),
        colour_match=args.colour_match,
        no_auth=args.no_auth, price=args.price, concurrency=args.concurrency, max_queue=args.max_queue,
        timeout_s=args.timeout_s, body_timeout_s=args.body_timeout_s, max_body_bytes=args.max_body_bytes,
        max_image_pixels=args.max_image_pixels, jpeg_quality=args.jpeg_quality, **_sequence_limits(args),
    )
    options = RayOptions(
        replicas=args.replicas, min_replicas=args.min_replicas, max_replicas=args.max_replicas,
        cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
        max_queued_requests=args.max_queued_requests,
    )
    return serve_ray(config, options, address=args.address, num_cpus=args.num_cpus)


def _vae_tile(text: str) -> int | Literal["auto"] | None:
    if text in ("auto", "off"):
        return None if text == "off" else "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of latent cells, 'off' or 'auto', got {text!r}") from None


def _add_vae_tiles(p) -> None:
    defaults = FastPathOptions()
    for stage, default, verb in (("decode", defaults.decode_tile, "decoder"),
                                 ("encode", defaults.encode_tile, "encoder")):
        p.add_argument(f"--{stage}-tile", type=_vae_tile, default="auto", metavar="CELLS|off|auto",
                       help=f"{stage} canvases larger in area than a CELLS x CELLS latent tile in overlapping tiles, "
                            f"bounding the VAE {verb}'s memory (engine/tiled_vae.py; >= {MIN_VAE_TILE}); 'auto' "
                            f"(default): {default} with --fast, one piece without it (docs/benchmarks.md, \"Memory\")")


def _add_sequence_limits(p, defaults: ServerConfig) -> None:
    """The zoom and pan routes' limits (server/sequences.py), the same on `serve` and `serve-ray`."""
    p.add_argument("--max-zoom-steps", type=int, default=defaults.max_zoom_steps,
                   help=f"zoom_steps allowed on POST /v1/sd1.5-outpaint/zoom (default {defaults.max_zoom_steps})")
    p.add_argument("--max-pan-width", type=int, default=defaults.max_pan_width,
                   help=f"pan_width allowed on POST /v1/sd1.5-outpaint/pan (default {defaults.max_pan_width})")
    p.add_argument("--max-pan-outpaints", type=int, default=defaults.max_pan_outpaints,
                   help=f"outpaints one panorama may run (default {defaults.max_pan_outpaints})")
    p.add_argument("--max-video-pixels", type=int, default=defaults.max_video_pixels,
                   help=f"frames x width x height of one zoom video (default {defaults.max_video_pixels}: "
                        "the frames are held in memory until encoded)")
    # The asynchronous jobs (server/jobs.py), the same on both too.
    p.add_argument("--max-jobs-per-key", type=int, default=defaults.max_jobs_per_key,
                   help=f"queued + running jobs one API key may have; more get 429 "
                        f"(default {defaults.max_jobs_per_key})")
    p.add_argument("--max-queued-jobs", type=int, default=defaults.max_queued_jobs,
                   help=f"queued + running jobs in the whole store; more get 503 (default {defaults.max_queued_jobs})")
    p.add_argument("--job-retention-s", type=float, default=defaults.job_retention_s,
                   help=f"seconds a finished job's status and result are kept, then deleted "
                        f"(default {defaults.job_retention_s:g})")


def _sequence_limits(args) -> dict[str, Any]:
    return {"max_zoom_steps": args.max_zoom_steps, "max_pan_width": args.max_pan_width,
            "max_pan_outpaints": args.max_pan_outpaints, "max_video_pixels": args.max_video_pixels,
            "max_jobs_per_key": args.max_jobs_per_key, "max_queued_jobs": args.max_queued_jobs,
            "job_retention_s": args.job_retention_s}


DB_HELP = "credits store: an SQLite file or a postgresql://user@host/db URL"


def add_keys(sub) -> None:
    p = sub.add_parser("keys", help="manage API keys and credits of `outpaint serve`")
    keys = p.add_subparsers(dest="keys_command", required=True)

    create = keys.add_parser("create", help="create a key; prints it once (only its hash is stored)")
    create.add_argument("--db", required=True, help=DB_HELP + " (an SQLite file is created if missing)")
    create.add_argument("--credits", type=int, required=True, help="starting balance")
    create.add_argument("--name", default="", help="a label for listings (who the key is for)")
    create.set_defaults(func=_cmd_create)

    listing = keys.add_parser("list", help="keys with their balances (never the keys themselves)")
    listing.add_argument("--db", required=True, help=DB_HELP)
    listing.set_defaults(func=_cmd_list)

    add = keys.add_parser("add-credits", help="add credits to a key")
    add.add_argument("--db", required=True, help=DB_HELP)
    add.add_argument("--id", type=int, required=True, dest="key_id", help="key id (see `outpaint keys list`)")
    add.add_argument("--credits", type=int, required=True)
    add.set_defaults(func=_cmd_add_credits)

    revoke = keys.add_parser("revoke", help="revoke a key: it gets 401 from then on")
    revoke.add_argument("--db", required=True, help=DB_HELP)
    revoke.add_argument("--id", type=int, required=True, dest="key_id")
    revoke.set_defaults(func=_cmd_revoke)


def _open(db: str, *, create: bool = False):
    from .credits import CreditError
    from .store import is_postgres, open_store

    if not create and not is_postgres(db) and not Path(db).is_file():
        raise SystemExit(f"outpaint keys: {db} does not exist; create a key first with "
                         f"`outpaint keys create --db {db} --credits N`")
    try:
        return open_store(db)
    except CreditError as exc:
        raise _fail(exc) from None


def _fail(exc: Exception) -> SystemExit:
    return SystemExit(f"outpaint keys: {exc}")


def _cmd_create(args) -> int:
    from .credits import CreditError

    store = _open(args.db, create=True)
    try:
        key_id, key = store.create_key(args.credits, args.name)
    except CreditError as exc:
        raise _fail(exc) from None
    finally:
        store.close()
    # The key alone on stdout (KEY=$(outpaint keys create ...)); the rest on stderr.
    print(f"created key id {key_id} with {args.credits} credits; it is shown only now, store it:", file=sys.stderr)
    print(key)
    return 0


def _cmd_list(args) -> int:
    store = _open(args.db)
    try:
        rows = store.list_keys()
    finally:
        store.close()
    print(f"{'id':>4}  {'key':<12}  {'balance':>8}  {'charged':>7}  {'open':>4}  {'created':<16}  {'status':<7}  name")
    for k in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(k.created_at))
        status = "revoked" if k.revoked_at else "active"
        print(f"{k.id:>4}  {k.prefix + '...':<12}  {k.balance:>8}  {k.images_charged:>7}  {k.open_reservations:>4}  "
              f"{created:<16}  {status:<7}  {k.name}")
    return 0


def _cmd_add_credits(args) -> int:
    from .credits import CreditError

    store = _open(args.db)
    try:
        balance = store.add_credits(args.key_id, args.credits)
    except CreditError as exc:
        raise _fail(exc) from None
    finally:
        store.close()
    print(f"key {args.key_id}: balance {balance}")
    return 0


def _cmd_revoke(args) -> int:
    from .credits import CreditError

    store = _open(args.db)
    try:
        store.revoke(args.key_id)
    except CreditError as exc:
        raise _fail(exc) from None
    finally:
        store.close()
    print(f"key {args.key_id}: revoked")
    return 0

