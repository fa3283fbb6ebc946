"""The preflight checks, one function each: what was found, and on failure the command or setting that fixes it.

Every check that does I/O retries a transient fault briefly (a network blip must not fail a run) and turns any other
error into a failed check naming it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from dctp_tasks.config import PipelineConfig, dctp_home, default_config_path
from dctp_tasks.errors import is_transient
from dctp_tasks.preflight import DEFAULT_POOL, GPU_POOL_ENV, GPU_QUEUE_ENV, GPU_TASKS, AirflowFacts, Check, Unknown
from dctp_tasks.storage import Storage

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Attempts and first pause of a check's I/O when the fault is transient.
ATTEMPTS, PAUSE_SECONDS = 3, 1.0


def retrying(action: Callable[[], T], attempts: int = ATTEMPTS, pause: float = PAUSE_SECONDS) -> T:
    """Return ``action()``, retrying transient faults (``is_transient``) with a doubling pause."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            log.info("preflight: transient %s (%s), trying again", type(exc).__name__, exc)
            time.sleep(pause * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def describe_error(exc: BaseException) -> str:
    """Return the error on one line (a pydantic error's lines joined, without its documentation links)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("For further")]
    return f"{type(exc).__name__}: {'; '.join(lines)}"[:500]


def check_config(load: Callable[[], PipelineConfig]) -> tuple[PipelineConfig | None, Check]:
    path = default_config_path()
    try:
        config = load()
    except FileNotFoundError as exc:  # the file, or a model folder a setting names (the shipped ones: include/)
        return None, Check("config", "fail", f"{path}: {describe_error(exc)}",
                           f"set DCTP_HOME to the folder holding include/ (now {dctp_home()}) and DCTP_CONFIG to the "
                           "config file, or fix the path the config names")
    except Exception as exc:
        return None, Check("config", "fail", f"{path}: {describe_error(exc)}",
                           "fix the setting the error names (DCTP_CONFIG points at the file)")
    return config, Check("config", "ok", f"{path} (hash {config.config_hash()})")


def check_data_root(storage: Storage) -> Check:
    """Write, read back and delete a small probe file under the data root."""
    path = storage.path("state", "preflight", f"probe-{uuid.uuid4().hex}.txt")
    payload = f"dctp preflight {time.time()}".encode()

    def probe() -> bytes:
        storage.write_bytes(path, payload)
        try:
            return storage.read_bytes(path)
        finally:
            storage.delete_files([path])

    s3 = storage.scheme == "s3"
    fix = ("create the bucket and check the credentials and endpoint_url of the aws_default connection (or the AWS_* "
           "environment), or set DCTP_DATA_ROOT" if s3 else
           "create the folder and let the Airflow user write to it on every worker, or set DCTP_DATA_ROOT")
    try:
        echoed = retrying(probe)
    except Exception as exc:
        return Check("data root", "fail", f"{storage.root} is not writable: {describe_error(exc)}", fix)
    if echoed != payload:
        return Check("data root", "fail", f"{storage.root} returned other bytes than were written", fix)
    return Check("data root", "ok", f"{storage.root} (wrote, read back and deleted a probe file)")


def check_pool(facts: AirflowFacts, name: str | None) -> Check:
    """The GPU tasks' pool exists and has slots; without ``DCTP_GPU_POOL`` they use ``default_pool``."""
    target = name or DEFAULT_POOL
    tasks = " and ".join(GPU_TASKS)
    try:
        slots = facts.pool_slots(target)
    except Unknown as exc:
        if name is None:  # every Airflow has it; whether it has free slots is the scheduler's concern
            return Check(f"pool {target}", "ok", f"{tasks} use {DEFAULT_POOL} ({GPU_POOL_ENV} unset; not read: {exc})")
        return Check(f"pool {target}", "skip", str(exc), "run `dctp doctor` where the `airflow` command works")
    if slots is None:
        if name is None:
            return Check(f"pool {target}", "fail", f"{DEFAULT_POOL} is missing: no task can be scheduled",
                         f"airflow pools set {DEFAULT_POOL} 128 'Default pool'")
        return Check(f"pool {target}", "fail",
                     f"pool {name!r} ({GPU_POOL_ENV}) does not exist: {tasks} would stay 'scheduled' forever",
                     f"airflow pools set {name} 1 'DCTP GPU tasks, one slot per GPU' (or unset {GPU_POOL_ENV} "
                     f"on the scheduler and dag-processor: the GPU tasks then use {DEFAULT_POOL})")
    if slots == 0:
        return Check(f"pool {target}", "fail", f"pool {target!r} has 0 slots: {tasks} can never start",
                     f"airflow pools set {target} 1 'DCTP GPU tasks, one slot per GPU'")
    shown = "unlimited" if slots < 0 else f"{slots} slot(s)"
    return Check(f"pool {target}", "ok", f"{shown} for {tasks}" + ("" if name else f" ({GPU_POOL_ENV} unset)"))


def check_queues(facts: AirflowFacts, gpu_queue: str | None) -> list[Check]:
    """With a Celery executor, some worker consumes the default queue (and ``gpu_queue``, unless ``None``)."""
    try:
        executor = facts.executor()
        if "celery" not in executor.lower():
            return [Check("queues", "ok", f"{executor} runs every task itself: queues do not apply")]
        default = facts.default_queue()
    except Unknown as exc:
        return [Check("queues", "skip", str(exc))]
    checks = []
    for queue in dict.fromkeys([default, gpu_queue or default]):
        users = ("every task" if queue == default == (gpu_queue or default) else
                 " and ".join(GPU_TASKS) if queue == gpu_queue else "every task but the GPU ones")
        try:
            workers = _consumers(facts, queue)
        except Unknown as exc:
            checks.append(Check(f"queue {queue}", "skip", str(exc)))
            continue
        except Exception as exc:
            checks.append(Check(f"queue {queue}", "fail", f"cannot ask the Celery workers: {describe_error(exc)}",
                                "check [celery] broker_url and that the broker runs"))
            continue
        if workers:
            checks.append(Check(f"queue {queue}", "ok", f"consumed by {len(workers)} worker(s): "
                                                          f"{', '.join(sorted(workers)[:4])} ({users})"))
            continue
        fix = f"start a worker on it: airflow celery worker --queues {queue}"
        if queue == gpu_queue:
            fix += (f" (on a GPU host), or set {GPU_QUEUE_ENV}={default} on the scheduler, dag-processor and workers "
                    f"to run the GPU tasks on the CPU workers")
        checks.append(Check(f"queue {queue}", "fail",
                            f"no Celery worker consumes queue {queue!r}: {users} would stay 'queued'", fix))
    return checks


def _consumers(facts: AirflowFacts, queue: str, pauses: tuple[float, ...] = (2.0, 5.0)) -> list[str]:
    """Ask the workers which consume ``queue``; with no answer, ask again after each pause (a worker whose main
    process is busy may miss one broadcast's deadline) before concluding that none does."""
    workers = retrying(lambda: facts.queue_consumers(queue))
    for pause in pauses:
        if workers:
            break
        time.sleep(pause)
        workers = retrying(lambda: facts.queue_consumers(queue))
    return workers


def active_postgres_sources(config: PipelineConfig) -> dict[str, str]:
    """Return ``source name -> conn_id`` of every enabled PostgreSQL source a run reads."""
    wanted = set(config.ingest.include_sources)
    return {name: source.postgres.conn_id for name, source in sorted(config.ingest.sources.items())
            if source.postgres is not None and source.enabled and (not wanted or name in wanted)}


def check_connections(config: PipelineConfig, facts: AirflowFacts | None) -> list[Check]:
    """Every connection a configured source reads exists, connects and sees its table."""
    checks = []
    for source, conn_id in active_postgres_sources(config).items():
        table = config.ingest.sources[source].postgres
        name = f"connection {conn_id}"
        if facts is None:
            checks.append(Check(name, "skip", f"source {source!r} reads it; no Airflow installation to ask"))
            continue
        try:
            checks.append(_check_postgres(facts, conn_id, source, table.schema_name, table.table))
        except Unknown as exc:
            checks.append(Check(name, "skip", str(exc)))
        except Exception as exc:
            checks.append(Check(name, "fail", f"source {source!r}: cannot query {table.schema_name}.{table.table}: "
                                              f"{describe_error(exc)}",
                                f"check host, port, database and credentials of {conn_id}, and that the table exists"))
    return checks + _llm_connections(config, facts)


def _llm_connections(config: PipelineConfig, facts: AirflowFacts | None) -> list[Check]:
    """The connection of each synthetic generator or judge served by an OpenAI-compatible endpoint exists (it is not
    called: a hosted endpoint bills every request)."""
    from dctp_tasks.preflight.models import generates

    cfg = config.synthetic
    users = {}
    for role, generator in (("generator", cfg.generator), ("judge", cfg.judge)):
        if generates(config) and generator is not None and generator.backend == "openai":
            users.setdefault(generator.conn_id, []).append(f"synthetic {role} ({generator.model})")
    checks = []
    for conn_id, roles in users.items():
        name = f"connection {conn_id}"
        if facts is None:
            checks.append(Check(name, "skip", f"{' and '.join(roles)} call it; no Airflow installation to ask"))
            continue
        try:
            defined = facts.connection_uri(conn_id) is not None
        except Unknown as exc:
            checks.append(Check(name, "skip", str(exc)))
            continue
        checks.append(Check(name, "ok", f"defined; {' and '.join(roles)} call it") if defined else Check(
            name, "fail", f"not defined: {' and '.join(roles)} call it",
            f"airflow connections add {conn_id} --conn-type http --conn-host http://HOST:8000/v1 "
            f"[--conn-password API_KEY] (or AIRFLOW_CONN_{conn_id.upper()})"))
    return checks


def _check_postgres(facts: AirflowFacts, conn_id: str, source: str, schema: str, table: str) -> Check:
    from dctp_tasks.ingest.readers import sql_module

    name = f"connection {conn_id}"
    if facts.connection_uri(conn_id) is None:
        return Check(name, "fail", f"not defined: source {source!r} reads it",
                     f"airflow connections add {conn_id} --conn-uri postgresql://USER:PASSWORD@HOST:5432/DB (or "
                     f"AIRFLOW_CONN_{conn_id.upper()}), or disable the source")

    def query() -> None:
        connection = facts.connect_postgres(conn_id)
        sql = sql_module(connection)  # the provider hands out psycopg2 or psycopg (3) connections
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("SELECT 1 FROM {}.{} LIMIT 0").format(sql.Identifier(schema),
                                                                               sql.Identifier(table)))
        finally:
            connection.close()

    retrying(query)
    return Check(name, "ok", f"connects; {schema}.{table} readable (source {source!r})")


