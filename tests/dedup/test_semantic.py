from __future__ import annotations

import csv
import re
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest

from dctp_tasks.config import load_config
from dctp_tasks.dedup.semantic import dedup_semantic_day
from dctp_tasks.embeddings import STATE, embed_texts
from dctp_tasks.storage import Storage, state_dir
from tests.conftest import rejects as staged_drops
from tests.conftest import stage_dedup_input, staged

DAG = "dag"
D1, D2, D3 = "2026-03-01", "2026-03-02", "2026-03-03"
RATES = "The central bank raised interest rates by half a percentage point on Tuesday to fight inflation."
RATES_COPY = "The central bank raised interest rates by half a percentage point on Tuesday, to fight inflation."
BREAD = "A recipe for sourdough bread needs flour, water, salt and a lively starter."
BREAD_COPY = "A sourdough bread recipe needs flour, water, salt, and a lively starter."
HIKE = "The hikers reached the summit of the mountain just before sunset."
HIKE_PARAPHRASE = "The hikers got to the mountain's summit right before the sun set."  # cosine ≈ 0.86
UNRELATED = [
    "Fresh basil and ripe tomatoes make the simplest summer pasta sauce.",
    "The new compiler release speeds up incremental builds for large codebases.",
    "Migratory birds use the Earth's magnetic field to navigate thousands of kilometres.",
    "The orchestra will perform Beethoven's ninth symphony at the festival next month.",
]


@pytest.fixture(scope="module")
def encoder_config():
    """Load the shipped MiniLM once for the module (``sentence_encoder`` caches it per process)."""
    config = load_config()
    embed_texts(["warm up"], config.dedup_semantic)
    return config


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(f"file://{tmp_path}")


def ts(hour: int) -> datetime:
    return datetime(2026, 3, 1, hour, tzinfo=UTC)


def stage(storage: Storage, dt: str, rows: list[tuple]) -> None:
    """Write the date's ``dedup_near`` output: rows of ``(doc_id, text[, created_at[, domain]])``."""
    stage_dedup_input(storage, DAG, dt, "dedup_near", rows)


def run(storage: Storage, dt: str, config, **overrides):
    if overrides:
        config = load_config(overrides=overrides)
    return dedup_semantic_day(storage, config, DAG, dt)


def kept_ids(storage: Storage, dt: str) -> list[str]:
    return sorted(staged(storage, DAG, dt, "dedup_semantic").column("doc_id").to_pylist())


def rejects(storage: Storage, dt: str) -> dict[str, dict]:
    return {r["doc_id"]: r for r in staged_drops(storage, DAG, dt).to_pylist() if r["stage"] == "dedup_semantic"}


