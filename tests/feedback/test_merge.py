"""Merging expert judgements: source and domain weights, the consensus history in the store, one more review for
undecided documents, and the merge_feedback stage on a small decided day."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import sqlalchemy as sa

from dctp_tasks.config import FeedbackConfig, load_config
from dctp_tasks.feedback.consensus_db import (
    MergeRecord,
    assign_reviews,
    consensus_history,
    current_consensus,
    effective_labels,
    merge_run,
    record_merge,
    rejected_documents,
)
from dctp_tasks.feedback.db import assignments, consensus
from dctp_tasks.feedback.merge import merge_feedback_day
from dctp_tasks.feedback.store import FeedbackStore, NewItem
from dctp_tasks.feedback.weights import GroupWeight, Weights, group_weights, row_weights
from dctp_tasks.records import content_hashes
from dctp_tasks.staging import stage_rejects
from dctp_tasks.storage import Storage
from tests.conftest import make_table, publish_stage, staged

DAG = "dag"
DT = "2026-06-01"
EARLIER = "2026-05-31"
SCRIPT = "<script>alert(1)</script>"
EXPERTS = {"alice": {}, "bob": {"seniority": "senior", "weight": 2.0}, "carol": {},
           "dave": {"seniority": "junior"}, "abe": {"seniority": "senior", "domains": ["science"]}}


def settings(**overrides) -> dict:
    return {"quality.classifiers": {}, "feedback.classifier.enabled": False, "annotation.experts": EXPERTS,
            **overrides}


@pytest.fixture
def world(tmp_path):
    storage = Storage((tmp_path / "data").as_uri())
    cfg = load_config(overrides=settings())
    store = FeedbackStore.open(f"sqlite:///{tmp_path}/feedback.db", cfg.annotation, upgrade=True)
    yield storage, store, cfg
    store.engine.dispose()


def queue(store: FeedbackStore, dt: str, docs: list[tuple]) -> dict[str, int]:
    """Queue ``(doc_id, source, domain, experts)`` as date ``dt``'s batch; return ``doc_id -> item_id``."""
    new = [NewItem(doc_id=d, dt=dt, text=f"text of {d}", pool="kept", strategy="random", stratum="all", source=s,
                   domain=m, experts=list(e)) for d, s, m, e in docs]
    store.replace_batch(dt=dt, dag_id=DAG, run_id=f"run-{dt}", budget=len(new), strategy_mix={"random": 1.0},
                        config_hash="x", mlflow_run_id=None, staged_version=None, new_items=new)
    return {d: store.history(d).item.item_id for d, *_ in docs}


def consensus_rows(store: FeedbackStore) -> int:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(consensus)).scalar_one()


# -- weights ---------------------------------------------------------------------------------------------------


def test_group_weights_move_with_evidence_around_the_overall_share():
    cfg = FeedbackConfig()
    sources = np.array(["big"] * 200 + ["small"] * 3 + ["rest"] * 400, dtype=object)
    good = np.r_[np.ones(203, bool), np.ones(100, bool), np.zeros(300, bool)]
    weights = group_weights(sources, np.full(603, None, dtype=object), good, cfg)

    prior = 303 / 603
    assert weights.prior_share == pytest.approx(prior)
    table = weights.table("source")
    for key, n_good, n in (("big", 200, 200), ("small", 3, 3), ("rest", 100, 400)):
        assert table[key] == pytest.approx((n_good + 20 * prior) / (n + 20) / prior)
    full = 1 / prior - 1  # how far an all-good group would move without a prior
    assert (table["small"] - 1) / full < 0.15, "3 labels barely move a weight"
    assert (table["big"] - 1) / full > 0.85, "200 labels move it most of the way"
    assert table["rest"] < 1
    assert weights.table("domain") == {"": pytest.approx(1.0)}, "null domains: one unknown group at the baseline"
    by_key = {(g.kind, g.key): g for g in weights.groups}
    assert (by_key["source", "rest"].good, by_key["source", "rest"].bad) == (100, 300)
    assert weights.as_dict()["source"]["small"]["good"] == 3

    bounded = group_weights(sources, sources, good, FeedbackConfig(weight_floor=0.8, weight_ceiling=1.5))
    assert bounded.table("source") == {"big": 1.5, "small": pytest.approx(table["small"]), "rest": 0.8}
    assert bounded.table("domain") == bounded.table("source")


