"""End-to-end: the feedback loop over three dates of the real ``dctp_daily`` DAG, with simulated experts.

Each day the experts judge their queue through the store's API: three reliable experts report a planted truth (the
``forum`` source is bad, every other source good) 95 % of the time, ``dave`` mostly the opposite. The next version
drops every document judged bad, earlier dates' included; every date's ledger balances; the forum's sampling weight
falls below the others'; the expert-quality classifier is trained once enough labels exist and the next date is
scored with it; Dawid–Skene finds dave.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pyarrow.dataset as ds
import pytest

from dctp_tasks.config import load_config
from dctp_tasks.export import METADATA_PREFIX, committed_ledger, open_table
from dctp_tasks.export.delta import commit_info, dataset_dir
from dctp_tasks.feedback.consensus_db import current_consensus, item_facts, merge_run
from dctp_tasks.feedback.retrain import EXPERT_CLASSIFIER
from dctp_tasks.feedback.store import FeedbackStore
from dctp_tasks.ledger import ledger_report
from dctp_tasks.quality.classifier import model_version
from dctp_tasks.storage import Storage
from tests.conftest import REPO, config_file

pytestmark = pytest.mark.slow

DATES = ["2026-02-01", "2026-02-02", "2026-02-03"]
ACCURACY = {"alice": 0.95, "bob": 0.95, "carol": 0.95, "dave": 0.2}
SETTINGS = {
    "annotation.experts": {"alice": {}, "bob": {"seniority": "senior"}, "carol": {}, "dave": {}},
    "annotation.budget": 60,
    "quality.scorers.perplexity.enabled": False,  # the CPU-slow model adds nothing to the loop
    "feedback.dawid_skene_min_items": 40,
    "feedback.classifier.min_new_labels": 40,
    "feedback.classifier.min_per_class": 4,
}


def truth(item) -> str:
    return "bad" if item.source == "forum" else "good"


def judge_queues(store: FeedbackStore, rng: random.Random) -> int:
    """Every expert judges every item waiting for them; return the judgements made."""
    made = 0
    for expert, accuracy in ACCURACY.items():
        for item in store.open_queue(expert, limit=None):
            right = truth(item)
            label = right if rng.random() < accuracy else ("good" if right == "bad" else "bad")
            store.submit(expert, item.item_id, label, request_id=f"sim-{item.item_id}")
            made += 1
    return made


def table_ids(storage: Storage, dt: str) -> set[str]:
    table = open_table(storage, "curated").to_pyarrow_dataset().to_table(filter=ds.field("dt") == dt,
                                                                          columns=["doc_id"])
    return set(table.column("doc_id").to_pylist())


def test_experts_judgements_change_the_next_version(airflow_db, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from tests.e2e.test_dag_e2e import demo_corpus, run_date

    root = (tmp_path / "data").as_uri()
    monkeypatch.setenv("DCTP_DATA_ROOT", root)
    monkeypatch.setenv("DCTP_CONFIG", str(config_file(tmp_path, SETTINGS)))
    monkeypatch.setenv("DCTP_FEEDBACK_URL", f"sqlite:///{tmp_path}/feedback.db")
    storage = Storage(root)
    demo_corpus().generate(storage, DATES, seed=11, rows_per_day=220)
    bag = DagBag(dag_folder=str(REPO / "dags"))
    daily, apply = bag.dags["dctp_daily"], bag.dags["dctp_feedback_apply"]
    rng = random.Random(5)
    store: FeedbackStore | None = None
    trained_before: dict[str, str | None] = {}
    for dt in DATES:
        trained_before[dt] = model_version(storage, EXPERT_CLASSIFIER)
        run_date(daily, dt)
        store = store or FeedbackStore.open(None, load_config().annotation)
        assert judge_queues(store, rng) > 0
    assert apply.test(logical_date=datetime(2026, 2, 4, tzinfo=UTC)).state == "success"  # the last day's verdicts

    # every document judged bad is out of the latest version, on whichever date it was exported
    current = current_consensus(store)
    facts = item_facts(store, current.item_id)
    bad = {(d, doc) for doc, d, label in zip(facts.doc_id, facts.dt, current.label, strict=True) if label == "bad"}
    good = {(d, doc) for doc, d, label in zip(facts.doc_id, facts.dt, current.label, strict=True) if label == "good"}
    assert len(bad) > 10 and len(good) > 50
    assert {d for d, _ in bad} == set(DATES)
    present = {dt: table_ids(storage, dt) for dt in DATES}
    assert not [doc for d, doc in bad if doc in present[d]], "a document judged bad is still exported"
    kept_good = [doc for d, doc in good if doc in present[d]]
    assert kept_good, "documents judged good stay"

    # the ledger balances on every date; earlier dates count their removed rows as retracted
    retracted = 0
    for dt in DATES:
        commit, rejects = committed_ledger(storage, "curated", dt)
        report = ledger_report(rejects, dt, int(commit[f"{METADATA_PREFIX}ingested"]), len(present[dt]))
        assert report.balanced, report.render()
        retracted += report.by_outcome["retracted"]
    assert retracted > 0

    # the weights moved as predicted: forum judged bad, the other sources good
    latest = open_table(storage, "curated").version()
    weights = None
    for version in range(latest, -1, -1):
        raw = (commit_info(storage, dataset_dir("curated"), version) or {}).get(f"{METADATA_PREFIX}sampling_weights")
        if raw:
            weights = json.loads(raw)["source"]
            break
    assert weights is not None
    assert weights["forum"]["weight"] < 1.0 < weights["web"]["weight"]
    exported = open_table(storage, "curated").to_pyarrow_dataset().to_table(
        filter=ds.field("dt") == DATES[-1], columns=["source", "sampling_weight", "consensus"]).to_pylist()
    forum = [r["sampling_weight"] for r in exported if r["source"] == "forum" and r["consensus"] is None]
    web = [r["sampling_weight"] for r in exported if r["source"] == "web" and r["consensus"] is None]
    assert forum and web and sum(forum) / len(forum) < sum(web) / len(web)

    # the classifier was trained on the consensus labels once enough existed, and the next date scored with it
    assert trained_before[DATES[0]] is None and model_version(storage, EXPERT_CLASSIFIER) is not None
    first_scored = next(dt for dt in DATES if trained_before[dt] is not None)
    scores = open_table(storage, "curated").to_pyarrow_dataset().to_table(
        filter=ds.field("dt") == first_scored, columns=["scores"]).column("scores").to_pylist()
    probabilities = [s["classifier_expert_quality"]["probability"] for s in scores]
    assert all(p is not None and 0.0 <= p <= 1.0 for p in probabilities)
    queued = [store.history(doc).item for doc in store.queued_doc_ids()]
    chosen = [i.scores["classifier_expert_quality"]["probability"] for i in queued if i.dt == first_scored]
    assert chosen and all(p is not None for p in chosen), "selection read the classifier's probabilities"

    # Dawid-Skene found the unreliable expert
    run = merge_run(store)
    assert run["method"] == "dawid_skene" and run["stats"]["flagged"] == ["dave"]
    reliability = {e["expert"]: e["reliability"] for e in run["experts"]}
    assert reliability["dave"] < 0.5 < min(reliability[e] for e in ("alice", "bob", "carol"))
    store.engine.dispose()
