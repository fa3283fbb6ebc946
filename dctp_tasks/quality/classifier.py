"""Trainable scorer: logistic regression on sentence embeddings, trained from a labeled table, scored by name.

``train_classifier`` (``dctp train-scorer NAME --data FILE``) writes ``state/classifiers/{NAME}/``: ``coef.parquet``
(one float64 weight per embedding dimension) and ``model.json`` (intercept, metrics, provenance) — no pickle, so a
model is portable and loading one runs no code. ``ClassifierScorer`` (``classifier_{NAME}``) scores ``probability``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from dctp_tasks.embeddings import model_revision
from dctp_tasks.publish import NotPublished, current, publish, resolve
from dctp_tasks.quality.base import Field as ScoreField
from dctp_tasks.quality.base import Rule, Scorer, ScoringContext
from dctp_tasks.quality.embeddings import EmbeddingConfig, EmbeddingLookup, encode
from dctp_tasks.storage import Storage, state_dir

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

log = logging.getLogger(__name__)

STATE = "classifiers"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
DEFAULT_C = 1.0
"""Inverse L2 strength of the logistic regression: scikit-learn's default; with unit-norm 384-d MiniLM vectors it
gives hold-out ROC-AUC 0.95 on Jigsaw toxic (5k rows, 128 tokens)."""


def classifier_dir(name: str) -> str:
    """Return the folder of a trained classifier (relative to the root)."""
    return f"{state_dir(STATE)}/{name}"


@dataclass(frozen=True)
class StoredClassifier:
    """A trained classifier: ``sigmoid(vectors @ coef + intercept)`` is P(label == positive_label)."""

    name: str
    coef: np.ndarray
    intercept: float
    meta: dict

    def probability(self, vectors: np.ndarray) -> np.ndarray:
        """Return P(positive) per row of ``vectors`` (float64)."""
        logits = np.asarray(vectors, dtype=np.float64) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))


def train_classifier(storage: Storage, name: str, data_path: str | Path, text_column: str = "text",
                     label_column: str = "label", positive_label: str | int | bool | None = None,
                     embedding: EmbeddingConfig | None = None, test_size: float = 0.2, seed: int = 0,
                     c: float = DEFAULT_C) -> dict:
    """Train classifier ``name`` from a labeled CSV or Parquet file; store it; return its metadata and metrics.

    Rows with no label are skipped; ``positive_label`` may be left out for boolean or 0/1 labels. ROC-AUC is
    measured on a stratified ``test_size`` hold-out; the stored model is the one measured (fit on the rest).
    """
    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"classifier name {name!r} must match {NAME_PATTERN} (it names a scorer and a folder)")
    embedding = embedding or EmbeddingConfig()
    path = Path(data_path)
    table = read_labeled(path, text_column, label_column)
    texts, y, positive = binary_labels(table, text_column, label_column, positive_label)
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise ValueError(f"{path}: {label_column!r} == {positive!r} gives {int(counts[1])} positive and "
                         f"{int(counts[0])} negative rows; training needs at least 2 of each")
    start = time.perf_counter()
    vectors = encode(texts, embedding)
    embed_seconds = time.perf_counter() - start
    fitted = fit_classifier(name, vectors, y, test_size=test_size, seed=seed, c=c)
    stored, train, test, metrics = fitted.model, fitted.train, fitted.test, fitted.metrics
    meta = {
        **model_meta(stored, embedding, c),
        "text_column": text_column, "label_column": label_column, "positive_label": positive,
        "rows": len(y), "positives": int(counts[1]), "train_rows": len(train), "test_rows": len(test),
        "test_size": test_size, "seed": seed, "metrics": metrics,
        "embed_seconds": round(embed_seconds, 2), "data_file": str(path), "data_sha256": _sha256(path),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    publish_classifier(storage, stored, meta)
    log.info("classifier %s: %d rows (%d positive), hold-out ROC-AUC %.4f, stored in %s", name, len(y),
             counts[1], metrics["roc_auc"], storage.uri(classifier_dir(name)))
    return {**meta, "path": storage.uri(classifier_dir(name))}


def model_meta(stored: StoredClassifier, embedding: EmbeddingConfig, c: float) -> dict:
    """Return the ``model.json`` fields every trained classifier records: what it is and which vectors it reads."""
    import sklearn

    return {"name": stored.name, "scorer": f"classifier_{stored.name}", "model": "logistic_regression",
            "sklearn_version": sklearn.__version__, "c": c, "class_weight": "balanced",
            "embedding_model": embedding.model or "all-MiniLM-L6-v2", "max_seq_length": embedding.max_seq_length,
            "embedding_revision": model_revision(embedding.model), "dim": len(stored.coef),
            "intercept": stored.intercept}


@dataclass(frozen=True)
class FittedClassifier:
    """A classifier fitted on the ``train`` rows and measured on the ``test`` rows (indices into the input)."""

    model: StoredClassifier
    train: np.ndarray
    test: np.ndarray
    held_out: np.ndarray
    """P(positive) of the ``test`` rows, in their order."""
    metrics: dict


def logistic_regression(c: float = DEFAULT_C) -> LogisticRegression:
    """Return the unfitted model every trained classifier is: L2 strength ``C=c``, balanced class weights.

    The one place the model's settings live: ``fit_classifier`` (``dctp train-scorer``, the shipped toxicity model),
    the expert-quality retraining and the selection committee all build it here.
    """
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, class_weight="balanced", max_iter=2000)


def fit_classifier(name: str, vectors: np.ndarray, y: np.ndarray, test_size: float = 0.2, seed: int = 0,
                   c: float = DEFAULT_C) -> FittedClassifier:
    """Fit ``logistic_regression(c)`` on a stratified split of ``vectors`` / 0-1 ``y``; measure it on the hold-out."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed, stratify=y)
    model = logistic_regression(c)
    model.fit(vectors[train], y[train])
    stored = StoredClassifier(name, model.coef_[0].astype(np.float64), float(model.intercept_[0]), {})
    held_out = stored.probability(vectors[test])
    metrics = {"roc_auc": round(float(roc_auc_score(y[test], held_out)), 6),
               "average_precision": round(float(average_precision_score(y[test], held_out)), 6),
               "accuracy_at_0_5": round(float(((held_out > 0.5) == y[test]).mean()), 6)}
    return FittedClassifier(stored, train, test, held_out, metrics)


