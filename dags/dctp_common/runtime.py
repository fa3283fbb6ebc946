"""Turn an Airflow task context into what the stage library takes: dt, interval, config, storage, connections."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseHook

from dctp_common.compat import AirflowFailException
from dctp_tasks.config import PipelineConfig, check_run_overrides, load_config
from dctp_tasks.errors import is_permanent, is_transient  # noqa: F401  (re-exported: the DAGs' error policy)
from dctp_tasks.storage import S3Options, Storage, data_root

log = logging.getLogger(__name__)

#: Param name -> dotted config key it overrides.
PARAM_OVERRIDES = {
    "sources": "ingest.include_sources",
    "max_quarantine_ratio": "ingest.max_quarantine_ratio",
    "min_chars": "normalize.min_chars",
    "max_chars": "normalize.max_chars",
    "near_dup_threshold": "dedup_near.threshold",
    "semantic_threshold": "dedup_semantic.threshold",
    "batch_size": "batch_size",
    "min_quality": "quality.min_quality",
    "review_below": "quality.review_below",
    "annotation_budget": "annotation.budget",
}


@dataclass(frozen=True)
class RunContext:
    dag_id: str
    run_id: str
    dt: str
    interval: tuple[datetime, datetime]
    config: PipelineConfig
    storage: Storage


def run_context(context: dict[str, Any]) -> RunContext:
    """Resolve the partition date, data interval, config and storage of the running task."""
    dag_run = context["dag_run"]
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if dag_run.run_type == "manual" or start is None or end is None or end <= start:
        # a manual run processes the day of its logical date, or of its run_after when it has none
        day = (dag_run.logical_date or dag_run.run_after).astimezone(UTC)
        start = day.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    with permanent_errors():
        config = resolve_config(context.get("params") or {})
    return RunContext(dag_id=dag_run.dag_id, run_id=dag_run.run_id, dt=start.strftime("%Y-%m-%d"),
                      interval=(start, end), config=config, storage=data_storage())


def rescore_context(context: dict[str, Any]) -> RunContext:
    """Resolve a ``dctp_rescore`` run: the date comes from the Param ``date``."""
    params = context.get("params") or {}
    with permanent_errors():
        try:
            day = datetime.strptime(str(params.get("date")), "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError as exc:
            raise ValueError(f"Param date must be YYYY-MM-DD, got {params.get('date')!r}") from exc
        config = resolve_config(params)
    dag_run = context["dag_run"]
    return RunContext(dag_id=dag_run.dag_id, run_id=dag_run.run_id, dt=day.strftime("%Y-%m-%d"),
                      interval=(day, day + timedelta(days=1)), config=config, storage=data_storage())



def start_tracking(run: RunContext, experiment: str) -> dict:
    """Open (or reopen, on a re-run) the run's MLflow run in ``experiment`` and log the resolved config."""
    from dctp_tasks import tracking

    tags = {"dag_id": experiment, "run_id": run.run_id, "dt": run.dt, "config_hash": run.config.config_hash()}
    mlflow_run_id = None
    if run.config.tracking.enabled:
        mlflow_run_id = tracking.open_run(run.config.tracking, experiment, run.run_id, tags, run.config.flat())
    return {"mlflow_run_id": mlflow_run_id, "dt": run.dt, "data_root": run.storage.root, **tags}


def track(run: RunContext, started: dict, result) -> dict:
    """Log a stage's metrics, report and plots to the run's MLflow run and its report to the task log.

    Returns the XCom: counts and URIs, never data.
    """
    from dctp_tasks import tracking

    report_path = result.extra.get("report")
    report = run.storage.read_bytes(run.storage.path(report_path)).decode() if report_path else None
    if report:
        print(report)
    if started["mlflow_run_id"]:
        cfg = run.config.tracking
        tracking.log_metrics(cfg, started["mlflow_run_id"], result.metrics())
        if report:
            tracking.log_text(cfg, started["mlflow_run_id"], f"reports/{result.stage}.md", report)
        for key, name in (("validation", "reports/validation.html"), ("card", "card/README.md")):
            if result.extra.get(key):
                tracking.log_bytes(cfg, started["mlflow_run_id"], name,
                                   run.storage.read_bytes(run.storage.path(result.extra[key])))
        for plot in filter(None, str(result.extra.get("plots", "")).split(",")):
            tracking.log_bytes(cfg, started["mlflow_run_id"], f"plots/{plot.rsplit('/', 1)[1]}",
                               run.storage.read_bytes(run.storage.path(plot)))
    return result.as_dict()


