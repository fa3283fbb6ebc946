"""A real Airflow deployment started as processes on loopback, for the cluster and fresh-install tests.

Every process runs in its own process group with a marker in its environment; ``stopped`` stops the groups
(SIGTERM, then SIGKILL) and reports any marked process left. The metadata database is a fresh PostgreSQL database,
dropped afterwards. Helpers drive the REST API: tokens, backfills, runs and task instances.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import unavailable

BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
PG_HOST, PG_PORT = "127.0.0.1", 5432
MARKER_ENV = "DCTP_CLUSTER_TEST_MARKER"
#: Seconds to wait for a process to be ready (the machine may be busy with other work).
READY_TIMEOUT = float(os.environ.get("DCTP_CLUSTER_READY_TIMEOUT", "240"))


class ApiError(Exception):
    """A REST call answered with a non-2xx status."""


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text)


@dataclass
class Stack:
    """Handles on a running deployment: its REST API, its processes and their logs."""

    api_url: str
    username: str
    password: str
    home: Path
    env: dict[str, str]
    services: list[Service] = field(default_factory=list)
    _token: str | None = None

    def start(self, name: str, *args: str, **extra_env: str) -> Service:
        """Start ``airflow *args`` in its own process group, logging to ``{home}/{name}.log``."""
        log = self.home / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([AIRFLOW, *args], env={**self.env, **extra_env}, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                    cwd=self.home)
        service = Service(name, proc, log)
        self.services.append(service)
        return service

    def cli(self, *args: str, timeout: float = 600) -> str:
        """Run ``airflow *args`` to completion with the deployment's environment; return its stdout."""
        result = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                                start_new_session=True)
        assert result.returncode == 0, f"airflow {' '.join(args)} failed:\n{result.stdout[-3000:]}\n" \
                                       f"{result.stderr[-3000:]}"
        return result.stdout

    def token(self) -> str:
        import httpx

        if self._token is None:
            resp = httpx.post(f"{self.api_url}/auth/token", json={"username": self.username,
                                                                   "password": self.password}, timeout=30)
            assert resp.status_code == 201, f"POST /auth/token: {resp.status_code} {resp.text}"
            self._token = resp.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs):
        """Call ``/api/v2{path}`` with the bearer token; return the decoded JSON (asserting a 2xx status)."""
        import httpx

        resp = httpx.request(method, f"{self.api_url}/api/v2{path}", timeout=60,
                             headers={"Authorization": f"Bearer {self.token()}"}, **kwargs)
        if not resp.is_success:
            raise ApiError(f"{method} /api/v2{path}: {resp.status_code} {resp.text[:2000]}")
        return resp.json() if resp.content else None

    def check_alive(self) -> None:
        dead = [s for s in self.services if s.proc.poll() is not None]
        if dead:
            pytest.fail("airflow process exited:\n" + "\n".join(
                f"--- {s.name} (exit {s.proc.returncode}), log tail:\n{s.tail()}" for s in dead))

    def logs(self) -> str:
        return "\n".join(f"--- {s.name} log tail:\n{s.tail(25)}" for s in self.services)

    def wait(self, what: str, check: Callable[[], object], timeout: float, interval: float = 2.0):
        """Poll ``check`` until it returns a truthy value; fail with every process's log tail after ``timeout``.

        Errors other than assertions (a service still starting) are retried; an assertion fails at once.
        """
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if result := check():
                    return result
                last_error = None
            except AssertionError:
                raise
            except Exception as exc:
                last_error = exc
            time.sleep(interval)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}"
                    f"{f' (last error: {last_error!r})' if last_error else ''}\n{self.logs()}")

    def wait_until_ready(self, dag_ids: list[str]) -> None:
        """Wait for the API server, the scheduler's and dag-processor's heartbeats, and the DAGs to be parsed."""
        import httpx

        def health() -> dict:
            return httpx.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()

        self.wait("the api-server to answer /api/v2/monitor/health", health, READY_TIMEOUT)
        self.wait("the scheduler and dag-processor heartbeats", lambda: all(
            health().get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler",
                                                                           "dag_processor")), READY_TIMEOUT)
        for dag_id in dag_ids:
            self.wait(f"{dag_id} to be parsed and serialized",
                      lambda d=dag_id: self.api("GET", f"/dags/{d}/details")["dag_id"], READY_TIMEOUT, interval=3)

    # runs ------------------------------------------------------------------------------------------------------

    def backfill(self, dag_id: str, dates: list[str], reprocess: str = "failed", max_active_runs: int = 3) -> dict:
        """Create a backfill over ``dates`` (consecutive), after checking its dry run plans exactly those runs."""
        body = {"dag_id": dag_id, "from_date": f"{dates[0]}T00:00:00Z", "to_date": f"{dates[-1]}T00:00:00Z",
                # the dedup tasks and export depend on the past: a backfill must say how to treat existing runs
                "reprocess_behavior": reprocess, "max_active_runs": max_active_runs}
        planned = self.api("POST", "/backfills/dry_run", json=body)["backfills"]
        assert sorted(p["logical_date"][:10] for p in planned) == dates, f"dry run planned {planned}"
        return self.api("POST", "/backfills", json=body)

    def dag_runs(self, dag_id: str) -> dict[str, dict]:
        """Every run of the DAG by its logical date (YYYY-MM-DD)."""
        runs = self.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100})["dag_runs"]
        return {r["logical_date"][:10]: r for r in runs}

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        return {ti["task_id"]: ti for ti in tis["task_instances"]}

    def all_task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        """Every task instance of the run, each shard of a mapped task on its own."""
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})
        return tis["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str):
        """The return value a task pushed."""
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value",
                        params={"deserialize": True})["value"]

    def wait_for_runs(self, dag_id: str, backfill_id: int, dates: list[str], timeout: float) -> dict[str, dict]:
        """Wait for the backfill's runs to end; fail, naming the tasks that did not succeed, unless all succeed."""

        def finished():
            done = self.api("GET", f"/backfills/{backfill_id}")["completed_at"]
            runs = self.dag_runs(dag_id)
            states = {dt: runs.get(dt, {}).get("state") for dt in dates}
            if any(s == "failed" for s in states.values()):
                return runs  # fail fast: the assertion below names the failed tasks
            return runs if done and all(s in {"success", "failed"} for s in states.values()) else None

        runs = self.wait(f"the backfill of {dates} to finish", finished, timeout, interval=5)
        for dt in dates:
            run = runs[dt]
            if run["state"] != "success":
                bad = {t: ti["state"] for t, ti in self.task_instances(dag_id, run["dag_run_id"]).items()
                       if ti["state"] != "success"}
                pytest.fail(f"{dag_id} {dt} ended {run['state']}; tasks not successful: {bad}\n{self.logs()}")
        return runs


