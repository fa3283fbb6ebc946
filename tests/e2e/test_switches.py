"""Every documented switch and trigger-form Param, end to end: one ``dag.test()`` run of ``dctp_daily`` on a small
demo day each, asserting the switch's effect on what was exported, dropped, reported or tracked."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dctp_tasks.export import committed_ledger, open_table
from dctp_tasks.ledger import ledger_report
from dctp_tasks.staging import stage_rows
from dctp_tasks.storage import Storage, staging_dir
from tests.conftest import config_file, staged
from tests.conftest import rejects as staged_drops
from tests.e2e.test_dag_e2e import demo_corpus

pytestmark = pytest.mark.slow

DT = "2026-02-10"
FAST = {"quality.scorers.perplexity.enabled": False}
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
#: A web landing file of the switches' own: an author column (unmapped: it lands in meta) holding an e-mail, a
#: curly-quoted text with mojibake, and one text longer than any max_chars the tests set.
EXTRA = [
    {"id": "extra-1", "author": "ada@example.org", "domain": "science",
     "text": "“Curly quotes” open this entry about the cafÃ© by the river, which explains how rivers carve valleys "
             "over many thousands of years. The softest rock always goes first, and the harder layers stay behind as "
             "ridges and waterfalls. Geologists read the order of those layers like the pages of a book, and they "
             "can tell from the shape of a valley whether ice or water made it. Wide valleys with steep walls were "
             "often carved by glaciers, while narrow ones with sloping sides were cut by rivers. Write to "
             "ada@example.org for the field notes."},
    {"id": "extra-2", "author": "bob@example.org", "domain": "science",
     "text": " ".join(f"Sentence {i} describes a separate geological process in some detail." for i in range(70))},
]


@pytest.fixture
def dag():
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import REPO

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags["dctp_daily"]


@pytest.fixture
def storage(tmp_path, monkeypatch) -> Storage:
    root = (tmp_path / "data").as_uri()
    monkeypatch.setenv("DCTP_DATA_ROOT", root)
    monkeypatch.setenv("DCTP_FEEDBACK_URL", f"sqlite:///{tmp_path}/feedback.db")
    storage = Storage(root)
    demo_corpus().generate(storage, [DT], seed=3, rows_per_day=200)
    storage.write_bytes(storage.path("landing", "web", f"dt={DT}", "extra.jsonl"),
                        "\n".join(json.dumps(r, ensure_ascii=False) for r in EXTRA).encode())
    return storage


def feedback_store():
    from dctp_tasks.config import load_config
    from dctp_tasks.feedback.store import FeedbackStore

    return FeedbackStore.open(None, load_config().annotation)


def run(dag, conf: dict | None = None, expect: str = "success"):
    result = dag.test(logical_date=datetime.fromisoformat(DT).replace(tzinfo=UTC), run_conf=conf or {})
    assert result.state == expect, f"dctp_daily ended {result.state}"
    return result


def exported(storage: Storage):
    return open_table(storage, "curated").to_pyarrow_dataset().to_table()


def ledger(storage: Storage) -> tuple[dict, object]:
    """The committed ledger, after checking it balances against the date's partition."""
    commit, rejects = committed_ledger(storage, "curated", DT)
    report = ledger_report(rejects, DT, int(commit["dctp.ingested"]), exported(storage).num_rows)
    assert report.balanced, report.render()
    return commit, rejects


def details(rejects, reason: str) -> list[str]:
    return rejects.filter(pc.equal(rejects.column("reason"), reason)).column("detail").to_pylist()


def test_quality_enabled_false_keeps_every_row_unjudged_and_still_redacts(dag, airflow_db, storage):
    run(dag, {"config_overrides": {"quality.enabled": False}})

    _, rejects = ledger(storage)
    assert "quality" not in set(rejects.column("stage").to_pylist()), "nothing was judged, so nothing filtered"
    table = exported(storage)
    assert table.num_rows > 0
    assert table.column("quality").null_count == table.num_rows
    assert table.column("quality_verdict").null_count == table.num_rows
    assert not EMAIL.search("\n".join(table.column("text").to_pylist())), "PII is redacted without quality too"


