"""
### DCTP re-decide a date's quality

Applies new quality thresholds to a date the daily DAG already scored, **without running any model**:

`start_run` → `decide` → `export` → `finish_run`

* `decide` reads the scores `dctp_daily` stored for **date** (`staging/dctp_daily/dt=…/score_models`), applies the
  rules and the composite with this run's thresholds, and publishes its own `quality` output and `filtered` rows
  (under `staging/dctp_rescore/`: the daily DAG's staged data is never touched).
* `export` commits the result as a new Delta version replacing only that date, with the date's last ledger whose
  quality rows are replaced by this run's (other stages' drops are unchanged); `finish_run` proves that ledger
  balances and closes the MLflow run (experiment `dctp_rescore`). A daily run of the same date may commit before or
  after it: each version's ledger balances against that version, and the last commit wins.
* Thresholds by `scorer.rule`, e.g. `{"toxicity.toxic": 0.9, "heuristics.too_few_words": 30}`; `null` switches a
  rule off. The same from a shell: `dctp rescore DATE --set toxicity.toxic=0.9 --export`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from dctp_common.dag_defaults import CONFIG_OVERRIDES, DEFAULT_ARGS, QUALITY_PARAMS

RESCORE_PARAMS = {
    "date": Param(datetime.now(UTC).strftime("%Y-%m-%d"), type="string", format="date", title="Date",
                  description="The partition date (YYYY-MM-DD) to re-decide; the daily DAG must have scored it."),
    "source_dag_id": Param("dctp_daily", type="string", title="Scored by",
                           description="The DAG whose staged scores to re-decide."),
    **QUALITY_PARAMS,
    "config_overrides": CONFIG_OVERRIDES,
}


def _ctx():
    from dctp_common.runtime import rescore_context

    return rescore_context(get_current_context())


@dag(
    dag_id="dctp_rescore",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=RESCORE_PARAMS,
    tags=["dctp", "quality"],
    doc_md=__doc__,
)
def dctp_rescore():
    @task(execution_timeout=timedelta(minutes=10))
    def start_run() -> dict:
        """Open this run's MLflow run (experiment dctp_rescore) and log the resolved config."""
        from dctp_common.runtime import start_tracking

        return start_tracking(_ctx(), "dctp_rescore")

    @task
    def decide(started: dict) -> dict:
        """Re-decide the date from its stored scores with this run's thresholds (no model runs)."""
        from dctp_common.runtime import permanent_errors, run_stage, scored_by
        from dctp_tasks.quality.decide import decide_day, scored_stage

        run, source = _ctx(), scored_by(get_current_context())
        with permanent_errors():
            scored = scored_stage(run.storage, source, run.dt)
        return run_stage(run, started, decide_day, input_stage=scored, source_dag_id=source)

    @task
    def export(started: dict, decided: dict) -> dict:
        """Commit the re-decided date as a new Delta version replacing only that date; its ledger is the last
        commit's with the quality stage's drops replaced by this run's."""
        from dctp_common.runtime import permanent_errors, run_stage
        from dctp_tasks.export import Staged, export_day, ingested_count

        run = _ctx()
        with permanent_errors():
            ingested = ingested_count(run.storage, run.config.export.dataset_name, run.dt)
        rows = Staged(run.dag_id, decided["stage"], decided["version"])
        result = run_stage(run, started, export_day, run_id=run.run_id, rows=rows, ledger=[rows], ingested=ingested,
                           keep_committed_ledger=True, metadata={"mlflow_run_id": started["mlflow_run_id"] or "",
                                                                 "rescored_by": "dctp_rescore"})
        return {**result, "ingested": ingested}

    @task(execution_timeout=timedelta(minutes=30))
    def finish_run(started: dict, exported: dict) -> dict:
        """Prove the ledger still balances against the new version; close the MLflow run."""
        from dctp_common.runtime import finish

        return finish(_ctx(), started, exported["ingested"], exported)

    started = start_run()
    exported = export(started, decide(started))
    finish_run(started, exported)


dctp_rescore()
