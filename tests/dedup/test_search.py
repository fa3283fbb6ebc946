"""The torch range search returns exactly what faiss flat does, and ``dedup_semantic`` decides alike with either."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from dctp_tasks.config import SemanticDedupConfig, load_config
from dctp_tasks.dedup import search
from dctp_tasks.dedup.search import build_index, range_search, resolve_backend
from dctp_tasks.dedup.semantic import dedup_semantic_day
from dctp_tasks.embeddings import STATE, embed_texts
from dctp_tasks.storage import Storage, state_dir
from tests.dedup.test_semantic import DAG, RATES, RATES_COPY, UNRELATED, kept_ids, read_mrpc, rejects, stage, ts

D1, D2 = "2026-03-01", "2026-03-02"


def both(vectors: np.ndarray, queries: np.ndarray, radius: float, block_elements: int | None = None):
    """Return faiss flat's and torch-on-the-CPU's pairs for the same search."""
    faiss_pairs = range_search(build_index(vectors, "faiss"), queries, radius)
    torch_pairs = range_search(build_index(vectors, "torch", device="cpu", block_elements=block_elements), queries,
                               radius)
    return faiss_pairs, torch_pairs


def assert_same(first, second) -> None:
    for a, b in zip(first, second, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert [a.dtype for a in first] == [np.int64, np.int64, np.float32]


def unit(rows: np.ndarray) -> np.ndarray:
    rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(np.float16).astype(np.float32)  # as semantic.py stores and compares them


@pytest.fixture(scope="module")
def mrpc(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """MiniLM vectors of 150 MRPC pairs' first and second sentences (100 paraphrases), rounded as stored."""
    paraphrase, other = read_mrpc(shared_data / "mrpc" / "msr_paraphrase_train.txt", per_label=100)
    pairs = paraphrase + other[:50]
    cfg = SemanticDedupConfig(device="cpu")
    first, second = (embed_texts([pair[side] for pair in pairs], cfg) for side in (0, 1))
    return unit(first), unit(second)


@pytest.mark.parametrize("block_elements", [50, 1_000, None])
def test_torch_matches_faiss_on_mrpc_embeddings(mrpc, block_elements):
    first, second = mrpc
    day = np.concatenate([first, second])
    found = {}
    for radius in (0.5, 0.8, 0.9, 0.95 - 1e-6):
        faiss_pairs, torch_pairs = both(day, day, radius, block_elements)
        assert_same(faiss_pairs, torch_pairs)
        found[radius] = len(faiss_pairs[0]) - len(day)  # less each row with itself
        history_pairs = both(first, second, radius, block_elements)  # queries and index differ
        assert_same(*history_pairs)
    assert found[0.5] > found[0.8] > found[0.9] > 0
    assert found[0.8] >= 2 * 40  # paraphrase pairs above 0.8 count once from each side


def test_torch_matches_faiss_on_planted_copies():
    rng = np.random.default_rng(7)
    index = rng.normal(size=(300, 48))
    index[200:220] = index[:20] + 0.02 * rng.normal(size=(20, 48))
    index[220:230] = index[30:40]  # exact duplicates
    index = unit(index)
    queries = unit(np.concatenate([index[50:60], index[60:70] + 0.05 * rng.normal(size=(10, 48)),
                                   rng.normal(size=(30, 48))]))

    for radius in (0.3, 0.9, 0.999):
        for block_elements in (30, 1_000, None):
            assert_same(*both(index, index, radius, block_elements))
            assert_same(*both(index, queries, radius, block_elements))
    rows, hits, cosine = both(index, index, 0.99)[1]
    pairs = set(zip(rows.tolist(), hits.tolist(), strict=True))
    assert {(30 + i, 220 + i) for i in range(10)} | {(220 + i, 30 + i) for i in range(10)} <= pairs
    assert {(i, 200 + i) for i in range(20)} <= pairs
    assert np.all(cosine > 0.99) and np.all(np.diff(rows) >= 0)
    rows, hits, _ = both(index, queries, 0.999)[1]
    assert rows.tolist()[:10] == list(range(10)) and hits.tolist()[:10] == list(range(50, 60))


