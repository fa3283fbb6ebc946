"""
### DCTP daily curation

Turns one day of raw text and instruction data into a new version of the curated Delta table:

`start_run` → `ingest` → `normalize` → `dedup_exact` → `dedup_near` → `dedup_semantic` → `export` → `finish_run`

* **Partition**: each run processes the landing folders `landing/{source}/dt=YYYY-MM-DD` of its data
  interval start (manual runs without a logical date use their `run_after` day) and the configured
  PostgreSQL tables' rows inside the interval.
* **Nothing is lost**: malformed rows are quarantined, short/long texts filtered, duplicates recorded
  with `duplicate_of`; `finish_run` fails the run unless
  `ingested = exported + duplicates + filtered + quarantined`. Inspect with `dctp ledger DATE`.
* **Dedup**: exact copies (same normalized text), near copies (MinHash LSH over word 5-grams, estimated
  Jaccard ≥ 0.7) and semantic copies (MiniLM embeddings, cosine ≥ 0.95, per-domain overrides) within the day
  and against every earlier date; the earliest copy survives. `dedup_semantic` runs on the `gpu` queue.
* **Backfills**: re-running any date gives the same result; the dedup tasks and `export` wait for the
  previous date (`depends_on_past`), so history has no holes.
* **Tracking**: one MLflow run per DAG run (experiment `dctp_daily`, run name = run id).

Trigger with config to override thresholds for one run (see the Params).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

# GPU-heavy tasks go to this Celery queue and Airflow pool (DESIGN §7); env vars, not config: no I/O at parse.
GPU_QUEUE = os.environ.get("DCTP_GPU_QUEUE", "gpu")
GPU_POOL = os.environ.get("DCTP_GPU_POOL", "gpu")


def _on_failure(context) -> None:
    from dctp_common.runtime import on_failure

    on_failure(context)


DEFAULT_ARGS = {
    "owner": "dctp",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(hours=2),
    "on_failure_callback": _on_failure,
}

PARAMS = {
    "sources": Param([], type="array", items={"type": "string"}, title="Sources",
                     description="Only ingest these landing sources / tables (empty: every source)."),
    "min_chars": Param(None, type=["null", "integer"], minimum=0, title="Minimum characters",
                       description="Filter normalized texts shorter than this (empty: config default, 50)."),
    "max_chars": Param(None, type=["null", "integer"], minimum=1, title="Maximum characters",
                       description="Filter normalized texts longer than this (empty: config default, 100000)."),
    "max_quarantine_ratio": Param(None, type=["null", "number"], minimum=0, maximum=1,
                                  title="Maximum quarantine ratio",
                                  description="Fail ingest when a larger share of rows is malformed "
                                              "(empty: config default, 0.05)."),
    "near_dup_threshold": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1,
                                title="Near-duplicate threshold",
                                description="Estimated Jaccard of word 5-grams at or above which two texts are "
                                            "near duplicates (empty: config default, 0.7)."),
    "semantic_threshold": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1,
                                title="Semantic duplicate threshold",
                                description="Cosine similarity of MiniLM embeddings at or above which two texts are "
                                            "semantic duplicates (empty: config default, 0.95). Per-domain values: "
                                            'config_overrides {"dedup_semantic.domain_thresholds": {"news": 0.92}}.'),
    "batch_size": Param(None, type=["null", "integer"], minimum=1, title="Batch size",
                        description="Rows per Arrow batch in every stage (empty: config default, 10000)."),
    "config_overrides": Param({}, type="object", title="Config overrides",
                              description='Any setting by dotted key, e.g. {"export.test_fraction": 0.1}.'),
}


def _ctx():
    from dctp_common.runtime import run_context

    return run_context(get_current_context())


@dag(
    dag_id="dctp_daily",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),  # run for [D, D+1) fires at D+1 00:00
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=3,
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    tags=["dctp", "curation"],
    doc_md=__doc__,
)
def dctp_daily():
    @task(execution_timeout=timedelta(minutes=10))
    def start_run() -> dict:
        """Open (or reopen, on a re-run) this run's MLflow run and log the resolved config."""
        from dctp_tasks import tracking

        run = _ctx()
        tags = {"dag_id": run.dag_id, "run_id": run.run_id, "dt": run.dt, "config_hash": run.config.config_hash()}
        mlflow_run_id = None
        if run.config.tracking.enabled:
            mlflow_run_id = tracking.open_run(run.config.tracking, run.dag_id, run.run_id, tags, run.config.flat())
        return {"mlflow_run_id": mlflow_run_id, "dt": run.dt, "data_root": run.storage.root, **tags}

    @task
    def ingest(started: dict) -> dict:
        """Read every landing file and configured table of the date; quarantine malformed rows."""
        from dctp_common.runtime import permanent_errors, postgres_connector
        from dctp_tasks.ingest import ingest_day

        run = _ctx()
        with permanent_errors():
            result = ingest_day(run.storage, run.config, run.dag_id, run.dt, interval=run.interval,
                                connect=postgres_connector())
        return _track(run, started, result)

    @task
    def normalize(started: dict) -> dict:
        """Repair Unicode, collapse whitespace, filter by length and identify the language."""
        from dctp_tasks.normalize import normalize_day

        run = _ctx()
        return _track(run, started, normalize_day(run.storage, run.config, run.dag_id, run.dt))

    @task(depends_on_past=True)
    def dedup_exact(started: dict) -> dict:
        """Drop exact duplicates within the day and of every earlier date."""
        from dctp_tasks.dedup_exact import dedup_exact_day

        run = _ctx()
        return _track(run, started, dedup_exact_day(run.storage, run.config, run.dag_id, run.dt))

    @task(depends_on_past=True)
    def dedup_near(started: dict) -> dict:
        """Drop near duplicates (MinHash LSH) within the day and of every earlier date; report pairs by threshold."""
        from dctp_tasks.dedup_near import dedup_near_day

        run = _ctx()
        return _track(run, started, dedup_near_day(run.storage, run.config, run.dag_id, run.dt))

    @task(depends_on_past=True, queue=GPU_QUEUE, pool=GPU_POOL, execution_timeout=timedelta(hours=4))
    def dedup_semantic(started: dict) -> dict:
        """Drop semantic duplicates (embedding cosine) within the day and of every earlier date; store embeddings."""
        from dctp_tasks.dedup_semantic import dedup_semantic_day

        run = _ctx()
        return _track(run, started, dedup_semantic_day(run.storage, run.config, run.dag_id, run.dt))

    @task(depends_on_past=True)
    def export(started: dict, stages: list[dict]) -> dict:
        """Commit the last stage's output to the Delta table as one new version, replacing only its date."""
        from dctp_tasks.export import export_day

        run = _ctx()
        counts = {f"{r['stage']}_dropped": r["dropped"] for r in stages}
        result = export_day(run.storage, run.config, run.dag_id, run.dt, run_id=run.run_id,
                            input_stage=stages[-1]["stage"],
                            metadata={"mlflow_run_id": started["mlflow_run_id"] or "",
                                      "ingested": stages[0]["total"], **counts})
        return _track(run, started, result)

    @task(execution_timeout=timedelta(minutes=30))
    def finish_run(started: dict, ingested: dict, exported: dict) -> dict:
        """Prove the ledger balances against the committed Delta version; close the MLflow run."""
        from dctp_common.runtime import permanent_errors
        from dctp_tasks import tracking
        from dctp_tasks.export import open_table, rows_for_dt
        from dctp_tasks.ledger import check_ledger, ledger_report

        run = _ctx()
        table = open_table(run.storage, run.config.export.dataset_name, exported["table_version"])
        report = ledger_report(run.storage, run.dt, ingested["total"], rows_for_dt(table, run.dt))
        cfg, mlflow_run_id = run.config.tracking, started["mlflow_run_id"]
        if mlflow_run_id:
            tracking.log_dict(cfg, started["mlflow_run_id"], "ledger.json", report.as_dict())
            tracking.log_text(cfg, started["mlflow_run_id"], "ledger.txt", report.render())
            tracking.log_metrics(cfg, started["mlflow_run_id"],
                                 {f"ledger.{k}": v for k, v in report.as_dict().items()
                                  if isinstance(v, int) and not isinstance(v, bool)})
        print(report.render())
        with permanent_errors():
            check_ledger(report)
        if mlflow_run_id:
            tracking.close_run(cfg, mlflow_run_id)
        return report.as_dict()

    started = start_run()
    ingested = ingest(started)
    normalized = normalize(started)
    deduped = dedup_exact(started)
    near_deduped = dedup_near(started)
    semantic_deduped = dedup_semantic(started)
    exported = export(started, [ingested, normalized, deduped, near_deduped, semantic_deduped])
    ingested >> normalized >> deduped >> near_deduped >> semantic_deduped >> exported
    finish_run(started, ingested, exported)


def _track(run, started: dict, result) -> dict:
    """Log a stage's metrics (and its report, if it wrote one) to the run's MLflow run and the task log.

    Returns the XCom: counts and URIs, never data.
    """
    from dctp_tasks import tracking

    report_path = result.extra.get("report")
    report = run.storage.read_bytes(run.storage.path(report_path)).decode() if report_path else None
    if report:
        print(report)
    if started["mlflow_run_id"]:
        tracking.log_metrics(run.config.tracking, started["mlflow_run_id"], result.metrics())
        if report:
            tracking.log_text(run.config.tracking, started["mlflow_run_id"], f"reports/{result.stage}.md", report)
    return result.as_dict()


dctp_daily()
