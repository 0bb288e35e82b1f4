"""The HTTP API on Ray Serve: the unchanged app (server/app.py) as one deployment of N replicas.

Each replica is `outpaint serve` without its uvicorn: it loads the pipeline, opens the credits
store named by `--db` (passed through unchanged: an SQLite file all replicas of one machine share
in WAL mode, or a database URL), refunds what a dead process left open, and serves the FastAPI app
through `@serve.ingress`. Ray's proxy forwards the raw ASGI messages, so every route, header, status
code, body limit and error body is the app's own; docs/ray.md lists what Ray adds in front.

Queues. Ray's router sends a replica at most `max_ongoing_requests` = concurrency + max_queue
requests, exactly what the replica's gate (server/gate.py) admits, and each proxy holds at most
`max_queued_requests` more until a replica has room; past that the proxy answers 503 itself, with
Retry-After (`backpressure_config`) and a JSON body (server/ray_proxy.py). The router must own the
bound: its picks follow replica load reported with a delay, so with any slack above the gate, six
requests at once on two replicas of three slots each were split 4 + 2, and one got the gate's 503
while the other replica had a free slot (measured, tests/test_ray_serve.py). The gate keeps its
bound as a second line (it answers the API's own 503 if a request ever gets past Ray's count).

Health: `check_health` asks the runtime (server/health.py), so a replica whose graphs fail is
replaced by Ray. Drain: Ray stops routing to a replica it stops and waits up to
`graceful_shutdown_timeout_s` (default: the request deadline + 30 s, so every admitted request
finishes or is stopped at its deadline, answered and refunded) before killing it. A replica killed
anyway leaves its reservations open: the other replicas' lease sweeps refund them (at once for a
process certainly dead on the same host, at lease expiry otherwise, server/credits.py), as does
its restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import ServerConfig
from .ray_proxy import CREDITS_ENV
from .ray_proxy import ENV_VAR as PROXY_ENV_VAR
from .ray_proxy import IMPORT_PATH as PROXY_IMPORT_PATH

log = logging.getLogger("outpaint.server.ray")
DEPLOYMENT = "outpaint"
APP_NAME = "outpaint"
GPU_BACKENDS = frozenset({"ort-cuda", "ort-trt", "tensorrt"})
REPLICA_HEADER = "x-replica"


@dataclass(frozen=True)
class RayOptions:
    """How the deployment is laid out on the cluster (docs/ray.md)."""

    replicas: int = 1  # fixed replica count, when not autoscaling
    # Autoscaling between min and max replicas when max_replicas is set (target: `concurrency`
    # generations running per replica, so a growing queue adds replicas).
    min_replicas: int = 1
    max_replicas: int | None = None
    cpus_per_replica: float = 1.0  # Ray's scheduling unit; also the runtime's thread count on a CPU backend
    gpus_per_replica: float | None = None  # None: 1 on a GPU backend, 0 on a CPU one
    max_queued_requests: int = 64  # per proxy, beyond what the replicas hold; -1 = unbounded (not advised)
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    graceful_shutdown_timeout_s: float | None = None  # None: the request deadline + 30 s
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 300.0

    def problems(self) -> list[str]:
        found = []
        if self.replicas < 1:
            found.append(f"--replicas must be >= 1, got {self.replicas}")
        if self.max_replicas is not None and not 1 <= self.min_replicas <= self.max_replicas:
            found.append(f"--min-replicas and --max-replicas need 1 <= min <= max, got {self.min_replicas} "
                         f"and {self.max_replicas}")
        if self.cpus_per_replica <= 0:
            found.append(f"--cpus-per-replica must be > 0, got {self.cpus_per_replica}")
        if self.gpus_per_replica is not None and self.gpus_per_replica < 0:
            found.append(f"--gpus-per-replica must be >= 0, got {self.gpus_per_replica}")
        if self.max_queued_requests < -1 or self.max_queued_requests == 0:
            found.append(f"--max-queued-requests must be >= 1, or -1 for no bound, got {self.max_queued_requests}")
        return found


def deployment_options(config: ServerConfig, options: RayOptions) -> dict[str, Any]:
    """The `@serve.deployment` options of the outpaint deployment (what a config file can override)."""
    gpus = options.gpus_per_replica
    if gpus is None:
        gpus = 1.0 if config.backend in GPU_BACKENDS else 0.0
    actor: dict[str, Any] = {"num_cpus": options.cpus_per_replica}
    if gpus:
        actor["num_gpus"] = gpus
    retry_after = max(1, round(config.timeout_s / 10))  # Ray cannot measure our pace: a tenth of a deadline
    found: dict[str, Any] = {
        "name": DEPLOYMENT,
        "ray_actor_options": actor,
        "max_ongoing_requests": config.concurrency + config.max_queue,
        "max_queued_requests": options.max_queued_requests,
        "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=retry_after),
        "health_check_period_s": options.health_check_period_s,
        "health_check_timeout_s": options.health_check_timeout_s,
        "graceful_shutdown_wait_loop_s": 1.0,
        "graceful_shutdown_timeout_s": (config.timeout_s + 30.0 if options.graceful_shutdown_timeout_s is None
                                        else options.graceful_shutdown_timeout_s),
    }
    if options.max_replicas is None:
        found["num_replicas"] = options.replicas
    else:
        found["autoscaling_config"] = {
            "min_replicas": options.min_replicas,
            "initial_replicas": max(options.min_replicas, min(options.replicas, options.max_replicas)),
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": config.concurrency,
            "upscale_delay_s": options.upscale_delay_s,
            "downscale_delay_s": options.downscale_delay_s,
        }
    return found


class ReplicaHeader:
    """`x-replica` on every response: which replica served it (for operators, and for the tests that
    check the load spreads). An addition to the API's headers, never a change to one."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.replica = replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_replica(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REPLICA_HEADER] = self.replica
            await send(message)

        await self.app(scope, receive, send_with_replica)