def test_empty_queries_and_empty_index_find_nothing():
    vectors = unit(np.random.default_rng(1).normal(size=(20, 16)))
    empty = np.zeros((0, 16), np.float32)
    for index, queries in ((vectors, empty), (empty, vectors), (empty, empty)):
        faiss_pairs, torch_pairs = both(index, queries, 0.5)
        assert_same(faiss_pairs, torch_pairs)
        assert len(faiss_pairs[0]) == 0


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_pairs_are_exactly_those_above_the_radius_in_float64(backend):
    rng = np.random.default_rng(3)
    index, queries = unit(rng.normal(size=(200, 8))), unit(rng.normal(size=(120, 8)))
    exact = queries.astype(np.float64) @ index.astype(np.float64).T

    for radius in (0.0, 0.6, 0.8):
        rows, hits, cosine = range_search(build_index(index, backend, device="cpu", block_elements=64), queries,
                                          radius)
        want_rows, want_hits = np.nonzero(exact > radius)  # row-major: sorted by (query, index row)
        assert len(want_rows) >= 20
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(hits, want_hits)
        np.testing.assert_allclose(cosine, exact[want_rows, want_hits], rtol=0, atol=1e-7)


def mrpc_days(shared_data) -> dict[str, list[tuple]]:
    """Two days of MRPC sentences: paraphrase pairs within D1, within D2, and D2 sentences repeating D1's."""
    paraphrase, other = read_mrpc(shared_data / "mrpc" / "msr_paraphrase_train.txt", per_label=60)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    d1 = [(f"w/{i}.{side}", pair[side], start + timedelta(minutes=i), "news" if i % 2 else "forum")
          for i, pair in enumerate(paraphrase[:40] + other[:20]) for side in (0, 1)]
    d2 = [(f"x/{i}.{side}", pair[side], start + timedelta(minutes=i), "news" if i % 2 else "forum")
          for i, pair in enumerate(paraphrase[40:] + other[20:40]) for side in (0, 1)]
    d2 += [(f"x/r{i}", text + " ", start, domain) for i, (_, text, _, domain) in enumerate(d1[:30:3])]
    return {D1: d1, D2: d2}


def test_dedup_semantic_day_decides_alike_with_torch_and_faiss(tmp_path, shared_data, monkeypatch):
    config = load_config(overrides={"dedup_semantic.threshold": 0.9,
                                    "dedup_semantic.domain_thresholds": {"forum": 0.8}})
    embed_texts(["warm up"], config.dedup_semantic)
    monkeypatch.setitem(search.BLOCK_ELEMENTS, "cpu", 500)  # many small blocks
    if "cuda" in search.BLOCK_ELEMENTS:
        monkeypatch.setitem(search.BLOCK_ELEMENTS, "cuda", 500)
    outcomes = {}
    for backend in ("faiss", "torch"):
        storage = Storage(f"file://{tmp_path / backend}")
        config.dedup_semantic.search = backend
        results = {}
        for dt, rows in mrpc_days(shared_data).items():
            stage(storage, dt, rows)
            results[dt] = dedup_semantic_day(storage, config, DAG, dt)
            assert results[dt].extra["search"] == backend
        outcomes[backend] = {dt: (
            kept_ids(storage, dt),
            sorted((doc, r["outcome"], r["reason"], r["duplicate_of"], r["detail"])
                   for doc, r in rejects(storage, dt).items()),
            storage.read_table(state_dir(STATE, dt)).to_pylist(),
            results[dt].extra["candidate_pairs"]) for dt in results}

    assert outcomes["torch"] == outcomes["faiss"]
    (_, day1, _, pairs1), (_, day2, _, _) = outcomes["faiss"][D1], outcomes["faiss"][D2]
    assert len(day1) >= 10 and pairs1 >= len(day1)
    assert sum("(history dt=2026-03-01)" in detail for *_, detail in day2) >= 10
    assert any("(same day)" in detail for *_, detail in day2)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_history_ties_go_to_the_earlier_history_row(tmp_path, backend):
    from dctp_tasks.embeddings import embeddings_schema, encoder_identity
    from dctp_tasks.publish import publish

    storage = Storage(f"file://{tmp_path}")
    config = load_config(overrides={"dedup_semantic.search": backend})
    cfg = config.dedup_semantic
    vectors = embed_texts([RATES, UNRELATED[0], RATES], cfg).astype(np.float16)  # rows 0 and 2 tie
    schema = embeddings_schema(384, encoder=encoder_identity(cfg))
    with publish(storage, state_dir(STATE, D1)) as state, state.writer(schema=schema) as writer:
        flat = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 384)
        writer.write(pa.table({"doc_id": ["w/z", "w/u", "w/a"], "embedding": flat}, schema=schema))
    stage(storage, D2, [("x/a", RATES_COPY, ts(1)), ("x/u", UNRELATED[1], ts(2))])

    dedup_semantic_day(storage, config, DAG, D2)

    assert {doc: r["duplicate_of"] for doc, r in rejects(storage, D2).items()} == {"x/a": "w/z"}