def check_feedback(config: PipelineConfig, connection_uri: str | None) -> list[Check]:
    """The feedback store selection writes to is reachable and not newer than this code; the roster has experts.

    ``connection_uri`` is the ``dctp_feedback`` connection's, when defined; else the store is where ``dctp`` commands
    look (``$DCTP_FEEDBACK_URL``, else SQLite under ``$AIRFLOW_HOME``).
    """
    from dctp_tasks.feedback import db

    name = "feedback store"
    if config.annotation.budget == 0:
        return [Check(name, "skip", "annotation.budget is 0: no documents are selected for annotation")]
    url = db.connection_url(connection_uri) if connection_uri else db.feedback_url()
    engine = db.create_feedback_engine(url)
    where = engine.url.render_as_string(hide_password=True)
    try:
        done = retrying(lambda: db.applied_versions(engine))
    except Exception as exc:
        return [Check(name, "fail", f"cannot reach {where}: {describe_error(exc)}",
                      f"check host, port, database and credentials of the {db.CONN_ID} connection (or "
                      "DCTP_FEEDBACK_URL); without one the store is SQLite under $AIRFLOW_HOME")]
    finally:
        engine.dispose()
    checks = []
    newer = [v for v in done if v > db.LATEST]
    if newer:
        checks.append(Check(name, "fail", f"{where} has migrations {newer} this code does not know",
                            "upgrade dctp to the version that migrated the store"))
    else:
        behind = "" if db.LATEST in done else f" (feedback_db applies migrations up to {db.LATEST})"
        checks.append(Check(name, "ok", f"{where}: schema version {max(done, default=0)}{behind}"))
    if not config.annotation.experts:
        checks.append(Check("expert roster", "warn", "annotation.experts is empty: documents are selected, but no "
                                                     "expert is assigned to judge them",
                            "name the experts (Airflow user names) under annotation.experts in the config file"))
    return checks


