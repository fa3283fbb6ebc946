"""Shared fixtures: an isolated AIRFLOW_HOME, real PostgreSQL, a moto S3 server on loopback, table factories.

Service-backed fixtures skip with a reason on a developer machine without the service, and fail in CI
(``CI=true``), where every service must be there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Airflow reads its settings at import: point it at a throwaway home before anything imports it.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="dctp-airflow-home-"))
os.environ.update({
    "AIRFLOW_HOME": str(_AIRFLOW_HOME),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}",
    "MLFLOW_TRACKING_URI": f"sqlite:///{_AIRFLOW_HOME / 'mlflow.db'}",
    "MLFLOW_ARTIFACT_ROOT": (_AIRFLOW_HOME / "mlflow-artifacts").as_uri(),
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
})
os.environ.pop("DCTP_CONFIG", None)
if str(REPO / "dags") not in sys.path:
    sys.path.insert(0, str(REPO / "dags"))

PG_DSN = os.environ.get("DCTP_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def unavailable(reason: str) -> None:
    """Skip on a developer machine; fail in CI, where every service must run."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: service-backed tests must run)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        unavailable(f"real datasets not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    import psycopg2

    try:
        psycopg2.connect(PG_DSN, connect_timeout=3).close()
    except psycopg2.OperationalError as exc:
        unavailable(f"PostgreSQL not reachable at {PG_DSN}: {exc}")
    return PG_DSN


@pytest.fixture
def pg_conn(pg_dsn):
    import psycopg2

    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def pg_table_name(pg_conn):
    """A unique table name in the ``test`` database, dropped afterwards."""
    name = f"dctp_test_{uuid.uuid4().hex[:10]}"
    yield name
    with pg_conn.cursor() as cur:
        cur.execute(f'DROP TABLE IF EXISTS public."{name}"')


@pytest.fixture
def pg_database(pg_conn) -> str:
    """A new, empty database on the local server (dropped afterwards); yields its ``postgresql://`` URI."""
    name = f"dctp_test_{uuid.uuid4().hex[:10]}"
    with pg_conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://{pg_conn.info.user}@127.0.0.1:5432/{name}"
    with pg_conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')


@pytest.fixture
def articles_table(pg_conn, pg_table_name) -> str:
    """An empty articles table with a business timestamp and an ingestion-time column, as a source would have."""
    with pg_conn.cursor() as cur:
        cur.execute(f'CREATE TABLE public."{pg_table_name}" (id integer PRIMARY KEY, body text, '
                    "published_at timestamptz, inserted_at timestamptz NOT NULL DEFAULT now())")
    return pg_table_name


@pytest.fixture(scope="session")
def moto_server():
    """A real S3 API (moto server) on loopback; yields its endpoint URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        unavailable("moto_server is not installed (pip install 'moto[server]')")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("moto server did not start within 30 s")
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(moto_server, monkeypatch):
    """A fresh bucket on the moto server; AWS_* environment set for the pipeline and boto3."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    name = f"dctp-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture
def cutting(s3_bucket, moto_server):
    """The data root on S3 seen straight and through a fault-injecting proxy (``tests.cluster.faulty_proxy``), and
    the proxy: ``proxy.fail("cut-reads", path=…)`` cuts responses the way a dropped connection would."""
    import pyarrow.fs as pafs

    from dctp_tasks.storage import S3Options, Storage
    from tests.cluster.faulty_proxy import FaultyProxy

    host, port = moto_server.removeprefix("http://").split(":")
    proxy = FaultyProxy((host, int(port)))
    options = {"access_key": "testing", "secret_key": "testing"}
    direct = Storage(f"s3://{s3_bucket}/root", S3Options(endpoint_url=moto_server, **options))
    through = Storage(f"s3://{s3_bucket}/root", S3Options(endpoint_url=proxy.url, **options))
    # Two attempts, not the production five: the fault lasts until heal(), so more retries only add seconds.
    through.fs = pafs.S3FileSystem(region="us-east-1", scheme="http", endpoint_override=f"127.0.0.1:{proxy.port}",
                                   connect_timeout=2, request_timeout=10,
                                   retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2), **options)
    yield direct, through, proxy
    proxy.close()