@serve.ingress()
class OutpaintReplica:
    """One replica: the pipeline, the credits store and the app, loaded once in the replica's process."""

    def __init__(self, config: ServerConfig, threads: int | None = None) -> None:
        from .app import create_app
        from .health import RuntimeHealth
        from .loading import load_pipeline, open_serving_store

        logging.getLogger("outpaint").setLevel(logging.INFO)
        if threads:  # the runtime's threads match the cores Ray gave this replica, not the whole machine's
            os.environ.setdefault("OUTPAINT_ORT_THREADS", str(threads))
            os.environ.setdefault("OUTPAINT_OV_THREADS", str(threads))
        config, pipeline = load_pipeline(config)
        self.asgi = create_app(config, pipeline, open_serving_store(config))
        self.gate = self.asgi.app.state.service.gate
        self.health = RuntimeHealth(pipeline, self.gate)
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return ReplicaHeader(self.asgi, self.replica)

    async def check_health(self) -> None:
        """Raise (Ray then replaces this replica) when the runtime cannot generate (server/health.py)."""
        await asyncio.to_thread(self.health.check)


def absolute(config: ServerConfig) -> ServerConfig:
    """Paths made absolute: a replica's working directory is not the caller's. A database URL is
    passed through unchanged."""
    db = config.db
    if db is not None and "://" not in str(db):
        db = Path(db).resolve()
    return dataclasses.replace(config, model=Path(config.model).resolve(), db=db)


def build_application(config: ServerConfig, options: RayOptions) -> serve.Application:
    problems = config.problems() + options.problems()
    if problems:
        raise ValueError("; ".join(problems))
    config = absolute(config)
    threads = max(1, int(options.cpus_per_replica))
    return serve.deployment(OutpaintReplica).options(**deployment_options(config, options)).bind(config, threads)


# `serve run outpaint.server.ray_serve:app model=... db=...` and the `import_path` of a
# `serve deploy` config file (deploy/ray-serve.yaml): the arguments are ServerConfig's and
# RayOptions' field names; the config file's `deployments:` section overrides the Ray options.