def clean_env(marker: str, drop_prefixes: tuple[str, ...], drop: set[str]) -> dict[str, str]:
    """This process's environment without the settings a test replaces, plus the process marker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes) and k not in drop}
    env[MARKER_ENV] = marker
    return env


def marked_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment carries ``marker`` (every descendant of what we started)."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def stop(service: Service, grace: float = 30.0) -> None:
    try:
        pgid = os.getpgid(service.proc.pid)
    except ProcessLookupError:
        service.proc.wait()
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        try:
            service.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; give its group (task supervisors, celery children) a moment, then kill it
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def metadata_database(prefix: str) -> Iterator[tuple[str, str]]:
    """Create a fresh PostgreSQL database; yield ``(SQLAlchemy URL, marker)``; drop it afterwards."""
    import psycopg2

    if not Path(AIRFLOW).exists():
        unavailable(f"the airflow CLI is not installed next to {sys.executable}")
    pg_user = os.environ.get("PGUSER") or "postgres"
    admin_dsn = f"postgresql://{pg_user}@{PG_HOST}:{PG_PORT}/postgres"
    try:
        admin = psycopg2.connect(admin_dsn, connect_timeout=3)
    except psycopg2.OperationalError as exc:
        unavailable(f"PostgreSQL not reachable at {admin_dsn}: {exc}")
    admin.autocommit = True
    marker = uuid.uuid4().hex
    db_name = f"{prefix}_{marker[:12]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db_name}"')
    try:
        yield f"postgresql+psycopg2://{pg_user}@{PG_HOST}:{PG_PORT}/{db_name}", marker
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.close()


@contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM (a cancelled or timed-out CI job) into KeyboardInterrupt, so every teardown still runs."""

    def interrupted(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}: stopping the deployment")

    previous_handler = signal.signal(signal.SIGTERM, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


@contextmanager
def stopped_on_exit(stack_services: list[Service], marker: str) -> Iterator[None]:
    """Stop every started process on exit; fail on any process left."""
    try:
        yield
    finally:
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the teardown
        stopping = time.monotonic()
        for service in reversed(stack_services):
            stop(service)
        leftover = marked_processes(marker)
        for pid in leftover:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        signal.signal(signal.SIGTERM, previous)
        print(f"teardown took {time.monotonic() - stopping:.0f} s")
        assert not leftover, f"processes left after teardown (killed now): {leftover}"
