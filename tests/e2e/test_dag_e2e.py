"""End-to-end: the real ``dctp_daily`` DAG through ``dag.test()`` over three consecutive dates.

Once on local files, once on S3 (moto server on loopback, reached through the ``aws_default`` connection)
with the PostgreSQL table source on the real local server. Checks the ledger, one Delta version per date,
idempotent re-runs (the middle date, then all three in reverse order) and the MLflow runs' metrics.
"""

from __future__ import annotations

import importlib.util
import json
from datetime import UTC, datetime

import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from dctp_tasks.config import load_config
from dctp_tasks.export import METADATA_PREFIX, committed_ledger, open_table
from dctp_tasks.feedback.store import FeedbackStore
from dctp_tasks.ledger import ledger_report
from dctp_tasks.storage import S3Options, Storage
from tests.conftest import REPO, config_file
from tests.conftest import rejects as staged_drops

DATES = ["2026-01-01", "2026-01-02", "2026-01-03"]
STAGES = ["ingest", "normalize", "dedup_exact", "dedup_near", "dedup_semantic", "score", "quality",
          "select_for_annotation", "export"]
#: The expert roster of the runs (the config file's: a run may not change who judges).
ROSTER = {"annotation.experts": {"alice": {}, "bob": {"domains": ["news"]}, "carol": {"seniority": "senior"}}}
#: The S3 run scores without the CPU-slow perplexity model (the local run keeps it), to keep the suite's time.
NO_PERPLEXITY = {"quality.scorers.perplexity.enabled": False}

pytestmark = pytest.mark.slow


