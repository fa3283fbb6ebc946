"""
### DCTP re-decide a date's quality

Applies new quality thresholds to a date the daily DAG already scored, **without running any model**:

`preflight` → `start_run` → `decide` → `merge_feedback` → `decide_synthetic` → `export` → `finish_run`

* `preflight` checks what the run needs (as `dctp doctor` does) and fails at once, naming each missing piece.

* `decide` starts from the date's latest export: it reads the very scores that export was decided from (its commit
  names them, e.g. `staging/dctp_daily/dt=…/score_models/v-…`), applies the rules and the composite with this
  run's thresholds, and publishes its own `quality` output and `filtered` rows (under `staging/dctp_rescore/`: the
  daily DAG's staged data is never touched).
* `merge_feedback` applies the experts' consensus as the daily run does: documents judged bad stay out (it neither
  retrains the expert-quality classifier nor republishes the date's source labels).
* `decide_synthetic` re-decides the synthetic rows the daily run generated for the date from their stored scores and
  measurements with this run's safeguard thresholds (e.g. `config_overrides`
  `{"synthetic.judge_threshold": 7}`): no model is called, nothing is generated again.
* `export` commits the result as a new Delta version replacing only that date, with that export's ledger whose
  quality rows are replaced by this run's (other stages' drops are unchanged) — only if no other export of the date
  committed since; otherwise it fails and says to trigger it again. `finish_run` proves the ledger balances and
  closes the MLflow run (experiment `dctp_rescore`).
* Thresholds by `scorer.rule`, e.g. `{"toxicity.toxic": 0.9, "heuristics.too_few_words": 30}`; `null` switches a
  rule off. The same from a shell: `dctp rescore DATE --set toxicity.toxic=0.9 --export`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, dag, get_current_context, task

from dctp_common.assets import CURATED
from dctp_common.dag_defaults import CONFIG_OVERRIDES, DEFAULT_ARGS, QUALITY_PARAMS

RESCORE_PARAMS = {
    "date": Param(datetime.now(UTC).strftime("%Y-%m-%d"), type="string", format="date", title="Date",
                  description="The partition date (YYYY-MM-DD) to re-decide; the daily DAG must have scored it."),
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
    @task(retries=0, execution_timeout=timedelta(minutes=10))
    def preflight() -> list[dict]:
        """Check what the run needs; fail at once, naming each missing piece and its fix."""
        from dctp_common.preflight import run_checks

        return run_checks(get_current_context(), "rescore")

    @task(execution_timeout=timedelta(minutes=10))
    def start_run() -> dict:
        """Open this run's MLflow run (experiment dctp_rescore) and log the resolved config."""
        from dctp_common.runtime import start_tracking

        return start_tracking(_ctx(), "dctp_rescore")

    @task
    def decide(started: dict) -> dict:
        """Re-decide the date's latest export from the very scores it was decided from, with this run's thresholds
        (no model runs)."""
        from dctp_common.runtime import permanent_errors, run_stage
        from dctp_tasks.export import rescore_basis
        from dctp_tasks.quality.decide import decide_day

        run = _ctx()
        with permanent_errors():
            basis = rescore_basis(run.storage, run.config.export.dataset_name, run.dt)
        scores = basis["scores"]
        return {**run_stage(run, started, decide_day, source_dag_id=scores["dag_id"], input_stage=scores["stage"],
                            input_version=scores["version"]), "basis": basis}

    @task
    def merge_feedback(started: dict, decided: dict) -> dict:
        """Apply every judgement so far to the re-decided rows, as the daily run does."""
        from dctp_common.runtime import feedback_store
        from dctp_tasks.feedback.merge import merge_feedback_day

        run = _ctx()
        with feedback_store(run.config) as store:
            return _stage(run, started, merge_feedback_day, store=store, upstream=decided, run_id=run.run_id,
                          learn=False)

    @task
    def decide_synthetic(started: dict, decided: dict, merged: dict) -> dict:
        """Re-decide the synthetic rows the daily run generated for the date, with this run's thresholds (no model
        call): the same candidates, today's safeguards."""
        from dctp_tasks.synthetic.stage import redecide_synthetic_day

        synthetic = decided["basis"]["synthetic"]
        return _stage(_ctx(), started, redecide_synthetic_day, upstream=merged,
                      candidates_dag_id=synthetic["dag_id"] or "", candidates_version=synthetic["version"])

    @task(outlets=[CURATED])
    def export(started: dict, decided: dict, merged: dict, synthesized: dict) -> dict:
        """Commit the re-decided date as a new Delta version replacing only that date, if no other export of the
        date committed meanwhile; its ledger is the re-decided commit's with the quality and merge drops replaced."""
        from dctp_common.runtime import export_with_feedback, merge_metadata, synthetic_metadata
        from dctp_tasks.export import Staged

        run, basis = _ctx(), decided["basis"]
        ledger = [Staged(run.dag_id, r["stage"], r["version"]) for r in (decided, merged, synthesized)
                  if r["output_stage"] == r["stage"]]  # a stage switched off passes its input on
        result = export_with_feedback(
            run, started, run_id=run.run_id,
            rows=Staged(run.dag_id, synthesized["output_stage"], synthesized["version"]),
            ledger=ledger, ingested=basis["ingested"], synthesized=synthesized["generated"],
            amend=basis["commit_token"],
            metadata={"mlflow_run_id": started["mlflow_run_id"] or "", "rescored_by": "dctp_rescore",
                      "rescored_version": basis["version"], **merge_metadata(run, merged),
                      **synthetic_metadata(run, synthesized),
                      **{f"scores_{k}": v for k, v in basis["scores"].items()}})
        return {**result, "ingested": basis["ingested"]}

    @task(execution_timeout=timedelta(minutes=30))
    def finish_run(started: dict, exported: dict) -> dict:
        """Prove the ledger still balances against the new version; close the MLflow run."""
        from dctp_common.runtime import finish

        return finish(_ctx(), started, exported["ingested"], exported)

    started = start_run()
    preflight() >> started
    decided = decide(started)
    merged = merge_feedback(started, decided)
    exported = export(started, decided, merged, decide_synthetic(started, decided, merged))
    finish_run(started, exported)


def _stage(run, started: dict, stage, *args, **kwargs) -> dict:
    from dctp_common.runtime import run_stage

    return run_stage(run, started, stage, *args, **kwargs)


dctp_rescore()
