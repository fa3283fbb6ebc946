"""MLflow tracking: a DAG run's MLflow run shows the settings it actually ran with, across re-runs."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from dctp_tasks import tracking
from dctp_tasks.config import TrackingConfig


@pytest.fixture
def cfg(tmp_path) -> TrackingConfig:
    return TrackingConfig(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                          artifact_root=(tmp_path / "artifacts").as_uri())


def runs_of(cfg: TrackingConfig, run_name: str):
    client = MlflowClient(tracking_uri=tracking.tracking_uri(cfg))
    experiment = client.get_experiment_by_name("dag")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`{tracking.RUN_ID_TAG}` = '{run_name}'",
                              order_by=["attributes.start_time DESC"])


def test_a_rerun_with_the_same_settings_reopens_its_run_and_refreshes_tags(cfg):
    first = tracking.open_run(cfg, "dag", "manual__1", {"dt": "2026-01-01", "config_hash": "a"}, {"k": "1"})
    tracking.close_run(cfg, first)
    again = tracking.open_run(cfg, "dag", "manual__1", {"dt": "2026-01-01", "config_hash": "a", "extra": "x"},
                              {"k": "1"})

    assert again == first
    [run] = runs_of(cfg, "manual__1")
    assert run.info.status == "RUNNING" and run.data.tags["extra"] == "x" and run.data.params == {"k": "1"}


def test_a_rerun_with_other_settings_gets_a_run_that_shows_them(cfg):
    first = tracking.open_run(cfg, "dag", "manual__1", {"config_hash": "a"}, {"normalize.min_chars": "50",
                                                                                "batch_size": "10000"})
    tracking.close_run(cfg, first)
    again = tracking.open_run(cfg, "dag", "manual__1", {"config_hash": "b"}, {"normalize.min_chars": "80",
                                                                                "batch_size": "10000"})

    assert again != first
    newest, oldest = runs_of(cfg, "manual__1")
    assert newest.info.run_id == again and oldest.info.run_id == first
    assert newest.data.params == {"normalize.min_chars": "80", "batch_size": "10000"}
    assert newest.data.tags["config_hash"] == "b" and newest.data.tags[tracking.SUPERSEDES_TAG] == first
    assert oldest.data.params["normalize.min_chars"] == "50"
    assert oldest.data.tags[tracking.SUPERSEDED_BY_TAG] == again
    # the next re-run with the new settings reopens the new run, not the superseded one
    assert tracking.open_run(cfg, "dag", "manual__1", {"config_hash": "b"},
                             {"normalize.min_chars": "80", "batch_size": "10000"}) == again


_OPEN_RUN = """
import sys
from dctp_tasks import tracking
from dctp_tasks.config import TrackingConfig
cfg = TrackingConfig(tracking_uri=sys.argv[1], artifact_root=sys.argv[2])
print(tracking.open_run(cfg, "dag", sys.argv[3], {"dt": "2026-01-01"}, {"a": "1"}))
"""


def test_the_first_runs_of_a_backfill_create_the_sqlite_store_once(cfg):
    # three start_run tasks at once on a store that does not exist yet: neither MLflow's schema migrations nor the
    # experiment's creation may fail one of them
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", _OPEN_RUN, cfg.tracking_uri, cfg.artifact_root, f"run-{i}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-1500:] for _, err in outputs]
    assert {r.data.tags[tracking.RUN_ID_TAG] for i in range(3) for r in runs_of(cfg, f"run-{i}")} == \
        {"run-0", "run-1", "run-2"}
