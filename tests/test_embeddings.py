"""``embed_texts`` in token-budget batches: sentence-transformers' own vectors, the same alone as in any batch."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from dctp_tasks.config import SemanticDedupConfig
from dctp_tasks.embeddings import embed_texts
from dctp_tasks.models import sentence_encoder


@pytest.fixture(scope="module")
def texts(shared_data) -> list[str]:
    """150 AG News titles + descriptions (20-200 tokens), plus an empty, a whitespace-only and an over-long text."""
    with open(shared_data / "ag_news" / "test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[:150]
    return [f"{row['title']}. {row['description']}" for row in rows] + ["", "   ", "long words repeat " * 400]


def test_vectors_equal_sentence_transformers_encode(texts):
    model = sentence_encoder(None, "cpu", None)
    expected = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)
    got = embed_texts(texts, SemanticDedupConfig(device="cpu"))

    assert got.dtype == np.float32 and got.shape == (len(texts), 384)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(("batch_size", "token_budget"), [(7, "auto"), ("auto", 300), (1000, 5000)])
def test_each_text_embeds_the_same_alone_as_in_its_batch(texts, batch_size, token_budget):
    cfg = SemanticDedupConfig(device="cpu", batch_size=batch_size, token_budget=token_budget)
    together = embed_texts(texts, cfg)
    picked = [0, 3, 77, 149, 150, 151, 152]  # short and long news, the empty, blank and truncated texts
    alone = np.stack([embed_texts([texts[i]], cfg)[0] for i in picked])

    np.testing.assert_allclose(together[picked], alone, atol=1e-5)
    assert np.abs(together[0] - together[3]).max() > 0.01, "rows stay in input order, not length order"


def test_no_texts_give_an_empty_matrix_of_the_models_width():
    assert embed_texts([], SemanticDedupConfig(device="cpu")).shape == (0, 384)


def test_a_model_with_a_default_prompt_embeds_through_its_own_encode(texts, tmp_path):
    """A default prompt (which ``encode`` may leave out of pooling) is not cut into token batches: ``encode`` runs."""
    from sentence_transformers import SentenceTransformer

    from dctp_tasks.models import default_embedding_model

    prompted = SentenceTransformer(default_embedding_model(), device="cpu", prompts={"doc": "passage: "},
                                   default_prompt_name="doc")
    prompted.save(str(tmp_path / "prompted"))
    got = embed_texts(texts[:20], SemanticDedupConfig(model=str(tmp_path / "prompted"), device="cpu"))

    expected = prompted.encode(texts[:20], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    plain = embed_texts(texts[:20], SemanticDedupConfig(device="cpu"))
    assert np.abs(got - plain).max() > 0.01, "the prompt changes the vectors"
