"""Cluster: ``dctp_daily`` on a real CeleryExecutor deployment on loopback, driven through the REST API.

A backfill over three dates must succeed with every GPU-marked task on a GPU worker (queue ``gpu``) and every
other task on a CPU worker (queue ``default``), one Delta version and one MLflow run per date. The heavy stages run
as mapped shards: they spread over both workers of each queue, and the first date's staged outputs equal what the
same stages make in one shard each. Then a fourth
date runs while S3 fails twice: landing-file downloads are cut mid-response while ``ingest`` reads them, then every
connection is reset while ``normalize`` runs. Both tasks are retried, nothing is quarantined for it, and the day's
exported and dropped rows add up to the rows really in its landing files. Last, ``dctp_rescore`` re-decides a date
while ``dctp_daily`` re-runs the same date: both commit, and every version balances against its own ledger. Each
version export commits is an Asset event: at the end, the example DAG ``dctp_materialize_chat`` (unpaused before
the backfill) runs from them and writes the newest version's chat view.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from tests.airflow_stack import BIN
from tests.cluster.conftest import CPU_HOSTS, GPU_HOSTS, SHARDS, Cluster
from tests.conftest import REPO

DATES = ["2026-01-01", "2026-01-02", "2026-01-03"]
FAULT_DATE = "2026-01-04"
DAG_ID = "dctp_daily"
CONSUMER = "dctp_materialize_chat"
#: The tasks that run while S3 fails: ingest while it downloads landing files, normalize's shards between a read and a
#: write (each retries alone: its plan task is not run again).
READ_FAULT_TASK = "ingest"
FAULT_TASK = "normalize_shard"
BACKFILL_TIMEOUT = 900.0
FAULT_RUN_TIMEOUT = 600.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def demo_corpus():
    spec = importlib.util.spec_from_file_location("demo_corpus", REPO / "include" / "demo_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def landed(cluster: Cluster) -> Cluster:
    demo_corpus().generate(cluster.storage(), [*DATES, FAULT_DATE], seed=5, rows_per_day=200)
    return cluster


def gpu_task_ids(cluster: Cluster) -> dict[str, str]:
    """The tasks the DAG itself routes to the GPU queue, with their pool (read from the serialized DAG)."""
    tasks = cluster.api("GET", f"/dags/{DAG_ID}/tasks")["tasks"]
    return {t["task_id"]: t["pool"] for t in tasks if t["queue"] == "gpu"}


def assert_routing(cluster: Cluster, run_id: str, gpu_tasks: dict[str, str]) -> dict[str, set[str]]:
    """Every attempt of every task (each shard of a mapped one) ran where the DAG routes it: GPU tasks on a GPU
    worker, the rest on a CPU worker. Returns the hosts that ran each mapped task's shards."""
    shard_hosts: dict[str, set[str]] = {}
    for ti in cluster.all_task_instances(DAG_ID, run_id):
        task_id, index = ti["task_id"], ti["map_index"]
        path = f"{task_id}/{index}" if index >= 0 else task_id
        tries = cluster.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{path}/tries")
        for attempt in [ti, *tries["task_instances"]]:
            where = (attempt["hostname"], attempt["queue"])
            if task_id in gpu_tasks:
                assert where[0] in GPU_HOSTS and where[1] == "gpu", \
                    f"{run_id} {path} try {attempt['try_number']} ran on {where}"
                assert attempt["pool"] == gpu_tasks[task_id], f"{task_id} took pool {attempt['pool']}"
            else:
                assert where[0] in CPU_HOSTS and where[1] == "default", \
                    f"{run_id} {path} try {attempt['try_number']} ran on {where}"
        if index >= 0:
            shard_hosts.setdefault(task_id, set()).add(ti["hostname"])
    return shard_hosts