def read_labeled(path: Path, text_column: str, label_column: str) -> pa.Table:
    """Read a local CSV or Parquet file's text and label columns; a missing column is named with those present."""
    if not path.is_file():
        raise FileNotFoundError(f"labeled data {path} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    else:
        import pyarrow.csv as pacsv

        # Free-text columns hold quoted newlines (Jigsaw comments do).
        table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    missing = [c for c in (text_column, label_column) if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} has no column {missing[0]!r}; its columns are {table.column_names}")
    return table.select([text_column, label_column])


def binary_labels(table: pa.Table, text_column: str, label_column: str,
            positive_label: str | int | bool | None) -> tuple[list[str], np.ndarray, str]:
    """Return texts, 0/1 targets and the positive label (as text); rows with no label are dropped."""
    table = table.filter(pc.is_valid(table.column(label_column)))
    labels = pc.utf8_lower(pc.cast(table.column(label_column), pa.string()))
    values = sorted(set(labels.to_pylist()))
    if positive_label is None:
        if set(values) <= {"0", "1"} or set(values) <= {"false", "true"}:
            positive = "1" if set(values) <= {"0", "1"} else "true"
        else:
            raise ValueError(f"{label_column!r} holds {values[:10]}: say which is positive (positive_label)")
    else:
        positive = str(positive_label).lower()
    if len(values) < 2 or positive not in values:
        raise ValueError(f"{label_column!r} holds only {values[:10]}: a classifier needs rows with "
                         f"{positive!r} and rows without")
    y = pc.equal(labels, positive).to_numpy(zero_copy_only=False).astype(np.int64)
    texts = pc.fill_null(pc.cast(table.column(text_column), pa.string()), "").to_pylist()
    return texts, y, positive


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def publish_classifier(storage: Storage, stored: StoredClassifier, meta: dict,
                       extra: dict[str, pa.Table] | None = None) -> str:
    """Publish the model as a new version and return it: a scorer loading it meanwhile reads the old model or the
    new, whole. ``extra``: more tables of the version by file prefix (e.g. the labels it was trained on)."""
    schema = pa.schema([("dimension", pa.int32()), ("coef", pa.float64())])
    with publish(storage, classifier_dir(stored.name)) as model:
        with model.writer(schema=schema, prefix="coef") as writer:
            writer.write(pa.table({"dimension": pa.array(np.arange(len(stored.coef)), pa.int32()),
                                   "coef": pa.array(stored.coef, pa.float64())}, schema=schema))
        for prefix, table in (extra or {}).items():
            with model.writer(schema=table.schema, prefix=prefix) as writer:
                writer.write(table)
        model.write_bytes("model.json", json.dumps(meta, indent=2, sort_keys=True).encode())
    return model.version


def model_version(storage: Storage, name: str) -> str | None:
    """Return the published version of classifier ``name`` (a new one per training), ``None`` if never trained."""
    return (current(storage, classifier_dir(name)) or {}).get("version")


def load_classifier(storage: Storage, name: str, version: str | None = None) -> StoredClassifier:
    """Return the stored classifier ``name`` (its ``version``, default the current one); a missing one says how
    to train it."""
    try:
        folder = resolve(storage, classifier_dir(name), version)
    except NotPublished:
        folder = None
    if folder is None or not storage.exists(folder, "model.json"):
        raise FileNotFoundError(f"no trained classifier {name!r} at {storage.uri(classifier_dir(name))}: train it "
                                f"with `dctp train-scorer {name} --data FILE`")
    meta = json.loads(storage.read_bytes(storage.path(folder, "model.json")))
    table = storage.read_table(folder, columns=["dimension", "coef"], prefix="coef")
    return _from_parts(name, meta, table, storage.uri(folder))


def write_classifier_dir(folder: str | Path, model: StoredClassifier, meta: dict) -> None:
    """Write ``model`` to a local folder as ``coef.json`` and ``model.json`` (``meta`` plus dim and intercept).

    Text, so a model committed to a repository diffs and reviews like code: one coefficient per line, each written
    with the shortest repr that reads back to the same float64. No timestamps are added, so retraining on the same
    data gives the same bytes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").unlink(missing_ok=True)
    (folder / "coef.json").write_text("[\n" + ",\n".join(repr(float(c)) for c in model.coef) + "\n]\n")
    meta = {**meta, "dim": len(model.coef), "intercept": model.intercept}
    # Written last: a folder without model.json is an interrupted training, never a loadable model.
    (folder / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def read_classifier_dir(folder: str | Path, name: str | None = None) -> StoredClassifier:
    """Return the classifier stored in a local folder (``coef.json`` + ``model.json``); ``name``: the folder's."""
    folder = Path(folder)
    if not (folder / "model.json").is_file():
        raise FileNotFoundError(f"no classifier at {folder}: the folder has no model.json")
    if not (folder / "coef.json").is_file():
        raise FileNotFoundError(f"classifier {folder} has model.json but no coef.json")
    meta = json.loads((folder / "model.json").read_text())
    coef = json.loads((folder / "coef.json").read_text())
    table = pa.table({"dimension": np.arange(len(coef), dtype=np.int32), "coef": pa.array(coef, pa.float64())})
    return _from_parts(name or folder.name, meta, table, str(folder))


def _from_parts(name: str, meta: dict, table: pa.Table, where: str) -> StoredClassifier:
    coef = table.sort_by("dimension").column("coef").to_numpy()
    if len(coef) != meta["dim"]:
        raise ValueError(f"{where}: {len(coef)} coefficients for a {meta['dim']}-d embedding")
    return StoredClassifier(name, coef, float(meta["intercept"]), meta)


class ClassifierConfig(BaseModel):
    """Use a classifier trained by ``dctp train-scorer NAME``; scores land in ``scores.classifier_{NAME}``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    """The trained classifier's name (``state/classifiers/{name}``); no default: it names the team's model."""
    positive_is_good: bool = False
    """Whether the positive label marks wanted text (``quality = probability``) or unwanted text such as
    ``toxic`` (``quality = 1 - probability``, the default: most custom classifiers flag what to remove)."""
    rejects: float | None = None
    """Default threshold of rule ``classifier_rejects`` (probability 0-1): remove when P(positive) is above it
    (below it when ``positive_is_good``); ``None`` = off until the team picks an operating point."""
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    """The encoder; its model must be the one the classifier was trained on (checked in ``prepare``)."""
    missing_ok: bool = False
    """Score NaN ``probability`` (no contribution to the composite) while the classifier was never trained, instead
    of failing: for a classifier the pipeline trains itself (``expert_quality``, from the experts' labels)."""


class ClassifierScorer(Scorer):
    """Score ``probability`` (float32): the stored classifier's P(positive label) on the doc's embedding."""

    gpu = True

    def __init__(self, config: ClassifierConfig) -> None:
        self.config = config
        self.name = f"classifier_{config.name}"
        self.fields = [ScoreField("probability", pa.float32(),
                                  f"P(label is positive) by classifier {config.name!r} (0-1)")]
        op = "<" if config.positive_is_good else ">"
        self.rules = [Rule("classifier_rejects", "probability", op, config.rejects,
                           f"P(positive) {op} threshold for classifier {config.name!r}; off by default")]
        self._model: StoredClassifier | None = None
        self._lookup: EmbeddingLookup | None = None
        self._version: str | None = None
        self._missing = False

    def cache_token(self, context: ScoringContext) -> str:
        """Scores depend on the trained model: each training publishes a new version, so retraining rescores.

        The version read here is the one ``prepare`` loads, so the scores stored under this token are its model's
        even when the classifier is retrained in between.
        """
        self._version = model_version(context.storage, self.config.name)
        return self._version or ""

    def prepare(self, context: ScoringContext) -> None:
        version = self._version or model_version(context.storage, self.config.name)
        self._missing = False
        try:
            self._model = load_classifier(context.storage, self.config.name, version)
        except FileNotFoundError:
            if not (self.config.missing_ok and version is None):
                raise
            log.info("classifier %s is not trained yet: its probability is NaN (missing_ok)", self.config.name)
            self._model, self._lookup, self._missing = None, None, True
            return
        wanted = self.config.embedding.model or "all-MiniLM-L6-v2"
        if self._model.meta["embedding_model"] != wanted:
            raise ValueError(f"classifier {self.config.name!r} was trained on {self._model.meta['embedding_model']} "
                             f"embeddings; this scorer embeds with {wanted}: retrain it or set embedding.model")
        trained_on = self._model.meta.get("embedding_revision")
        if trained_on and trained_on != model_revision(self.config.embedding.model):
            raise ValueError(f"classifier {self.config.name!r} was trained on other {wanted} weights (fingerprint "
                             f"{trained_on}, now {model_revision(self.config.embedding.model)}): retrain it")
        self._lookup = EmbeddingLookup.shared(context, self.config.embedding)

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        if self._missing:
            return {"probability": np.full(batch.num_rows, np.nan, dtype=np.float32)}
        if self._model is None or self._lookup is None:
            raise RuntimeError(f"{self.name}.score called before prepare()")
        if not batch.num_rows:
            return {"probability": np.zeros(0, dtype=np.float32)}
        return {"probability": self._model.probability(self._lookup.vectors(batch)).astype(np.float32)}

    def quality(self, scores: dict[str, np.ndarray], domains: np.ndarray) -> np.ndarray | None:
        """Return ``probability`` when the positive label is good, else ``1 - probability``."""
        p = np.asarray(scores["probability"], dtype=np.float64)
        return p if self.config.positive_is_good else 1.0 - p