def _coerce(annotation: Any, raw: Any) -> Any:
    """A command-line or YAML value as the field's type (the annotations are strings here)."""
    kind = str(annotation)
    if raw is None:
        return None
    if "Path" in kind:
        return raw if "://" in str(raw) else Path(raw)  # a database URL stays a string
    if kind.startswith("bool"):
        return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes", "on")
    if kind.startswith("float"):
        return float(raw)
    if kind.startswith("int"):
        return int(raw)
    return str(raw)


def app(args: dict[str, Any]) -> serve.Application:
    server_fields = {f.name: f for f in dataclasses.fields(ServerConfig)}
    ray_fields = {f.name: f for f in dataclasses.fields(RayOptions)}
    unknown = sorted(set(args) - set(server_fields) - set(ray_fields))
    if unknown:
        raise ValueError(f"unknown arguments {', '.join(unknown)}; allowed: "
                         f"{', '.join(sorted(set(server_fields) | set(ray_fields)))}")
    if "model" not in args:
        raise ValueError("the `model` argument is required: the exported model folder")

    config = ServerConfig(**{name: _coerce(server_fields[name].type, raw)
                             for name, raw in args.items() if name in server_fields})
    options = RayOptions(**{name: _coerce(ray_fields[name].type, raw)
                            for name, raw in args.items() if name in ray_fields})
    return build_application(config, options)


def loopback_only_environment() -> dict[str, str]:
    """The environment that keeps a local Ray on loopback. On Linux Ray gives its node the address of
    the host's outward interface (and `_node_ip_address="127.0.0.1"` is turned back into it), so its
    processes would talk to each other over that interface; Ray's single-machine mode (the one it uses
    on macOS and Windows) puts the node on 127.0.0.1. The processes Ray starts inherit it."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", PROXY_ENV_VAR: PROXY_IMPORT_PATH}


def start_local_ray(*, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """A one-machine Ray cluster on 127.0.0.1, without the dashboard, for this process. Ray reads the
    loopback switch when it is imported: the caller sets `loopback_only_environment()` before that
    (outpaint serve-ray does, server/cli.py); otherwise the node gets the outward address."""
    import ray
    from ray._private import ray_constants

    for name, value in loopback_only_environment().items():
        os.environ.setdefault(name, value)
    if ray_constants.ENABLE_RAY_CLUSTER:
        log.warning("Ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set: the local Ray "
                    "node will use this host's outward address, not 127.0.0.1")
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, configure_logging=False)


def serve_ray(
    config: ServerConfig, options: RayOptions, *, address: str | None = None, num_cpus: int | None = None,
    num_gpus: int | None = None,
) -> int:
    """`outpaint serve-ray`: start (or join) Ray, run the deployment behind Serve's proxy on
    config.host:config.port, serve until SIGTERM / Ctrl-C, then drain and stop."""
    import ray

    try:
        application = build_application(config, options)
    except ValueError as exc:
        raise SystemExit(f"outpaint serve-ray: {exc}") from None
    # The proxy is a Ray actor: it reads its middleware, and the store its own answers look balances up
    # in, from the environment Ray starts it with (server/ray_proxy.py).
    os.environ.setdefault(PROXY_ENV_VAR, PROXY_IMPORT_PATH)
    if not config.no_auth and config.db is not None:
        os.environ[CREDITS_ENV] = str(absolute(config).db)
    if address is None:
        start_local_ray(num_cpus=num_cpus, num_gpus=num_gpus)
    else:
        ray.init(address=address, configure_logging=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(application, name=APP_NAME, route_prefix="/", blocking=False)
        log.warning("outpaint on Ray Serve: http://%s:%d (%s)", config.host, config.port,
                    f"{options.replicas} replicas" if options.max_replicas is None else
                    f"autoscaling {options.min_replicas}..{options.max_replicas} replicas")
        print(f"serving http://{config.host}:{config.port}/v1/sd1.5-outpaint on Ray Serve", flush=True)
        stop.wait()
        log.warning("stopping: draining the replicas (in-flight requests finish)")
        serve.delete(APP_NAME)  # waits for the replicas' graceful shutdown
        serve.shutdown()
    finally:
        ray.shutdown()
    return 0