def assert_single_shard_equal(cluster: Cluster, dt: str, folder) -> None:
    """Run the date's sharded stages here, in one shard each, from the cluster's own ingested rows: every staged
    output equals the cluster's."""
    from dctp_tasks.config import SHARDED_STAGES, load_config
    from dctp_tasks.dedup.exact import dedup_exact_day
    from dctp_tasks.dedup.near import dedup_near_day
    from dctp_tasks.dedup.semantic import dedup_semantic_day
    from dctp_tasks.normalize import normalize_day
    from dctp_tasks.quality.scoring import score_day
    from dctp_tasks.storage import Storage
    from tests.conftest import publish_stage, staged

    storage, local = cluster.storage(), Storage(folder.as_uri())
    publish_stage(local, "single", dt, "ingest", staged(storage, DAG_ID, dt, "ingest"))
    config = load_config(cluster.env["DCTP_CONFIG"],
                         overrides={"sharding.shards": dict.fromkeys(SHARDED_STAGES, 1)})
    for stage in (normalize_day, dedup_exact_day, dedup_near_day, dedup_semantic_day):
        stage(local, config, "single", dt)
    score_day(local, config, "single", dt, "cpu")
    score_day(local, config, "single", dt, "gpu")
    for stage in ("normalize", "dedup_near", "dedup_semantic", "score", "score_models"):
        # the score stages' lineage hashes their input files, whose layout differs
        mine = own_scores(staged(local, "single", dt, stage).drop_columns(["lineage"]))
        theirs = own_scores(staged(storage, DAG_ID, dt, stage).drop_columns(["lineage"]))
        assert mine.num_rows > 0
        differ = [c for c in mine.column_names if not theirs.column(c).equals(mine.column(c))] \
            if theirs.schema.equals(mine.schema) else f"schemas: {theirs.schema} vs {mine.schema}"
        assert not differ, f"{stage} of {dt} in {SHARDS} shards differs from one in {differ}: " \
            f"{[(theirs.column(c)[:3], mine.column(c)[:3]) for c in differ[:2]] if isinstance(differ, list) else ''}"


def own_scores(table):
    """The table with only the scores that depend on the row alone (credibility, relevance and the expert-quality
    classifier read what later dates' merge_feedback published since the cluster scored; tests/test_shards.py
    compares those across shard counts on fixed state), NaN ("not scored") made comparable: Arrow's equals
    holds NaN unequal to itself."""
    import pyarrow as pa

    if "scores" in table.column_names:
        scores = table.column("scores").combine_chunks()
        keep = [i for i, f in enumerate(scores.type) if f.name in {"heuristics", "language", "pii", "toxicity"}]
        own = pa.StructArray.from_arrays([scores.field(i) for i in keep], fields=[scores.type[i] for i in keep])
        table = table.drop_columns(["scores"]).append_column("scores", own)
    return pa.table({name: _nan_free(table.column(name).combine_chunks()) for name in table.column_names})


def _nan_free(array):
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_struct(array.type):
        fields = [_nan_free(array.field(i)) for i in range(array.type.num_fields)]
        return pa.StructArray.from_arrays(fields, fields=list(array.type), mask=array.is_null())
    if pa.types.is_floating(array.type):
        return pc.if_else(pc.is_nan(array), pa.scalar(-1e300, array.type) if array.type != pa.float16()
                          else pa.scalar(-65504, array.type), array)
    return array


def retried(cluster: Cluster, run_id: str, task: str) -> bool:
    """Whether ``task``'s first attempt (of any of its shards) failed and a retry is due or running (an outcome now
    fails the test)."""
    tis = [ti for ti in cluster.all_task_instances(DAG_ID, run_id) if ti["task_id"] == task]
    for ti in tis:
        assert ti["state"] not in {"failed", "upstream_failed"}, \
            f"{task} {ti['map_index']} ended {ti['state']} during the outage (try {ti['try_number']})"
    return any(ti["state"] == "up_for_retry" or ti["try_number"] >= 2 for ti in tis)


def landing_rows(cluster: Cluster, dt: str) -> int:
    """Count the rows of the date's landing files with plain Python readers (a CSV row may span lines)."""
    import csv
    import gzip
    import io

    import pyarrow.parquet as pq

    storage = cluster.storage()
    total = 0
    for path in storage.list_files("landing"):
        if f"/dt={dt}/" not in path:
            continue
        data = storage.read_bytes(path)
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        if ".parquet" in path:
            total += pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
        elif ".csv" in path:
            total += sum(1 for _ in csv.reader(io.StringIO(data.decode("utf-8", "replace")))) - 1
        else:
            total += sum(1 for line in data.splitlines() if line.strip())
    return total