def test_group_weights_of_one_sided_or_no_labels():
    cfg = FeedbackConfig()
    all_good = group_weights(np.array(["a", "b"], dtype=object), np.array(["x", "x"], dtype=object),
                             np.ones(2, bool), cfg)
    assert all_good.prior_share == 0.99, "clamped: an all-good baseline of 1.0 would divide badly"
    assert all(np.isfinite(g.weight) and g.weight >= 1.0 for g in all_good.groups)
    empty = group_weights(np.array([], dtype=object), np.array([], dtype=object), np.array([], bool), cfg)
    assert empty.groups == [] and empty.prior_share == 0.5


def test_row_weights_multiply_source_domain_quality_and_boost():
    cfg = FeedbackConfig()
    weights = Weights([GroupWeight("source", "a", 5, 0, 0.9, 2.0), GroupWeight("source", "", 0, 5, 0.1, 0.5),
                       GroupWeight("domain", "news", 5, 1, 0.8, 1.5)], 0.5)
    sources = pa.array(["a", None, "zzz", "a", "a"], pa.string())
    domains = pa.array(["news", "news", None, None, "other"], pa.string())
    quality = pa.array([1.0, 0.0, None, float("nan"), 1.7], pa.float32())
    good = np.array([True, False, False, True, False])
    out = row_weights(sources, domains, quality, good, weights, cfg)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [
        5.0,  # 2 x 1.5 x 1.5 x 1.5 = 6.75, capped at max_row_weight
        0.5 * 1.5 * 0.5,  # a null source is the unknown group's; quality 0 halves
        1.0,  # no group weights, null quality: factor 1
        2.0 * 1.5,  # NaN quality: factor 1; good: boosted
        2.0 * 1.5,  # quality above 1 is clipped to 1
    ])
    no_quality = row_weights(sources, domains, None, np.zeros(5, bool), weights, cfg)
    np.testing.assert_allclose(no_quality, [3.0, 0.75, 1.0, 2.0, 2.0])


# -- the store's merging side ----------------------------------------------------------------------------------


def test_effective_labels_take_each_experts_latest_live_judgement(world):
    _, store, _ = world
    ids = queue(store, DT, [("d/1", "web", "news", ["alice", "carol"]), ("d/2", "web", "news", ["alice", "bob"])])
    one, two = ids["d/1"], ids["d/2"]
    store.submit("alice", one, "good")
    corrected = store.submit("alice", one, "bad")  # a correction replaces the first
    store.submit("carol", one, "good")
    store.submit("carol", one, "skip")  # a later skip replaces the label and is left out
    kept = store.submit("alice", two, "good")
    store.submit("alice", two, "bad")
    assert store.retract_last("alice").label is None  # undo: back to alice's good
    store.submit("bob", two, "bad")
    store.retract_last("bob")  # bob's only judgement of d/2 is gone

    labels = effective_labels(store)
    got = sorted(zip(labels.item_id.tolist(), labels.expert.tolist(), labels.label.tolist(),
                     labels.annotation_id.tolist(), strict=True))
    assert got == sorted([(one, "alice", 0, corrected.annotation_id), (two, "alice", 1, kept.annotation_id)])
    assert labels.skips == 1


def test_effective_labels_of_an_empty_store(world):
    labels = effective_labels(world[1])
    assert labels.item_id.size == labels.label.size == 0 and labels.skips == 0


