"""Domain relevance: real MiniLM on AG News separates topics; stored centroids read only dates before D."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from dctp_tasks.quality import embeddings
from dctp_tasks.quality.base import ScoringContext
from dctp_tasks.quality.embeddings import EmbeddingConfig
from dctp_tasks.quality.relevance import (
    CentroidSums,
    RelevanceConfig,
    RelevanceScorer,
    accepted_centroids,
    update_centroids,
)
from dctp_tasks.storage import Storage
from tests.conftest import make_table

SPORTS, SCITECH = 2, 4
REFERENCES = 50
HELD_OUT = 100


@pytest.fixture(scope="module")
def ag_news(shared_data) -> dict[str, list[str]]:
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(shared_data / "ag_news" / "test.csv")
    texts = pc.binary_join_element_wise(table.column("title"), table.column("description"), ". ").to_pylist()
    labels = table.column("label").to_pylist()
    return {name: [t for t, label in zip(texts, labels, strict=True) if label == code][:REFERENCES + HELD_OUT]
            for name, code in (("sports", SPORTS), ("scitech", SCITECH))}


@pytest.fixture(scope="module")
def relevance_scores(ag_news, tmp_path_factory) -> dict[str, np.ndarray]:
    """Each held-out article's relevance to the sports and to the sci/tech centroid (each text encoded once)."""
    config = RelevanceConfig(references={name: texts[:REFERENCES] for name, texts in ag_news.items()},
                             embedding=EmbeddingConfig(device="cpu", max_seq_length=128))
    scorer = RelevanceScorer(config)
    context = ScoringContext(Storage(str(tmp_path_factory.mktemp("root"))), "2026-01-01")
    scorer.prepare(context)
    held_out = ag_news["sports"][REFERENCES:] + ag_news["scitech"][REFERENCES:]
    ids = [f"ag/{i}" for i in range(len(held_out))]
    out = {}
    for domain in ("sports", "scitech"):
        batch = make_table(held_out, doc_id=ids, domain=[domain] * len(held_out)).to_batches()[0]
        out[domain] = scorer.score(batch)["relevance"]
    out["encoded"] = context.extra["embeddings"][config.embedding.key()].encoded
    return out


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Share of (positive, negative) pairs where the positive scores higher (ties count half)."""
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def test_held_out_sports_is_more_relevant_to_sports_than_scitech_is(relevance_scores):
    to_sports = relevance_scores["sports"]
    assert to_sports.dtype == np.float32 and not np.isnan(to_sports).any()
    separation = auc(to_sports[:HELD_OUT], to_sports[HELD_OUT:])
    print(f"AG News held-out relevance to the sports centroid: AUC {separation:.3f}")
    assert separation >= 0.9


def test_held_out_scitech_is_more_relevant_to_scitech_than_sports_is(relevance_scores):
    to_scitech = relevance_scores["scitech"]
    separation = auc(to_scitech[HELD_OUT:], to_scitech[:HELD_OUT])
    print(f"AG News held-out relevance to the sci/tech centroid: AUC {separation:.3f}")
    assert separation >= 0.9
    # The second domain's pass reused the first pass's vectors: 200 held-out docs, encoded once.
    assert relevance_scores["encoded"] == 2 * HELD_OUT


def fixed_vectors(monkeypatch, vectors: dict[str, list[float]]) -> None:
    """Make the encoder return a fixed vector per text (no model)."""
    monkeypatch.setattr(embeddings, "embed_texts",
                        lambda texts, cfg: np.array([vectors[t] for t in texts], dtype=np.float32))


def test_a_domain_without_centroid_scores_nan_and_is_never_filtered(tmp_path, monkeypatch):
    fixed_vectors(monkeypatch, {"ball": [1, 0], "chip": [0, 1], "mixed": [0.6, 0.8]})
    scorer = RelevanceScorer(RelevanceConfig(references={"sports": ["ball"]}, off_topic=0.5))
    scorer.prepare(ScoringContext(Storage(str(tmp_path)), "2026-01-01"))
    batch = make_table(["ball", "chip", "mixed", "chip"], domain=["sports", "sports", "sports", None]).to_batches()[0]
    rel = scorer.score(batch)["relevance"]
    np.testing.assert_allclose(rel[:3], [1.0, 0.0, 0.6], atol=1e-6)
    assert np.isnan(rel[3])
    assert scorer.rules[0].name == "off_topic"
    assert scorer.rules[0].fails(rel).tolist() == [False, True, False, False]
    quality = scorer.quality({"relevance": rel}, np.array(["sports"] * 3 + [None]))
    np.testing.assert_allclose(quality[:3], [1.0, 0.0, 1.0])
    assert np.isnan(quality[3])


def test_quality_is_a_linear_rescale_clipped_to_unit_interval():
    scorer = RelevanceScorer(RelevanceConfig(quality_floor=0.1, quality_ceiling=0.5))
    got = scorer.quality({"relevance": np.array([-0.3, 0.1, 0.3, 0.5, 0.9], np.float32)}, np.array([None] * 5))
    np.testing.assert_allclose(got, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def write_day(storage: Storage, dt: str, domains: list[str | None], vectors: np.ndarray) -> None:
    sums = CentroidSums()
    sums.add(pa.array(domains, pa.string()), vectors)
    sums.write(storage, dt, vectors.shape[1])


DAYS = {
    "2026-01-01": (["a", "a", "b"], [[1, 0, 0], [0.8, 0.6, 0], [0, 1, 0]]),
    "2026-01-02": (["b", None, "a"], [[0, 0.6, 0.8], [1, 0, 0], [0, 0, 1]]),
    "2026-01-03": (["c", "b"], [[0, 0, 1], [0, 1, 0]]),
}


def test_centroids_read_only_dates_before_d_whatever_the_run_order(tmp_path):
    forward, backward = Storage(str(tmp_path / "forward")), Storage(str(tmp_path / "backward"))
    for dt in sorted(DAYS):
        write_day(forward, dt, DAYS[dt][0], np.array(DAYS[dt][1], np.float32))
    for dt in sorted(DAYS, reverse=True):
        write_day(backward, dt, DAYS[dt][0], np.array(DAYS[dt][1], np.float32))
    for dt in ("2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"):
        one, other = accepted_centroids(forward, dt), accepted_centroids(backward, dt)
        assert one.keys() == other.keys()
        for domain in one:
            np.testing.assert_array_equal(one[domain], other[domain])
    assert accepted_centroids(forward, "2026-01-01") == {}
    # Before 01-03: a = mean of (1,0,0), (0.8,0.6,0), (0,0,1); the undomained row is skipped; c is not yet seen.
    got = accepted_centroids(forward, "2026-01-03")
    assert sorted(got) == ["a", "b"]
    expected = np.array([1.8, 0.6, 1.0]) / np.linalg.norm([1.8, 0.6, 1.0])
    np.testing.assert_allclose(got["a"], expected)
    assert sorted(accepted_centroids(forward, "2026-01-03", min_docs=3)) == ["a"]


def test_update_centroids_stores_the_kept_docs_of_the_day_and_blends_with_references(tmp_path, monkeypatch):
    fixed_vectors(monkeypatch, {"ball": [1, 0], "goal": [0, 1], "kick": [0.6, 0.8]})
    storage = Storage(str(tmp_path))
    context = ScoringContext(storage, "2026-01-01")
    scorer = RelevanceScorer(RelevanceConfig(references={"sports": ["ball"]}, min_accepted=1))
    scorer.prepare(context)
    kept = make_table(["goal", "goal"], domain=["sports", "sports"]).to_batches()
    lookup = context.extra["embeddings"][EmbeddingConfig().key()]
    assert update_centroids(storage, "2026-01-01", kept, lookup) == {"sports": 2}
    # The next day's centroid: half the reference direction (1, 0), half the kept docs' (0, 1).
    scorer.prepare(ScoringContext(storage, "2026-01-02"))
    rel = scorer.score(make_table(["kick"], domain=["sports"]).to_batches()[0])["relevance"]
    np.testing.assert_allclose(rel, [(0.6 + 0.8) / np.sqrt(2)], atol=1e-6)
    # Re-deciding 01-01 never sees its own kept docs: only the reference counts.
    scorer.prepare(ScoringContext(storage, "2026-01-01"))
    rel = scorer.score(make_table(["kick"], domain=["sports"]).to_batches()[0])["relevance"]
    np.testing.assert_allclose(rel, [0.6], atol=1e-6)