def check_models(config: PipelineConfig) -> list[Check]:
    """Every model a run loads is on disk (runs load them offline), by scorer and dedup stage."""
    from dctp_tasks.preflight.models import model_checks

    return model_checks(config)


def check_mlflow(tracking: Any) -> Check:
    """The tracking URI answers (a server) or its store is writable (SQLite or a folder)."""
    from dctp_tasks.tracking import tracking_uri

    if not tracking.enabled:
        return Check("mlflow", "skip", "tracking.enabled is false: runs log nothing to MLflow")
    uri = tracking_uri(tracking)
    parsed = urlparse(uri)
    shown = _without_password(uri)
    fix = ("start the tracking server, or set MLFLOW_TRACKING_URI (or tracking.tracking_uri), or "
           "tracking.enabled: false")
    try:
        if parsed.scheme in {"http", "https"}:
            status = retrying(lambda: _http_status(f"{uri.rstrip('/')}/health"))
            if status != 200:
                return Check("mlflow", "fail", f"{shown}/health answered HTTP {status}", fix)
            return Check("mlflow", "ok", f"{shown} answers /health")
        if parsed.scheme == "sqlite":
            return _writable_folder("mlflow", Path(uri.removeprefix("sqlite:///")).parent, shown, fix)
        if parsed.scheme in {"", "file"}:
            return _writable_folder("mlflow", Path(parsed.path or uri), shown, fix)
        if parsed.scheme.split("+")[0] in {"postgresql", "mysql"}:
            retrying(lambda: _sql_ping(uri))  # the store's database answers (MLflow itself would retry ~100 s)
            return Check("mlflow", "ok", f"{shown} answers")
        from mlflow.tracking import MlflowClient

        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        return Check("mlflow", "ok", f"{shown} answers")
    except Exception as exc:
        return Check("mlflow", "fail", f"{shown} unreachable: {describe_error(exc)}", fix)


def _without_password(uri: str) -> str:
    """Return ``uri`` with any password masked: check lines reach task logs and XComs."""
    parsed = urlparse(uri)
    if not parsed.password:
        return uri
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)).geturl()


def _sql_ping(uri: str, timeout: int = 5) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": timeout}, poolclass=sqlalchemy.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    finally:
        engine.dispose()


def _http_status(url: str, timeout: float = 5.0) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise ConnectionError(f"HTTP {exc.code} from {url}") from exc  # a server restarting: transient
        return exc.code
    except urllib.error.URLError as exc:
        reason = exc.reason
        raise reason if isinstance(reason, OSError) else ConnectionError(str(reason)) from exc


def _writable_folder(name: str, folder: Path, uri: str, fix: str) -> Check:
    existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return Check(name, "fail", f"{uri}: {existing or folder} is not a writable folder", fix)
    return Check(name, "ok", f"{uri} (folder writable)")