def commits(cluster: Cluster) -> list[dict]:
    from dctp_tasks.export import METADATA_PREFIX, open_table

    # version 0 created the table, empty: the commits of dates follow
    return sorted((c for c in open_table(cluster.storage(), "curated").history() if c.get(f"{METADATA_PREFIX}dt")),
                  key=lambda c: c["version"])


def assert_partition_balances(cluster: Cluster, commit: dict) -> None:
    """The date's Delta partition matches its commit and the ledger; no doc_id is exported or dropped twice."""
    from dctp_tasks.export import METADATA_PREFIX, committed_ledger, open_table
    from dctp_tasks.ledger import ledger_report

    storage = cluster.storage()
    dt = commit[f"{METADATA_PREFIX}dt"]
    table = open_table(storage, "curated", commit["version"]).to_pyarrow_dataset().to_table(
        filter=ds.field("dt") == dt, columns=["doc_id"])
    assert table.num_rows == int(commit[f"{METADATA_PREFIX}exported"]), f"{dt}: partition vs commit metadata"
    ingested = int(commit[f"{METADATA_PREFIX}ingested"])
    _, rejects = committed_ledger(storage, "curated", dt, commit["version"])
    report = ledger_report(rejects, dt, ingested, table.num_rows)
    assert report.balanced, report.render()
    exported = table.column("doc_id").to_pylist()
    assert len(set(exported)) == len(exported), f"{dt}: duplicate doc_ids in the Delta partition"
    dropped = [d for d in rejects.column("doc_id").to_pylist() if d is not None]
    assert len(set(dropped)) == len(dropped), f"{dt}: a rejected row was recorded twice"
    assert set(dropped).isdisjoint(exported), f"{dt}: rows both exported and rejected"


def test_backfill_through_rest_api_routes_gpu_tasks(landed: Cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    from dctp_tasks.export import METADATA_PREFIX

    cluster = landed
    started = time.monotonic()
    gpu_tasks = gpu_task_ids(cluster)
    # the GPU tasks take the pool DCTP_GPU_POOL names; the GPU worker's own preflight never waits on it
    assert gpu_tasks == {"dedup_semantic_encode": "gpu", "dedup_semantic_search": "gpu", "score_models_shard": "gpu",
                         "generate_synthetic": "gpu", "preflight_gpu": "default_pool"}, gpu_tasks
    assert cluster.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})["is_paused"] is False
    # the example training DAG, scheduled on the curated table's Asset: paused when created, turned on here
    cluster.wait(f"{CONSUMER} to be parsed", lambda: cluster.api("GET", f"/dags/{CONSUMER}/details")["dag_id"], 240)
    consumer = cluster.api("GET", f"/dags/{CONSUMER}")
    assert consumer["is_paused"] is True, "the example consumer DAG must start paused"
    assert cluster.api("PATCH", f"/dags/{CONSUMER}", json={"is_paused": False})["is_paused"] is False

    created = cluster.backfill(DAG_ID, DATES)
    runs = cluster.wait_for_runs(DAG_ID, created["id"], DATES, BACKFILL_TIMEOUT)
    print(f"backfill of {len(DATES)} dates took {time.monotonic() - started:.0f} s")

    assert all(runs[dt]["run_type"] == "backfill" for dt in DATES)
    shard_hosts: dict[str, set[str]] = {}
    for dt in DATES:
        for task_id, hosts in assert_routing(cluster, runs[dt]["dag_run_id"], gpu_tasks).items():
            shard_hosts.setdefault(task_id, set()).update(hosts)
    # every sharded stage mapped over SHARDS shards, and each queue's shards ran on both of its workers
    mapped = {ti["task_id"] for ti in cluster.all_task_instances(DAG_ID, runs[DATES[0]]["dag_run_id"])
              if ti["map_index"] >= 0}
    assert mapped == {"normalize_shard", "dedup_near_sign", "dedup_near_search", "dedup_semantic_encode",
                      "dedup_semantic_search", "score_shard", "score_models_shard"}, mapped
    assert len([ti for ti in cluster.all_task_instances(DAG_ID, runs[DATES[0]]["dag_run_id"])
                if ti["task_id"] == "normalize_shard"]) == SHARDS
    on_gpu = set().union(*(hosts for task, hosts in shard_hosts.items() if task in gpu_tasks))
    on_cpu = set().union(*(hosts for task, hosts in shard_hosts.items() if task not in gpu_tasks))
    assert (on_cpu, on_gpu) == (set(CPU_HOSTS), set(GPU_HOSTS)), shard_hosts
    assert_single_shard_equal(cluster, DATES[0], tmp_path)

    history = commits(cluster)
    assert [c[f"{METADATA_PREFIX}dt"] for c in history] == DATES, "one Delta version per date, in date order"
    for commit in history:
        assert commit[f"{METADATA_PREFIX}run_id"] == runs[commit[f"{METADATA_PREFIX}dt"]]["dag_run_id"]
        assert_partition_balances(cluster, commit)

    client = MlflowClient(tracking_uri=cluster.mlflow_uri)
    experiment = client.get_experiment_by_name(DAG_ID)
    assert experiment is not None, "no MLflow experiment dctp_daily"
    mlflow_runs = client.search_runs([experiment.experiment_id], max_results=100)
    by_run_id = {r.data.tags.get("run_id"): r for r in mlflow_runs}
    for dt in DATES:
        found = by_run_id.get(runs[dt]["dag_run_id"])
        assert found is not None, f"no MLflow run for {runs[dt]['dag_run_id']}"
        assert found.info.status == "FINISHED" and found.data.tags["dt"] == dt
        assert found.data.metrics["ledger.exported"] == found.data.metrics["export.kept"]
    assert len(mlflow_runs) == len(DATES)