def finish(run: RunContext, started: dict, ingested: int, exported: dict, stamp_batch: bool = False) -> dict:
    """Prove the date's ledger balances against the committed Delta version; log it and close the MLflow run.

    With ``stamp_batch``, the date's annotation batch records the table version its documents were exported in.
    """
    from dctp_tasks import tracking
    from dctp_tasks.export import committed_ledger, open_table, rows_for_dt, synthesized_count
    from dctp_tasks.ledger import check_ledger, ledger_report

    version = exported["table_version"]
    table = open_table(run.storage, run.config.export.dataset_name, version)
    with permanent_errors():
        commit, rejects = committed_ledger(run.storage, run.config.export.dataset_name, run.dt, version)
    report = ledger_report(rejects, run.dt, ingested, rows_for_dt(table, run.dt), synthesized_count(commit))
    cfg, mlflow_run_id = run.config.tracking, started["mlflow_run_id"]
    if mlflow_run_id:
        tracking.log_dict(cfg, mlflow_run_id, "ledger.json", report.as_dict())
        tracking.log_text(cfg, mlflow_run_id, "ledger.txt", report.render())
        tracking.log_metrics(cfg, mlflow_run_id, {f"ledger.{k}": v for k, v in report.as_dict().items()
                                                  if isinstance(v, int) and not isinstance(v, bool)})
    print(report.render())
    with permanent_errors():
        check_ledger(report)
    if stamp_batch:
        with feedback_store(run.config) as store:
            store.stamp_table_version(run.dt, version, run_id=run.run_id)
    if mlflow_run_id:
        tracking.close_run(cfg, mlflow_run_id)
    return report.as_dict()


def resolve_config(params: dict[str, Any]) -> PipelineConfig:
    """Return the config file's settings with this run's Params applied.

    ``config_overrides`` may only change the tuning keys ``check_run_overrides`` allows: whoever may trigger a run
    must not be able to point it at another database, model or tracking server.
    """
    check_run_overrides(params.get("config_overrides") or {})
    overrides = {key: params.get(name) for name, key in PARAM_OVERRIDES.items()}
    if overrides.get("ingest.include_sources") == []:
        overrides["ingest.include_sources"] = None  # empty list in the form means "the config's choice"
    if params.get("quality_thresholds"):
        # merged into the file's thresholds: a run changes the rules it names and keeps the others
        base = load_config().quality.thresholds
        overrides["quality.thresholds"] = {**base, **params["quality_thresholds"]}
    overrides.update(params.get("config_overrides") or {})
    return load_config(overrides=overrides)


def data_storage(aws_conn_id: str = "aws_default") -> Storage:
    """Return the data root's storage; S3 credentials and ``endpoint_url`` come from ``aws_conn_id``."""
    root = data_root()
    if not root.startswith("s3://"):
        return Storage(root)
    return Storage(root, s3_options(aws_conn_id))


def s3_options(aws_conn_id: str) -> S3Options:
    from dctp_common.compat import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(aws_conn_id)
    except AirflowNotFoundException:
        log.info("connection %s not defined; using the AWS environment credentials", aws_conn_id)
        return S3Options.from_env()
    return S3Options.from_connection(conn.login, conn.password, conn.extra_dejson)


def landing_ready(run: RunContext, connect: Callable[[str], object]):
    """Poke the landing data of the run's date: done when every expected source has data; a missing source past
    its deadline fails the task at once, naming the source, where it looked and how to fix it."""
    from airflow.sdk import PokeReturnValue

    from dctp_tasks.ingest.landing import check_landing

    with permanent_errors():
        check = check_landing(run.storage, run.config, run.dt, run.interval, connect=connect)
        check.raise_if_overdue()
    if not check.ready:
        log.info("dt=%s: waiting for %s (until %s)", run.dt, "; ".join(map(str, check.missing)),
                 check.deadline.isoformat())
    return PokeReturnValue(is_done=check.ready, xcom_value={"expected": list(check.expected),
                                                           "missing": [m.name for m in check.missing]})