def test_record_merge_stores_only_changed_consensus_and_keeps_history(world):
    _, store, _ = world
    ids = queue(store, DT, [("d/1", "web", "news", []), ("d/2", "web", "news", [])])
    one, two = ids["d/1"], ids["d/2"]

    def record(rows: list[tuple]) -> tuple[int, int]:
        return record_merge(store, MergeRecord(
            dag_id=DAG, run_id="r", dt=DT, method="weighted_majority", judgements=4, documents=len(rows), stats={},
            config_hash="h", experts=[{"expert": "alice", "judgements": 2, "reliability": float("nan"),
                                       "agreement": 1.0, "flagged": False, "weight": 1.0}],
            weights=[{"kind": "source", "key": "web", "good": 1, "bad": 1, "share": 0.5, "weight": 1.0}],
            consensus_rows=[{"item_id": i, "label": label, "p_good": p, "confidence": max(p, 1 - p), "judgements": 2,
                             "method": "weighted_majority", "annotation_ids": json.dumps(a)}
                            for i, label, p, a in rows]))

    first, changed = record([(one, "good", 1.0, [1, 2]), (two, "needs_review", 0.5, [3, 4])])
    assert changed == 2 and consensus_rows(store) == 2
    second, changed = record([(one, "good", 1.0, [1, 2]), (two, "needs_review", 0.5, [3, 4])])
    assert second > first and changed == 0 and consensus_rows(store) == 2, "nothing changed: no rows"
    third, changed = record([(one, "good", 1.0, [1, 2]), (two, "bad", 0.0, [3, 4, 5])])
    assert changed == 1 and consensus_rows(store) == 3

    current = current_consensus(store)
    at = {int(i): n for n, i in enumerate(current.item_id)}
    assert current.label[at[one]] == "good" and current.merge_id[at[one]] == first
    assert current.label[at[two]] == "bad" and current.merge_id[at[two]] == third
    assert json.loads(current.annotation_ids[at[two]]) == [3, 4, 5]
    history = consensus_history(store, two)
    assert [(h["label"], h["merge_id"], h["annotation_ids"]) for h in history] == [
        ("needs_review", first, [3, 4]), ("bad", third, [3, 4, 5])]
    assert rejected_documents(store) == {"d/2": (DT, [3, 4, 5])}
    run = merge_run(store)
    assert run["merge_id"] == third and run["experts"][0]["expert"] == "alice" and len(run["weights"]) == 1

    # every judgement of `one` taken back: its consensus closes (no longer good, nor bad)
    fourth, changed = record([(two, "bad", 0.0, [3, 4, 5])])
    current = current_consensus(store)
    closed = list(current.item_id).index(one)
    assert changed == 1 and (current.label[closed], current.judgements[closed]) == ("needs_review", 0)
    assert record([(two, "bad", 0.0, [3, 4, 5])])[1] == 0, "a closed consensus is not closed again"


def test_a_merge_that_read_older_judgements_than_the_last_recorded_one_stores_nothing(world):
    _, store, _ = world
    item = queue(store, DT, [("d/1", "web", "news", [])])["d/1"]
    newer = record_merge(store, MergeRecord(
        dag_id=DAG, run_id="apply", dt=None, method="weighted_majority", judgements=1, documents=0,
        stats={"last_annotation_id": 9}, config_hash="h", consensus_rows=[], experts=[], weights=[]))
    stale = record_merge(store, MergeRecord(
        dag_id=DAG, run_id="daily", dt=DT, method="weighted_majority", judgements=1, documents=1,
        stats={"last_annotation_id": 5}, config_hash="h", experts=[], weights=[],
        consensus_rows=[{"item_id": item, "label": "bad", "p_good": 0.0, "confidence": 1.0, "judgements": 1,
                         "method": "weighted_majority", "annotation_ids": "[5]"}]))
    assert stale == (newer[0], 0) and merge_run(store)["run_id"] == "apply"