def demo_corpus():
    spec = importlib.util.spec_from_file_location("demo_corpus", REPO / "include" / "demo_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def dag():
    # a fresh parse per test: dag.test() folds a run's conf into the in-process DAG's params
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags["dctp_daily"]


def run_date(dag, dt: str, conf: dict | None = None) -> str:
    run = dag.test(logical_date=datetime.fromisoformat(dt).replace(tzinfo=UTC), run_conf=conf or {})
    assert run.state == "success", f"dctp_daily for {dt} ended {run.state}"
    return run.run_id


def partition(storage: Storage, dt: str, version: int | None = None):
    table = open_table(storage, "curated", version).to_pyarrow_dataset().to_table(filter=ds.field("dt") == dt)
    return table.sort_by("doc_id")


def commits(storage: Storage) -> list[dict]:
    """The table's commits of a date, oldest first (version 0 created the table, empty)."""
    return sorted((c for c in open_table(storage, "curated").history() if c.get(f"{METADATA_PREFIX}dt")),
                  key=lambda c: c["version"])


def asset_events(run_ids) -> dict[str, dict]:
    """The ``extra`` of the curated table's Asset events the given runs emitted, by run id."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(select(AssetEvent.source_run_id, AssetEvent.extra).join(
            AssetModel, AssetModel.id == AssetEvent.asset_id).where(
            AssetModel.name == "dctp_curated", AssetEvent.source_run_id.in_(list(run_ids)))).all()
    return {run_id: extra for run_id, extra in rows}


def check_three_dates(dag, storage: Storage, conf: dict | None = None) -> dict[str, set[str]]:
    """Run the dates forward, re-run the middle one, then all in reverse; return the survivors per date."""
    run_ids = {dt: run_date(dag, dt, conf) for dt in DATES}

    history = commits(storage)
    assert [c[f"{METADATA_PREFIX}dt"] for c in history] == DATES, "exactly one new version per date, in order"
    announced = asset_events(run_ids.values())
    for commit in history:
        dt = commit[f"{METADATA_PREFIX}dt"]
        assert commit[f"{METADATA_PREFIX}run_id"] == run_ids[dt]
        assert commit[f"{METADATA_PREFIX}mlflow_run_id"]
        # export's outlet: the curated table's Asset event names the version it committed, for training DAGs
        event = announced[run_ids[dt]]
        assert (event["version"], event["dt"], event["table"]) == (
            commit["version"], dt, storage.uri("datasets/curated"))
        assert event["rows"] == int(commit[f"{METADATA_PREFIX}exported"])
        ingested = int(commit[f"{METADATA_PREFIX}ingested"])
        exported = partition(storage, dt, commit["version"]).num_rows
        assert exported == int(commit[f"{METADATA_PREFIX}exported"])
        _, rejects = committed_ledger(storage, "curated", dt, commit["version"])
        report = ledger_report(rejects, dt, ingested, exported)
        assert report.balanced, report.render()
        # the demo corpus has every kind of drop on every date
        assert report.by_outcome["duplicate"] > 0 and report.by_outcome["filtered"] > 0
        assert report.by_outcome["quarantined"] > 0
        check_quality(storage, dt, commit["version"])

    store = FeedbackStore.open(None, load_config().annotation)
    batches = check_feedback(store, storage, history)

    toxic = [r for dt in DATES for r in committed_ledger(storage, "curated", dt)[1].to_pylist()
             if r["reason"] == "toxic"]
    assert toxic and all(r["detail"].startswith("toxicity=") for r in toxic), \
        "the toxicity rule is on by default and removes the demo's abusive comments"
    survivors = {dt: set(partition(storage, dt).column("doc_id").to_pylist()) for dt in DATES}
    # later dates lost their copies of earlier documents to history
    assert all(survivors[a].isdisjoint(survivors[b]) for a in DATES for b in DATES if a < b)

    # an expert judges one exported document of the middle date bad: its re-run keeps that batch as it is, and
    # the document leaves the date (ledger reason expert_rejected); nothing else of the date changes
    judged = next(i for i in store.open_queue("carol", dt=DATES[1], limit=None) if i.pool == "kept")
    judgement = store.submit("carol", judged.item_id, "bad", category="low_quality", rationale="boilerplate")
    before = partition(storage, DATES[1])
    assert judged.doc_id in before.column("doc_id").to_pylist()
    before = before.filter(pc.not_equal(before.column("doc_id"), judged.doc_id))
    run_date(dag, DATES[1], conf)
    assert len(commits(storage)) == 4
    kept = store.batch(DATES[1])
    assert (kept.batch_id, kept.items, kept.judged) == (batches[DATES[1]].batch_id, batches[DATES[1]].items, 1)
    assert kept.table_version == batches[DATES[1]].table_version, "a kept batch keeps the version it was exported in"
    after = partition(storage, DATES[1])
    moved = ["lineage", "scores", "sampling_weight", "consensus"]  # one bad label moves its groups' weights a little
    assert after.drop_columns(moved).equals(before.drop_columns(moved)), "re-run changed the date"
    # scores hold NaN (unscored), which Arrow's equality never matches: compare their JSON
    assert json.dumps(after.column("scores").to_pylist()) == json.dumps(before.column("scores").to_pylist())
    rejected = [r for r in committed_ledger(storage, "curated", DATES[1])[1].to_pylist()
                if r["reason"] == "expert_rejected"]
    assert [(r["doc_id"], r["stage"], r["outcome"]) for r in rejected] == [(judged.doc_id, "merge_feedback",
                                                                            "filtered")]
    assert f"#{judgement.annotation_id}" in rejected[0]["detail"]
    survivors[DATES[1]].discard(judged.doc_id)
    assert {dt: set(partition(storage, dt).column("doc_id").to_pylist()) for dt in DATES} == survivors

    for dt in reversed(DATES):
        run_date(dag, dt, conf)
    assert len(commits(storage)) == 7
    assert store.batch(DATES[1]).batch_id == batches[DATES[1]].batch_id
    assert store.batch(DATES[0]).batch_id != batches[DATES[0]].batch_id, "an unjudged batch is chosen anew"
    check_feedback(store, storage, commits(storage)[-3:])
    store.engine.dispose()
    assert {dt: set(partition(storage, dt).column("doc_id").to_pylist()) for dt in DATES} == survivors
    return survivors


def check_feedback(store: FeedbackStore, storage: Storage, history: list[dict]) -> dict:
    """Each date has one batch within the budget, from its own rows as exported (kept) or dropped by a quality
    rule (the audit share), assigned to two experts who may judge its domain; return the batches by date."""
    batches = {}
    for commit in history:
        dt = commit[f"{METADATA_PREFIX}dt"]
        batch = batches[dt] = store.batch(dt)
        assert batch is not None and 0 < batch.items <= 100, f"{dt}: no batch within the default budget of 100"
        if batch.judged:  # kept from the run that chose it, with the version it was exported in
            assert batch.table_version < commit["version"] and batch.run_id != commit[f"{METADATA_PREFIX}run_id"]
        else:
            assert batch.table_version == commit["version"], "the batch names the version its documents are in"
            assert batch.run_id == commit[f"{METADATA_PREFIX}run_id"]
        exported = {r["doc_id"]: r["text"] for r in partition(storage, dt, commit["version"]).select(
            ["doc_id", "text"]).to_pylist()}
        _, rejects = committed_ledger(storage, "curated", dt, commit["version"])
        filtered = set(rejects.filter(pc.equal(rejects.column("stage"), "quality")).column("doc_id").to_pylist())
        items = [store.history(doc_id) for doc_id in store.queued_doc_ids() if store.history(doc_id).item.dt == dt]
        assert len(items) == batch.items
        audit = [h for h in items if h.item.pool == "filtered"]
        assert audit and all(h.item.doc_id in filtered and h.item.strategy == "audit" for h in audit)
        judged_out = set(rejects.filter(pc.equal(rejects.column("reason"), "expert_rejected")).column("doc_id")
                         .to_pylist())
        for h in items:
            if h.item.pool == "kept" and h.item.doc_id not in judged_out:  # a document judged bad left the date
                assert exported[h.item.doc_id] == h.item.text, "the expert sees the text as it was exported"
            assert len(h.assigned) == 2 and ("bob" not in h.assigned or h.item.domain == "news")
    return batches


def check_quality(storage: Storage, dt: str, version: int) -> None:
    """Scored rows carry their scores and verdict; rules filtered rows with readable reasons; PII is redacted."""
    import re

    _, rejects = committed_ledger(storage, "curated", dt, version)
    quality = rejects.filter(pc.equal(rejects.column("stage"), "quality")).to_pylist()
    assert quality, f"{dt}: the demo's low-quality documents must be filtered by a quality rule"
    for row in quality:
        assert row["outcome"] == "filtered" and row["reason"] and re.fullmatch(r"[\w.]+=[-\w.]+[<>][-\w.]+",
                                                                              row["detail"]), row
    table = partition(storage, dt, version)
    assert {"scores", "quality", "quality_verdict"} <= set(table.column_names)
    assert set(table.column("quality_verdict").to_pylist()) <= {"pass", "review"}
    scorers = {f.name for f in table.schema.field("scores").type}
    assert {"heuristics", "language", "pii", "credibility", "relevance"} <= scorers
    texts = "\n".join(table.column("text").to_pylist())
    assert not re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", texts), "an e-mail address survived redaction"
    assert "<EMAIL>" in texts or "<PHONE>" in texts, "the demo's PII documents were exported redacted"


def check_mlflow(dt_runs: list[str]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("dctp_daily")
    for dt in DATES:
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.dt = '{dt}'")
        finished = [r for r in runs if r.info.status == "FINISHED" and r.data.tags.get("run_id") in dt_runs]
        assert finished, f"no finished MLflow run for {dt}"
        metrics = finished[0].data.metrics
        for stage in STAGES:
            assert metrics[f"{stage}.total"] > 0 and metrics[f"{stage}.seconds"] >= 0
            assert f"{stage}.rows_per_s" in metrics
        assert metrics["ingest.total"] == metrics["ledger.ingested"]
        assert metrics["ledger.exported"] == metrics["export.kept"]
        assert metrics["dedup_exact.dropped_exact_duplicate"] > 0
        assert metrics["dedup_near.dropped_near_duplicate"] > 0  # the demo corpus has edited copies every day
        assert finished[0].data.params["normalize.min_chars"] == "50"
        artifacts = {a.path for a in client.list_artifacts(finished[0].info.run_id)}
        assert {"ledger.json", "ledger.txt", "reports", "card"} <= artifacts
        reports = {a.path for a in client.list_artifacts(finished[0].info.run_id, "reports")}
        assert reports == {"reports/dedup_near.md", "reports/dedup_semantic.md", "reports/quality.md",
                           "reports/select_for_annotation.md", "reports/merge_feedback.md",
                           "reports/generate_synthetic.md",  # its plan: no domain short by the default config
                           "reports/validation.html"}  # the version export checked before committing
        assert {a.path for a in client.list_artifacts(finished[0].info.run_id, "card")} == {"card/README.md"}
        plots = {a.path for a in client.list_artifacts(finished[0].info.run_id, "plots")}
        assert {"plots/quality.png", "plots/heuristics.png", "plots/pii.png"} <= plots
        verdicts = metrics["quality.pass"] + metrics["quality.review"] + metrics["quality.fail"]
        assert verdicts == metrics["quality.total"]
        assert metrics["score_models.embeddings_encoded"] == 0, "relevance reuses semantic dedup's vectors"
        assert metrics["select_for_annotation.vectors_encoded"] == 0, "diversity reuses semantic dedup's vectors"
        assert metrics["select_for_annotation.selected"] == 100, "the default budget, a batch kept or chosen anew"


def test_three_dates_on_local_files(dag, airflow_db, tmp_path, monkeypatch, capsys):
    root = (tmp_path / "data").as_uri()
    monkeypatch.setenv("DCTP_DATA_ROOT", root)
    monkeypatch.setenv("DCTP_CONFIG", str(config_file(tmp_path, ROSTER)))
    monkeypatch.setenv("DCTP_FEEDBACK_URL", f"sqlite:///{tmp_path}/feedback.db")
    storage = Storage(root)
    demo_corpus().generate(storage, DATES, seed=7, rows_per_day=300)

    survivors = check_three_dates(dag, storage)

    assert all(len(ids) > 100 for ids in survivors.values())
    table = partition(storage, DATES[0])
    assert "perplexity" in {f.name for f in table.schema.field("scores").type}
    rejected = check_apply(storage, capsys)
    check_rescore(storage, DATES[0], rejected)
    from mlflow.tracking import MlflowClient

    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("dctp_daily").experiment_id], max_results=500)
    check_mlflow([r.data.tags["run_id"] for r in runs])


def test_three_dates_on_s3_with_postgres_source(dag, airflow_db, s3_bucket, moto_server, pg_conn, pg_table_name,
                                                pg_database, monkeypatch, tmp_path):
    # the feedback store on PostgreSQL, through the dctp_feedback connection and the postgres provider's hook
    monkeypatch.setenv("AIRFLOW_CONN_DCTP_FEEDBACK", pg_database)
    # The pipeline must find the endpoint through the aws_default connection, not the environment.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    connection = {"conn_type": "aws", "login": "testing", "password": "testing",
                  "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"}}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    dsn = pg_conn.dsn
    monkeypatch.setenv("AIRFLOW_CONN_DCTP_SOURCE_PG", f"postgresql://{pg_conn.info.user}@127.0.0.1:5432/test")
    root = f"s3://{s3_bucket}/data"
    monkeypatch.setenv("DCTP_DATA_ROOT", root)
    storage = Storage(root, S3Options(endpoint_url=moto_server, access_key="testing", secret_key="testing"))
    summary = demo_corpus().generate(storage, DATES, seed=11, rows_per_day=300, pg_conn=pg_conn,
                                     table=pg_table_name)
    assert summary and dsn
    # A new table source is a deployment change (the config file), never a per-run override.
    monkeypatch.setenv("DCTP_CONFIG", str(config_file(tmp_path, {"ingest.sources.articles_db.enabled": True,
                                                                 "ingest.sources.articles_db.postgres.table":
                                                                     pg_table_name, **ROSTER})))
    conf = {"config_overrides": NO_PERPLEXITY}

    survivors = check_three_dates(dag, storage, conf)

    with pg_conn.cursor() as cur:
        for dt in DATES:
            cur.execute(f'SELECT count(*) FROM "{pg_table_name}" WHERE published_at >= %s::date '
                        f"AND published_at < %s::date + 1", (dt, dt))
            in_day = cur.fetchone()[0]
            table = partition(storage, dt)
            from_pg = pc.sum(pc.equal(table.column("source"), "articles_db")).as_py()
            assert 0 < from_pg <= in_day, f"{dt}: {from_pg} table rows exported of {in_day} in the interval"
            assert all(d.startswith("articles_db/") for d in
                       table.filter(pc.equal(table.column("source"), "articles_db")).column("doc_id").to_pylist())
    assert storage.list_files("datasets/curated/_delta_log"), "the Delta log lives on S3"
    assert all(survivors.values())


def check_apply(storage: Storage, capsys) -> str:
    """The experts judge an exported document of the first date bad: one dctp_feedback_apply run removes it from its
    partition in one new version whose ledger counts it as retracted; a second run, with nothing new, commits
    nothing. Return the document's id."""
    from airflow.dag_processing.dagbag import DagBag

    from dctp_tasks.cli import main
    from dctp_tasks.export.delta import commit_info, dataset_dir

    store = FeedbackStore.open(None, load_config().annotation)
    item = next(i for i in store.open_queue("alice", dt=DATES[0], limit=None) if i.pool == "kept")
    judged = [store.submit(expert, item.item_id, "bad", category="off_topic")
              for expert in store.history(item.doc_id).assigned]
    store.engine.dispose()
    before = open_table(storage, "curated").version()
    assert item.doc_id in partition(storage, DATES[0]).column("doc_id").to_pylist()
    apply_dag = DagBag(dag_folder=str(REPO / "dags")).dags["dctp_feedback_apply"]
    assert apply_dag.test().state == "success"
    version = open_table(storage, "curated").version()
    assert version == before + 1, "one new version"
    assert item.doc_id not in partition(storage, DATES[0]).column("doc_id").to_pylist()
    assert item.doc_id in partition(storage, DATES[0], before).column("doc_id").to_pylist(), "time travel keeps it"
    info = commit_info(storage, dataset_dir("curated"), version)
    assert (info[f"{METADATA_PREFIX}operation"], info[f"{METADATA_PREFIX}reason"]) == ("retract", "expert_rejected")
    assert json.loads(info[f"{METADATA_PREFIX}judgements"]) == {item.doc_id: [j.annotation_id for j in judged]}
    commit, rejects = committed_ledger(storage, "curated", DATES[0])
    report = ledger_report(rejects, DATES[0], int(commit[f"{METADATA_PREFIX}ingested"]),
                           partition(storage, DATES[0]).num_rows)
    assert report.balanced and report.by_outcome["retracted"] == 1, report.render()
    assert apply_dag.test().state == "success"
    assert open_table(storage, "curated").version() == version, "nothing new: no version"
    capsys.readouterr()
    assert main(["ledger", DATES[0]]) == 0
    assert "+ retracted 1" in capsys.readouterr().out
    assert main(["feedback", "stats"]) == 0
    out = capsys.readouterr().out
    assert "Krippendorff's alpha" in out and "alice" in out
    assert main(["weights"]) == 0
    assert "prior share judged good" in capsys.readouterr().out
    return item.doc_id


def check_rescore(storage: Storage, dt: str, rejected: str) -> None:
    """dctp_rescore re-decides a date with a stricter rule: more rows filtered, a new version, the ledger balances,
    and the stored model scores are untouched; a document the experts rejected stays out."""
    from airflow.dag_processing.dagbag import DagBag

    from dctp_tasks.staging import stage_version

    def staged_versions():
        return {stage: stage_version(storage, "dctp_daily", dt, stage) for stage in ("score_models", "quality")}

    scored = staged_versions()
    manifest = storage.read_bytes(storage.path(scored["score_models"], "_manifest.json"))
    before = partition(storage, dt).num_rows
    versions = len(commits(storage))
    rescore = DagBag(dag_folder=str(REPO / "dags")).dags["dctp_rescore"]
    run = rescore.test(run_conf={"date": dt, "quality_thresholds": {"heuristics.too_few_words": 60}})
    assert run.state == "success"
    history = commits(storage)
    assert len(history) == versions + 1 and history[-1][f"{METADATA_PREFIX}dt"] == dt
    after = partition(storage, dt)
    assert 0 < after.num_rows < before
    assert min(pc.utf8_length(after.column("text")).to_pylist()) > 0
    _, rejects = committed_ledger(storage, "curated", dt)
    report = ledger_report(rejects, dt, int(history[-1][f"{METADATA_PREFIX}ingested"]), after.num_rows)
    assert report.balanced and report.by_reason.get("filtered.too_few_words", 0) > 0, report.render()
    assert rejected not in after.column("doc_id").to_pylist()
    assert report.by_reason["filtered.expert_rejected"] == 1 and report.by_outcome["retracted"] == 0
    assert staged_versions() == scored, "re-deciding rewrote no score and left the daily DAG's staging alone"
    assert storage.read_bytes(storage.path(scored["score_models"], "_manifest.json")) == manifest


def test_malformed_day_fails_ingest_at_once_and_marks_mlflow_failed(dag, airflow_db, tmp_path, monkeypatch):
    from airflow.utils.session import create_session
    from mlflow.tracking import MlflowClient

    root = (tmp_path / "data").as_uri()
    monkeypatch.setenv("DCTP_DATA_ROOT", root)
    storage = Storage(root)
    good = "\n".join(json.dumps({"id": str(i), "text": f"A perfectly fine document number {i} " * 3})
                     for i in range(3))
    storage.write_bytes(storage.path("landing", "web", "dt=2026-03-01", "good.jsonl"), good.encode())
    storage.write_bytes(storage.path("landing", "web", "dt=2026-03-01", "broken.jsonl"), b"{not json\n" * 7)

    run = dag.test(logical_date=datetime(2026, 3, 1, tzinfo=UTC), run_conf={"sources": ["web"]})

    assert run.state == "failed"
    with create_session() as session:
        ingest = run.get_task_instance("ingest", session=session)
        assert ingest.state == "failed"
        assert ingest.try_number == 1, "a quarantine-ratio failure must not burn retries"
        assert run.get_task_instance("export", session=session).state in {"upstream_failed", None}
    rejects = staged_drops(storage, "dctp_daily", "2026-03-01")  # published before the task failed
    assert rejects.num_rows == 7 and set(rejects.column("file").to_pylist()) == {
        "landing/web/dt=2026-03-01/broken.jsonl"}
    client = MlflowClient()
    experiment = client.get_experiment_by_name("dctp_daily")
    [mlflow_run] = client.search_runs([experiment.experiment_id], filter_string=f"tags.run_id = '{run.run_id}'")
    assert mlflow_run.info.status == "FAILED"
    failure = client.download_artifacts(mlflow_run.info.run_id, "failures/ingest.txt")
    text = open(failure).read()
    assert "QuarantineRatioExceeded" in text and "broken.jsonl" in text