def feedback_engine():
    """Return the feedback store's engine: the Airflow connection ``dctp_feedback`` through the postgres provider's
    hook when it is defined (any secrets backend), else ``$DCTP_FEEDBACK_URL``, else SQLite under ``$AIRFLOW_HOME``."""
    from dctp_common.compat import AirflowNotFoundException
    from dctp_tasks.feedback import db

    try:
        BaseHook.get_connection(db.CONN_ID)
    except AirflowNotFoundException:
        return db.create_feedback_engine(db.feedback_url())
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    hook = PostgresHook(postgres_conn_id=db.CONN_ID)
    # the hook's URL carries only ``sqlalchemy_query``: TLS and timeout extras are added, as its get_conn() would
    return db.create_feedback_engine(db.with_libpq_options(hook.sqlalchemy_url, hook.connection.extra_dejson))


@contextmanager
def feedback_store(config: PipelineConfig) -> Iterator:
    """Open the feedback store (its schema must be current: ``feedback_db`` upgrades it) with the config's roster."""
    from dctp_tasks.feedback.store import FeedbackStore

    with permanent_errors():  # a connection without a host, a URL of another database: retrying cannot fix it
        engine = feedback_engine()
    try:
        with permanent_errors():
            yield FeedbackStore(engine, config.annotation)
    finally:
        engine.dispose()


def upgrade_feedback_store() -> dict:
    """Apply the feedback store's missing migrations; return where it is and what was applied."""
    from dctp_tasks.feedback import db

    with permanent_errors():
        engine = feedback_engine()
    try:
        with permanent_errors():  # a store newer than the code fails at once; a database restarting is retried
            applied = db.upgrade(engine)
        return {"store": engine.url.render_as_string(hide_password=True), "applied": applied,
                "schema_version": db.LATEST}
    finally:
        engine.dispose()


@contextmanager
def table_lock(config: PipelineConfig) -> Iterator[None]:
    """Hold the Delta table's writer lock (through the feedback store's database) for the block."""
    from dctp_tasks.feedback import db

    with permanent_errors():
        engine = feedback_engine()
    try:
        with db.table_lock(engine, config.export.dataset_name):
            yield
    finally:
        engine.dispose()


def export_with_feedback(run: RunContext, started: dict, **kwargs: Any) -> dict:
    """Commit the date's rows (``export_day``) and then retract the documents the experts rejected that are still in
    the table, both under the table's writer lock; log and return the export's result with the retraction's counts."""
    from dctp_tasks.export import export_day
    from dctp_tasks.feedback.consensus_db import stamp_merge

    check_asset(run)
    with table_lock(run.config), permanent_errors():
        result = export_day(run.storage, run.config, run.dag_id, run.dt, **kwargs)
        merge_id = (kwargs.get("metadata") or {}).get("merge_id")
        if merge_id:
            with feedback_store(run.config) as store:
                stamp_merge(store, int(merge_id), result.extra["table_version"])
        # every partition, this date's too: a document judged bad after this run merged (by an apply pass) goes now
        result.extra.update(retract_rejected(run, started))
        result.extra["card"] = store_card(run)
    announce_version(run, result)
    return track(run, started, result)


def check_asset(run: RunContext) -> None:
    """Fail at once when the curated table's Asset (named from the environment at parse time) is not the table the
    config exports to: DAGs scheduled on it would be told about the wrong table."""
    from dctp_common.assets import dataset_name

    configured = run.config.export.dataset_name
    if configured != dataset_name():
        raise AirflowFailException(
            f"export.dataset_name is {configured!r} but the DAGs' Asset names the table {dataset_name()!r}: set "
            f"DCTP_DATASET_NAME={configured} for the scheduler, dag-processor and workers")


