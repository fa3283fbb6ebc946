"""Retrain the expert-quality classifier on the consensus labels once enough are new; publish it only when its
cross-validated ROC-AUC is not worse than the current model's. Every attempt is recorded, so the next one waits for
``feedback.classifier.min_new_labels`` more labels; synthetic documents' labels never count nor train it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from dctp_tasks.config import PipelineConfig
from dctp_tasks.embeddings import DEFAULT_MODEL_NAME, model_revision
from dctp_tasks.publish import new_token, resolve
from dctp_tasks.quality.classifier import (
    DEFAULT_C,
    StoredClassifier,
    classifier_dir,
    load_classifier,
    logistic_regression,
    model_meta,
    model_version,
    publish_classifier,
)
from dctp_tasks.quality.embeddings import EmbeddingConfig, document_vectors
from dctp_tasks.storage import Storage, state_dir

log = logging.getLogger(__name__)

EXPERT_CLASSIFIER = "expert_quality"
TRAINING_STATE = "classifier_training"
LABELS = "labels"
"""File prefix of the labels a published version was trained on (``doc_id``, ``dt``, ``label`` good/bad)."""


@dataclass
class LabeledDocs:
    """Documents with a good (1) or bad (0) consensus label, and whether each is synthetic.

    ``texts`` may be a function returning them: they are read only when a training is due (a document without a
    stored vector is encoded from its text), not on every merge."""

    doc_ids: list[str]
    dts: list[str]
    texts: list[str] | Callable[[], list[str]]
    y: np.ndarray
    synthetic: np.ndarray

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y, dtype=np.int64)
        self.synthetic = np.asarray(self.synthetic, dtype=bool)
        sizes = {len(self.doc_ids), len(self.dts), len(self.y), len(self.synthetic)}
        if not callable(self.texts):
            sizes.add(len(self.texts))
        if len(sizes) > 1:
            raise ValueError(f"LabeledDocs: columns of different lengths {sorted(sizes)}")
        if len(self.y) and not np.isin(self.y, (0, 1)).all():
            raise ValueError(f"LabeledDocs: y must be 0/1, found {np.unique(self.y)[:10].tolist()}")

    def real(self) -> LabeledDocs:
        """Return the rows of documents that are not synthetic."""
        keep = np.flatnonzero(~self.synthetic)
        return LabeledDocs([self.doc_ids[i] for i in keep], [self.dts[i] for i in keep],
                           lambda: [self.text_list()[i] for i in keep], self.y[keep], self.synthetic[keep])

    def text_list(self) -> list[str]:
        """Return the texts (read now when ``texts`` is a function)."""
        return self.texts() if callable(self.texts) else self.texts


def attempts_dir(name: str = EXPERT_CLASSIFIER) -> str:
    """Return the folder of the training attempts of classifier ``name`` (relative to the root)."""
    return f"{state_dir(TRAINING_STATE)}/{name}"


def last_attempt(storage: Storage, name: str = EXPERT_CLASSIFIER) -> dict | None:
    """Return the record of the latest training attempt (kept or rejected), ``None`` before the first."""
    files = [p for p in storage.list_files(attempts_dir(name), recursive=False) if p.endswith(".json")]
    return storage.read_json(max(files)) if files else None


def retrain_expert_classifier(storage: Storage, config: PipelineConfig, labeled: LabeledDocs, dt: str, *,
                              seed: int = 0) -> dict:
    """Retrain ``expert_quality`` on every real labeled document when due; keep it when it is no worse.

    Returns ``status`` (disabled, waiting, too_few_per_class, trained, rejected), ``labels`` and ``new`` (labels
    since the last attempt), and for an attempt ``cv_roc_auc``, ``current_roc_auc``, ``version`` (the published
    one after it) and ``vectors_encoded``.
    """
    cfg = config.feedback.classifier
    if not cfg.enabled:
        return {"status": "disabled"}
    labeled = labeled.real()
    n = len(labeled.y)
    previous = last_attempt(storage)
    # Counts, not ids: a label revised since then is no new evidence, a document judged anew is.
    new = n - (previous["labels"] if previous else 0)
    if new < cfg.min_new_labels:
        log.info("expert classifier: %d labels, %d new since the last attempt (needs %d): waiting", n, new,
                 cfg.min_new_labels)
        return {"status": "waiting", "labels": n, "new": new}
    counts = np.bincount(labeled.y, minlength=2)
    if counts.min() < cfg.min_per_class:
        log.info("expert classifier: %d good and %d bad labels, needs %d of each", counts[1], counts[0],
                 cfg.min_per_class)
        return {"status": "too_few_per_class", "labels": n, "new": new, "good": int(counts[1]),
                "bad": int(counts[0])}

    embedding = EmbeddingConfig.from_dedup(config.dedup_semantic)
    vectors, encoded = document_vectors(storage, labeled.dts, labeled.doc_ids, labeled.text_list(), embedding)
    folds = int(min(cfg.folds, counts.min()))
    cv_auc = cross_validated_auc(vectors, labeled.y, folds, seed)
    model = logistic_regression(DEFAULT_C).fit(vectors, labeled.y)
    stored = StoredClassifier(EXPERT_CLASSIFIER, model.coef_[0].astype(np.float64), float(model.intercept_[0]), {})
    compared = current_auc(storage, labeled, vectors, embedding, cfg.min_per_class)
    keep = compared["roc_auc"] is None or cv_auc >= compared["roc_auc"]
    version = compared["version"]
    if keep:
        meta = {**model_meta(stored, embedding, DEFAULT_C), "positive_label": "good", "rows": n,
                "positives": int(counts[1]), "metrics": {"cv_roc_auc": cv_auc, "folds": folds},
                "trained_on_dt": dt, "compared_with": compared, "seed": seed,
                "trained_at": datetime.now(UTC).isoformat(timespec="seconds")}
        labels = pa.table({"doc_id": pa.array(labeled.doc_ids, pa.string()), "dt": pa.array(labeled.dts, pa.string()),
                           "label": pa.array(np.where(labeled.y == 1, "good", "bad"), pa.string())})
        version = publish_classifier(storage, stored, meta, extra={LABELS: labels})
    status = "trained" if keep else "rejected"
    result = {"status": status, "labels": n, "new": new, "cv_roc_auc": cv_auc,
              "current_roc_auc": compared["roc_auc"], "version": version, "vectors_encoded": encoded}
    record = {**result, "dt": dt, "basis": compared["basis"], "folds": folds,
              "attempted_at": datetime.now(UTC).isoformat(timespec="seconds")}
    storage.write_bytes(storage.path(attempts_dir(), f"attempt-{new_token()}.json"),
                        json.dumps(record, indent=1, sort_keys=True).encode())
    log.info("expert classifier %s: %d labels, cv ROC-AUC %.4f vs current %s (%s); version %s", status, n, cv_auc,
             compared["roc_auc"], compared["basis"], version)
    return result


def cross_validated_auc(vectors: np.ndarray, y: np.ndarray, folds: int, seed: int = 0) -> float:
    """Return the mean ROC-AUC of the classifier over stratified ``folds``-fold cross-validation."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    splits = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_score(logistic_regression(DEFAULT_C), vectors, y, cv=splits, scoring="roc_auc")
    return round(float(np.mean(scores)), 6)


