"""`outpaint serve-ray` under load and faults, on loopback: throughput with 1 and 2 replicas on the same
machine sharing one SQLite file, then 2 replicas with a replica SIGKILLed mid-request and clients
that disconnect mid-request; then 2 replicas sharing one PostgreSQL (a throwaway cluster the
benchmark starts, server/pg_cluster.py): load, PostgreSQL restarted mid-run (`pg_ctl stop -m fast`,
an outage, start), PostgreSQL crashed mid-run (`-m immediate`), a replica SIGKILLed with clients
leaving. Every request's outcome is counted and the credits ledger audited afterwards.

    python -m outpaint.benchmarks.serve_faults --model models/tiny --cpus 2 [--db-kind both]

The audit: balance == start - charged (no lost or double debit), the charged request ids are exactly
the ids of the 200s the clients received (no charge without an image sent), no reservation left open
once the sweeps ran, every request answered with 200, 406, 503 + Retry-After, or a JSON 500 whose
credit came back. A fault is a function that runs beside the clients of one phase.

The result replaces this benchmark's own section of benchmarks/RESULTS.md and is printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from outpaint.server.pg_cluster import PostgresCluster, start_cluster
from outpaint.server.process import ServerProcess, start_server
from outpaint.server.store import CreditStore, is_postgres, open_store

from .server_bench import RESULTS, ROUTE, _ensure_model, _source_png

Fault = Callable[["CreditStore", int, "Run"], None]  # runs beside the clients of one phase
BEGIN = "<!-- serve_faults:begin -->"
END = "<!-- serve_faults:end -->"
# Longer than a replica's store waits for a connection (credits_postgres: busy_timeout_s, 30 s): the
# requests of the outage cannot just wait it out.
LONG_OUTAGE_S = 40.0


@dataclass(frozen=True)
class Phase:
    name: str
    faults: tuple[Fault, ...] = ()
    leavers: int = 0  # clients that leave mid-generation on their first request


@dataclass
class Run:
    """What the clients saw and what the ledger says, for one phase."""

    name: str
    outcomes: Counter = field(default_factory=Counter)
    ok_ids: set[str] = field(default_factory=set)  # x-request-id of every 200 a client received in full
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    faults: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    errors_at: list[float] = field(default_factory=list)  # seconds into the run of every 5xx answer

    def at(self) -> float:
        return time.perf_counter() - self.started

    def record(self, status: int | str, headers: dict[str, str], body: bytes) -> None:
        self.outcomes[status] += 1
        if isinstance(status, int) and status >= 500:
            self.errors_at.append(self.at())
        if status == 200:
            self.ok_ids.add(headers.get("x-request-id", "?"))
            return
        if status == "disconnected":
            return
        if not headers.get("content-type", "").startswith("application/json"):
            self.problems.append(f"{status} without a JSON body: {body[:120]!r}")
        if status == 503 and not headers.get("retry-after", "").isdigit():
            self.problems.append("503 without Retry-After")
        if status not in (406, 503, 500):
            self.problems.append(f"unexpected status {status}: {body[:200]!r}")


def _body(source_b64: str, steps: int) -> bytes:
    return json.dumps({"image": source_b64, "prompt": "streets in italy", "img_width": 256, "img_height": 256,
                       "offset_x": 64, "offset_y": 64, "num_inference_steps": steps, "strength": 1.0,
                       "seed": 5}).encode()


def _request(url: str, key: str, body: bytes, *, leave_after_s: float | None = None
             ) -> tuple[int | str, dict[str, str], bytes]:
    """One POST on a raw socket (so a client can also leave mid-request): status, headers, body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=300) as sock:
        sock.sendall(f"POST {ROUTE} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"x-api-key: {key}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        if leave_after_s is not None:
            time.sleep(leave_after_s)
            return "disconnected", {}, b""
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return "no answer", {}, data[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, payload


def _charged_ids(db: Path | str, key_id: int) -> set[str]:
    """The ledger's charges of one key, read with SQL on a connection of our own (not the store's)."""
    if is_postgres(db):
        import psycopg

        with psycopg.connect(str(db), autocommit=True) as pg:
            rows = pg.execute("SELECT request_id FROM charges WHERE key_id = %s", (key_id,)).fetchall()
        return {row[0] for row in rows}
    conn = sqlite3.connect(db)
    try:
        return {row[0] for row in conn.execute("SELECT request_id FROM charges WHERE key_id = ?", (key_id,))}
    finally:
        conn.close()


def kill_a_replica(store: CreditStore, key_id: int, run: Run, after_s: float = 2.0) -> None:
    """SIGKILL the replica process that holds one of this key's reservations, `after_s` into the run."""
    time.sleep(after_s)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = [row for row in store.open_reservations() if row[1] == key_id]
        if rows:
            owner = rows[0][3]
            pid = int(owner.split(":")[1])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if "ServeReplica" in cmdline:
                os.kill(pid, signal.SIGKILL)
                held = sum(1 for row in rows if row[3] == owner)
                run.faults.append(f"SIGKILL of the replica holding {held} of the {len(rows)} open reservations")
                return
        time.sleep(0.05)
    run.problems.append("no reservation to kill a replica under")


def _wait_for_reservations(store: CreditStore, key_id: int, run: Run, timeout_s: float = 30.0
                           ) -> list[tuple[str, int, int, str]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = [row for row in store.open_reservations() if row[1] == key_id]
        if rows:
            return rows
        time.sleep(0.05)
    run.problems.append("no reservation open to put the fault under")
    return []


def restart_postgres(cluster: PostgresCluster, *, mode: str = "fast", after_s: float = 3.0, outage_s: float = 3.0
                     ) -> Fault:
    """Stop PostgreSQL `after_s` into the run while reservations are open (requests in flight), keep it
    down `outage_s`, start it again. "fast": an operator's restart; "immediate": a crash."""

    def fault(store: CreditStore, key_id: int, run: Run) -> None:
        time.sleep(after_s)
        rows = _wait_for_reservations(store, key_id, run)
        if not rows:
            return
        stopped = run.at()
        cluster.stop_server(mode)
        time.sleep(outage_s)
        cluster.start_server()
        how = "restarted (pg_ctl stop -m fast)" if mode == "fast" else "crashed (pg_ctl stop -m immediate)"
        run.faults.append(f"PostgreSQL {how} with {len(rows)} reservations open, down from {stopped:.1f} s "
                          f"to {run.at():.1f} s")

    return fault


def phase(server: ServerProcess, db: Path | str, name: str, *, clients: int, per_client: int, steps: int,
          credits: int, source_b64: str, faults: tuple[Fault, ...] = (),
          leavers: int = 0, settle_s: float = 40.0) -> tuple[Run, dict]:
    store = open_store(db)
    key_id, key = store.create_key(credits, name)
    run = Run(name)
    body = _body(source_b64, steps)

    def client(index: int) -> None:
        for i in range(per_client):
            leave = 1.0 if index < leavers and i == 0 else None  # these clients leave mid-generation once
            try:
                status, headers, payload = _request(server.url, key, body, leave_after_s=leave)
            except OSError as exc:
                status, headers, payload = "no answer", {}, str(exc).encode()
                run.problems.append(f"a client got no answer: {exc}")
            run.record(status, headers, payload)

    started = run.started = time.perf_counter()
    threads = [threading.Thread(target=fault, args=(store, key_id, run), daemon=True) for fault in faults]
    for thread in threads:
        thread.start()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    run.seconds = time.perf_counter() - started
    for thread in threads:
        thread.join(120)
    if run.errors_at:
        run.faults.append("5xx answered at " + ", ".join(f"{s:.1f}" for s in sorted(run.errors_at)) + " s")
    # The audit, once the sweeps had time to refund what a killed replica held (at once for a dead
    # process on this host, every sweep interval: at most 10 s).
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline and any(row[1] == key_id for row in store.open_reservations()):
        time.sleep(0.5)
    open_left = [row for row in store.open_reservations() if row[1] == key_id]
    charged = _charged_ids(db, key_id)
    balance = store.balance(key_id)
    store.close()
    audit = {
        "start": credits, "balance": balance, "charged": len(charged), "images_received": len(run.ok_ids),
        "open_reservations": len(open_left),
        "balance_exact": balance == credits - len(charged),
        "charges_are_the_images_sent": charged == run.ok_ids,
    }
    if not audit["balance_exact"]:
        run.problems.append(f"balance {balance} != {credits} - {len(charged)} charged")
    if not audit["charges_are_the_images_sent"]:
        run.problems.append(f"charged ids != ids of the 200s: {len(charged - run.ok_ids)} charged without an image, "
                            f"{len(run.ok_ids - charged)} images not charged")
    if open_left:
        run.problems.append(f"{len(open_left)} reservations still open")
    return run, audit


def start(model: Path, db: Path | str, log: Path, replicas: int, cpus: int) -> ServerProcess:
    return start_server(model, db=db, log_path=log, subcommand="serve-ray", ready_line="on Ray Serve",
                        ready_timeout_s=240,
                        args=["--replicas", str(replicas), "--num-cpus", str(cpus),
                              "--cpus-per-replica", str(cpus / replicas), "--concurrency", "1", "--max-queue", "4",
                              "--max-queued-requests", "8", "--timeout", "120", "--log-level", "warning"])


def render(result: dict, command: str) -> str:
    rows = []
    for run in result["runs"]:
        outcomes = ", ".join(f"{k}: {v}" for k, v in sorted(run["outcomes"].items(), key=lambda kv: str(kv[0])))
        audit = run["audit"]
        rows.append(f"| {run['name']} | {run['db']} | {run['requests']} | {outcomes} | {run['seconds']:.1f} | "
                    f"{run['images_per_s']:.2f} | {audit['start']} -> {audit['balance']} ({audit['charged']} charged, "
                    f"{audit['images_received']} images) | {'; '.join(run['faults']) or '-'} | "
                    f"{'exact' if not run['problems'] else '; '.join(run['problems'])} |")
    ratio = result.get("ratio_2_vs_1")
    return "\n".join([
        BEGIN,
        "## `outpaint serve-ray`: 1 vs 2 replicas, faults, SQLite and PostgreSQL, the ledger audited",
        "",
        f"Reproduce: `{command}`",
        "",
        f"Machine: {result['machine']}, shared with other sessions' work while it ran (absolute figures are "
        f"noisy; the ratio and the audit are what count). Model: the tiny random model, 256x256, "
        f"{result['steps']} steps, {result['clients']} clients. Credits: one SQLite file (WAL) or one PostgreSQL "
        f"{result.get('postgres') or ''} (a throwaway cluster on loopback, fsync off) shared by the replicas; "
        "Ray local on loopback.",
        "",
        "| run | credits | requests | outcomes | s | images/s | ledger (start -> balance) | faults | audit |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *([f"Throughput, 2 replicas / 1 replica (SQLite, same machine, same cores in all): **{ratio:.2f}x**.", ""]
          if ratio is not None else []),
        "Audit: balance = start - charged; the charged request ids are exactly those of the 200s the clients "
        "received (no charge without an image, no image without its charge); no reservation left open after "
        "the sweeps; every answer a 200, 406, 503 with Retry-After or a JSON 500 (its credit back).",
        END,
    ])


def write_section(section: str, path: Path = RESULTS) -> None:
    """Replace this benchmark's section (between its markers) or append it; other sections stay."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + section.rstrip("\n") + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def _phases(kind: str, replicas: int, cluster: PostgresCluster | None) -> list[Phase]:
    plural = "s" if replicas > 1 else ""
    phases = [Phase(f"{replicas} replica{plural}, load")]
    if replicas == 1:
        return phases
    if cluster is not None:
        phases += [Phase("2 replicas, PostgreSQL restarted mid-run", faults=(restart_postgres(cluster),)),
                   Phase("2 replicas, PostgreSQL crashed mid-run",
                         faults=(restart_postgres(cluster, mode="immediate"),)),
                   Phase(f"2 replicas, PostgreSQL down {LONG_OUTAGE_S:g} s mid-run (past the pool's wait)",
                         faults=(restart_postgres(cluster, outage_s=LONG_OUTAGE_S),))]
    return [*phases, Phase("2 replicas, a replica SIGKILLed mid-request, 2 clients leave",
                           faults=(kill_a_replica,), leavers=2)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/tiny"))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=4, help="per client, per phase")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="Ray's CPUs: split over the replicas")
    parser.add_argument("--db-kind", choices=("sqlite", "postgresql", "both"), default="both",
                        help="the credits database the replicas share: SQLite runs 1 and 2 replicas and a "
                             "replica killed; PostgreSQL (a throwaway cluster started here) runs 2 replicas, "
                             "a restart and a crash of PostgreSQL, and a replica killed")
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = parser.parse_args(argv)
    import base64
    import platform

    model = _ensure_model(args.model)
    source_b64 = base64.b64encode(_source_png()).decode()
    runs: list[dict] = []
    postgres_version = None
    setups = ([("sqlite", 1), ("sqlite", 2)] if args.db_kind in ("sqlite", "both") else []) + (
        [("postgresql", 2)] if args.db_kind in ("postgresql", "both") else [])
    with tempfile.TemporaryDirectory(prefix="serve-faults-") as tmp:
        work = Path(tmp)
        for kind, replicas in setups:
            cluster = start_cluster() if kind == "postgresql" else None
            try:
                db: Path | str = work / f"credits-{replicas}.db" if cluster is None else cluster.create_database()
                open_store(db).close()
                if cluster is not None:
                    postgres_version = cluster.bindir.parent.name
                server = start(model, db, work / f"serve-{kind}-{replicas}.log", replicas, args.cpus)
                try:
                    for spec in _phases(kind, replicas, cluster):
                        n = args.clients * args.requests
                        run, audit = phase(server, db, spec.name, clients=args.clients, per_client=args.requests,
                                           steps=args.steps, credits=n + 5, source_b64=source_b64,
                                           faults=spec.faults, leavers=spec.leavers)
                        runs.append({"name": run.name, "db": kind, "requests": n, "outcomes": dict(run.outcomes),
                                     "seconds": run.seconds, "images_per_s": run.outcomes[200] / run.seconds,
                                     "audit": audit, "faults": run.faults, "problems": run.problems})
                        print(json.dumps(runs[-1]), file=sys.stderr)
                finally:
                    code = server.stop(timeout_s=180)
                    if code != 0:
                        print(server.log()[-3000:], file=sys.stderr)
            finally:
                if cluster is not None:
                    cluster.stop()
    by_name = {(run["db"], run["name"]): run for run in runs}
    one, two = by_name.get(("sqlite", "1 replica, load")), by_name.get(("sqlite", "2 replicas, load"))
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "steps": args.steps, "clients": args.clients, "postgres": postgres_version, "runs": runs,
        "ratio_2_vs_1": two["images_per_s"] / one["images_per_s"] if one and two and one["images_per_s"] else None,
    }
    print(json.dumps(result, indent=2))
    if not args.no_write:
        command = "python -m outpaint.benchmarks.serve_faults " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section(render(result, command.strip()))
        print(f"wrote {RESULTS}", file=sys.stderr)
    return 0 if all(not run["problems"] for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