def announce_version(run: RunContext, result) -> None:
    """Put the version just committed on the curated table's Asset event, for DAGs scheduled on the Asset: the
    latest version (after any retraction), the date, the table URI and the date's rows."""
    from airflow.sdk import get_current_context

    from dctp_common.assets import CURATED
    from dctp_tasks.export import dataset_dir

    retracted = int(result.extra.get("retract_version", -1))
    version = max(int(result.extra["table_version"]), retracted)
    get_current_context()["outlet_events"][CURATED].extra = {
        "version": version, "dt": run.dt, "table": run.storage.uri(dataset_dir(run.config.export.dataset_name)),
        "rows": int(result.kept), "dag_id": run.dag_id, "run_id": run.run_id}


def store_card(run: RunContext) -> str:
    """Write the dataset card of the table's latest version as ``reports/dt=D/card.md``; return its path."""
    from dctp_tasks.export.card import build_card

    path = ("reports", f"dt={run.dt}", "card.md")
    run.storage.write_bytes(run.storage.path(*path), build_card(
        run.storage, run.config.export.dataset_name, None, run.config).encode())
    return "/".join(path)


def synthetic_metadata(run: RunContext, synthesized: dict) -> dict[str, str | int]:
    """Return the commit metadata naming the synthetic stage's stored candidates (what ``dctp_rescore`` re-decides)
    and its counts; nothing when the stage passed its input on."""
    from dctp_tasks.synthetic.stage import commit_metadata

    return commit_metadata(run.dag_id, synthesized)


def llm_endpoints(config: PipelineConfig) -> dict:
    """Return ``conn_id -> Endpoint`` for the synthetic generator and judge that use an OpenAI-compatible API.

    The connection's ``extra.base_url`` (or a host given as a URL, e.g. ``http://vllm:8000/v1``) is the API base;
    otherwise ``{schema or http}://{host}[:{port}]/v1``. Its password is the API key; ``extra.headers`` are sent
    with every request.
    """
    from dctp_tasks.synthetic.generators import Endpoint

    cfg = config.synthetic
    wanted = {g.conn_id for g in (cfg.generator, cfg.judge) if g is not None and g.backend == "openai"}
    if not cfg.enabled:
        return {}
    out = {}
    for conn_id in sorted(wanted):
        with permanent_errors():  # a connection that is not defined stays so until someone defines it
            conn = BaseHook.get_connection(conn_id)
        extra = conn.extra_dejson
        host = conn.host or ""
        if extra.get("base_url"):
            base = str(extra["base_url"])
        elif "://" in host:
            base = host
        else:
            base = f"{conn.schema or 'http'}://{host}{f':{conn.port}' if conn.port else ''}/v1"
        headers = {str(k): str(v) for k, v in (extra.get("headers") or {}).items()}
        out[conn_id] = Endpoint(base, api_key=conn.password or None, headers=headers)
    return out


def merge_metadata(run: RunContext, merged: dict) -> dict[str, str]:
    """Return the commit metadata naming the merge run a version's rows were weighted by, and its weights."""
    import json

    from dctp_tasks.feedback.consensus_db import merge_run

    if "merge_id" not in merged:  # merging is switched off: every row keeps its weight
        return {}
    with feedback_store(run.config) as store:
        merge = merge_run(store, merged["merge_id"])
    return {"merge_id": str(merged["merge_id"]),
            "sampling_weights": json.dumps(merge["stats"].get("weights", {}), sort_keys=True)}


def retract_rejected(run: RunContext, started: dict | None) -> dict:
    """Remove from the Delta table every document whose consensus is bad; the caller holds the table lock. Return
    the version and counts (flat, for XCom)."""
    from dctp_tasks.export.retract import retract_documents
    from dctp_tasks.feedback.consensus_db import rejected_documents
    from dctp_tasks.feedback.merge import EXPERT_REJECTED

    if not (run.config.feedback.enabled and run.config.feedback.remove_rejected):
        return {"retract_version": -1, "retracted": 0}
    with feedback_store(run.config) as store:
        rejected = rejected_documents(store)
    done = retract_documents(run.storage, run.config, rejected, dag_id=run.dag_id, run_id=run.run_id,
                             reason=EXPERT_REJECTED,
                             metadata={"mlflow_run_id": (started or {}).get("mlflow_run_id") or ""})
    version = done["table_version"]
    return {"retract_version": -1 if version is None else version, "retracted": sum(done["retracted"].values()),
            "retracted_dates": len(done["retracted"])}


