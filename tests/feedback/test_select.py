"""The select_for_annotation stage on a real scored and decided day: budget, audit share, strata, snapshots,
assignments, exclusions, the committee, and re-runs that keep judged batches."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from dctp_tasks.config import load_config
from dctp_tasks.feedback.select import AUDIT, select_for_annotation_day
from dctp_tasks.feedback.store import FeedbackStore
from dctp_tasks.ledger import RejectWriter
from dctp_tasks.quality.decide import decide_day
from dctp_tasks.quality.scoring import score_day
from dctp_tasks.staging import REJECTS, ROWS, stage_output, stage_rejects, stage_rows
from dctp_tasks.storage import Storage
from tests.conftest import make_table, publish_stage, stage_dedup_input, staged
from tests.quality.scorers_for_tests import use_test_scorers

DAG = "dag"
DOMAINS = ("news", "forum", "science")
EXPERTS = {"alice": {}, "bob": {"domains": ["news"]}, "carol": {"seniority": "senior"}}


@pytest.fixture(autouse=True)
def test_scorers(monkeypatch):
    use_test_scorers(monkeypatch)


def day_rows(dt: str, n: int = 240, prefix: str = "") -> list[tuple]:
    """Texts of many lengths (the length scorer's quality) and x shares (the xmodel scorer's), in 3 domains and 2
    sources; every 10th row carries an e-mail address, and texts under 20 characters fail the length rule."""
    rng = np.random.default_rng(zlib.crc32(f"{dt}/{prefix}".encode()))
    rows = []
    for i in range(n):
        words = int(rng.integers(1, 30))
        text = " ".join(f"w{j}" for j in range(words)) + " xxxxxxxx" * int(rng.integers(0, 4)) + f" row {i}"
        if i % 10 == 0:
            text += " mail me at someone@example.com"
        rows.append((f"{('web', 'forum')[i % 2]}/{prefix}{i}", text, None, DOMAINS[i % 3]))
    return rows


def settings(**overrides) -> dict:
    return {"quality.scorers": {"length": {}, "xmodel": {}, "pii": {}}, "quality.classifiers": {},
            "annotation.budget": 40,
            "annotation.experts": EXPERTS, "annotation.diversity": False, **overrides}


def decided(storage: Storage, dt: str, cfg, rows: list[tuple]) -> dict:
    stage_dedup_input(storage, DAG, dt, "dedup_semantic", rows)
    cpu = score_day(storage, cfg, DAG, dt, "cpu")
    gpu = score_day(storage, cfg, DAG, dt, "gpu", input_stage=cpu.output_stage or cpu.stage, input_version=cpu.version)
    result = decide_day(storage, cfg, DAG, dt, input_stage=gpu.output_stage or gpu.stage, input_version=gpu.version)
    return result.as_dict()


def select(storage, store, cfg, dt: str, decision: dict):
    return select_for_annotation_day(storage, cfg, DAG, dt, store=store, input_version=decision["version"],
                                     scores_version=decision["scores_version"], run_id=f"run-{dt}")


@pytest.fixture
def world(tmp_path):
    storage = Storage((tmp_path / "data").as_uri())
    cfg = load_config(overrides=settings())
    store = FeedbackStore.open(f"sqlite:///{tmp_path}/feedback.db", cfg.annotation, upgrade=True)
    yield storage, store, cfg
    store.engine.dispose()


def test_the_batch_meets_budget_audit_share_mix_and_strata(world):
    storage, store, cfg = world
    dt = "2026-05-01"
    decision = decided(storage, dt, cfg, day_rows(dt))
    result = select(storage, store, cfg, dt, decision)

    queue = store.open_queue("alice", limit=None) + store.open_queue("bob", limit=None)
    items = {i.doc_id: store.history(i.doc_id).item for i in queue}
    assert result.extra["selected"] == 40 == store.batch(dt).items
    assert result.extra["picked_audit"] == 4, "10 % of the budget audits the filtered rows"
    # the other 36 split 0.5 / 0.3 / 0.2 within each stratum, by largest remainder
    assert result.extra["picked_uncertainty"] + result.extra["picked_qbc"] + result.extra["picked_random"] == 36
    assert result.extra["picked_uncertainty"] > result.extra["picked_qbc"] > 0 and result.extra["picked_random"] > 0
    strata = [k for k in result.extra if k.startswith("stratum.")]
    assert len(strata) == 6, "3 domains x 2 sources, each with at least its minimum"
    kept = set(storage.read_table(stage_rows(storage, DAG, dt, "quality", decision["version"]),
                                  columns=["doc_id"]).column("doc_id").to_pylist())
    filtered = {r["doc_id"]: r for r in stage_rejects(storage, DAG, dt, "quality", decision["version"]).to_pylist()}
    everything = store.counts(dt)
    assert everything["items"] == 40 and everything["assignments"] == 80
    for item in items.values():
        if item.strategy == AUDIT:
            assert item.pool == "filtered" and item.doc_id in filtered
            assert item.filter_reason == filtered[item.doc_id]["reason"] and item.verdict == "fail"
        else:
            assert item.pool == "kept" and item.doc_id in kept and item.verdict in ("pass", "review")
        assert "someone@example.com" not in item.text, "the expert sees the text as exported: PII redacted"
        assert set(item.scores) == {"length", "xmodel", "pii"}
    report = storage.read_bytes(storage.path(result.extra["report"])).decode()
    assert "chosen **40**" in report and "| audit | 4 |" in report


def test_uncertainty_takes_the_rows_nearest_the_review_line(world):
    storage, store, cfg = world
    dt = "2026-05-02"
    cfg = load_config(overrides=settings(**{"annotation.strategies": {"uncertainty": 1.0},
                                            "annotation.audit_share": 0.0, "annotation.stratify_by": [],
                                            "annotation.budget": 10}))
    decision = decided(storage, dt, cfg, day_rows(dt))
    select(storage, store, cfg, dt, decision)
    batch = [store.history(doc_id).item for doc_id in store.queued_doc_ids()]
    chosen = sorted(abs(i.quality - cfg.quality.review_below) for i in batch)
    all_quality = storage.read_table(stage_rows(storage, DAG, dt, "quality", decision["version"]),
                                     columns=["quality"]).column("quality").to_numpy()
    nearest = np.sort(np.abs(all_quality - cfg.quality.review_below))[:10]
    assert len(batch) == 10 and np.allclose(chosen, nearest, atol=1e-6)


def test_an_untrained_classifier_scores_nan_and_changes_no_choice(world):
    storage, store, _ = world
    dt = "2026-05-03"
    untrained = {"expert_quality": {"positive_is_good": True, "missing_ok": True}}
    cfg = load_config(overrides=settings(**{"annotation.strategies": {"uncertainty": 1.0},
                                            "annotation.audit_share": 0.0, "annotation.stratify_by": [],
                                            "annotation.budget": 10, "quality.classifiers": untrained}))
    decision = decided(storage, dt, cfg, day_rows(dt))
    select(storage, store, cfg, dt, decision)
    batch = batch_items(store, dt)
    assert all(i.scores["classifier_expert_quality"]["probability"] is None for i in batch), "NaN is stored as null"
    chosen = sorted(abs(i.quality - cfg.quality.review_below) for i in batch)
    all_quality = storage.read_table(stage_rows(storage, DAG, dt, "quality", decision["version"]),
                                     columns=["quality"]).column("quality").to_numpy()
    nearest = np.sort(np.abs(all_quality - cfg.quality.review_below))[:10]
    assert len(batch) == 10 and np.allclose(chosen, nearest, atol=1e-6), "the NaN margin adds nothing"


def test_nan_classifier_probabilities_are_no_information():
    import pyarrow as pa

    from dctp_tasks.feedback.select import Day, strategy_scores
    from dctp_tasks.feedback.strategies import top_k
    from dctp_tasks.quality.classifier import ClassifierConfig, ClassifierScorer
    from dctp_tasks.quality.decide import Decisions

    def scores(quality: list[float], p: list[float] | None) -> dict[str, np.ndarray]:
        scorers = [] if p is None else [ClassifierScorer(ClassifierConfig(name="expert_quality",
                                                                          positive_is_good=True, missing_ok=True))]
        n = len(quality)
        none = np.full(n, None, dtype=object)
        decisions = Decisions(np.array(quality), np.zeros(n, dtype=np.int64), none, none,
                              {s.name: {"probability": np.array(p, dtype=np.float32)} for s in scorers}, none)
        day = Day(pa.array([f"d{i}" for i in range(n)]), np.zeros(n, dtype=np.int64), ["all"], np.ones(n, bool),
                  decisions, scorers)
        return strategy_scores(day, load_config().annotation, 0.5)

    quality = [0.5, 0.5, 0.9, 0.9, np.nan]
    alone = scores(quality, None)
    untrained = scores(quality, [np.nan] * 5)
    for name in ("uncertainty", "qbc"):
        np.testing.assert_array_equal(untrained[name], alone[name])
    mixed = scores(quality, [0.99, np.nan, 0.5, np.nan, np.nan])
    # a row the classifier has no probability for keeps its composite's closeness; one with neither has no score
    np.testing.assert_allclose(mixed["uncertainty"][[1, 3]], alone["uncertainty"][[1, 3]])
    assert np.isclose(mixed["uncertainty"][0], (1.0 + 0.02) / 2) and np.isnan(mixed["uncertainty"][4])
    assert 4 not in top_k(mixed["uncertainty"], 5).tolist() and 4 not in top_k(mixed["qbc"], 5).tolist()


def test_experts_get_their_domains_balanced_and_two_per_item(world):
    storage, store, cfg = world
    dt = "2026-05-03"
    select(storage, store, cfg, dt, decided(storage, dt, cfg, day_rows(dt)))
    counts = store.counts(dt)["experts"]
    for name in ("alice", "bob", "carol"):
        for item in store.open_queue(name, limit=None):
            assert EXPERTS[name].get("domains") is None or item.domain in EXPERTS[name]["domains"]
    news = sum(1 for doc_id in store.queued_doc_ids() if store.history(doc_id).item.domain == "news")
    assert sum(c["open"] for c in counts.values()) == 80, "two experts per document"
    assert counts["bob"]["open"] == news, "bob may judge only news, and, least loaded, gets every news document"
    assert abs(counts["alice"]["open"] - counts["carol"]["open"]) <= 1


def test_a_queued_document_is_never_chosen_again_and_budget_zero_is_off(world):
    storage, store, cfg = world
    rows = day_rows("2026-05-04")
    select(storage, store, cfg, "2026-05-04", decided(storage, "2026-05-04", cfg, rows))
    first = set(store.queued_doc_ids())
    # the next date holds the same documents again (as a re-delivered source would)
    result = select(storage, store, cfg, "2026-05-05", decided(storage, "2026-05-05", cfg, rows))
    second = set(store.queued_doc_ids()) - first
    assert result.extra["already_queued"] == 40 and len(second) == 40 and not second & first

    off = load_config(overrides=settings(**{"annotation.budget": 0}))
    result = select(storage, store, off, "2026-05-06", decided(storage, "2026-05-06", off, day_rows("2026-05-06")))
    assert result.extra == {"selected": 0, "switched_off": 1, "vectors_encoded": 0}
    assert store.batch("2026-05-06") is None


def test_a_rerun_replaces_an_unjudged_batch_and_keeps_a_judged_one(world):
    storage, store, cfg = world
    dt = "2026-05-07"
    decision = decided(storage, dt, cfg, day_rows(dt))
    select(storage, store, cfg, dt, decision)
    first = store.batch(dt)
    other = load_config(overrides=settings(**{"annotation.budget": 30}))
    select(storage, store, other, dt, decision)
    second = store.batch(dt)
    assert second.batch_id != first.batch_id and second.items == 30

    item = store.next_item("alice")
    store.submit("alice", item.item_id, "good")
    before = {i.doc_id for i in store.open_queue("carol", limit=None)}
    result = select(storage, store, cfg, dt, decision)
    assert result.extra["kept_judged_batch"] == 1 and store.batch(dt).batch_id == second.batch_id
    assert "chosen **30**" in storage.read_bytes(storage.path(result.extra["report"])).decode(), "the kept batch's"
    assert store.batch(dt).items == 30 and {i.doc_id for i in store.open_queue("carol", limit=None)} == before


def test_the_committee_of_expert_labels_joins_qbc(world):
    storage, store, cfg = world
    cfg = load_config(overrides=settings(**{"annotation.committee_min_labels": 20, "annotation.budget": 40,
                                            "annotation.committee_size": 3}))
    store.config = cfg.annotation
    select(storage, store, cfg, "2026-05-08", decided(storage, "2026-05-08", cfg, day_rows("2026-05-08")))
    result = select(storage, store, cfg, "2026-05-09", decided(storage, "2026-05-09", cfg, day_rows("2026-05-09",
                                                                                                     prefix="b")))
    assert result.extra["committee_labels"] == 0, "no judgements yet: the scorers' vote entropy alone"
    for number, item in enumerate(store.open_queue("carol", limit=None)[:30]):
        store.submit("carol", item.item_id, ("good", "bad")[number % 2])
    dt = "2026-05-10"
    result = select(storage, store, cfg, dt, decided(storage, dt, cfg, day_rows(dt, prefix="c")))
    assert result.extra["committee_labels"] == 30 and result.extra["picked_qbc"] > 0
    assert result.extra["committee_members"] == 3
    assert result.extra["vectors_encoded"] > 0, "no stored vectors in this test: the judged documents were encoded"


def skewed_rows(dt: str) -> list[tuple]:
    """A day whose strata differ in size: 140 news, 62 forum, 20 science rows, all from web."""
    rows = day_rows(dt, n=222)
    domains = ["news"] * 140 + ["forum"] * 62 + ["science"] * 20
    return [(f"web/{i}", text, None, domain) for i, ((_, text, _, _), domain) in enumerate(zip(rows, domains))]


def batch_items(store: FeedbackStore, dt: str) -> list:
    return [h.item for h in map(store.history, store.queued_doc_ids()) if h.item.dt == dt]


@pytest.mark.parametrize(("mode", "minimum"), [("proportional", 0), ("proportional", 5), ("equal", 1)])
def test_stratification_and_its_minimum(world, mode, minimum):
    storage, store, _ = world
    dt = "2026-05-11"
    cfg = load_config(overrides=settings(**{"annotation.budget": 30, "annotation.audit_share": 0.0,
                                            "annotation.stratify_by": ["domain"], "annotation.stratification": mode,
                                            "annotation.min_per_stratum": minimum}))
    decision = decided(storage, dt, cfg, skewed_rows(dt))
    kept = storage.read_table(stage_rows(storage, DAG, dt, "quality", decision["version"]),
                              columns=["domain"]).column("domain").to_pylist()
    sizes = {d: kept.count(d) for d in ("news", "forum", "science")}
    assert min(sizes.values()) >= 10 and sizes["news"] > 5 * sizes["science"], sizes
    select(storage, store, cfg, dt, decision)
    chosen = {d: sum(1 for i in batch_items(store, dt) if i.domain == d) for d in sizes}
    assert sum(chosen.values()) == 30
    if mode == "equal":
        assert chosen == {"news": 10, "forum": 10, "science": 10}
    else:
        share = {d: 30 * n / len(kept) for d, n in sizes.items()}
        assert chosen["science"] == max(minimum, round(share["science"])), (chosen, share)
        assert abs(chosen["news"] - share["news"]) <= minimum + 1, (chosen, share)


def test_experts_per_item_and_the_seed_of_the_random_share(world):
    storage, store, _ = world
    dt = "2026-05-12"
    random_only = {"annotation.strategies": {"random": 1.0}, "annotation.audit_share": 0.0}
    cfg = load_config(overrides=settings(**random_only, **{"annotation.experts_per_item": 1}))
    decision = decided(storage, dt, cfg, day_rows(dt))
    select(storage, store, cfg, dt, decision)
    first = {i.doc_id for i in batch_items(store, dt)}
    assert store.counts(dt)["assignments"] == 40 == len(first), "one expert per document"
    select(storage, store, cfg, dt, decision)
    assert {i.doc_id for i in batch_items(store, dt)} == first, "the same seed draws the same documents"
    reseeded = load_config(overrides=settings(**random_only, **{"annotation.seed": 1}))
    select(storage, store, reseeded, dt, decision)
    assert {i.doc_id for i in batch_items(store, dt)} != first and store.counts(dt)["assignments"] == 80


def test_diversity_spreads_the_batch_over_the_stored_vectors(world):
    from dctp_tasks.config import SemanticDedupConfig
    from dctp_tasks.dedup.semantic import _write_state
    from dctp_tasks.embeddings import encoder_identity, vectors_column

    storage, store, _ = world
    dt = "2026-05-13"
    base = {"annotation.strategies": {"uncertainty": 1.0}, "annotation.audit_share": 0.0,
            "annotation.stratify_by": [], "annotation.budget": 10}
    cfg = load_config(overrides=settings(**base))
    decision = decided(storage, dt, cfg, day_rows(dt))
    # semantic dedup's stored vectors: the 30 documents nearest the review line are one near-duplicate cluster
    scores = storage.read_table(stage_rows(storage, DAG, dt, "score_models"), columns=["doc_id"])
    kept = storage.read_table(stage_rows(storage, DAG, dt, "quality", decision["version"]),
                              columns=["doc_id", "quality"]).to_pylist()
    cluster = {r["doc_id"] for r in sorted(kept, key=lambda r: abs(r["quality"] - 0.5))[:30]}
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(scores.num_rows, 384)).astype(np.float32)
    ids = scores.column("doc_id").to_pylist()
    vectors[[i for i, d in enumerate(ids) if d in cluster]] = rng.normal(size=384) + 0.01 * rng.normal(size=(30, 384))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    _write_state(storage, dt, scores.column("doc_id").combine_chunks(), vectors_column(vectors, "float16"), 384,
                 "float16", encoder_identity(SemanticDedupConfig(), 384))

    plain = load_config(overrides=settings(**base, **{"annotation.diversity": False}))
    select(storage, store, plain, dt, decision)
    assert {i.doc_id for i in batch_items(store, dt)} <= cluster, "without diversity: the 10 nearest the line"
    diverse = load_config(overrides=settings(**base, **{"annotation.diversity": True}))
    result = select(storage, store, diverse, dt, decision)
    assert result.extra["vectors_encoded"] == 0, "the stored vectors are reused"
    assert len({i.doc_id for i in batch_items(store, dt)} & cluster) <= 2, "k-center leaves the cluster at once"
    narrow = load_config(overrides=settings(**base, **{"annotation.diversity_pool": 1}))
    select(storage, store, narrow, dt, decision)
    assert {i.doc_id for i in batch_items(store, dt)} <= cluster, "k-center among only 20 candidates, all in it"


def test_the_batch_is_stamped_only_by_the_run_that_chose_it(world):
    storage, store, cfg = world
    dt = "2026-05-14"
    select(storage, store, cfg, dt, decided(storage, dt, cfg, day_rows(dt)))
    assert not store.stamp_table_version(dt, 7, run_id="a later run that kept it")
    assert store.batch(dt).table_version is None
    assert store.stamp_table_version(dt, 7, run_id=f"run-{dt}") and store.batch(dt).table_version == 7
    assert {i.table_version for i in batch_items(store, dt)} == {7}


def publish_duplicates(storage: Storage, dt: str, stage: str, drops: list[tuple], rows=None) -> None:
    """Publish ``stage``'s output for ``dt`` with ``drops`` — ``(doc_id, duplicate_of, reason, detail)`` — as the
    duplicates it removed, and ``rows`` (the current ones if not given) as what it kept."""
    rows = staged(storage, DAG, dt, stage) if rows is None else rows
    with stage_output(storage, DAG, dt, stage) as out, out.writer(ROWS, schema=rows.schema) as writer, \
            RejectWriter(storage, out.sub(REJECTS), dt, stage) as rejects:
        writer.write(rows)
        for doc_id, duplicate_of, reason, detail in drops:
            rejects.add(doc_id, "duplicate", reason, detail, duplicate_of=duplicate_of)


def test_a_chosen_document_lists_the_duplicates_dedup_removed(world):
    storage, store, cfg = world
    dt = "2026-05-15"
    rows = day_rows(dt, n=30)  # fewer rows than the budget: every one is chosen
    decision = decided(storage, dt, cfg, rows)
    chosen, other = "web/2", "forum/3"
    removed = {"web/exact": rows[2][1], "web/near": "a long text, mail me at someone@example.com " * 20,
               "web/sem1": "nearly the same words", "web/sem2": "the same idea", "forum/sem3": "much the same",
               "web/else": "a copy of another row"}
    normalized = make_table([text for _, text, _, _ in rows] + list(removed.values()),
                            doc_id=[doc_id for doc_id, *_ in rows] + list(removed), dt=[dt] * (len(rows) + 6))
    publish_stage(storage, DAG, dt, "normalize", normalized)
    publish_duplicates(storage, dt, "dedup_exact", [("web/exact", chosen, "exact_duplicate",
                                                     "exact content_hash=ab12 (same day)")], rows=normalized)
    publish_duplicates(storage, dt, "dedup_near", [("web/near", chosen, "near_duplicate",
                                                    "minhash jaccard≈0.955 (same day)")], rows=normalized)
    publish_duplicates(storage, dt, "dedup_semantic", [
        ("web/sem1", chosen, "semantic_duplicate", "cosine=0.951 (same day)"),
        ("web/sem2", chosen, "semantic_duplicate", "cosine=0.962 (history dt=2026-05-01)"),
        ("forum/sem3", other, "semantic_duplicate", "cosine=0.930 (same day)"),
        ("web/else", "web/gone", "semantic_duplicate", "cosine=0.990 (same day)")])

    select(storage, store, cfg, dt, decision)
    assert len(store.queued_doc_ids()) == 30
    duplicates = store.history(chosen).item.duplicates
    # at most three: exact copies first, then near ones, then semantic ones, each most similar first (0.951 left out)
    assert [(d["doc_id"], d["reason"], d["detail"]) for d in duplicates] == [
        ("web/exact", "exact_duplicate", "exact content_hash=ab12 (same day)"),
        ("web/near", "near_duplicate", "minhash jaccard≈0.955 (same day)"),
        ("web/sem2", "semantic_duplicate", "cosine=0.962 (history dt=2026-05-01)")]
    assert duplicates[0]["text"] == rows[2][1] and duplicates[2]["text"] == "the same idea"
    near = store.history(chosen).item.duplicates[1]["text"]
    assert len(near) == 300 and "someone@example.com" not in near, "the first 300 characters, PII redacted"
    assert [d["doc_id"] for d in store.history(other).item.duplicates] == ["forum/sem3"]
    assert store.history("web/4").item.duplicates == []


def test_duplicates_without_normalized_texts_or_dedup_stages(world):
    storage, store, cfg = world
    dt = "2026-05-16"
    rows = day_rows(dt, n=30)
    decision = decided(storage, dt, cfg, rows)
    publish_duplicates(storage, dt, "dedup_semantic", [("web/sem", "web/2", "semantic_duplicate", "cosine=0.95")])
    select(storage, store, cfg, dt, decision)  # no normalize, no dedup_exact, no dedup_near for the date
    assert store.history("web/2").item.duplicates == [{"doc_id": "web/sem", "reason": "semantic_duplicate",
                                                       "detail": "cosine=0.95", "text": None}]


def test_report_cells_are_inert():
    from dctp_tasks.dedup.report import table_cell as _cell

    assert _cell("news|<script>alert(1)</script>\x1b]0;pwned\x07\u202e") == \
        "news\\|&lt;script&gt;alert(1)&lt;/script&gt; ]0;pwned  "