def doctor(cluster: Cluster, **env: str) -> tuple[int, dict[str, dict]]:
    """Run ``dctp doctor --json`` with the deployment's environment (plus ``env``); return its exit code and checks."""
    result = subprocess.run([str(BIN / "dctp"), "--json", "doctor"], env={**cluster.env, **env}, capture_output=True,
                            text=True, timeout=300)
    assert result.stdout.strip(), result.stderr[-3000:]
    return result.returncode, {c["name"]: c for c in json.loads(result.stdout)}


def test_preflight_and_doctor_check_the_celery_queues_and_the_gpu_pool(landed: Cluster):
    cluster = landed
    runs = cluster.dag_runs(DAG_ID)
    if DATES[0] not in runs or runs[DATES[0]]["state"] != "success":
        pytest.skip("needs the dates backfilled by test_backfill_through_rest_api_routes_gpu_tasks")
    # the run's own preflight asked the broker which workers consume each queue
    checks = {c["name"]: c for c in cluster.xcom(DAG_ID, runs[DATES[0]]["dag_run_id"], "preflight")}
    assert checks["queue default"]["status"] == "ok", checks
    assert checks["queue gpu"]["status"] == "ok", checks
    assert all(host in checks["queue default"]["detail"] for host in CPU_HOSTS), checks
    assert all(host in checks["queue gpu"]["detail"] for host in GPU_HOSTS), checks
    assert checks["pool gpu"]["status"] == "skip", "a task cannot read pools: it must not claim to have checked"
    assert not [c for c in checks.values() if c["status"] == "fail"]
    # the models are checked on the GPU worker, where they load
    on_gpu = {c["name"]: c for c in cluster.xcom(DAG_ID, runs[DATES[0]]["dag_run_id"], "preflight_gpu")}
    assert on_gpu["model MiniLM"]["status"] == on_gpu["model toxicity"]["status"] == "ok", on_gpu
    assert on_gpu["data root"]["status"] == "ok" and not any(name.startswith("model") for name in checks)

    code, checks = doctor(cluster)
    assert code == 0, checks
    assert checks["pool gpu"]["status"] == "ok" and checks["pool gpu"]["detail"].startswith("2 slot(s)")
    assert checks["data root"]["status"] == "ok" and checks["data root"]["detail"].startswith("s3://")
    assert all(host in checks["queue gpu"]["detail"] for host in GPU_HOSTS)
    assert all(host in checks["queue default"]["detail"] for host in CPU_HOSTS)
    assert checks["delta table"]["status"] == "ok" and "reads and writes it" in checks["delta table"]["detail"]

    # a GPU queue no worker consumes, a pool nobody created: each fails with the command that fixes it
    code, checks = doctor(cluster, DCTP_GPU_QUEUE="cuda", DCTP_GPU_POOL="gpu_missing")
    assert code == 1
    assert checks["queue cuda"]["status"] == "fail"
    assert "airflow celery worker --queues cuda" in checks["queue cuda"]["fix"]
    assert checks["pool gpu_missing"]["status"] == "fail"
    assert "airflow pools set gpu_missing" in checks["pool gpu_missing"]["fix"]
    assert checks["queue default"]["status"] == "ok"


