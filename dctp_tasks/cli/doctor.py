"""``dctp doctor``: check everything a run needs, one line per check with its fix; exit 1 when any check fails.

Run it with the environment of the Airflow deployment (``DCTP_*``, ``AIRFLOW__*``, ``MLFLOW_TRACKING_URI``), where
the ``airflow`` command works: pools, connections and the executor are read through that command (its metadata
database, environment and secrets backends), Celery workers through its broker. The DAGs' ``preflight`` task runs
the same checks at the start of every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

from dctp_tasks.preflight import Unknown, gpu_pool, render, run_preflight
from dctp_tasks.preflight.checks import active_postgres_sources
from dctp_tasks.storage import S3Options, Storage, data_root

#: libpq keywords an Airflow postgres connection may carry in its extra.
LIBPQ_EXTRA = ("sslmode", "sslcert", "sslkey", "sslrootcert", "application_name", "options", "keepalives")


def add_parser(sub: argparse._SubParsersAction) -> None:
    doctor = sub.add_parser("doctor", help="check that runs can start here: data root, pools, queues, connections, "
                                           "models, MLflow, the Delta table, versions (exit 1 on a failed check)")
    doctor.add_argument("--airflow", default=None, metavar="COMMAND",
                        help="the airflow command to ask (default: the one beside this Python, else on PATH)")
    doctor.add_argument("--no-airflow", action="store_true",
                        help="skip the checks that ask Airflow (pools, queues, connections)")
    doctor.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the checks as JSON (as `dctp --json doctor`)")


class AirflowCli:
    """Airflow facts read through the ``airflow`` command: what the scheduler itself would see."""

    def __init__(self, command: str, timeout: float = 180.0) -> None:
        self.command = command
        self.timeout = timeout

    @cache  # noqa: B019 (one instance per doctor run; the cache is the point)
    def _run(self, *args: str) -> tuple[int, str, str]:
        """Return the exit code, stdout and stderr of ``airflow *args``."""
        # plain output: rich's colour codes would hide the JSON line
        env = {k: v for k, v in os.environ.items() if k != "FORCE_COLOR"} | {"NO_COLOR": "1"}
        try:
            done = subprocess.run([self.command, *args], capture_output=True, text=True, timeout=self.timeout,
                                  env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unknown(f"`airflow {' '.join(args)}` could not run: {exc}") from exc
        return done.returncode, done.stdout.strip(), done.stderr.strip()

    def prefetch(self, calls: list[tuple[str, ...]]) -> None:
        """Run several ``airflow`` calls at once (each pays Airflow's start-up, a few seconds). A call that cannot
        run is not cached: the check that needs it runs it again and reports why."""

        def run(call: tuple[str, ...]) -> None:
            try:
                self._run(*call)
            except Unknown:
                pass

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(run, calls))

    def _json(self, *args: str, missing: str) -> list[dict] | None:
        """Return the JSON rows ``airflow *args -o json`` prints; ``None`` when it fails saying ``missing``."""
        code, out, err = self._run(*args, "-o", "json")
        if code != 0:
            if missing in f"{out}\n{err}".lower():
                return None
            raise Unknown(f"`airflow {' '.join(args)}` failed (exit {code}): {(err or out)[-300:]}")
        line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("[")), None)
        if line is None:
            raise Unknown(f"`airflow {' '.join(args)}` printed no JSON: {out[-300:]}")
        return json.loads(line)

    def _value(self, section: str, key: str) -> str:
        code, out, err = self._run("config", "get-value", section, key)
        if code != 0 or not out:
            raise Unknown(f"`airflow config get-value {section} {key}` failed: {(err or out)[-300:]}")
        return out.splitlines()[-1].strip()

    def pool_slots(self, name: str) -> int | None:
        rows = self._json("pools", "get", name, missing=f"pool {name} does not exist".lower())
        return None if rows is None else int(rows[0]["slots"])

    def connection(self, conn_id: str) -> dict | None:
        rows = self._json("connections", "get", conn_id, missing="connection not found.")
        return None if rows is None else rows[0]

    def connection_uri(self, conn_id: str) -> str | None:
        conn = self.connection(conn_id)
        return None if conn is None else conn.get("get_uri") or ""

    def connect_postgres(self, conn_id: str):
        import psycopg2

        conn = self.connection(conn_id)
        if conn is None:
            raise LookupError(f"connection {conn_id} is not defined")
        extra = {k: v for k, v in (conn.get("extra_dejson") or {}).items() if k in LIBPQ_EXTRA}
        return psycopg2.connect(host=conn.get("host"), port=int(conn.get("port") or 5432), dbname=conn.get("schema"),
                                user=conn.get("login"), password=conn.get("password"), connect_timeout=5, **extra)

    def executor(self) -> str:
        return self._value("core", "executor")

    def default_queue(self) -> str:
        return self._value("operators", "default_queue")

    def queue_consumers(self, queue: str) -> list[str]:
        from celery import Celery

        app = Celery("dctp-doctor", broker=self._value("celery", "broker_url"))
        replies = app.control.inspect(timeout=3.0).active_queues() or {}
        return sorted(worker for worker, queues in replies.items() if any(q.get("name") == queue for q in queues))


def airflow_command(requested: str | None) -> str | None:
    """Return the ``airflow`` executable to ask: the requested one, the one beside this Python, or PATH's."""
    if requested:
        return requested
    beside = Path(sys.executable).parent / "airflow"
    return str(beside) if beside.exists() else shutil.which("airflow")


def doctor(root: str | None, args) -> tuple[int, list[dict], str]:
    """Run the preflight checks from a shell; return the exit code, the checks and their rendering."""
    from dctp_tasks.config import load_config

    command = None if args.no_airflow else airflow_command(args.airflow)
    facts = AirflowCli(command) if command else None
    root = root or data_root()
    if facts is not None:
        calls = [("pools", "get", gpu_pool() or "default_pool", "-o", "json"),
                 ("config", "get-value", "core", "executor"), ("config", "get-value", "operators", "default_queue")]
        if root.startswith("s3://"):
            calls.append(("connections", "get", "aws_default", "-o", "json"))
        try:
            calls += [("connections", "get", c, "-o", "json") for c in active_postgres_sources(load_config()).values()]
        except Exception:  # an unloadable config is the config check's to report
            pass
        facts.prefetch(calls)

    def storage() -> Storage:
        if not root.startswith("s3://"):
            return Storage(root)
        conn = facts.connection("aws_default") if facts is not None else None
        if conn is None:
            return Storage(root, S3Options.from_env())
        return Storage(root, S3Options.from_connection(conn.get("login"), conn.get("password"),
                                                       conn.get("extra_dejson") or {}))

    checks = run_preflight(facts, storage)
    text = render(checks)
    if facts is None and not args.no_airflow:
        text += "\n(no airflow command found: pass --airflow PATH to check pools, queues and connections)"
    return (1 if any(c.status == "fail" for c in checks) else 0), [c.as_dict() for c in checks], text
