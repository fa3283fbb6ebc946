"""MLflow: one run per DAG run (experiment per DAG), per-stage metrics under the stage's prefix.

A re-run of a DAG run reopens its MLflow run while it runs with the same settings; MLflow params cannot change,
so a re-run with other settings gets a fresh MLflow run (same run name, tagged ``dctp.supersedes``) and the old
one is tagged ``dctp.superseded_by``: the run a DAG run points at always shows the config it actually ran with.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from dctp_tasks.config import TrackingConfig

log = logging.getLogger(__name__)

RUN_ID_TAG = "airflow.run_id"
SUPERSEDES_TAG = "dctp.supersedes"
SUPERSEDED_BY_TAG = "dctp.superseded_by"
MAX_PARAM_LENGTH = 6000


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")


def tracking_uri(config: TrackingConfig) -> str:
    return config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{airflow_home() / 'mlflow.db'}"


def artifact_root(config: TrackingConfig) -> str:
    default = (airflow_home() / "mlflow-artifacts").as_uri()
    return config.artifact_root or os.environ.get("MLFLOW_ARTIFACT_ROOT") or default


def _experiment_id(client, config: TrackingConfig, experiment: str) -> str:
    """Return the experiment's id, creating it; when the first runs of a backfill create it at once, the ones that
    lose the race read the winner's."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found:
        return found.experiment_id
    try:
        return client.create_experiment(experiment,
                                        artifact_location=f"{artifact_root(config).rstrip('/')}/{experiment}")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(experiment).experiment_id


def _client(config: TrackingConfig):
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(config)
    if uri.startswith("sqlite:///") and uri not in _READY_SQLITE:
        return _create_sqlite_store(uri)
    return MlflowClient(tracking_uri=uri)


#: SQLite tracking stores this process has opened (their schema exists).
_READY_SQLITE: set[str] = set()


def _create_sqlite_store(uri: str):
    """Return a client of a SQLite store opened under an exclusive file lock: MLflow creates or migrates the schema
    when a process first opens the store, and the first runs of a backfill (several ``start_run`` tasks at once)
    would otherwise race each other's migrations."""
    import fcntl

    from mlflow.tracking import MlflowClient

    lock = Path(uri.removeprefix("sqlite:///")).with_suffix(".dctp-lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    _READY_SQLITE.add(uri)
    return client


def open_run(config: TrackingConfig, experiment: str, run_name: str, tags: dict[str, str],
             params: dict[str, str]) -> str:
    """Return the MLflow run id for this DAG run: create it, or reopen it when the DAG run is re-run with the same
    params; a re-run with changed params gets a new MLflow run that supersedes the old one."""
    client = _client(config)
    experiment_id = _experiment_id(client, config, experiment)
    existing = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_name}'",
                                  max_results=1, order_by=["attributes.start_time DESC"])
    fresh = {k: v[:MAX_PARAM_LENGTH] for k, v in params.items()}
    if existing and _same_params(existing[0].data.params, fresh):
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        for key, value in tags.items():  # tags can change (e.g. a new config hash): show the current ones
            client.set_tag(run_id, key, value)
        log.info("reopened MLflow run %s for %s", run_id, run_name)
    else:
        extra = {SUPERSEDES_TAG: existing[0].info.run_id} if existing else {}
        run_id = client.create_run(experiment_id, run_name=run_name,
                                   tags={RUN_ID_TAG: run_name, **tags, **extra}).info.run_id
        if existing:
            client.set_tag(existing[0].info.run_id, SUPERSEDED_BY_TAG, run_id)
            log.info("created MLflow run %s for %s: its settings differ from run %s's, which it supersedes",
                     run_id, run_name, existing[0].info.run_id)
        else:
            log.info("created MLflow run %s for %s", run_id, run_name)
    _log_params(client, run_id, fresh)
    return run_id


def _same_params(logged: dict[str, str], params: dict[str, str]) -> bool:
    """Return whether ``params`` agree with what the run logged: every logged key has the same value (a run whose
    logging was cut short, or that logged none yet, takes the missing keys)."""
    return all(params.get(key) == value for key, value in logged.items())


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    current = client.get_run(run_id).data.params
    fresh = [Param(k, v) for k, v in sorted(params.items()) if k not in current]
    for start in range(0, len(fresh), 100):
        client.log_batch(run_id, params=fresh[start:start + 100])


def log_metrics(config: TrackingConfig, run_id: str, metrics: dict[str, float]) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    entries = [Metric(key, float(value), now, 0) for key, value in sorted(metrics.items())]
    client = _client(config)
    for start in range(0, len(entries), 500):
        client.log_batch(run_id, metrics=entries[start:start + 500])


def log_text(config: TrackingConfig, run_id: str, name: str, text: str) -> None:
    _client(config).log_text(run_id, text, name)


def log_dict(config: TrackingConfig, run_id: str, name: str, data: dict) -> None:
    _client(config).log_text(run_id, json.dumps(data, indent=2, sort_keys=True, default=str), name)


def log_bytes(config: TrackingConfig, run_id: str, name: str, data: bytes) -> None:
    """Log ``data`` as the artifact ``name`` (e.g. ``plots/quality.png``)."""
    import tempfile
    from pathlib import Path

    directory, _, filename = name.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        path.write_bytes(data)
        _client(config).log_artifact(run_id, str(path), directory or None)


def close_run(config: TrackingConfig, run_id: str, status: str = "FINISHED") -> None:
    _client(config).set_terminated(run_id, status=status)


def run_summary(config: TrackingConfig, run_id: str) -> dict:
    """Return the run's status, metrics and tags (for the CLI and tests)."""
    run = _client(config).get_run(run_id)
    return {"status": run.info.status, "metrics": dict(run.data.metrics), "tags": dict(run.data.tags),
            "params": dict(run.data.params), "artifact_uri": run.info.artifact_uri}
