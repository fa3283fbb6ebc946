"""Retraining the expert-quality classifier from consensus labels: real MiniLM vectors of real Jigsaw comments
(good = not toxic), waiting for new labels, synthetic labels left out, a worse candidate rejected."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from dctp_tasks.config import load_config
from dctp_tasks.embeddings import encoder_identity, vectors_column
from dctp_tasks.feedback.retrain import (
    EXPERT_CLASSIFIER,
    LABELS,
    LabeledDocs,
    attempts_dir,
    last_attempt,
    retrain_expert_classifier,
)
from dctp_tasks.publish import resolve
from dctp_tasks.quality import embeddings
from dctp_tasks.quality.base import ScoringContext
from dctp_tasks.quality.classifier import (
    ClassifierConfig,
    ClassifierScorer,
    classifier_dir,
    load_classifier,
    model_version,
)
from dctp_tasks.quality.embeddings import EmbeddingConfig
from dctp_tasks.storage import Storage
from tests.conftest import make_table

MAX_TOKENS = 64  # as tests/quality/test_classifier.py: most Jigsaw comments fit, encodes fast on a CPU
DT = "2026-06-01"
Row = tuple[str, str, int]  # doc_id, text, label (1 = good)


@pytest.fixture(scope="module")
def rows(shared_data) -> dict[str, list[Row]]:
    """110 non-toxic (good) and 110 toxic (bad) comments of Jigsaw's first rows, split into disjoint sets."""
    table = pacsv.read_csv(shared_data / "jigsaw_toxic" / "train.5k.csv",
                           parse_options=pacsv.ParseOptions(newlines_in_values=True))
    data = zip(table.column("id").to_pylist(), table.column("comment_text").to_pylist(),
               table.column("toxic").to_pylist(), strict=True)
    good: list[Row] = []
    bad: list[Row] = []
    for doc_id, text, toxic in data:
        (bad if toxic else good).append((f"jigsaw/{doc_id}", text, 0 if toxic else 1))
    return {"train": good[:40] + bad[:40], "new": good[40:60] + bad[40:60], "more": good[60:80] + bad[60:80],
            "held_out": good[80:110] + bad[80:110]}


@pytest.fixture(scope="module", autouse=True)
def encoder():
    """The real MiniLM, each text encoded once for the whole module (the tests train on the same texts)."""
    real = embeddings.embed_texts
    seen: dict[str, np.ndarray] = {}

    def cached(texts, cfg):
        fresh = [t for t in dict.fromkeys(texts) if t not in seen]
        if fresh:
            seen.update(zip(fresh, real(fresh, cfg), strict=True))
        return np.stack([seen[t] for t in texts])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(embeddings, "embed_texts", cached)
        yield seen


def config(**overrides):
    return load_config(overrides={"feedback.classifier.min_new_labels": 40, "feedback.classifier.min_per_class": 5,
                                  "dedup_semantic.max_seq_length": MAX_TOKENS, "dedup_semantic.device": "cpu",
                                  **overrides})


def labeled(*parts: list[Row], dt: str = DT, synthetic: bool = False, flip: float = 0.0,
            seed: int = 0) -> LabeledDocs:
    """Consensus labels of ``parts``; ``flip``: the share whose label is reversed (a noisy expert)."""
    docs = [row for part in parts for row in part]
    y = np.array([label for _, _, label in docs], dtype=np.int64)
    if flip:
        rng = np.random.default_rng(seed)
        flipped = rng.choice(len(y), size=round(flip * len(y)), replace=False)
        y[flipped] = 1 - y[flipped]
    return LabeledDocs([d for d, _, _ in docs], [dt] * len(docs), [t for _, t, _ in docs], y,
                       np.full(len(docs), synthetic))


def join(*parts: LabeledDocs) -> LabeledDocs:
    return LabeledDocs([d for p in parts for d in p.doc_ids], [d for p in parts for d in p.dts],
                       [t for p in parts for t in p.texts], np.concatenate([p.y for p in parts]),
                       np.concatenate([p.synthetic for p in parts]))


