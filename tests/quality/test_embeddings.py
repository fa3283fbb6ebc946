"""EmbeddingLookup: stored vectors are reused without calling the model; only missing rows are encoded."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from dctp_tasks.embeddings import STATE, embed_texts, embeddings_schema, encoder_identity
from dctp_tasks.publish import publish
from dctp_tasks.quality import embeddings
from dctp_tasks.quality.base import ScoringContext
from dctp_tasks.quality.embeddings import EmbeddingConfig, EmbeddingLookup
from dctp_tasks.storage import Storage, state_dir
from tests.conftest import make_table

DT = "2026-01-02"
TEXTS = [
    "The match ended in a draw after extra time.",
    "A new telescope mapped distant galaxies in infrared light.",
    "Shares fell sharply after the quarterly earnings report.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Voters head to the polls on Tuesday in a tight race.",
    "The striker signed a three-year contract with the club.",
]


@pytest.fixture(scope="module")
def real_vectors() -> np.ndarray:
    return embed_texts(TEXTS, EmbeddingConfig(device="cpu").as_dedup())


def write_state(storage: Storage, ids: list[str], vectors: np.ndarray, rows_per_group: int = 2,
                encoder: dict | None = None) -> None:
    """Publish ``vectors`` as the day's stored embeddings, recorded as made by ``encoder`` (default: MiniLM)."""
    schema = embeddings_schema(vectors.shape[1], encoder=encoder or encoder_identity(EmbeddingConfig(),
                                                                                      vectors.shape[1]))
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float16).ravel())
    table = pa.table({"doc_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])},
                     schema=schema)
    with publish(storage, state_dir(STATE, DT)) as state, \
            state.writer(schema=schema, row_group_size=rows_per_group) as writer:
        writer.write(table)


def no_model(*_args, **_kwargs):
    raise AssertionError("the model was called although every vector is stored")


def test_stored_vectors_are_reused_without_calling_the_model(tmp_path, monkeypatch, real_vectors):
    storage = Storage(str(tmp_path))
    ids = [f"t/{i}" for i in range(len(TEXTS))]
    write_state(storage, ids, real_vectors)
    monkeypatch.setattr(embeddings, "embed_texts", no_model)
    lookup = EmbeddingLookup(storage, DT)
    # Rows out of stored order, one twice: each still gets its own stored vector.
    order = [4, 0, 5, 2, 2]
    batch = make_table([TEXTS[i] for i in order], doc_id=[ids[i] for i in order]).to_batches()[0]
    got = lookup.vectors(batch)
    expected = real_vectors[order].astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32
    assert lookup.stats == {"reused": 5, "encoded": 0}


def test_only_missing_rows_are_encoded(tmp_path, monkeypatch, real_vectors):
    storage = Storage(str(tmp_path))
    ids = [f"t/{i}" for i in range(len(TEXTS))]
    write_state(storage, ids[:3], real_vectors[:3])
    seen: list[list[str]] = []

    def spy(texts, cfg):
        seen.append(list(texts))
        return embed_texts(texts, cfg)

    monkeypatch.setattr(embeddings, "embed_texts", spy)
    lookup = EmbeddingLookup(storage, DT, EmbeddingConfig(device="cpu"))
    batch = make_table(TEXTS, doc_id=ids).to_batches()[0]
    got = lookup.vectors(batch)
    assert seen == [TEXTS[3:]]
    np.testing.assert_allclose(got[3:], real_vectors[3:], atol=1e-5)
    np.testing.assert_array_equal(got[:3], real_vectors[:3].astype(np.float16).astype(np.float32))
    assert lookup.stats == {"reused": 3, "encoded": 3}
    # A second scorer asking for the same batch encodes nothing more.
    assert lookup.vectors(batch) is got
    assert lookup.stats == {"reused": 3, "encoded": 3} and len(seen) == 1


def test_without_state_every_row_is_encoded(tmp_path, real_vectors):
    lookup = EmbeddingLookup(Storage(str(tmp_path)), DT, EmbeddingConfig(device="cpu"))
    got = lookup.vectors(make_table(TEXTS[:2]).to_batches()[0])
    np.testing.assert_allclose(got, real_vectors[:2], atol=1e-5)
    assert lookup.stats == {"reused": 0, "encoded": 2}


def test_vectors_of_another_width_are_not_reused(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path))
    write_state(storage, ["t/0", "t/1"], np.eye(2, 8, dtype=np.float32))
    calls = []
    monkeypatch.setattr(embeddings, "embed_texts", lambda texts, cfg: calls.append(texts) or np.ones((len(texts), 384),
                                                                                                    np.float32))
    lookup = EmbeddingLookup(storage, DT)
    got = lookup.vectors(make_table(TEXTS[:2]).to_batches()[0])
    assert got.shape == (2, 384) and calls == [TEXTS[:2]]
    assert lookup.stats == {"reused": 0, "encoded": 2}


@pytest.mark.parametrize("made_by", [
    pytest.param({"model": "another-model", "revision": "abc", "dim": 384}, id="another_model"),
    pytest.param({"model": "all-MiniLM-L6-v2", "revision": "fine-tuned", "dim": 384}, id="other_weights"),
    pytest.param(None, id="not_recorded"),
])
def test_vectors_of_another_encoder_are_not_reused(tmp_path, monkeypatch, real_vectors, made_by):
    storage = Storage(str(tmp_path))
    ids = [f"t/{i}" for i in range(2)]
    schema = embeddings_schema(384, encoder=made_by)
    flat = pa.array(np.ascontiguousarray(real_vectors[:2], dtype=np.float16).ravel())
    with publish(storage, state_dir(STATE, DT)) as state, state.writer(schema=schema) as writer:
        writer.write(pa.table({"doc_id": ids, "embedding": pa.FixedSizeListArray.from_arrays(flat, 384)},
                              schema=schema))
    calls = []
    monkeypatch.setattr(embeddings, "embed_texts", lambda texts, cfg: calls.append(texts) or real_vectors[:2])
    lookup = EmbeddingLookup(storage, DT)
    lookup.vectors(make_table(TEXTS[:2], doc_id=ids).to_batches()[0])
    assert calls == [TEXTS[:2]] and lookup.stats == {"reused": 0, "encoded": 2}


def test_scorers_of_a_day_share_one_lookup_per_model(tmp_path):
    context = ScoringContext(Storage(str(tmp_path)), DT)
    first = EmbeddingLookup.shared(context, EmbeddingConfig())
    assert EmbeddingLookup.shared(context, EmbeddingConfig(batch_size=8)) is first
    assert EmbeddingLookup.shared(context, EmbeddingConfig(max_seq_length=64)) is not first
    assert list(context.extra["embeddings"].values())[0] is first
