"""Trainable classifier scorer: MiniLM + logistic regression on Jigsaw toxic, stored without pickle, reloaded."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from dctp_tasks.publish import resolve
from dctp_tasks.quality import embeddings
from dctp_tasks.quality.base import ScoringContext
from dctp_tasks.quality.classifier import (
    ClassifierConfig,
    ClassifierScorer,
    load_classifier,
    train_classifier,
)
from dctp_tasks.quality.embeddings import EmbeddingConfig
from dctp_tasks.storage import Storage
from tests.conftest import make_table, stage_dedup_input, staged

MAX_TOKENS = 64  # Jigsaw comments: median ~210 characters (~50 tokens); 64 keeps most, encodes 2x faster than 128


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory) -> dict:
    """Train ``toxic`` once on the real data; keep the vectors the encoder returned, by text."""
    storage = Storage(str(tmp_path_factory.mktemp("root")))
    seen: dict[str, np.ndarray] = {}
    real = embeddings.embed_texts

    def spy(texts, cfg):
        vectors = real(texts, cfg)
        seen.update(zip(texts, vectors, strict=True))
        return vectors

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embeddings, "embed_texts", spy)
        start = time.perf_counter()
        result = train_classifier(storage, "toxic", shared_data / "jigsaw_toxic" / "train.5k.csv",
                                  text_column="comment_text", label_column="toxic",
                                  embedding=EmbeddingConfig(device="cpu", max_seq_length=MAX_TOKENS))
        seconds = time.perf_counter() - start
    print(f"trained on Jigsaw 5k in {seconds:.1f} s; hold-out {result['metrics']}")
    return {"storage": storage, "result": result, "vectors": seen, "data": shared_data / "jigsaw_toxic"}


def test_minilm_logistic_regression_reaches_auc_090_on_held_out_jigsaw(trained):
    result = trained["result"]
    assert result["metrics"]["roc_auc"] >= 0.90
    assert (result["rows"], result["train_rows"], result["test_rows"]) == (5000, 4000, 1000)
    assert result["positives"] == 478 and result["positive_label"] == "1"
    assert result["embedding_model"] == "all-MiniLM-L6-v2" and result["dim"] == 384
    assert len(result["data_sha256"]) == 64


def test_stored_model_is_parquet_and_json_and_reloads_to_the_same_probabilities(trained):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    storage = trained["storage"]
    files = sorted(p.rsplit("/", 1)[1] for p in storage.list_files("state/classifiers/toxic"))
    assert files == ["coef-00000.parquet", "model.json"]
    meta = json.loads(storage.read_bytes(storage.path(resolve(storage, "state/classifiers/toxic"), "model.json")))
    assert meta["metrics"] == trained["result"]["metrics"]

    # Refit what train_classifier fitted (same vectors, split and settings): the stored model must be that model.
    table = pacsv.read_csv(trained["data"] / "train.5k.csv",
                            parse_options=pacsv.ParseOptions(newlines_in_values=True))
    texts, y = table.column("comment_text").to_pylist(), np.asarray(table.column("toxic").to_pylist())
    vectors = np.stack([trained["vectors"][t] for t in texts])
    train, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    reference = LogisticRegression(C=meta["c"], class_weight="balanced", max_iter=2000).fit(vectors[train], y[train])
    expected = reference.predict_proba(vectors[test[:200]])[:, 1]

    batch = make_table([texts[i] for i in test[:200]], doc_id=[f"j/{i}" for i in test[:200]]).to_batches()[0]
    runs = []
    for _ in range(2):
        scorer = ClassifierScorer(ClassifierConfig(name="toxic"))
        assert scorer.name == "classifier_toxic" and scorer.gpu
        with pytest.MonkeyPatch.context() as patch:
            # The texts were encoded in training; serve those vectors instead of encoding again.
            patch.setattr(embeddings, "embed_texts", lambda ts, cfg: np.stack([trained["vectors"][t] for t in ts]))
            scorer.prepare(ScoringContext(storage, "2026-01-01"))
            runs.append(scorer.score(batch)["probability"])
    assert runs[0].dtype == np.float32
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_allclose(runs[0], expected, rtol=1e-5, atol=1e-7)


def fake_encoder(monkeypatch) -> None:
    """A deterministic stand-in encoder: 'bad' texts point one way, others the other way."""
    def encode(texts, cfg):
        out = np.array([[1.0, 0.1] if "bad" in t else [0.1, 1.0] for t in texts], np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    monkeypatch.setattr(embeddings, "embed_texts", encode)


def write_labeled(path, texts: list[str], labels: list) -> None:
    table = pa.table({"text": texts, "label": labels})
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)


def test_string_labels_from_parquet_train_a_usable_scorer(tmp_path, monkeypatch):
    fake_encoder(monkeypatch)
    data = tmp_path / "spam.parquet"
    texts = [f"bad offer {i}" for i in range(10)] + [f"good note {i}" for i in range(10)]
    write_labeled(data, texts, ["spam"] * 10 + ["ham"] * 10)
    storage = Storage(str(tmp_path / "root"))
    result = train_classifier(storage, "spam", data, positive_label="spam")
    assert result["metrics"]["roc_auc"] == 1.0 and result["positive_label"] == "spam"
    scorer = ClassifierScorer(ClassifierConfig(name="spam", rejects=0.5))
    scorer.prepare(ScoringContext(storage, "2026-01-01"))
    p = scorer.score(make_table(["bad deal", "good day"]).to_batches()[0])["probability"]
    assert p[0] > 0.5 > p[1]
    assert scorer.rules[0].name == "classifier_rejects" and scorer.rules[0].fails(p).tolist() == [True, False]
    np.testing.assert_allclose(scorer.quality({"probability": p}, np.array([None, None])), 1 - p)
    good = ClassifierScorer(ClassifierConfig(name="spam", positive_is_good=True, rejects=0.5))
    np.testing.assert_allclose(good.quality({"probability": p}, np.array([None, None])), p)
    assert good.rules[0].fails(p).tolist() == [False, True]


def test_missing_label_column_is_named(tmp_path):
    data = tmp_path / "d.csv"
    write_labeled(data, ["a", "b"], [0, 1])
    with pytest.raises(ValueError, match="no column 'toxic'.*'text', 'label'"):
        train_classifier(Storage(str(tmp_path)), "x", data, label_column="toxic")


def test_single_class_table_is_refused(tmp_path):
    data = tmp_path / "d.csv"
    write_labeled(data, ["a", "b", "c"], [0, 0, 0])
    with pytest.raises(ValueError, match="only \\['0'\\].*needs rows with '1' and rows without"):
        train_classifier(Storage(str(tmp_path)), "x", data)


def test_ambiguous_labels_need_positive_label(tmp_path):
    data = tmp_path / "d.csv"
    write_labeled(data, ["a", "b"], ["spam", "ham"])
    with pytest.raises(ValueError, match="say which is positive"):
        train_classifier(Storage(str(tmp_path)), "x", data)


def test_missing_classifier_says_how_to_train_it(tmp_path):
    scorer = ClassifierScorer(ClassifierConfig(name="nope"))
    with pytest.raises(FileNotFoundError, match="dctp train-scorer nope --data FILE"):
        scorer.prepare(ScoringContext(Storage(str(tmp_path)), "2026-01-01"))
    with pytest.raises(FileNotFoundError):
        load_classifier(Storage(str(tmp_path)), "nope")


def test_retraining_a_classifier_rescores_instead_of_reusing_its_stored_scores(tmp_path, monkeypatch):
    from dctp_tasks.config import load_config
    from dctp_tasks.quality.scoring import score_day

    fake_encoder(monkeypatch)
    storage = Storage(str(tmp_path / "root"))
    data = tmp_path / "spam.csv"
    texts = [f"bad offer {i}" for i in range(10)] + [f"good note {i}" for i in range(10)]
    stage_dedup_input(storage, "dag", "2026-01-01", "dedup_semantic", [("w/bad", "a bad deal"), ("w/good", "a day")])
    config = load_config(overrides={"quality.scorers": {}, "quality.classifiers": {"spam": {}}})

    def probabilities() -> dict[str, float]:
        rows = staged(storage, "dag", "2026-01-01", "score_models", columns=["doc_id", "scores"]).to_pylist()
        return {r["doc_id"]: r["scores"]["classifier_spam"]["probability"] for r in rows}

    write_labeled(data, texts, [1] * 10 + [0] * 10)
    train_classifier(storage, "spam", data)
    first = score_day(storage, config, "dag", "2026-01-01", "gpu", input_stage="dedup_semantic")
    assert score_day(storage, config, "dag", "2026-01-01", "gpu", input_stage="dedup_semantic").extra["cached"] == 1
    before = probabilities()
    write_labeled(data, texts, [0] * 10 + [1] * 10)  # the team relabels: now the "good" texts are spam
    train_classifier(storage, "spam", data)
    again = score_day(storage, config, "dag", "2026-01-01", "gpu", input_stage="dedup_semantic")
    after = probabilities()

    assert again.extra["cached"] == 0 and again.version != first.version
    assert before["w/bad"] > 0.5 > before["w/good"] and after["w/bad"] < 0.5 < after["w/good"]
