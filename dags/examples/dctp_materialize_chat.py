"""
### Example: a training-data DAG scheduled on the curated table

Runs whenever `export` commits a new version of the curated Delta table (the Airflow Asset `dctp_curated`), and
materializes that version as OpenAI-style `chat` JSONL.zst under `{data root}/views/{table}/v{version}-chat`
(with `manifest.json` and the dataset card): the files a fine-tuning job reads. Several versions committed before a
run starts are one run, for the newest of them.

Paused when it is created: unpause it to turn it on. Copy it to start your own training DAG (a different format,
a filter, a sample, then your trainer).
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import Param, dag, get_current_context, task

from dctp_common.assets import CURATED
from dctp_common.dag_defaults import DEFAULT_ARGS

PARAMS = {
    "system_prompt": Param(None, type=["null", "string"], title="System prompt",
                           description="A system turn for every conversation (empty: none)."),
    "split": Param(None, type=["null", "string"], enum=[None, "train", "validation", "test"], title="Split",
                   description="Only this split (empty: every split)."),
}


@dag(
    dag_id="dctp_materialize_chat",
    schedule=[CURATED],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    is_paused_upon_creation=True,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    tags=["dctp", "example"],
    doc_md=__doc__,
)
def dctp_materialize_chat():
    @task
    def materialize_chat() -> dict:
        """Write the newest version the triggering events announce as a `chat` view; return its manifest summary."""
        from dctp_common.runtime import materialize_announced

        context = get_current_context()
        return materialize_announced(context["triggering_asset_events"][CURATED], context["params"], fmt="chat")

    materialize_chat()


dctp_materialize_chat()