def test_assign_reviews_one_more_allowed_senior_once_everyone_judged(world):
    _, store, _ = world
    ids = queue(store, DT, [("d/news", "web", "news", ["alice", "carol"]),
                            ("d/science", "web", "science", ["alice", "carol"]),
                            ("d/open", "web", "news", ["alice", "carol"])])
    for doc in ("d/news", "d/science"):
        store.submit("alice", ids[doc], "good")
        store.submit("carol", ids[doc], "bad")
    store.submit("alice", ids["d/open"], "good")  # carol has not judged it yet

    made = assign_reviews(store, list(ids.values()), max_judgements=4)
    assert made == {ids["d/news"]: "bob", ids["d/science"]: "abe"}, "seniors first; abe judges science only"
    assert assign_reviews(store, list(ids.values()), max_judgements=4) == {}, "not again while bob and abe are on it"
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(assignments)).scalar_one() == 8

    store.submit("bob", ids["d/news"], "good")
    assert assign_reviews(store, [ids["d/news"]], max_judgements=3) == {}, "3 judgements: its chances are used up"
    assert assign_reviews(store, [ids["d/news"]], max_judgements=4) == {ids["d/news"]: "dave"}, \
        "no senior left who may judge news: the junior"
    assert assign_reviews(store, [], max_judgements=4) == {}


# -- the merge_feedback stage ----------------------------------------------------------------------------------


DAY = [  # doc_id, source, domain, quality, verdict
    ("web/good", "web", "news", 0.4, "review"),
    ("web/bad", "web", "news", 0.8, "pass"),
    ("forum/tie", "forum", "news", 0.45, "review"),
    ("forum/plain", "forum", "science", 0.9, "pass"),
    ("x/script", SCRIPT, None, None, "pass"),
]


def stage_quality_day(storage: Storage) -> str:
    """Publish a decided day (the ``quality`` stage's output); return its version."""
    n = len(DAY)
    texts = [f"text of {d}" for d, *_ in DAY]
    table = make_table(texts, doc_id=[d for d, *_ in DAY], source=[r[1] for r in DAY], domain=[r[2] for r in DAY],
                       dt=[DT] * n)
    for field, values in ((pa.field("lang", pa.string()), pa.array(["en"] * n)),
                          (pa.field("lang_score", pa.float32()), pa.array([0.9] * n, pa.float32())),
                          (pa.field("content_hash", pa.string()), content_hashes(pa.array(texts))),
                          (pa.field("quality", pa.float32()), pa.array([r[3] for r in DAY], pa.float32())),
                          (pa.field("quality_verdict", pa.string()), pa.array([r[4] for r in DAY]))):
        table = table.append_column(field, values)
    return publish_stage(storage, DAG, DT, "quality", table)


def judged_day(storage: Storage, store: FeedbackStore) -> tuple[str, dict[str, int], dict[str, list[int]]]:
    """Stage the day, queue it (and an earlier date's document), judge; return the version, item ids, and the
    judgement ids per document."""
    version = stage_quality_day(storage)
    pair = ["alice", "carol"]
    ids = queue(store, EARLIER, [("web/old", "web", "news", pair)])
    ids |= queue(store, DT, [(d, s, m, pair) for d, s, m, *_ in DAY if d != "forum/plain"])
    votes = {"web/old": ("bad", "bad"), "web/good": ("good", "good"), "web/bad": ("bad", "bad"),
             "forum/tie": ("good", "bad"), "x/script": ("good", "good")}
    judgement_ids = {d: [store.submit(e, ids[d], v).annotation_id for e, v in zip(pair, vs, strict=True)]
                     for d, vs in votes.items()}
    return version, ids, judgement_ids


def run_merge(storage, store, cfg, version: str, run: str = "r1"):
    return merge_feedback_day(storage, cfg, DAG, DT, store=store, input_version=version, run_id=run)