def read_mrpc(path, per_label: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    pairs: dict[str, list[tuple[str, str]]] = {"1": [], "0": []}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        for quality, _id1, _id2, first, second in reader:
            if len(pairs[quality]) < per_label:
                pairs[quality].append((first, second))
    return pairs["1"], pairs["0"]


def pair_cosines(pairs: list[tuple[str, str]], config) -> np.ndarray:
    left = embed_texts([a for a, _ in pairs], config.dedup_semantic)
    right = embed_texts([b for _, b in pairs], config.dedup_semantic)
    return np.einsum("ij,ij->i", left, right)


def test_mrpc_paraphrases_score_higher_than_non_paraphrases(shared_data, encoder_config):
    paraphrase, other = read_mrpc(shared_data / "mrpc" / "msr_paraphrase_train.txt", per_label=300)
    assert len(paraphrase) == len(other) == 300

    pos, neg = pair_cosines(paraphrase, encoder_config), pair_cosines(other, encoder_config)

    print(f"\nMRPC cosine: paraphrase mean {pos.mean():.3f}, non-paraphrase mean {neg.mean():.3f}")
    print("threshold  paraphrase>=  non-paraphrase>=")
    for threshold in (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98):
        print(f"{threshold:9.2f}  {np.mean(pos >= threshold):11.1%}  {np.mean(neg >= threshold):16.1%}")
    assert pos.mean() > neg.mean() + 0.05
    assert np.median(pos) > np.median(neg)


def test_near_identical_sentences_are_merged_and_unrelated_kept(storage, encoder_config):
    stage(storage, D1, [("w/b", RATES_COPY, ts(1)), ("w/a", RATES, ts(2)), ("w/c", BREAD, ts(3)),
                        ("w/d", BREAD_COPY, ts(3)), ("w/e", HIKE, ts(4)), ("w/f", HIKE_PARAPHRASE, ts(5))]
          + [(f"w/u{i}", text, ts(6)) for i, text in enumerate(UNRELATED)])

    result = run(storage, D1, encoder_config)

    dups = rejects(storage, D1)
    # Earliest created_at survives (w/b before w/a); same time: the smallest doc_id (w/c before w/d).
    assert {doc: r["duplicate_of"] for doc, r in dups.items()} == {"w/a": "w/b", "w/d": "w/c"}
    assert all(r["outcome"] == "duplicate" and r["reason"] == "semantic_duplicate" for r in dups.values())
    assert dups["w/a"]["detail"].startswith("cosine=0.99") and dups["w/a"]["detail"].endswith("(same day)")
    assert kept_ids(storage, D1) == sorted(["w/b", "w/c", "w/e", "w/f"] + [f"w/u{i}" for i in range(4)])
    assert (result.total, result.kept, result.dropped) == (10, 8, 2)
    assert result.dropped_by_reason == {"semantic_duplicate": 2}


@pytest.mark.parametrize(("domain_thresholds", "dropped"), [({}, []), ({"travel": 0.8}, ["w/f"]),
                                                            ({"cooking": 0.8}, [])])
def test_domain_threshold_override_changes_outcome(storage, encoder_config, domain_thresholds, dropped):
    stage(storage, D1, [("w/e", HIKE, ts(1), "travel"), ("w/f", HIKE_PARAPHRASE, ts(2), "travel"),
                        ("w/u", UNRELATED[0], ts(3), "cooking")])
    config = encoder_config.model_copy(deep=True)
    config.dedup_semantic.domain_thresholds = domain_thresholds

    run(storage, D1, config)

    assert sorted(rejects(storage, D1)) == dropped


def test_history_across_dates_and_reverse_rerun_give_same_survivors(storage, encoder_config):
    days = {
        D1: [("w/a", RATES, ts(1)), ("w/u0", UNRELATED[0], ts(2))],
        D2: [("w/a2", RATES_COPY, ts(1)), ("w/c", BREAD, ts(2)), ("w/u1", UNRELATED[1], ts(3))],
        D3: [("w/c2", BREAD_COPY, ts(1)), ("w/a3", RATES, ts(2)), ("w/u2", UNRELATED[2], ts(3))],
    }
    for dt, rows in days.items():
        stage(storage, dt, rows)

    def outcome() -> dict[str, tuple]:
        return {dt: (kept_ids(storage, dt), {d: (r["duplicate_of"], r["detail"][r["detail"].index("("):])
                                               for d, r in rejects(storage, dt).items()}) for dt in days}

    for dt in days:
        run(storage, dt, encoder_config)
    forward = outcome()
    for dt in reversed(days):
        run(storage, dt, encoder_config)

    assert outcome() == forward
    assert forward[D2][1] == {"w/a2": ("w/a", f"(history dt={D1})")}
    assert forward[D3][1] == {"w/c2": ("w/c", f"(history dt={D2})"), "w/a3": ("w/a", f"(history dt={D1})")}
    assert forward[D3][0] == ["w/u2"]


def test_embeddings_state_holds_survivors(storage, encoder_config):
    stage(storage, D1, [("w/a", RATES, ts(1)), ("w/a2", RATES_COPY, ts(2)), ("w/c", BREAD, ts(3))])

    result = run(storage, D1, encoder_config)

    state = storage.read_table(state_dir(STATE, D1))
    assert state.schema.field("embedding").type == pa.list_(pa.float16(), 384)
    assert sorted(state.column("doc_id").to_pylist()) == kept_ids(storage, D1) == ["w/a", "w/c"]
    vectors = np.stack(state.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    assert vectors.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)
    assert result.extra["state_rows"] == 2


def test_empty_day_writes_empty_state(storage, encoder_config):
    stage(storage, D1, [])

    result = run(storage, D1, encoder_config)

    assert (result.total, result.kept) == (0, 0)
    assert storage.parquet_schema(state_dir(STATE, D1)).field("embedding").type.list_size == 384


@pytest.mark.parametrize(("survivor", "dropped"), [("earliest", "w/a2"), ("longest", "w/a")])
def test_survivor_rule(storage, encoder_config, survivor, dropped):
    stage(storage, D1, [("w/a", RATES, ts(1)), ("w/a2", RATES_COPY, ts(2))])  # the copy is one comma longer
    config = encoder_config.model_copy(deep=True)
    config.dedup_semantic.survivor = survivor

    run(storage, D1, config)

    assert list(rejects(storage, D1)) == [dropped]


@pytest.mark.parametrize("nlist", [0, 4])
def test_flat_and_ivf_index_find_the_same_pairs(nlist):
    from dctp_tasks.config import SemanticDedupConfig
    from dctp_tasks.dedup.semantic import _build_index, _day_pairs

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(400, 32)).astype(np.float32)
    vectors[200:210] = vectors[:10] + 0.01
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    index = _build_index(vectors, SemanticDedupConfig(nlist=nlist, nprobe=2))
    better, worse, cosine = _day_pairs(index, vectors, 0, np.arange(400), 0.95)

    assert type(index).__name__ == ("IndexIVFFlat" if nlist else "IndexFlatIP")
    assert sorted(zip(better.tolist(), worse.tolist(), strict=True)) == [(i, 200 + i) for i in range(10)]
    assert (cosine > 0.99).all()