def apply_feedback(run: RunContext) -> dict:
    """Merge the judgements made since the last merge and retract every document judged bad, under the table's
    writer lock; log to MLflow when something changed. Return what was done (nothing: no merge, no version)."""
    from dctp_tasks import tracking
    from dctp_tasks.feedback.merge import merge_judgements, merge_metrics

    with feedback_store(run.config) as store, permanent_errors():
        merged = merge_judgements(store, run.config, dag_id=run.dag_id, run_id=run.run_id, dt=None,
                                  only_if_new=True) if run.config.feedback.enabled else None
    with table_lock(run.config), permanent_errors():
        retracted = retract_rejected(run, None)
    if merged is not None and retracted["retract_version"] >= 0:
        from dctp_tasks.feedback.consensus_db import stamp_merge

        with feedback_store(run.config) as store:
            stamp_merge(store, merged.merge_id, retracted["retract_version"])
    result = {"merge_id": merged.merge_id if merged else None, "changed": merged.changed if merged else 0,
              **retracted}
    if merged is None and not retracted["retracted"]:
        log.info("feedback apply: no new judgement and nothing left to retract; no merge run, no table version")
        return result
    if run.config.tracking.enabled:
        started = start_tracking(run, run.dag_id)
        metrics = {**(merge_metrics(merged) if merged else {}), "retracted": retracted["retracted"],
                   "retract_version": retracted["retract_version"]}
        tracking.log_metrics(run.config.tracking, started["mlflow_run_id"],
                             {f"apply.{k}": float(v) for k, v in metrics.items()})
        tracking.close_run(run.config.tracking, started["mlflow_run_id"])
        result["mlflow_run_id"] = started["mlflow_run_id"]
    log.info("feedback apply: %s", result)
    return result


def postgres_connector() -> Callable[[str], object]:
    """Return ``conn_id -> psycopg2 connection`` through the postgres provider's hook."""

    def connect(conn_id: str):
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        return PostgresHook(postgres_conn_id=conn_id).get_conn()

    return connect


@contextmanager
def permanent_errors() -> Iterator[None]:
    """Fail the task at once, without burning retries, on errors a retry cannot fix (``is_permanent``).

    Anything else propagates unchanged, so Airflow retries it with backoff.
    """
    from dctp_common.compat import (
        AirflowRescheduleException,
        AirflowSensorTimeout,
        AirflowSkipException,
        AirflowTaskTimeout,
        TaskDeferred,
    )

    control = (AirflowFailException, AirflowSkipException, AirflowRescheduleException, AirflowSensorTimeout,
               AirflowTaskTimeout, TaskDeferred)
    try:
        yield
    except control:  # Airflow's own signals, already saying what to do
        raise
    except Exception as exc:
        if is_permanent(exc):
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        raise


def run_stage(run: RunContext, started: dict, stage: Callable, *args: Any, upstream: dict | None = None,
              **kwargs: Any) -> dict:
    """Run ``stage(storage, config, dag_id, dt, *args, **kwargs)`` classifying its errors, then ``track`` it.

    ``upstream`` is the XCom of the task whose output this stage reads: the stage reads exactly the version that
    task published in this run, never one another run of the same date published meanwhile.
    """
    if upstream is not None:
        kwargs.update(input_stage=upstream["output_stage"], input_version=upstream["version"])
    with permanent_errors():
        result = stage(run.storage, run.config, run.dag_id, run.dt, *args, **kwargs)
    return track(run, started, result)


def plan_stage(run: RunContext, stage, *args: Any, upstream: dict | None = None, **kwargs: Any) -> list[dict]:
    """Plan the shards of a sharded stage (``dctp_tasks.shards.ShardedStage``); the XCom is their descriptors."""
    if upstream is not None:
        kwargs.update(input_stage=upstream["output_stage"], input_version=upstream["version"])
    with permanent_errors():
        return [shard.as_dict() for shard in stage.plan(run.storage, run.config, run.dag_id, run.dt, *args, **kwargs)]