def scorer() -> ClassifierScorer:
    return ClassifierScorer(ClassifierConfig(name=EXPERT_CLASSIFIER, positive_is_good=True, missing_ok=True,
                                             embedding=EmbeddingConfig(device="cpu", max_seq_length=MAX_TOKENS)))


def score(storage: Storage, part: list[Row]) -> tuple[np.ndarray, str]:
    """Score ``part`` as the GPU score task would: token first, then prepare, then the batch."""
    s = scorer()
    context = ScoringContext(storage, "2026-06-30")
    token = s.cache_token(context)
    s.prepare(context)
    if token == "":
        assert "embeddings" not in context.extra, "an untrained classifier looks up no vectors"
    batch = make_table([t for _, t, _ in part], doc_id=[d for d, _, _ in part]).to_batches()[0]
    return s.score(batch)["probability"], token


def stored_labels(storage: Storage) -> pa.Table:
    return storage.read_table(resolve(storage, classifier_dir(EXPERT_CLASSIFIER)), prefix=LABELS)


def test_it_waits_for_min_new_labels_and_does_nothing_when_disabled(tmp_path, rows):
    storage = Storage(str(tmp_path))
    few = labeled(rows["train"][:39])
    assert retrain_expert_classifier(storage, config(), few, DT) == {"status": "waiting", "labels": 39, "new": 39}
    off = config(**{"feedback.classifier.enabled": False})
    assert retrain_expert_classifier(storage, off, labeled(rows["train"]), DT) == {"status": "disabled"}
    one_sided = labeled(rows["train"][:40])  # 40 good, no bad
    assert retrain_expert_classifier(storage, config(), one_sided, DT)["status"] == "too_few_per_class"
    assert model_version(storage, EXPERT_CLASSIFIER) is None and last_attempt(storage) is None
    assert not storage.list_files(attempts_dir()), "no attempt was made, none recorded"

    def unread() -> list[str]:
        raise AssertionError("texts read although no training was due")

    lazy = LabeledDocs(few.doc_ids, few.dts, unread, few.y, few.synthetic)
    assert retrain_expert_classifier(storage, config(), lazy, DT)["status"] == "waiting"


def test_trained_model_scores_held_out_documents_and_records_its_labels(tmp_path, rows, encoder):
    from sklearn.metrics import roc_auc_score

    storage = Storage(str(tmp_path))
    cfg = config()
    before, token = score(storage, rows["held_out"])
    assert token == "" and before.dtype == np.float32 and np.isnan(before).all(), "missing_ok: NaN until trained"

    # half the labels are of a date semantic dedup stored vectors for: those are reused, the rest encoded
    stored_day = "2026-05-31"
    from dctp_tasks.dedup.semantic import _write_state

    reused = rows["train"][::2]
    encoded = rows["train"][1::2]
    vectors = embeddings.encode([t for _, t, _ in reused], EmbeddingConfig.from_dedup(cfg.dedup_semantic))
    _write_state(storage, stored_day, pa.array([d for d, _, _ in reused]), vectors_column(vectors), 384, "float32",
                 encoder_identity(cfg.dedup_semantic, 384))
    docs = join(labeled(reused, dt=stored_day), labeled(encoded))
    result = retrain_expert_classifier(storage, cfg, docs, DT)

    assert result["status"] == "trained" and (result["labels"], result["new"]) == (80, 80)
    assert result["vectors_encoded"] == len(encoded) and result["current_roc_auc"] is None
    assert result["cv_roc_auc"] >= 0.8 and result["version"] == model_version(storage, EXPERT_CLASSIFIER)
    model = load_classifier(storage, EXPERT_CLASSIFIER)
    assert model.meta["positive_label"] == "good" and model.meta["rows"] == 80 and model.meta["positives"] == 40
    assert model.meta["metrics"] == {"cv_roc_auc": result["cv_roc_auc"], "folds": 5}
    assert model.meta["embedding_model"] == "all-MiniLM-L6-v2" and model.meta["dim"] == 384
    assert model.meta["trained_on_dt"] == DT and model.meta["compared_with"]["version"] is None
    assert sorted(stored_labels(storage).column("doc_id").to_pylist()) == sorted(docs.doc_ids)

    after, token = score(storage, rows["held_out"])
    y = np.array([label for _, _, label in rows["held_out"]])
    assert token == result["version"] and not np.isnan(after).any()
    assert roc_auc_score(y, after) >= 0.8 and after[y == 1].mean() > after[y == 0].mean() + 0.2
    record = json.loads(storage.read_bytes(storage.list_files(attempts_dir())[0]))
    assert (record["status"], record["labels"], record["dt"]) == ("trained", 80, DT)