def test_config_file_switches(dag, airflow_db, storage, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    storage.delete_dir("landing", "news", f"dt={DT}")  # a day without news: allowed, so nobody waits for it
    monkeypatch.setenv("DCTP_CONFIG", str(config_file(tmp_path, {
        "tracking.enabled": False,
        "quality.scorers.pii.redact": False,
        "ingest.sources.forum.enabled": False,
        "ingest.sources.news.allow_empty": True,
        "normalize.fix_unicode": False,
        "ingest.max_quarantine_ratio": 0.2,  # the demo's malformed rows are a larger share without forum and news
        "export.meta_fields": ["_file", "author"],
        "annotation.budget": 0,
        "feedback.enabled": False,
        **FAST,
    })))

    result = run(dag)

    commit, rejects = ledger(storage)
    table = exported(storage)
    sources = set(table.column("source").to_pylist()) | set(rejects.column("source").to_pylist())
    assert "forum" not in sources and "news" not in sources and "web" in sources
    texts = "\n".join(table.column("text").to_pylist())
    assert EMAIL.search(texts), "pii.redact false exports PII as it came"
    assert "cafÃ©" in texts, "fix_unicode false keeps mojibake"
    metas = [json.loads(m) for m in table.column("meta").to_pylist()]
    assert all(set(m) <= {"_file", "author"} for m in metas) and any("_file" in m for m in metas)
    assert {m["author"] for m in metas if "author" in m} == {"<EMAIL>"}, "meta values are redacted by default"
    assert "url" not in json.dumps(metas), "meta keys outside export.meta_fields are not exported"
    assert commit.get("dctp.mlflow_run_id") == ""
    client = MlflowClient()
    experiment = client.get_experiment_by_name("dctp_daily")
    tracked = client.search_runs([experiment.experiment_id], filter_string=f"tags.run_id = '{result.run_id}'") \
        if experiment else []
    assert tracked == [], "tracking.enabled false creates no MLflow run"
    assert feedback_store().batch(DT) is None, "annotation.budget 0 switches selection off"
    from dctp_tasks.feedback.consensus_db import merge_run

    assert merge_run(feedback_store()) is None and "dctp.merge_id" not in commit, \
        "feedback.enabled false merges nothing"
    assert "consensus" not in table.column_names and "merge_feedback" not in set(rejects.column("stage").to_pylist())


def test_trigger_form_params(dag, airflow_db, storage):
    from mlflow.tracking import MlflowClient

    result = run(dag, {
        "sources": ["web", "news", "instruct"],
        "min_chars": 80,
        "max_chars": 3000,
        "max_quarantine_ratio": 0.5,
        "near_dup_threshold": 0.9,
        "semantic_threshold": 0.99,
        "quality_thresholds": {"heuristics.too_few_words": 40},
        "min_quality": 0.88,  # the demo day's composite spans about 0.8-0.95 without perplexity
        "review_below": 1.0,
        "batch_size": 50,
        "annotation_budget": 7,
        "config_overrides": {"normalize.uncurl_quotes": True, "export.test_fraction": 0.5, **FAST,
                             "annotation.audit_share": 0.3, "annotation.strategies": {"random": 1.0}},
    })

    commit, rejects = ledger(storage)
    table = exported(storage)
    assert "forum" not in set(table.column("source").to_pylist()) | set(rejects.column("source").to_pylist())
    assert details(rejects, "too_short") and all(d.endswith("<80") for d in details(rejects, "too_short"))
    assert details(rejects, "too_long") == [f"chars={len(EXTRA[1]['text'])}>3000"]
    assert any(d.endswith("<40") for d in details(rejects, "too_few_words"))
    assert details(rejects, "low_quality") and all(d.endswith("<0.88") for d in details(rejects, "low_quality"))
    assert min(table.column("quality").to_pylist()) >= 0.88
    assert set(table.column("quality_verdict").to_pylist()) == {"review"}, "review_below 1.0 marks every kept row"
    near = storage.read_bytes(storage.path("reports", f"dt={DT}", "dedup_near.md")).decode()
    semantic = storage.read_bytes(storage.path("reports", f"dt={DT}", "dedup_semantic.md")).decode()
    assert "Thresholds (estimated Jaccard): 0.90" in near and "Thresholds (cosine): 0.99" in semantic
    normalized = staged(storage, "dctp_daily", DT, "normalize", columns=["doc_id", "text"]).to_pylist()
    [curly] = [r["text"] for r in normalized if r["doc_id"] == "web/extra-1"]
    assert curly.startswith('"Curly quotes" open') and "café" in curly, "uncurl_quotes straightens quotes"
    splits = table.column("split").to_pylist()
    assert 0.3 < splits.count("test") / len(splits) < 0.7, "export.test_fraction 0.5 puts half the ids in test"
    ingested = pq.ParquetFile(storage.fs.open_input_file(storage.list_files(
        stage_rows(storage, "dctp_daily", DT, "ingest"))[0]))
    assert max(ingested.metadata.row_group(i).num_rows for i in range(ingested.num_row_groups)) <= 50
    [tracked] = MlflowClient().search_runs([MlflowClient().get_experiment_by_name("dctp_daily").experiment_id],
                                           filter_string=f"tags.run_id = '{result.run_id}'")
    params = tracked.data.params
    assert (params["normalize.min_chars"], params["batch_size"], params["quality.review_below"]) == ("80", "50", "1.0")
    assert commit["dctp.config_hash"] == tracked.data.tags["config_hash"]
    store = feedback_store()
    batch = store.batch(DT)
    assert (batch.items, batch.budget, batch.config_hash) == (7, 7, commit["dctp.config_hash"])
    items = [store.history(doc_id).item for doc_id in store.queued_doc_ids()]
    assert sorted(i.strategy for i in items) == ["audit"] * 2 + ["random"] * 5, "30 % audit, the rest random"


def test_a_missing_source_waits_then_fails_naming_it(dag, airflow_db, storage):
    from airflow.utils.session import create_session

    storage.delete_dir("landing", "forum", f"dt={DT}")

    result = run(dag, {"config_overrides": FAST}, expect="failed")

    with create_session() as session:
        waited = result.get_task_instance("wait_for_landing", session=session)
        assert waited.state == "failed" and waited.try_number == 1, "a date long past fails at once, no retries"
        assert result.get_task_instance("ingest", session=session).state in {"upstream_failed", None}
    with pytest.raises(FileNotFoundError):
        staged(storage, "dctp_daily", DT, "ingest")
    assert staged_drops(storage, "dctp_daily", DT).num_rows == 0


def test_a_failed_preflight_fails_the_run_at_once_naming_the_fix(dag, airflow_db, storage, tmp_path, monkeypatch,
                                                                  capfd):
    from airflow.utils.session import create_session

    empty = tmp_path / "no-models"
    monkeypatch.setenv("DCTP_MODEL_CACHE", str(empty))  # SmolLM2 was never prepared here

    result = run(dag, {}, expect="failed")

    with create_session() as session:
        assert result.get_task_instance("preflight", session=session).state == "success"
        checked = result.get_task_instance("preflight_gpu", session=session)
        assert (checked.state, checked.try_number, checked.max_tries) == ("failed", 1, 0), "no retries"
        for downstream in ("dedup_semantic", "score_models", "export"):
            assert result.get_task_instance(downstream, session=session).state in {"upstream_failed", None}
    output = capfd.readouterr()
    logged = output.out + output.err
    assert "FAIL  model SmolLM2" in logged and str(empty) in logged and "prepare_models.py" in logged
    assert "preflight FAILED" in logged
    assert not storage.exists("datasets", "curated"), "nothing exported"

    # with perplexity switched off for the run, nothing needs SmolLM2 and the preflight passes
    run(dag, {"config_overrides": FAST})


def test_sharding_settings_map_the_heavy_stages_and_change_nothing_exported(dag, airflow_db, storage):
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session

    def shards(run_id: str) -> dict[str, list[str]]:
        with create_session() as session:
            tis = session.query(TaskInstance).filter(TaskInstance.run_id == run_id,
                                                     TaskInstance.map_index >= 0).all()
            assert {ti.state for ti in tis} == {"success"}
            return {task: sorted(ti.rendered_map_index for ti in tis if ti.task_id == task)
                    for task in {ti.task_id for ti in tis}}

    def rows():
        table = exported(storage).drop_columns(["lineage"])  # score lineage hashes its input files' layout
        return [comparable(row) for row in table.sort_by("doc_id").to_pylist()]

    conf = {"batch_size": 16, "config_overrides": FAST}
    single = run(dag, conf)
    before = rows()
    assert {task: len(labels) for task, labels in shards(single.run_id).items()} == \
        {"normalize_shard": 1, "score_shard": 1, "score_models_shard": 1, "dedup_near_sign": 1,
         "dedup_near_search": 1, "dedup_semantic_encode": 1, "dedup_semantic_search": 1}

    for stage in ("score", "score_models"):  # stored scores would be reused: score again, in shards
        storage.delete_dir(staging_dir("dctp_daily", DT, stage))
    sharded = run(dag, {"batch_size": 16, "config_overrides": {**FAST, "sharding.target_rows": 60,
                                                                "sharding.shards.score_models": 2,
                                                                "sharding.shards.dedup_near": 3}})

    mapped = shards(sharded.run_id)
    assert len(mapped["normalize_shard"]) == 4  # auto: 200+ rows at 60 per shard
    assert len(mapped["score_models_shard"]) == 2
    assert len(mapped["dedup_near_sign"]) == len(mapped["dedup_near_search"]) == 3
    assert mapped["score_models_shard"][0].startswith("score_models 1/2 rows 0-")  # the UI's name of each shard
    after = rows()
    assert len(after) == len(before)
    differ = sorted({key for old, new in zip(before, after, strict=True) for key in old if old[key] != new[key]})
    assert after == before, f"exported rows differ in {differ}"
    ledger(storage)


def comparable(value):
    """``value`` with NaN ("not scored") replaced by a marker, so that equal rows compare equal."""
    if isinstance(value, dict):
        return {key: comparable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [comparable(item) for item in value]
    return "NaN" if isinstance(value, float) and value != value else value