def current_auc(storage: Storage, labeled: LabeledDocs, vectors: np.ndarray, embedding: EmbeddingConfig,
                min_per_class: int) -> dict:
    """Return the published model's ``version``, ``roc_auc`` and its ``basis``: measured on the labels it was not
    trained on when they hold ``min_per_class`` of each class, else its recorded cross-validated ROC-AUC.

    ``roc_auc`` is ``None`` (any candidate wins) when none is published or it reads other vectors than these.
    """
    version = model_version(storage, EXPERT_CLASSIFIER)
    if version is None:
        return {"version": None, "roc_auc": None, "basis": "none"}
    model = load_classifier(storage, EXPERT_CLASSIFIER, version)
    reads = (embedding.model or DEFAULT_MODEL_NAME, model_revision(embedding.model), vectors.shape[1])
    if (model.meta.get("embedding_model"), model.meta.get("embedding_revision"), model.meta.get("dim")) != reads:
        return {"version": version, "roc_auc": None, "basis": "other_encoder"}
    try:
        folder = resolve(storage, classifier_dir(EXPERT_CLASSIFIER), version)
        trained = set(storage.read_table(folder, columns=["doc_id"], prefix=LABELS).column("doc_id").to_pylist())
    except FileNotFoundError:  # trained by `dctp train-scorer`: which labels it saw is unknown
        trained = set(labeled.doc_ids)
    unseen = np.array([doc_id not in trained for doc_id in labeled.doc_ids], dtype=bool)
    if np.bincount(labeled.y[unseen], minlength=2).min() >= min_per_class:
        from sklearn.metrics import roc_auc_score

        auc = roc_auc_score(labeled.y[unseen], model.probability(vectors[unseen]))
        return {"version": version, "roc_auc": round(float(auc), 6), "basis": "unseen_labels",
                "rows": int(unseen.sum())}
    metrics = model.meta.get("metrics") or {}
    recorded = metrics.get("cv_roc_auc", metrics.get("roc_auc"))
    return {"version": version, "roc_auc": recorded, "basis": "recorded_cv" if recorded is not None else "none"}
