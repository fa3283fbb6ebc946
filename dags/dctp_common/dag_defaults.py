"""What every DCTP DAG shares: retries and failure handling, the GPU queue, and the Params of quality deciding.

Parsed with the DAG files, so nothing here reads a file, a connection or the config.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Param

from dctp_common.compat import RETRY_EXPONENTIAL_BACKOFF

# GPU-heavy tasks go to this Celery queue (executors without queues ignore it) and, only when DCTP_GPU_POOL names
# one, to that Airflow pool: unset, they use default_pool, so a fresh Airflow needs nothing created first. Env vars,
# not config: no I/O at parse. `dctp doctor` and the preflight task check both exist.
GPU_QUEUE = os.environ.get("DCTP_GPU_QUEUE") or "gpu"
GPU_POOL = os.environ.get("DCTP_GPU_POOL") or None
#: How often the landing sensor looks again while a day's data is missing (seconds; it frees its slot meanwhile).
LANDING_POKE_SECONDS = float(os.environ.get("DCTP_LANDING_POKE_SECONDS", "300"))
#: Airflow's own limit on the landing sensor, a backstop: the config's ``ingest.wait_timeout_minutes`` decides.
LANDING_SENSOR_TIMEOUT = timedelta(days=7)


def _on_failure(context) -> None:
    from dctp_common.runtime import on_failure

    on_failure(context)


DEFAULT_ARGS = {
    "owner": "dctp",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": RETRY_EXPONENTIAL_BACKOFF,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(hours=2),
    "on_failure_callback": _on_failure,
}

QUALITY_PARAMS = {
    "quality_thresholds": Param({}, type="object", title="Quality rule thresholds",
                                description='Rule thresholds by scorer.rule, merged into the config\'s, e.g. '
                                            '{"toxicity.toxic": 0.9, "heuristics.too_few_words": 30}; null switches '
                                            "a rule off. `dctp report DATE` lists the rules and what they removed."),
    "min_quality": Param(None, type=["null", "number"], minimum=0, maximum=1, title="Minimum composite quality",
                         description="Filter rows whose composite quality (0-1) is below this (empty: config "
                                     "default, rules only)."),
    "review_below": Param(None, type=["null", "number"], minimum=0, maximum=1, title="Review below",
                          description="Mark kept rows whose composite quality is below this as review, for expert "
                                      "annotation (empty: config default, 0.5)."),
}
CONFIG_OVERRIDES = Param({}, type="object", title="Config overrides",
                         description='Any setting by dotted key, e.g. {"export.test_fraction": 0.1}.')