def test_synthetic_labels_never_count_nor_train_it(tmp_path, rows):
    storage = Storage(str(tmp_path))
    # synthetic documents labelled against their content: training on them would teach the opposite
    fake = labeled(rows["held_out"], dt="2026-05-30", synthetic=True, flip=1.0)
    waiting = retrain_expert_classifier(storage, config(), join(labeled(rows["train"][:30]), fake), DT)
    assert waiting == {"status": "waiting", "labels": 30, "new": 30}, "60 synthetic labels do not count"

    result = retrain_expert_classifier(storage, config(), join(labeled(rows["train"]), fake), DT)
    assert result["status"] == "trained" and result["labels"] == 80
    trained_on = set(stored_labels(storage).column("doc_id").to_pylist())
    assert trained_on == {d for d, _, _ in rows["train"]} and not trained_on & set(fake.doc_ids)
    p, _ = score(storage, rows["held_out"])
    y = np.array([label for _, _, label in rows["held_out"]])
    assert p[y == 1].mean() > p[y == 0].mean(), "the flipped synthetic labels did not train it"


def test_a_worse_candidate_is_rejected_and_the_next_attempt_waits_for_new_labels(tmp_path, rows):
    storage = Storage(str(tmp_path))
    cfg = config()
    first = retrain_expert_classifier(storage, cfg, labeled(rows["train"]), DT)
    assert first["status"] == "trained"

    # the earlier labels revised by a noisy expert (40 % reversed); 40 new, clean labels
    noisy = join(labeled(rows["train"], flip=0.4), labeled(rows["new"]))
    second = retrain_expert_classifier(storage, cfg, noisy, "2026-06-02")
    assert second["status"] == "rejected" and second["new"] == 40
    assert second["cv_roc_auc"] < second["current_roc_auc"], second
    assert second["version"] == first["version"] == model_version(storage, EXPERT_CLASSIFIER)
    model = load_classifier(storage, EXPERT_CLASSIFIER)
    assert model.meta["rows"] == 80 and model.meta["trained_on_dt"] == DT, "the current model stays"
    assert last_attempt(storage)["status"] == "rejected"

    more = rows["more"]
    third = retrain_expert_classifier(storage, cfg, join(noisy, labeled(more[:39])), "2026-06-03")
    assert third == {"status": "waiting", "labels": 159, "new": 39}, "counted from the rejected attempt"
    fourth = retrain_expert_classifier(storage, cfg, join(labeled(rows["train"]), labeled(rows["new"]),
                                                          labeled(more)), "2026-06-04")
    assert fourth["status"] == "trained" and fourth["new"] == 40 and fourth["version"] != first["version"]
    compared = load_classifier(storage, EXPERT_CLASSIFIER).meta["compared_with"]
    # measured on the 80 labels the first model never saw
    assert compared == {"version": first["version"], "roc_auc": fourth["current_roc_auc"],
                        "basis": "unseen_labels", "rows": 80}
    assert len(storage.list_files(attempts_dir())) == 3
