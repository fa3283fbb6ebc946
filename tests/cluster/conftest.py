"""A real Airflow 3 cluster on loopback: PostgreSQL metadata DB, Redis broker, api-server, scheduler,
dag-processor and two Celery workers (queues ``default`` and ``gpu``, distinct hostnames), the data root on a
moto S3 server behind a fault-injecting proxy, MLflow on SQLite.

Every process runs in its own process group with a marker in its environment; teardown stops the groups
(SIGTERM, then SIGKILL), drops the database, empties the Redis DB and fails if any marked process is left.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.cluster.faulty_proxy import FaultyProxy
from tests.cluster.hostname import HOSTNAME_ENV
from tests.conftest import REPO, free_port, unavailable

BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
PG_HOST, PG_PORT = "127.0.0.1", 5432
REDIS_URL = os.environ.get("DCTP_TEST_REDIS_URL", "redis://127.0.0.1:6379")
CPU_HOST, GPU_HOST = "dctp-cpu-worker", "dctp-gpu-worker"
BUCKET = "dctp-cluster"
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
class Cluster:
    """Handles the tests need: the REST API, the S3 proxy and storage, hostnames, the MLflow URI."""

    api_url: str
    username: str
    password: str
    s3_endpoint: str  # moto itself, for the test's own reads
    proxy: FaultyProxy  # what Airflow's aws_default connection points at
    data_root: str
    mlflow_uri: str
    home: Path
    services: list[Service] = field(default_factory=list)
    _token: str | None = None

    def storage(self):
        from dctp_tasks.storage import S3Options, Storage

        return Storage(self.data_root, S3Options(endpoint_url=self.s3_endpoint, access_key="testing",
                                                 secret_key="testing", region="us-east-1"))

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
            pytest.fail("cluster process exited:\n" + "\n".join(
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


def _airflow_env(home: Path, db_url: str, broker_url: str, api_port: int, proxy: FaultyProxy, marker: str,
                 config_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "AWS_", "MLFLOW_")) and k not in _DCTP_ROUTING_ENV}
    connection = {"conn_type": "aws", "login": "testing", "password": "testing",
                  "extra": {"endpoint_url": proxy.url, "region_name": "us-east-1"}}
    from cryptography.fernet import Fernet

    env.update({
        MARKER_ENV: marker,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.cluster.hostname.worker_hostname",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
        "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db_url.replace("postgresql+psycopg2://", "postgresql://"),
        "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "default",
        # runs come only from the REST API: no scheduled run of "yesterday" next to the backfill
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "120",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
        "DCTP_DATA_ROOT": f"s3://{BUCKET}/data",
        # as docker compose runs it: the GPU tasks bounded by a pool of their own, created below
        "DCTP_GPU_POOL": "gpu",
        "DCTP_CONFIG": str(config_path),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": (home / "mlflow-artifacts").as_uri(),
    })
    return env


#: The test's own settings replace these (a developer's shell may set them for `make demo`).
_DCTP_ROUTING_ENV = {"DCTP_CONFIG", "DCTP_DATA_ROOT", "DCTP_GPU_QUEUE", "DCTP_GPU_POOL", "DCTP_TEST_HOSTNAME"}


def _check_celery_provider(env: dict[str, str]) -> None:
    """Fail at once, naming the cause, when the installed Celery provider cannot load its executor."""
    probe = "import airflow.providers.celery.executors.celery_executor_utils"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail("the CeleryExecutor cannot be imported, so no scheduler or worker can start "
                    "(celery 5.7 removed celery.backends.database.retry, which apache-airflow-providers-celery "
                    f"3.26.0 imports: pin celery<5.7):\n{result.stderr[-1500:]}")


def _write_config(path: Path) -> None:
    """The default config with the CPU-slow perplexity model off (semantic dedup, a GPU task, stays on)."""
    config = yaml.safe_load((REPO / "include" / "config" / "dctp.yaml").read_text())
    config["quality"]["scorers"]["perplexity"] = {**(config["quality"]["scorers"].get("perplexity") or {}),
                                                  "enabled": False}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _marked_processes(marker: str) -> list[int]:
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


def _stop(service: Service, grace: float = 30.0) -> None:
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


def _redis_db(marker: str):
    """A Redis client on an empty numbered DB of the local server, claimed with a key (skip/fail without Redis)."""
    import random

    import redis

    try:
        redis.Redis.from_url(f"{REDIS_URL}/0", socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis not reachable at {REDIS_URL}: {exc}")
    for index in random.sample(range(1, 16), 15):
        client = redis.Redis.from_url(f"{REDIS_URL}/{index}")
        if client.dbsize() == 0 and client.set("dctp:cluster-test", marker, nx=True):
            return client, f"{REDIS_URL}/{index}"
    pytest.fail(f"no empty Redis database on {REDIS_URL} (1-15) for the Celery broker")


@pytest.fixture(scope="module")
def cluster(moto_server, tmp_path_factory) -> Iterator[Cluster]:
    import boto3
    import psycopg2
    from mlflow.tracking import MlflowClient

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
    try:
        broker, broker_url = _redis_db(marker)
    except BaseException:
        admin.close()
        raise

    home = tmp_path_factory.mktemp("cluster")
    db_name = f"dctp_cluster_{marker[:12]}"
    db_url = f"postgresql+psycopg2://{pg_user}@{PG_HOST}:{PG_PORT}/{db_name}"
    services: list[Service] = []

    def interrupted(signum, frame):
        # a CI job cancelled or timed out: unwind through pytest's teardown so nothing outlives the test
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt(f"signal {signum}: stopping the cluster")

    previous_handler = signal.signal(signal.SIGTERM, interrupted)
    proxy = FaultyProxy(("127.0.0.1", int(moto_server.rsplit(":", 1)[1])))
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db_name}"')
    try:
        s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
        s3.create_bucket(Bucket=BUCKET)
        config_path = home / "dctp.yaml"
        _write_config(config_path)
        api_port = free_port()
        password = secrets.token_urlsafe(16)
        (home / "passwords.json").write_text(json.dumps({"admin": password}))
        env = _airflow_env(home, db_url, broker_url, api_port, proxy, marker, config_path)
        (home / "airflow").mkdir()
        _check_celery_provider(env)
        cluster = Cluster(api_url=f"http://127.0.0.1:{api_port}", username="admin", password=password,
                          s3_endpoint=moto_server, proxy=proxy, data_root=env["DCTP_DATA_ROOT"],
                          mlflow_uri=env["MLFLOW_TRACKING_URI"], home=home, services=services)
        # MLflow's schema is created once here, not raced by three start_run tasks
        MlflowClient(tracking_uri=cluster.mlflow_uri).search_experiments()

        def run_cli(*args: str, timeout: float = 600) -> None:
            result = subprocess.run([AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout,
                                    start_new_session=True)
            assert result.returncode == 0, f"airflow {' '.join(args)} failed:\n{result.stdout[-3000:]}\n" \
                                           f"{result.stderr[-3000:]}"

        def start(name: str, *args: str, **extra_env: str) -> Service:
            log = home / f"{name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen([AIRFLOW, *args], env={**env, **extra_env}, stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                        cwd=home)
            service = Service(name, proc, log)
            services.append(service)
            return service

        run_cli("db", "migrate")
        run_cli("pools", "set", "gpu", "1", "GPU slots")
        start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1")
        start("scheduler", "scheduler")
        start("dag-processor", "dag-processor")
        cpu = start("worker-default", "celery", "worker", "-q", "default", "-c", "2",
                    "--celery-hostname", f"{CPU_HOST}@%h", "--skip-serve-logs",
                    **{HOSTNAME_ENV: CPU_HOST})
        gpu = start("worker-gpu", "celery", "worker", "-q", "gpu", "-c", "1",
                    "--celery-hostname", f"{GPU_HOST}@%h", "--skip-serve-logs",
                    **{HOSTNAME_ENV: GPU_HOST})

        def api_up():
            import httpx

            return httpx.get(f"{cluster.api_url}/api/v2/monitor/health", timeout=5).status_code == 200

        cluster.wait("the api-server to answer /api/v2/monitor/health", api_up, READY_TIMEOUT)

        def healthy():
            import httpx

            health = httpx.get(f"{cluster.api_url}/api/v2/monitor/health", timeout=5).json()
            return all(health.get(part, {}).get("status") == "healthy"
                       for part in ("metadatabase", "scheduler", "dag_processor"))

        cluster.wait("the scheduler and dag-processor heartbeats", healthy, READY_TIMEOUT)
        cluster.wait("dctp_daily to be parsed and serialized",
                     lambda: cluster.api("GET", "/dags/dctp_daily/details")["dag_id"], READY_TIMEOUT, interval=3)
        for worker in (cpu, gpu):
            cluster.wait(f"the {worker.name} Celery worker to be ready", lambda w=worker: " ready." in w.tail(400),
                         READY_TIMEOUT)
        yield cluster
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopping = time.monotonic()
        for service in reversed(services):
            _stop(service)
        proxy.close()
        leftover = _marked_processes(marker)
        for pid in leftover:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.close()
        broker.flushdb()
        if not os.environ.get("DCTP_KEEP_CLUSTER_HOME"):
            shutil.rmtree(home / "airflow", ignore_errors=True)
        signal.signal(signal.SIGTERM, previous_handler)
        print(f"cluster teardown took {time.monotonic() - stopping:.0f} s")
        assert not leftover, f"processes left after teardown (killed now): {leftover}"
