"""A real Airflow 3 cluster on loopback: PostgreSQL metadata DB, Redis broker, api-server, scheduler,
dag-processor and four Celery workers (two on queue ``default``, two on ``gpu``, each with its own hostname), the
data root on a moto S3 server behind a fault-injecting proxy, MLflow on SQLite. The heavy stages run as two shards
each, so every queue's shards can spread over both of its workers.

Every process runs in its own process group with a marker in its environment; teardown stops the groups
(SIGTERM, then SIGKILL), drops the database, empties the Redis DB and fails if any marked process is left.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.airflow_stack import READY_TIMEOUT, Stack, clean_env, metadata_database, sigterm_unwinds, stopped_on_exit
from tests.cluster.faulty_proxy import FaultyProxy
from tests.cluster.hostname import HOSTNAME_ENV
from tests.conftest import REPO, free_port, unavailable

REDIS_URL = os.environ.get("DCTP_TEST_REDIS_URL", "redis://127.0.0.1:6379")
CPU_HOSTS = ("dctp-cpu-worker-1", "dctp-cpu-worker-2")
GPU_HOSTS = ("dctp-gpu-worker-1", "dctp-gpu-worker-2")
SHARDS = 2
BUCKET = "dctp-cluster"


@dataclass
class Cluster(Stack):
    """A ``Stack`` on Celery, with the S3 proxy and storage the tests need."""

    s3_endpoint: str = ""  # moto itself, for the test's own reads
    proxy: FaultyProxy | None = None  # what Airflow's aws_default connection points at
    data_root: str = ""
    mlflow_uri: str = ""

    def storage(self):
        from dctp_tasks.storage import S3Options, Storage

        return Storage(self.data_root, S3Options(endpoint_url=self.s3_endpoint, access_key="testing",
                                                 secret_key="testing", region="us-east-1"))


def _airflow_env(home: Path, db_url: str, broker_url: str, api_port: int, proxy: FaultyProxy, marker: str,
                 config_path: Path) -> dict[str, str]:
    env = clean_env(marker, ("AIRFLOW__", "AIRFLOW_CONN_", "AWS_", "MLFLOW_"), _DCTP_ROUTING_ENV)
    connection = {"conn_type": "aws", "login": "testing", "password": "testing",
                  "extra": {"endpoint_url": proxy.url, "region_name": "us-east-1"}}
    from cryptography.fernet import Fernet

    env.update({
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
    """The default config with the CPU-slow perplexity model off (semantic dedup, a GPU task, stays on), and every
    sharded stage in ``SHARDS`` shards (batches of 25 rows, so a 200-row day can be cut)."""
    from dctp_tasks.config import SHARDED_STAGES

    config = yaml.safe_load((REPO / "include" / "config" / "dctp.yaml").read_text())
    config["batch_size"] = 25
    config["sharding"] = {**(config.get("sharding") or {}), "shards": dict.fromkeys(SHARDED_STAGES, SHARDS)}
    config["quality"]["scorers"]["perplexity"] = {**(config["quality"]["scorers"].get("perplexity") or {}),
                                                  "enabled": False}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


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
    from mlflow.tracking import MlflowClient

    home = tmp_path_factory.mktemp("cluster")
    with sigterm_unwinds(), metadata_database("dctp_cluster") as (db_url, marker):
        broker, broker_url = _redis_db(marker)
        proxy = FaultyProxy(("127.0.0.1", int(moto_server.rsplit(":", 1)[1])))
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
                              home=home, env=env, s3_endpoint=moto_server, proxy=proxy,
                              data_root=env["DCTP_DATA_ROOT"], mlflow_uri=env["MLFLOW_TRACKING_URI"])
            # MLflow's schema is created once here, not raced by three start_run tasks
            MlflowClient(tracking_uri=cluster.mlflow_uri).search_experiments()
            with stopped_on_exit(cluster.services, marker):
                cluster.cli("db", "migrate")
                cluster.cli("pools", "set", "gpu", str(len(GPU_HOSTS)), "GPU slots")  # one per GPU host
                cluster.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port),
                              "--workers", "1")
                cluster.start("scheduler", "scheduler")
                cluster.start("dag-processor", "dag-processor")
                workers = [cluster.start(f"worker-{queue}-{i}", "celery", "worker", "-q", queue, "-c", "1",
                                         "--celery-hostname", f"{host}@%h", "--skip-serve-logs",
                                         **{HOSTNAME_ENV: host})
                           for queue, hosts in (("default", CPU_HOSTS), ("gpu", GPU_HOSTS))
                           for i, host in enumerate(hosts, 1)]
                cluster.wait_until_ready(["dctp_daily"])
                for worker in workers:
                    cluster.wait(f"the {worker.name} Celery worker to be ready",
                                 lambda w=worker: " ready." in w.tail(400), READY_TIMEOUT)
                yield cluster
        finally:
            proxy.close()
            broker.flushdb()
            if not os.environ.get("DCTP_KEEP_CLUSTER_HOME"):
                shutil.rmtree(home / "airflow", ignore_errors=True)
