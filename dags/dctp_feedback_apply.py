"""
### DCTP apply feedback

Applies the experts' newest judgements to the curated table **without a full daily run**, every 30 minutes (and
on demand: trigger it from the UI):

`feedback_db` → `apply_feedback`

* `apply_feedback` merges every judgement into consensus (as `merge_feedback` in `dctp_daily` does; skipped when no
  judgement arrived since the last merge) and removes every document whose consensus is **bad** from the partition
  it was exported to: one new Delta version, whose commit names the reason (`expert_rejected`), the run and the
  judgements, and a new ledger for each date it touched, counting the removed rows as `retracted` (`dctp ledger
  DATE` shows them), so every date still balances.
* Nothing new, nothing written: no merge run and no table version.
* It never races the daily run: both take the table's writer lock (in the feedback store's database) for their
  commits. MLflow experiment `dctp_feedback_apply`, one run per apply that changed something.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, get_current_context, task

from dctp_common.dag_defaults import DEFAULT_ARGS


@dag(
    dag_id="dctp_feedback_apply",
    schedule="*/30 * * * *",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["dctp", "feedback"],
    doc_md=__doc__,
)
def dctp_feedback_apply():
    @task(execution_timeout=timedelta(minutes=10))
    def feedback_db() -> dict:
        """Apply the feedback store's missing migrations (idempotent)."""
        from dctp_common.runtime import upgrade_feedback_store

        return upgrade_feedback_store()

    @task(execution_timeout=timedelta(minutes=30))
    def apply_feedback(store: dict) -> dict:
        """Merge new judgements; retract documents judged bad from the table in one version (none if unchanged)."""
        from dctp_common import runtime

        return runtime.apply_feedback(runtime.run_context(get_current_context()))

    apply_feedback(feedback_db())


dctp_feedback_apply()