@pytest.fixture(scope="session")
def airflow_db():
    """Migrate the session's SQLite Airflow metadata DB once."""
    result = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], capture_output=True,
                            text=True, env=os.environ.copy(), timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return _AIRFLOW_HOME


def config_file(folder: Path, settings: dict) -> Path:
    """Write the default config with ``settings`` (dotted keys) applied to ``folder/dctp.yaml``; return its path."""
    import yaml

    from dctp_tasks.config import DEFAULT_CONFIG_PATH, _set_dotted

    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    for key, value in settings.items():
        _set_dotted(data, key, value)
    path = Path(folder) / "dctp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def make_table(texts: list[str], **columns):
    """Build a ``CORE_SCHEMA`` table from texts; keyword columns override defaults (lists of values)."""
    import pyarrow as pa

    from dctp_tasks.records import CORE_SCHEMA, empty_lineage

    n = len(texts)
    data = {
        "doc_id": [f"t/{i}" for i in range(n)],
        "text": texts,
        "prompt": [None] * n,
        "response": [None] * n,
        "source": ["t"] * n,
        "domain": [None] * n,
        "created_at": [None] * n,
        "meta": ["{}"] * n,
        "dt": ["2026-01-01"] * n,
        "synthetic": [False] * n,
        "sampling_weight": [1.0] * n,
    }
    data.update(columns)
    arrays = [pa.array(data[f.name], f.type) if f.name != "lineage" else empty_lineage(n) for f in CORE_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=CORE_SCHEMA)


def publish_stage(storage, dag_id: str, dt: str, stage: str, table, drops: list[tuple] = ()) -> str:
    """Publish ``table`` as ``stage``'s staged rows for ``dt`` (as the stage would), and ``drops`` —
    ``(doc_id, outcome, reason)`` — as the rows it dropped; return the version."""
    from dctp_tasks.ledger import RejectWriter
    from dctp_tasks.staging import REJECTS, ROWS, stage_output

    with stage_output(storage, dag_id, dt, stage) as out, out.writer(ROWS, schema=table.schema) as writer, \
            RejectWriter(storage, out.sub(REJECTS), dt, stage) as dropped:
        writer.write(table)
        for doc_id, outcome, reason in drops:
            dropped.add(doc_id, outcome, reason)
    return out.version


def staged(storage, dag_id: str, dt: str, stage: str, columns: list[str] | None = None):
    """Return the rows of ``stage``'s current staged output for ``dt``."""
    from dctp_tasks.staging import stage_rows

    return storage.read_table(stage_rows(storage, dag_id, dt, stage), columns=columns)


def rejects(storage, dag_id: str, dt: str):
    """Return every row the current versions of ``dag_id``'s stages dropped for ``dt``."""
    from dctp_tasks.staging import staged_rejects

    return staged_rejects(storage, dag_id, dt)


def stage_dedup_input(storage, dag_id: str, dt: str, stage: str, rows: list[tuple]) -> None:
    """Publish ``stage``'s output for ``dt`` (a dedup stage's input): ``(doc_id, text[, created_at[, domain]])``."""
    import pyarrow as pa

    from dctp_tasks.records import DEDUPED_SCHEMA, content_hashes

    n = len(rows)
    texts = [r[1] for r in rows]
    table = make_table(texts, doc_id=[r[0] for r in rows], created_at=[r[2] if len(r) > 2 else None for r in rows],
                       domain=[r[3] if len(r) > 3 else None for r in rows], dt=[dt] * n,
                       source=[r[0].split("/")[0] for r in rows])
    table = table.append_column("lang", pa.array(["en"] * n, pa.string()))
    table = table.append_column("lang_score", pa.array([0.9] * n, pa.float32()))
    table = table.append_column("content_hash", content_hashes(pa.array(texts, pa.string())))
    publish_stage(storage, dag_id, dt, stage, table.cast(DEDUPED_SCHEMA))