def test_s3_outage_during_a_task_is_retried_and_loses_nothing(landed: Cluster):
    from mlflow.tracking import MlflowClient

    from dctp_tasks.export import METADATA_PREFIX, open_table

    cluster = landed
    try:
        backfilled = len(commits(cluster)) == len(DATES)
    except Exception:  # no table yet
        backfilled = False
    if not backfilled:
        pytest.skip("needs the three dates backfilled by test_backfill_through_rest_api_routes_gpu_tasks")
    started = time.monotonic()
    # Landing-file downloads are cut from the start: listing still works, so wait_for_landing finds the files, and
    # ingest's first attempt meets the cut in the middle of its reads.
    cluster.proxy.fail("cut-reads", path=b"/landing/")
    try:
        created = cluster.backfill(DAG_ID, [FAULT_DATE])

        def run_id():
            return cluster.dag_runs(DAG_ID).get(FAULT_DATE, {}).get("dag_run_id")

        fault_run = cluster.wait(f"the {FAULT_DATE} run to be created", run_id, 120)
        cluster.wait(f"{READ_FAULT_TASK} to fail its attempt while its reads are cut and be up for retry",
                     lambda: retried(cluster, fault_run, READ_FAULT_TASK), 240, interval=1)
    finally:
        cluster.proxy.heal()
    cut = cluster.proxy.refused
    assert cut > 0, "no landing download was cut"
    # S3 goes down as soon as the task before the target is done, so the target's first attempt meets the outage
    upstream = "normalize_plan"
    cluster.wait(f"{upstream} of {FAULT_DATE} to succeed",
                 lambda: cluster.task_instances(DAG_ID, fault_run)[upstream]["state"] == "success", 300, interval=1)
    cluster.proxy.fail("reset")
    fault_started = time.monotonic()
    try:
        cluster.wait(f"{FAULT_TASK} to fail its attempt during the S3 outage and be up for retry",
                     lambda: retried(cluster, fault_run, FAULT_TASK), 240, interval=1)
    finally:
        cluster.proxy.heal()
    outage = time.monotonic() - fault_started
    assert cluster.proxy.refused > cut, "the outage never met an S3 request"

    runs = cluster.wait_for_runs(DAG_ID, created["id"], [FAULT_DATE], FAULT_RUN_TIMEOUT)
    print(f"fault run took {time.monotonic() - started:.0f} s (S3 down {outage:.0f} s, "
          f"{cluster.proxy.refused} connections refused)")
    tis = cluster.all_task_instances(DAG_ID, runs[FAULT_DATE]["dag_run_id"])
    retried_tis = [ti for ti in tis if ti["task_id"] in (READ_FAULT_TASK, FAULT_TASK) and ti["try_number"] >= 2]
    assert {ti["task_id"] for ti in retried_tis} == {READ_FAULT_TASK, FAULT_TASK}, tis
    for ti in retried_tis:
        path = f"{ti['task_id']}/{ti['map_index']}" if ti["map_index"] >= 0 else ti["task_id"]
        tries = cluster.api("GET", f"/dags/{DAG_ID}/dagRuns/{fault_run}/taskInstances/{path}/tries")
        states = {t["try_number"]: t["state"] for t in tries["task_instances"]}
        assert states.get(1) in {"failed", "up_for_retry"} and states[max(states)] == "success", (path, states)
    # a shard retried alone: the plan it belongs to ran once
    assert [ti["try_number"] for ti in tis if ti["task_id"] == "normalize_plan"] == [1]
    assert_routing(cluster, fault_run, gpu_task_ids(cluster))

    history = commits(cluster)
    assert [c[f"{METADATA_PREFIX}dt"] for c in history] == [*DATES, FAULT_DATE], "one new version for the date"
    assert history[-1][f"{METADATA_PREFIX}run_id"] == fault_run
    for commit in history:
        assert_partition_balances(cluster, commit)
    # Every row really in the day's landing files, counted here without the pipeline's readers, was ingested and
    # ended exported or dropped: the cut downloads were retried, never turned into quarantine.
    from dctp_tasks.export import committed_ledger

    in_files = landing_rows(cluster, FAULT_DATE)
    commit, rejects = committed_ledger(cluster.storage(), "curated", FAULT_DATE)
    assert int(commit[f"{METADATA_PREFIX}ingested"]) == in_files
    assert int(commit[f"{METADATA_PREFIX}exported"]) + rejects.num_rows == in_files
    reasons = set(rejects.column("reason").to_pylist())
    assert not reasons & {"truncated_file", "unreadable_file"}, f"an outage became quarantine: {reasons}"
    client = MlflowClient(tracking_uri=cluster.mlflow_uri)
    [tracked] = client.search_runs([client.get_experiment_by_name(DAG_ID).experiment_id],
                                   filter_string=f"tags.run_id = '{fault_run}'")
    assert tracked.info.status == "FINISHED", "the retried run's MLflow run was reopened and closed"
    table = open_table(cluster.storage(), "curated").to_pyarrow_dataset().to_table(columns=["doc_id", "dt"])
    assert pc.count_distinct(table.column("doc_id")).as_py() == table.num_rows, "duplicate doc_ids in the table"
    assert set(table.column("dt").to_pylist()) == {*DATES, FAULT_DATE}