def test_auto_search_resolves_to_faiss_without_cuda_and_torch_refuses_ivf():
    import torch

    assert resolve_backend("auto", "auto", 0) == ("torch" if torch.cuda.is_available() else "faiss")
    assert resolve_backend("auto", "cpu", 0) == "faiss"
    assert resolve_backend("auto", "auto", 16) == "faiss"
    assert resolve_backend("torch", "cpu", 0) == "torch"
    assert load_config().dedup_semantic.search == "auto"

    with pytest.raises(ValidationError, match="search: torch is an exact search and cannot use nlist=16"):
        load_config(overrides={"dedup_semantic.search": "torch", "dedup_semantic.nlist": 16})
    with pytest.raises(ValueError, match="nlist"):
        build_index(np.eye(4, dtype=np.float32), "torch", nlist=2)


def _pairs_at_the_radius(radius: float, count: int = 400, spread: float = 1e-4, dim: int = 384):
    """Return index rows ``u`` and queries ``v`` (float32) whose float64 cosine ``u_i . v_i`` lies within ``spread``
    of ``radius``: dozens of pairs sit closer to it than float32's rounding, so a search without its margin, or
    without the float64 rescoring, gets some of them wrong."""
    rng = np.random.default_rng(7)
    u = unit(rng.normal(size=(count, dim)))
    w = rng.normal(size=(count, dim))
    w -= (w * u).sum(axis=1, keepdims=True) * u
    w = unit(w)
    cosine = radius + rng.uniform(-spread, spread, size=count)
    v = (cosine[:, None] * u + np.sqrt(1 - cosine**2)[:, None] * w).astype(np.float32)
    return u.astype(np.float32), v


@pytest.mark.parametrize(("backend", "spread"), [("faiss", 3e-7), ("torch fp32", 3e-7), ("torch fp16", 2e-3)])
def test_pairs_within_rounding_of_the_radius_are_judged_exactly(backend, spread):
    """Cosines packed within the search precision's rounding of the radius: only the margin and the float64
    rescoring get every one right (without the margin, faiss's fp32 and torch's fp16 searches miss or add pairs
    here)."""
    radius = 0.9
    u, v = _pairs_at_the_radius(radius, spread=spread)
    exact = np.einsum("ij,ij->i", v.astype(np.float64), u.astype(np.float64))
    assert 100 < (exact > radius).sum() < 300
    if backend == "faiss":
        index = build_index(u, "faiss")
    else:
        index = search.TorchIndex(u, "cpu", block_elements=64 * 64, half=backend.endswith("fp16"))
    rows, hits, cosine = range_search(index, v, radius)

    expected = np.flatnonzero(exact > radius)
    assert rows.tolist() == expected.tolist() and hits.tolist() == expected.tolist()
    np.testing.assert_array_equal(cosine, exact[expected].astype(np.float32))