def run_shard(run: RunContext, stage, shard: dict, context: dict[str, Any], phase: str = "shard") -> dict:
    """Run ``phase`` of one shard of a sharded stage; the XCom is its counts. Names the mapped task in the UI."""
    from dctp_tasks.shards import Shard

    planned = Shard.from_dict(shard)
    context["shard_label"] = planned.label  # rendered by the task's map_index_template
    with permanent_errors():
        marker = stage.phases[phase](run.storage, run.config, planned)
    return {"shard": planned.label, **(marker.get("stats") or {})}


def reduce_stage(run: RunContext, started: dict, stage, shards: list[dict]) -> dict:
    """Publish what every shard of a sharded stage wrote as the stage's output; log and return its result."""
    from dctp_tasks.shards import Shard

    with permanent_errors():
        result = stage.finish(run.storage, run.config, [Shard.from_dict(s) for s in shards])
    return track(run, started, result)


def on_failure(context: dict[str, Any]) -> None:
    """Log one line naming the failed task and its cause; mark the run's MLflow run FAILED."""
    ti = context.get("task_instance") or context.get("ti")
    exc = context.get("exception")
    log.error("DCTP task failed: %s.%s run=%s try=%s: %s: %s", getattr(ti, "dag_id", "?"),
              getattr(ti, "task_id", "?"), getattr(ti, "run_id", "?"), getattr(ti, "try_number", "?"),
              type(exc).__name__ if exc else "unknown", exc)
    try:
        run = ti.xcom_pull(task_ids="start_run") if ti else None
        if run and run.get("mlflow_run_id"):
            from dctp_tasks import tracking

            config = resolve_config(context.get("params") or {})
            tracking.log_text(config.tracking, run["mlflow_run_id"], f"failures/{ti.task_id}.txt",
                              f"{type(exc).__name__}: {exc}\n")
            tracking.close_run(config.tracking, run["mlflow_run_id"], status="FAILED")
    except Exception:  # the callback must never hide the original failure
        log.exception("could not record the failure in MLflow")
    notify(context)


def notify(context: dict[str, Any]) -> None:
    """Send the failure through the Airflow notifier named by ``DCTP_FAILURE_NOTIFIER`` (``module:Class``), built
    with the JSON keyword arguments in ``DCTP_FAILURE_NOTIFIER_KWARGS`` — e.g. the Slack or SMTP provider's."""
    import importlib
    import json

    target = os.environ.get("DCTP_FAILURE_NOTIFIER")
    if not target:
        return
    try:
        module, _, name = target.partition(":")
        notifier = getattr(importlib.import_module(module), name)(
            **json.loads(os.environ.get("DCTP_FAILURE_NOTIFIER_KWARGS") or "{}"))
        notifier.notify(context)
    except Exception:  # a broken notifier must not hide the task's own failure
        log.exception("DCTP failure notifier %s failed", target)


def materialize_announced(events, params: dict[str, Any], *, fmt: str) -> dict:
    """Materialize the newest version the curated table's Asset ``events`` announce as a ``fmt`` view, under
    ``{root}/views/{table}/v{version}-{fmt}``; return the manifest's summary (a re-run finds the view finished)."""
    from dctp_tasks.export.formats import FormatOptions
    from dctp_tasks.export.views import ViewSpec, materialize

    with permanent_errors():
        versions = [int(e.extra["version"]) for e in events if (e.extra or {}).get("version") is not None]
        if not versions:
            raise ValueError(f"none of the {len(events)} triggering event(s) names a table version: this DAG runs "
                             "on the events export emits (a manual asset event carries no version)")
        config = load_config()
        spec = ViewSpec(fmt, split=params.get("split"),
                        options=FormatOptions(system_prompt=params.get("system_prompt")))
    storage = data_storage()
    name, version = config.export.dataset_name, max(versions)
    out = Storage(storage.uri("views", name, f"v{version}-{fmt}"), storage.s3)
    with permanent_errors():
        manifest = materialize(storage, name, version, out, spec, config=config)
    log.info("materialized version %d of %s as %s: %d rows in %d files at %s", version, name, fmt,
             manifest["rows"], len(manifest["files"]), out.root)
    return {"version": version, "out": out.root, "rows": manifest["rows"], "files": len(manifest["files"]),
            "view_id": manifest["view_id"], "skipped": manifest["skipped"]}