def test_rescore_while_the_daily_dag_reruns_the_same_date(landed: Cluster):
    from dctp_tasks.export import METADATA_PREFIX, committed_ledger

    cluster = landed
    try:
        done = {c[f"{METADATA_PREFIX}dt"] for c in commits(cluster)} >= set(DATES)
    except Exception:  # no table yet
        done = False
    if not done:
        pytest.skip("needs the dates backfilled by test_backfill_through_rest_api_routes_gpu_tasks")
    dt = DATES[0]
    before = len(commits(cluster))
    assert cluster.api("PATCH", "/dags/dctp_rescore", json={"is_paused": False})["is_paused"] is False
    body = {"dag_id": DAG_ID, "from_date": f"{dt}T00:00:00Z", "to_date": f"{dt}T00:00:00Z",
            "reprocess_behavior": "completed", "max_active_runs": 1}
    created = cluster.api("POST", "/backfills", json=body)
    daily = cluster.wait(f"the re-run of {dt} to be queued", lambda: cluster.dag_runs(DAG_ID)[dt]["dag_run_id"], 120)
    # The rescore starts while the daily run scores, so their decide and export tasks overlap.
    cluster.wait(f"the re-run of {dt} to score",
                 lambda: cluster.task_instances(DAG_ID, daily)["score"]["state"] in {"running", "success"}, 300,
                 interval=1)
    rescore = cluster.api("POST", "/dags/dctp_rescore/dagRuns", json={
        "logical_date": None, "conf": {"date": dt, "quality_thresholds": {"heuristics.too_few_words": 60}}})

    def rescored():
        run = cluster.api("GET", f"/dags/dctp_rescore/dagRuns/{rescore['dag_run_id']}")
        return run if run["state"] in {"success", "failed"} else None

    outcome = cluster.wait("dctp_rescore to finish", rescored, 600)
    cluster.wait_for_runs(DAG_ID, created["id"], [dt], FAULT_RUN_TIMEOUT)

    history = commits(cluster)
    mine = [c for c in history[before:] if c[f"{METADATA_PREFIX}dt"] == dt]
    for commit in history:
        assert_partition_balances(cluster, commit)
    if outcome["state"] == "success":  # it committed while its starting point was still the date's latest
        assert {c[f"{METADATA_PREFIX}dag_id"] for c in mine} == {"dctp_daily", "dctp_rescore"}, mine
    else:  # the re-run exported first: the rescore refused to overwrite the newer version, at once
        tis = cluster.api("GET", f"/dags/dctp_rescore/dagRuns/{rescore['dag_run_id']}/taskInstances")
        export = {t["task_id"]: t for t in tis["task_instances"]}["export"]
        assert (export["state"], export["try_number"]) == ("failed", 1), export
        assert [c[f"{METADATA_PREFIX}dag_id"] for c in mine] == ["dctp_daily"], mine
    print(f"rescore during the re-run: {outcome['state']}; commits {[c[f'{METADATA_PREFIX}dag_id'] for c in mine]}")
    # The last commit of the date wins, with the ledger of the run that made it.
    last = mine[-1]
    _, rejects = committed_ledger(cluster.storage(), "curated", dt)
    strict = [d for d, r in zip(rejects.column("detail").to_pylist(), rejects.column("reason").to_pylist(),
                                strict=True) if r == "too_few_words" and d.endswith("<60")]
    assert bool(strict) == (last[f"{METADATA_PREFIX}dag_id"] == "dctp_rescore"), last