def test_merge_applies_consensus_to_the_day(world):
    storage, store, cfg = world
    version, ids, judgements = judged_day(storage, store)
    result = run_merge(storage, store, cfg, version)
    out = result.as_dict()

    assert (out["total"], out["kept"], out["dropped"], out["dropped_expert_rejected"]) == (5, 4, 1, 1)
    assert (out["merge_id"], out["changed"], out["promoted"], out["boosted"]) == (1, 5, 1, 2)
    assert out["rejected_earlier"] == 1 and out["reviews_assigned"] == 1 and out["output_stage"] == "merge_feedback"
    assert (out["good"], out["bad"], out["needs_review"], out["documents"], out["judgements"]) == (2, 2, 1, 5, 10)
    assert out["classifier_status"] == "disabled" and out["method"] == "weighted_majority"

    rows = {r["doc_id"]: r for r in staged(storage, DAG, DT, "merge_feedback").to_pylist()}
    assert set(rows) == {"web/good", "forum/tie", "forum/plain", "x/script"}, "the bad row left the day"
    assert {d: r["consensus"] for d, r in rows.items()} == {
        "web/good": "good", "forum/tie": "needs_review", "forum/plain": None, "x/script": "good"}
    assert {d: r["quality_verdict"] for d, r in rows.items()} == {
        "web/good": "pass", "forum/tie": "review", "forum/plain": "pass", "x/script": "pass"}, "good review -> pass"
    assert all(r["lineage"]["steps"][-1]["name"] == "merge_feedback" for r in rows.values())

    rejected = stage_rejects(storage, DAG, DT, "merge_feedback").to_pylist()
    assert [(r["doc_id"], r["stage"], r["outcome"], r["reason"], r["source"]) for r in rejected] == [
        ("web/bad", "merge_feedback", "filtered", "expert_rejected", "web")]
    a, b = judgements["web/bad"]
    assert rejected[0]["detail"] == f"consensus bad by judgements #{a},#{b}"

    # weights: the stored source and domain weights (Beta prior, 20 pseudo-labels at the overall share 2/4)
    run = merge_run(store, out["merge_id"])
    stored = {(w["kind"], w["key"]): w["weight"] for w in run["weights"]}
    assert stored[("source", "web")] == pytest.approx((1 + 10) / 23 / 0.5), "web: 1 good, 2 bad"
    assert stored[("source", SCRIPT)] == pytest.approx((1 + 10) / 21 / 0.5)
    assert stored[("domain", "")] == pytest.approx((1 + 10) / 21 / 0.5), "the null domain's group"
    assert ("source", "forum") not in stored, "the tie decides nothing"
    boost = {"good": cfg.feedback.good_boost}
    for doc_id, source, domain, quality, _ in DAY:
        if doc_id not in rows:
            continue
        factor = 1.0 if quality is None else 1 + 0.5 * (2 * float(np.float32(quality)) - 1)
        expected = stored.get(("source", source), 1.0) * stored.get(("domain", domain or ""), 1.0) * factor \
            * boost.get(rows[doc_id]["consensus"], 1.0)
        assert rows[doc_id]["sampling_weight"] == pytest.approx(min(expected, 5.0), rel=1e-9), doc_id

    # the tie goes to one more expert: the senior who may judge news
    assert store.history("forum/tie").assigned == ["alice", "bob", "carol"]
    assert [i.doc_id for i in store.open_queue("bob", limit=None)] == ["forum/tie"]
    assert rejected_documents(store) == {"web/bad": (DT, judgements["web/bad"]),
                                         "web/old": (EARLIER, judgements["web/old"])}

    assert out["report"] == f"reports/dt={DT}/merge_feedback.md"
    report = storage.read_bytes(storage.path(out["report"])).decode()
    assert "<script>" not in report and "&lt;script&gt;alert(1)&lt;/script&gt;" in report
    assert "1 rows removed (`expert_rejected`), 1 review rows promoted to pass, 2 rows with good" in report
    assert "{" not in report, "every placeholder filled in"
    assert "| alice | 5 |" in report and "| carol | 5 |" in report