def test_report_counts_rates_and_pairs_on_both_sides(storage, encoder_config):
    stage(storage, D1, [("w/a", RATES, ts(1), "news"), ("x/a2", RATES_COPY, ts(2), "news"),
                        ("w/e", HIKE, ts(1), "travel"), ("x/f", HIKE_PARAPHRASE, ts(2), "travel"),
                        ("w/u", UNRELATED[0], ts(3), "travel")])
    config = encoder_config.model_copy(deep=True)
    config.dedup_semantic.domain_thresholds = {"travel": 0.9}  # the paraphrase (cosine ≈ 0.86) falls just below

    result = run(storage, D1, config)
    text = storage.read_bytes(storage.path(result.extra["report"])).decode()

    assert result.extra["report"] == f"reports/dt={D1}/dedup_semantic.md"
    assert "| 5 | 1 | 20.0% | 1 |" in text  # docs in, duplicates, rate, clusters
    for row in ("| w | 3 | 0 | 0.0% |", "| x | 2 | 1 | 50.0% |", "| news | 2 | 1 | 50.0% |",
                "| travel | 3 | 0 | 0.0% |"):
        assert row in text
    above, below = text.split("## Pairs just below")
    assert "(threshold 0.95): `x/a2` vs `w/a`" in above and "**cosine 0.99" in above
    assert re.search(r"\*\*cosine 0\.8[5-9]\d*\*\* \(threshold 0\.90\): `x/f` vs `w/e`", below)
    assert f"  - `x/f`: {HIKE_PARAPHRASE}" in below


def test_stored_embeddings_record_the_encoder_that_made_them(storage, encoder_config):
    from dctp_tasks.embeddings import encoder_identity, stored_encoder
    from dctp_tasks.publish import resolve

    stage(storage, D1, [("w/a", RATES, ts(1))])
    run(storage, D1, encoder_config)

    made_by = stored_encoder(storage.parquet_schema(resolve(storage, state_dir(STATE, D1))))
    assert made_by == encoder_identity(encoder_config.dedup_semantic)
    assert made_by["model"] == "all-MiniLM-L6-v2" and made_by["dim"] == 384 and len(made_by["revision"]) == 16


@pytest.mark.parametrize(("made_by", "says"), [
    pytest.param({"model": "another-model", "dim": 384}, "model 'another-model'", id="another_model"),
    pytest.param({"dim": 384}, "revision 'fine-tuned-weights'", id="other_weights"),
    pytest.param({"dim": 768}, "dim 768", id="other_width"),
    pytest.param(None, "do not record which encoder", id="not_recorded"),
])
def test_history_made_by_another_encoder_is_refused_naming_the_setting(storage, encoder_config, made_by, says):
    from dctp_tasks.embeddings import embeddings_schema, encoder_identity
    from dctp_tasks.publish import publish

    if made_by is not None:  # the real encoder's identity, with the parametrized difference
        made_by = {**encoder_identity(encoder_config.dedup_semantic), **made_by}
        if "revision" in says:
            made_by["revision"] = "fine-tuned-weights"
    dim = (made_by or {}).get("dim", 384)
    schema = embeddings_schema(dim, encoder=made_by)
    flat = pa.array(np.zeros(dim, dtype=np.float16))
    with publish(storage, state_dir(STATE, D1)) as state, state.writer(schema=schema) as writer:
        writer.write(pa.table({"doc_id": ["w/old"], "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)},
                              schema=schema))
    stage(storage, D2, [("w/a", RATES, ts(1))])

    with pytest.raises(ValueError, match="dedup_semantic.model") as err:
        run(storage, D2, encoder_config)
    assert says in str(err.value) and f"state/{STATE}/dt={D1}" in str(err.value)