def test_each_new_version_triggers_the_example_training_dag(landed: Cluster):
    """export's Asset events schedule ``dctp_materialize_chat`` (unpaused before the backfill), which writes the
    newest version its run's events announce as a chat view.

    The deployment's scheduler runs with ``use_job_schedule`` off, so that no scheduled run of "yesterday" joins the
    backfills; that switch also stops asset-triggered runs. The events are queued all the same: with the producers
    paused, a scheduler restarted with it on creates the consumer's run from them (Airflow folds events queued
    meanwhile into that run as it sees fit: the view must be of the newest version the run's own events announce).
    """
    from dctp_tasks.export import open_table
    from dctp_tasks.export.formats import expressible
    from dctp_tasks.export.views import read_manifest
    from dctp_tasks.storage import Storage
    from tests.airflow_stack import stop

    cluster = landed
    if len(commits(cluster)) < len(DATES):
        pytest.skip("needs the dates backfilled by test_backfill_through_rest_api_routes_gpu_tasks")
    storage = cluster.storage()
    assert cluster.api("GET", f"/dags/{CONSUMER}/dagRuns")["dag_runs"] == [], "no run before scheduling is on"
    for dag_id in (DAG_ID, "dctp_rescore"):
        assert cluster.api("PATCH", f"/dags/{dag_id}", json={"is_paused": True})["is_paused"] is True
    scheduler = next(s for s in cluster.services if s.name == "scheduler")
    stop(scheduler)
    cluster.services.remove(scheduler)
    cluster.start("scheduler-job-schedule", "scheduler", AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="True")

    def succeeded():
        runs = cluster.api("GET", f"/dags/{CONSUMER}/dagRuns", params={"limit": 100})["dag_runs"]
        assert all(r["state"] != "failed" for r in runs), f"{CONSUMER} failed:\n{cluster.logs()}"
        assert all(r["run_type"] == "asset_triggered" for r in runs), runs
        return next((r for r in runs if r["state"] == "success"), None)

    run = cluster.wait(f"an asset-triggered run of {CONSUMER}", succeeded, 600, interval=5)
    events = cluster.api("GET", f"/dags/{CONSUMER}/dagRuns/{run['dag_run_id']}/upstreamAssetEvents")["asset_events"]
    assert events and all(e["name"] == "dctp_curated" and e["source_task_id"] == "export" for e in events), events
    announced = max(e["extra"]["version"] for e in events)
    view = cluster.xcom(CONSUMER, run["dag_run_id"], "materialize_chat")
    assert view["version"] == announced
    out = Storage(view["out"], storage.s3)
    manifest = read_manifest(out)
    assert manifest["version"] == announced and manifest["format"] == "chat"
    rows = open_table(storage, "curated", announced).to_pyarrow_dataset().to_table(columns=["prompt", "response"])
    pairs = pc.sum(expressible(rows, "chat")[0]).as_py()
    assert manifest["rows"] == view["rows"] == pairs > 0
    assert out.exists("README.md") and len(manifest["files"]) == view["files"]