def test_synthetic_documents_never_move_a_source_or_domain_weight(world):
    from dctp_tasks.feedback.merge import merge_judgements

    storage, store, cfg = world
    new = [NewItem(doc_id=d, dt=DT, text=f"text of {d}", pool="kept", strategy="random", stratum="all", source="web",
                   domain="science", experts=["alice", "carol"], synthetic=synthetic)
           for d, synthetic in (("web/real", False), ("synthetic/abc", True))]
    store.replace_batch(dt=DT, dag_id=DAG, run_id=f"run-{DT}", budget=2, strategy_mix={"random": 1.0},
                        config_hash="x", mlflow_run_id=None, staged_version=None, new_items=new)
    for doc_id, label in (("web/real", "good"), ("synthetic/abc", "bad")):
        item = store.history(doc_id).item.item_id
        for expert in ("alice", "carol"):
            store.submit(expert, item, label)
    merged = merge_judgements(store, cfg, dag_id=DAG, run_id="r", dt=DT)
    assert merged.docs("bad").keys() == {"synthetic/abc"}  # its consensus is kept (and applied to it) ...
    weights = {(g.kind, g.key): (g.good, g.bad) for g in merged.weights.groups}
    assert weights[("source", "web")] == (1, 0) and weights[("domain", "science")] == (1, 0)  # ... but not counted


def test_a_second_merge_without_new_judgements_changes_nothing(world):
    storage, store, cfg = world
    version, ids, _ = judged_day(storage, store)
    first = run_merge(storage, store, cfg, version).as_dict()
    rows = consensus_rows(store)
    again = run_merge(storage, store, cfg, version, run="r2").as_dict()
    assert again["merge_id"] == first["merge_id"] + 1 and again["changed"] == 0
    assert consensus_rows(store) == rows == 5
    assert again["reviews_assigned"] == 0, "bob's review of the tie is still open"
    assert (again["kept"], again["dropped_expert_rejected"]) == (4, 1)

    store.submit("bob", ids["forum/tie"], "good")  # weight 2 against 1: good with confidence 0.75
    third = run_merge(storage, store, cfg, version, run="r3").as_dict()
    assert third["changed"] == 1 and consensus_rows(store) == 6 and third["promoted"] == 2
    history = consensus_history(store, ids["forum/tie"])
    assert [(h["label"], h["merge_id"], h["run_id"]) for h in history] == [
        ("needs_review", first["merge_id"], "r1"), ("good", third["merge_id"], "r3")]
    assert history[-1]["p_good"] == pytest.approx(0.75) and history[-1]["judgements"] == 3
    tie = [r for r in staged(storage, DAG, DT, "merge_feedback").to_pylist() if r["doc_id"] == "forum/tie"][0]
    assert (tie["consensus"], tie["quality_verdict"]) == ("good", "pass")


def test_switched_off_passes_the_day_through(world):
    storage, store, _ = world
    version, _, _ = judged_day(storage, store)
    cfg = load_config(overrides=settings(**{"feedback.enabled": False}))
    result = run_merge(storage, store, cfg, version)
    assert (result.output_stage, result.version, result.total, result.kept) == ("quality", version, 5, 5)
    assert result.extra == {"switched_off": 1} and result.dropped == 0
    assert merge_run(store) is None and consensus_rows(store) == 0
    assert not storage.exists(f"reports/dt={DT}/merge_feedback.md")


def test_keeping_rejected_rows_still_labels_them_bad(world):
    storage, store, _ = world
    version, _, _ = judged_day(storage, store)
    cfg = load_config(overrides=settings(**{"feedback.remove_rejected": False, "feedback.classifier.enabled": True}))
    out = run_merge(storage, store, cfg, version).as_dict()
    assert (out["total"], out["kept"], out["dropped"], out["rejected_earlier"]) == (5, 5, 0, 0)
    assert out["classifier_status"] == "waiting" and out["classifier_labels"] == 4, "too few labels to retrain"
    rows = {r["doc_id"]: r for r in staged(storage, DAG, DT, "merge_feedback").to_pylist()}
    assert rows["web/bad"]["consensus"] == "bad" and rows["web/bad"]["quality_verdict"] == "pass"
    stored = {(w["kind"], w["key"]): w["weight"] for w in merge_run(store)["weights"]}
    factor = 1 + 0.5 * (2 * float(np.float32(0.8)) - 1)
    assert rows["web/bad"]["sampling_weight"] == pytest.approx(
        stored[("source", "web")] * stored[("domain", "news")] * factor), "no boost for bad"
    assert stage_rejects(storage, DAG, DT, "merge_feedback").num_rows == 0
