"""DAG integrity: fast, light imports; no connection lookups at parse; retries, backoff, timeouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest

from tests.conftest import REPO

SHARDED = {"normalize": ["shard"], "dedup_near": ["sign", "search"], "dedup_semantic": ["encode", "search"],
           "score": ["shard"], "score_models": ["shard"]}
EXPECTED_TASKS = ["preflight", "preflight_gpu", "start_run", "wait_for_landing", "ingest", "normalize", "dedup_exact",
                  "dedup_near", "dedup_semantic", "score", "score_models", "decide", "feedback_db",
                  "select_for_annotation", "merge_feedback", "generate_synthetic", "export", "finish_run",
                  *(f"{stage}_{part}" for stage, phases in SHARDED.items() for part in ("plan", *phases))]
HISTORY_TASKS = {"dedup_exact", "dedup_near", "dedup_near_plan", "dedup_semantic", "dedup_semantic_plan",
                 "score_models", "score_models_plan", "select_for_annotation", "merge_feedback", "generate_synthetic",
                 "export"}
# model inference
GPU_TASKS = {"dedup_semantic_encode", "dedup_semantic_search", "score_models_shard", "generate_synthetic"}
GPU_QUEUE_TASKS = GPU_TASKS | {"preflight_gpu"}  # the models are checked where they load
RESCORE_TASKS = ["preflight", "start_run", "decide", "merge_feedback", "decide_synthetic", "export", "finish_run"]
APPLY_TASKS = ["feedback_db", "apply_feedback"]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"dctp_daily", "dctp_rescore", "dctp_feedback_apply"} <= set(dagbag.dag_ids)


def test_dag_file_imports_fast_without_heavy_modules():
    # A fresh interpreter: Airflow's own import is paid first, then only the DAG file is timed.
    code = (
        "import sys, time, json; sys.path.insert(0, sys.argv[1]); import airflow.sdk; "
        "from airflow.sdk import dag, task, Param, CronDataIntervalTimetable; "
        "t = time.perf_counter(); import dctp_daily; elapsed = time.perf_counter() - t; "
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'pyarrow', 'mlflow', "
        "'deltalake', 'dctp_tasks', 'pandas') if m in sys.modules); "
        "print(json.dumps({'seconds': elapsed, 'heavy': heavy}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "dags")], capture_output=True, text=True,
                         env=os.environ.copy(), timeout=120, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["seconds"] < 1.0, report
    assert report["heavy"] == [], f"DAG file imports heavy modules at parse time: {report['heavy']}"


def test_parsing_makes_no_connection_lookups(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import BaseHook
    from airflow.sdk.definitions.connection import Connection

    lookups: list[str] = []

    def refuse(conn_id, *args, **kwargs):
        lookups.append(conn_id)
        raise AssertionError(f"connection {conn_id!r} looked up at parse time")

    monkeypatch.setattr(BaseHook, "get_connection", classmethod(lambda cls, conn_id: refuse(conn_id)))
    monkeypatch.setattr(Connection, "get", classmethod(lambda cls, conn_id, *a, **k: refuse(conn_id)))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    assert lookups == []


def test_dag_shape(dagbag):
    dag = dagbag.dags["dctp_daily"]
    assert sorted(dag.task_ids) == sorted(EXPECTED_TASKS)
    assert dag.catchup is False
    assert dag.max_active_runs >= 1
    assert dag.start_date is not None and dag.start_date.tzinfo is not None
    assert "dctp" in dag.tags
    assert dag.doc_md and "ledger" in dag.doc_md
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert dag.timetable.expression in {"@daily", "0 0 * * *"}
    # the spine runs in order: each stage reads the previous one's staging output
    chain = ["preflight", "start_run", "wait_for_landing", "ingest", "normalize_plan", "normalize_shard", "normalize",
             "dedup_exact", "dedup_near_plan", "dedup_near_sign", "dedup_near_search", "dedup_near",
             "dedup_semantic_plan", "dedup_semantic_encode", "dedup_semantic_search", "dedup_semantic", "score_plan",
             "score_shard", "score", "score_models_plan", "score_models_shard", "score_models", "decide",
             "select_for_annotation", "merge_feedback", "generate_synthetic", "export", "finish_run"]
    for upstream, downstream in zip(chain, chain[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    assert dag.get_task("start_run").downstream_task_ids >= {"ingest", "export", "finish_run"}
    # the GPU worker checks its models before the first GPU task, in parallel with the CPU stages
    assert dag.get_task("preflight").downstream_task_ids == {"start_run", "preflight_gpu", "feedback_db"}
    # the feedback store's migrations are applied before selection reads or writes it
    assert dag.get_task("feedback_db").downstream_task_ids == {"select_for_annotation"}
    assert dag.get_task("preflight_gpu").downstream_task_ids == {"dedup_semantic_plan"}
    # the heavy stages map over their plan's shards; the reduce keeps the stage's task id and waits for them all
    for stage, phases in SHARDED.items():
        assert dag.get_task(f"{stage}_plan").downstream_task_ids >= {f"{stage}_{phases[0]}", stage}
        for phase, after in zip(phases, [*phases[1:], None], strict=True):
            assert type(dag.get_task(f"{stage}_{phase}")).__name__.endswith("MappedOperator")
            assert dag.get_task(f"{stage}_{phase}").downstream_task_ids == {f"{stage}_{after}" if after else stage}
    # relevance in score_models reads the centroids the previous date's decide writes: its plan waits for the
    # previous date's plan and what follows it, decide included
    plan = dag.get_task("score_models_plan")
    assert plan.wait_for_downstream and "decide" in plan.downstream_task_ids
    # the landing sensor frees its worker slot while it waits
    sensor = dag.get_task("wait_for_landing")
    assert sensor.mode == "reschedule" and sensor.poke_interval > 0


@pytest.mark.parametrize("task_id", EXPECTED_TASKS)
def test_every_task_retries_with_backoff_and_timeout(dagbag, task_id):
    task = dagbag.dags["dctp_daily"].get_task(task_id)
    if task_id.startswith("preflight"):  # a failed check is a missing piece: retrying cannot supply it
        assert task.retries == 0
    else:
        assert task.retries >= 2
    assert task.retry_exponential_backoff and task.retry_exponential_backoff > 1
    assert task.max_retry_delay is not None and task.max_retry_delay <= timedelta(hours=1)
    assert task.execution_timeout is not None and task.execution_timeout <= timedelta(hours=6)
    assert task.on_failure_callback, "every task names its failure cause in one log line"
    assert task.depends_on_past is (task_id in HISTORY_TASKS)
    assert task.doc_md or task.doc, f"{task_id} has no docs for the UI"


def _routing(**env: str) -> dict[str, dict[str, list[str]]]:
    """Parse the DAGs in a fresh interpreter with ``env``; return each DAG's ``task -> [queue, pool]``."""
    code = ("import json, sys; from airflow.dag_processing.dagbag import DagBag; "
            "bag = DagBag(dag_folder=sys.argv[1]); assert not bag.import_errors, bag.import_errors; "
            "print(json.dumps({d.dag_id: {t.task_id: [t.queue, t.pool] for t in d.tasks} "
            "for d in bag.dags.values()}))")
    clean = {k: v for k, v in os.environ.items() if k not in {"DCTP_GPU_POOL", "DCTP_GPU_QUEUE"}}
    out = subprocess.run([sys.executable, "-c", code, str(REPO / "dags")], capture_output=True, text=True,
                         env={**clean, "PYTHONPATH": os.pathsep.join([str(REPO / "dags"), str(REPO)]), **env},
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_gpu_tasks_need_no_pool_of_their_own_by_default():
    # a fresh Airflow has only default_pool: a task naming any other pool would stay 'scheduled' forever
    routing = _routing()
    for dag_id, tasks in routing.items():
        for task_id, (queue, pool) in tasks.items():
            assert pool == "default_pool", f"{dag_id}.{task_id} takes pool {pool} without DCTP_GPU_POOL"
            assert queue == ("gpu" if task_id in GPU_QUEUE_TASKS and dag_id == "dctp_daily" else "default"), \
                f"{dag_id}.{task_id} on queue {queue}"


def test_gpu_pool_and_queue_come_from_the_environment():
    routing = _routing(DCTP_GPU_POOL="gpu_slots", DCTP_GPU_QUEUE="cuda")
    daily = routing["dctp_daily"]
    assert {t for t, (queue, pool) in daily.items() if (queue, pool) == ("cuda", "gpu_slots")} == GPU_TASKS
    # the GPU worker's preflight never waits on the pool it may be checking for
    assert daily["preflight_gpu"] == ["cuda", "default_pool"]
    assert all((queue, pool) == ("default", "default_pool") for t, (queue, pool) in daily.items()
               if t not in GPU_QUEUE_TASKS)


def test_the_dags_and_the_preflight_read_the_same_routing(monkeypatch):
    from dctp_tasks.preflight import GPU_TASKS as CHECKED_TASKS
    from dctp_tasks.preflight import gpu_pool, gpu_queue

    assert set(CHECKED_TASKS) == GPU_TASKS
    monkeypatch.delenv("DCTP_GPU_POOL", raising=False)
    monkeypatch.delenv("DCTP_GPU_QUEUE", raising=False)
    assert (gpu_pool(), gpu_queue()) == (None, "gpu")
    monkeypatch.setenv("DCTP_GPU_POOL", "gpu_slots")
    monkeypatch.setenv("DCTP_GPU_QUEUE", "cuda")
    assert (gpu_pool(), gpu_queue()) == ("gpu_slots", "cuda")


def test_params_are_described(dagbag):
    params = dagbag.dags["dctp_daily"].params
    assert {"sources", "min_chars", "max_chars", "max_quarantine_ratio", "near_dup_threshold",
            "config_overrides"} <= set(params.keys())
    for name in params.keys():
        param = params.get_param(name)
        assert param.description, f"Param {name} has no description"
    # unset numeric Params default to None so the config file's value wins
    assert params["min_chars"] is None and params["sources"] == []


def test_param_overrides_reach_the_config():
    from dctp_common.runtime import resolve_config

    config = resolve_config({"min_chars": 7, "sources": ["web"], "max_quarantine_ratio": 0.2,
                             "near_dup_threshold": 0.8, "semantic_threshold": 0.9, "min_quality": 0.3,
                             "review_below": 0.6, "quality_thresholds": {"heuristics.too_few_words": 20},
                             "config_overrides": {"export.test_fraction": 0.1}})
    assert config.quality.min_quality == 0.3 and config.quality.review_below == 0.6
    assert config.quality.thresholds["heuristics.too_few_words"] == 20
    assert config.dedup_near.threshold == 0.8 and config.dedup_semantic.threshold == 0.9
    assert config.normalize.min_chars == 7
    assert config.ingest.include_sources == ["web"]
    assert config.ingest.max_quarantine_ratio == 0.2
    assert config.export.test_fraction == 0.1
    default = resolve_config({"min_chars": None, "sources": []})
    assert default.normalize.min_chars == 50 and default.ingest.include_sources == []


def test_rescore_dag_re_decides_one_date_without_model_tasks(dagbag):
    dag = dagbag.dags["dctp_rescore"]
    assert sorted(dag.task_ids) == sorted(RESCORE_TASKS)
    assert type(dag.timetable).__name__ == "NullTimetable"  # manual only
    for upstream, downstream in zip(RESCORE_TASKS, RESCORE_TASKS[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    for task_id in RESCORE_TASKS:
        task = dag.get_task(task_id)
        assert task.retries == 0 if task_id == "preflight" else task.retries >= 2
        assert task.on_failure_callback and (task.doc_md or task.doc)
        assert task.queue != "gpu", "re-deciding runs no model"
    params = dag.params
    assert {"date", "quality_thresholds", "min_quality", "review_below"} <= set(params.keys())
    assert all(params.get_param(name).description for name in params.keys())


def test_feedback_apply_dag_runs_every_30_minutes_one_at_a_time(dagbag):
    dag = dagbag.dags["dctp_feedback_apply"]
    assert sorted(dag.task_ids) == sorted(APPLY_TASKS)
    assert "apply_feedback" in dag.get_task("feedback_db").downstream_task_ids
    assert dag.timetable.expression == "*/30 * * * *" and dag.catchup is False and dag.max_active_runs == 1
    assert dag.doc_md and "expert_rejected" in dag.doc_md
    for task_id in APPLY_TASKS:
        task = dag.get_task(task_id)
        assert task.retries >= 2 and task.retry_exponential_backoff and task.on_failure_callback
        assert task.execution_timeout is not None and (task.doc_md or task.doc)


def test_rescore_context_takes_the_date_from_params():
    from types import SimpleNamespace

    from airflow.sdk.exceptions import AirflowFailException

    from dctp_common.runtime import rescore_context

    context = {"params": {"date": "2026-03-04", "quality_thresholds": {"heuristics.too_few_words": 10}},
               "dag_run": SimpleNamespace(dag_id="dctp_rescore", run_id="manual__1")}
    run = rescore_context(context)
    # it publishes under its own DAG id; the scores it reads are named by the commit it re-decides
    assert (run.dag_id, run.dt, run.run_id) == ("dctp_rescore", "2026-03-04", "manual__1")
    assert run.config.quality.thresholds["heuristics.too_few_words"] == 10
    with pytest.raises(AirflowFailException, match="Param date must be YYYY-MM-DD"):
        rescore_context({**context, "params": {"date": "March 4"}})
    for escape in ("../../etc", "2026-03-04/../..", "2026-03-04/x"):
        with pytest.raises(AirflowFailException, match="Param date"):
            rescore_context({**context, "params": {**context["params"], "date": escape}})
