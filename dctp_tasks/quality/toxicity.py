"""Toxicity scorer: ``scores.toxicity.{category}`` from the shipped offline classifier or from Detoxify.

Without a Detoxify checkpoint a logistic regression on MiniLM embeddings (``include/models/toxicity-minilm``, fed
semantic dedup's stored vectors) scores ``toxicity``; with one, Detoxify scores its categories. Rule ``toxic`` drops
toxicity above the backend's threshold (the classifier's measured one, Detoxify's 0.8).
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, model_validator
from pydantic import Field as Setting

from dctp_tasks.config import AutoSize, dctp_home
from dctp_tasks.quality.base import Field, Rule, Scorer, ScoringContext
from dctp_tasks.quality.embeddings import EmbeddingConfig, EmbeddingLookup, encode

if TYPE_CHECKING:
    from detoxify import Detoxify

    from dctp_tasks.quality.classifier import StoredClassifier

log = logging.getLogger(__name__)

ORIGINAL_CATEGORIES = ["toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack"]
"""What Detoxify's "original" model predicts (Jigsaw Toxic Comment Classification); "unbiased" and
"multilingual" add ``sexual_explicit``."""
CLASSIFIER_CATEGORIES = ["toxicity"]
"""What the classifier backend predicts: one probability, trained on Jigsaw's ``toxic`` label."""
#: Rule (ledger reason) per category: the name says what failed.
REASONS = {"toxicity": "toxic", "severe_toxicity": "severely_toxic", "obscene": "obscene", "threat": "threatening",
           "insult": "insulting", "identity_attack": "identity_attack", "sexual_explicit": "sexually_explicit"}
TOXIC_THRESHOLD = 0.8
"""Default threshold of rule ``toxic`` with Detoxify (probability 0-1); the classifier's comes from its model.json."""
SHIPPED_CLASSIFIER = Path("include") / "models" / "toxicity-minilm"
"""The classifier backend's default folder, relative to ``$DCTP_HOME`` (the repository root when unset)."""


class ToxicityConfig(BaseModel):
    """Which backend scores toxicity, which categories are kept, where and in what batches."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "classifier", "detoxify"] = "auto"
    """``auto``: Detoxify when ``checkpoint`` is set, else the classifier; ``detoxify`` also without a checkpoint
    (Detoxify then downloads ``model_type``'s released weights on first use)."""
    classifier: str | None = None
    """Classifier backend: folder with ``coef.json`` and ``model.json`` (as ``include/models/train_toxicity.py``
    writes it); relative paths resolve against ``$DCTP_HOME``. None: the shipped ``include/models/toxicity-minilm``."""
    embedding: EmbeddingConfig = Setting(default_factory=EmbeddingConfig)
    """Classifier backend: the encoder; keep it equal to ``dedup_semantic``'s so its stored vectors are reused (its
    model must be the one the classifier was trained on, checked in ``prepare``)."""
    model_type: Literal["original", "unbiased", "multilingual", "original-small", "unbiased-small"] = "original"
    """Detoxify: the released model to use when ``checkpoint`` is None (Detoxify's default: "original")."""
    checkpoint: str | None = None
    """Detoxify: local checkpoint (a ``torch.save`` of ``config`` + ``state_dict``); setting it selects Detoxify
    under ``backend: auto``. None: the released checkpoint of ``model_type``, downloaded on first use."""
    huggingface_config_path: str | None = None
    """Detoxify: local folder with the base model's HF config and tokenizer (Detoxify's offline option). None: the
    checkpoint's ``arch.args.model_type``, a Hub id or a local folder."""
    categories: list[str] | None = None
    """Score fields, Detoxify's category names; the backend must predict each and ``toxicity`` is required.
    None: everything the backend predicts (classifier: ``toxicity``; Detoxify: the "original" model's six)."""
    device: str = "auto"
    """Detoxify: ``auto`` (CUDA in fp16 when present, else CPU in fp32), ``cpu`` or ``cuda`` (the classifier
    backend encodes on ``embedding.device``)."""
    batch_size: AutoSize = "auto"
    """Detoxify: most documents per forward pass; ``auto``: 32 on a CPU (BERT-base at 512 tokens: ≈ 0.8 GB of
    activations), up to 4,096 on CUDA (the token budget decides)."""
    token_budget: AutoSize = "auto"
    """Detoxify: most padded tokens per forward pass (documents x the longest, sorted by length first); ``auto``:
    32 x ``max_tokens`` on a CPU, a share of free GPU memory on CUDA."""
    max_tokens: int = Setting(512, ge=8)
    """Detoxify: tokens per document; longer ones are scored on their first tokens (512 = BERT's position limit)."""

    @property
    def resolved_backend(self) -> Literal["classifier", "detoxify"]:
        """Return the backend that runs: ``auto`` is Detoxify with a checkpoint, the classifier without."""
        if self.backend == "auto":
            return "detoxify" if self.checkpoint else "classifier"
        return self.backend

    @model_validator(mode="after")
    def _categories(self) -> ToxicityConfig:
        backend = self.resolved_backend
        if backend == "classifier" and self.checkpoint:
            raise ValueError(f"checkpoint {self.checkpoint!r} is a Detoxify checkpoint, but backend is 'classifier': "
                             "drop one of them")
        predicts = CLASSIFIER_CATEGORIES if backend == "classifier" else ORIGINAL_CATEGORIES
        if self.categories is None:
            self.categories = list(predicts)
        if "toxicity" not in self.categories:
            raise ValueError(f"categories {self.categories} must include 'toxicity' (rule `toxic` and the quality "
                             "read it)")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories {self.categories} repeat a name")
        unknown = [c for c in self.categories if c not in CLASSIFIER_CATEGORIES] if backend == "classifier" else []
        if unknown:
            raise ValueError(f"categories {unknown} cannot be predicted by the classifier backend, which predicts "
                             f"only {CLASSIFIER_CATEGORIES}: drop them, or set a Detoxify checkpoint "
                             "(backend: detoxify) for the other categories")
        return self

    def classifier_dir(self) -> Path:
        """Return the classifier backend's model folder (absolute)."""
        path = Path(self.classifier) if self.classifier else SHIPPED_CLASSIFIER
        return path if path.is_absolute() else dctp_home() / path


@lru_cache(maxsize=2)
def detoxify_model(model_type: str, checkpoint: str | None, device: str,
                   huggingface_config_path: str | None) -> Detoxify:
    """Return a Detoxify model on ``device`` (fp16 on CUDA), loaded once per process."""
    from detoxify import Detoxify

    model = Detoxify(model_type, checkpoint=checkpoint, device=device,
                     huggingface_config_path=huggingface_config_path)
    if device == "cuda":
        model.model.half()
    model.model.eval()
    log.info("loaded Detoxify %s (%s) on %s: %s", model_type, checkpoint or "released checkpoint", device,
             model.class_names)
    return model


def read_classifier_meta(folder: Path) -> dict:
    """Return a classifier folder's ``model.json``; a missing one says how to make it."""
    path = folder / "model.json"
    if not path.is_file():
        raise FileNotFoundError(f"toxicity: no classifier at {folder} (no model.json): run "
                                "include/models/train_toxicity.py, point quality.scorers.toxicity.classifier at a "
                                "trained folder, or set a Detoxify checkpoint")
    return json.loads(path.read_text())


class ToxicityScorer(Scorer):
    """Score toxicity per category with the classifier or Detoxify; a GPU task (both run a model)."""

    name = "toxicity"
    gpu = True

    def __init__(self, config: ToxicityConfig | None = None) -> None:
        self.config = config or ToxicityConfig()
        self.backend = self.config.resolved_backend
        if self.backend == "classifier":
            folder = self.config.classifier_dir()
            self._meta = read_classifier_meta(folder)
            threshold = float(self._meta["threshold"]["value"])
            source = f"the {folder.name} classifier ({self._meta['embedding_model']} + logistic regression)"
        else:
            self._meta = {}
            threshold = TOXIC_THRESHOLD
            source = self.config.checkpoint or f'Detoxify "{self.config.model_type}"'
        self.fields = [Field(c, pa.float32(), f"probability (0-1, a sigmoid of a logit) of {c}, by {source}; "
                                              "NaN: empty text") for c in self.config.categories]
        self.rules = [Rule(REASONS.get(c, f"{c}_too_high"), c, ">", threshold if c == "toxicity" else None,
                           self._rule_doc(c, threshold)) for c in self.config.categories]
        self._model: Detoxify | None = None
        self._columns: list[int] = []
        self._classifier: StoredClassifier | None = None
        self._lookup: EmbeddingLookup | None = None

    def prepare(self, context: ScoringContext | None = None) -> None:
        """Load the backend's model once; the classifier reads the context's stored embeddings (None: encodes all)."""
        if self.backend == "classifier":
            self._prepare_classifier(context)
        else:
            self._prepare_detoxify()

    def cache_token(self, context: ScoringContext) -> str:
        """Return a fingerprint of the model, so stored scores are recomputed after it is retrained or replaced.

        Classifier: sha256 of its folder's files. Detoxify checkpoint: its size and modification time (hashing a
        400 MB file every run would cost more than it saves). Released Detoxify weights: nothing (fixed by name).
        """
        if self.backend == "classifier":
            digest = hashlib.sha256()
            for path in sorted(p for p in self.config.classifier_dir().iterdir() if p.is_file()):
                digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
            return digest.hexdigest()
        if self.config.checkpoint and Path(self.config.checkpoint).is_file():
            stat = Path(self.config.checkpoint).stat()
            return f"{stat.st_size}:{stat.st_mtime_ns}"
        return ""

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        if self.backend == "classifier":
            return self._score_classifier(batch)
        return self._score_detoxify(batch)

    def quality(self, scores: dict[str, np.ndarray], domains: np.ndarray) -> np.ndarray:
        """Return 1 - toxicity (NaN stays NaN): a probability, comparable across domains as it is."""
        return 1.0 - np.asarray(scores["toxicity"], dtype=np.float64)

    def _prepare_classifier(self, context: ScoringContext | None) -> None:
        from dctp_tasks.quality.classifier import read_classifier_dir

        folder = self.config.classifier_dir()
        self._classifier = read_classifier_dir(folder)
        trained_on = self._classifier.meta["embedding_model"]
        wanted = self.config.embedding.model or "all-MiniLM-L6-v2"
        if trained_on != wanted:
            raise ValueError(f"toxicity: the classifier {folder} was trained on {trained_on} embeddings; this scorer "
                             f"embeds with {wanted}: retrain it or set quality.scorers.toxicity.embedding.model")
        self._lookup = EmbeddingLookup.shared(context, self.config.embedding) if context is not None else None

    def _score_classifier(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        if self._classifier is None:
            self.prepare()
        if not batch.num_rows:
            return {"toxicity": np.zeros(0, dtype=np.float32)}
        texts = pc.fill_null(batch.column("text"), "")
        if self._lookup is not None:
            vectors = self._lookup.vectors(batch)
        else:
            vectors = encode(texts.to_pylist(), self.config.embedding)
        probability = self._classifier.probability(vectors).astype(np.float32)
        # An empty text's embedding says nothing about toxicity: unscored, as Detoxify leaves it.
        probability[pc.equal(pc.utf8_length(texts), 0).to_numpy(zero_copy_only=False)] = np.nan
        return {"toxicity": probability}

    def _prepare_detoxify(self) -> None:
        from dctp_tasks.models import pick_device

        cfg = self.config
        model = detoxify_model(cfg.model_type, cfg.checkpoint, pick_device(cfg.device), cfg.huggingface_config_path)
        missing = [c for c in cfg.categories if c not in model.class_names]
        if missing:
            raise ValueError(f"toxicity: the model ({cfg.checkpoint or cfg.model_type}) does not predict "
                             f"{missing}; it predicts {model.class_names}: set quality.scorers.toxicity.categories "
                             "to some of those")
        self._model = model
        self._columns = [model.class_names.index(c) for c in cfg.categories]

    def _score_detoxify(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        import torch

        from dctp_tasks.batching import activation_bytes, resolve_limits, token_batches

        if self._model is None:
            self.prepare()
        texts = batch.column("text").to_pylist()
        out = np.full((len(texts), len(self._columns)), np.nan, dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t]
        model, tokenizer = self._model.model, self._model.tokenizer
        param = next(model.parameters())
        max_length = min(self.config.max_tokens, tokenizer.model_max_length)
        limits = resolve_limits(self.config.batch_size, self.config.token_budget, str(param.device), cpu_rows=32,
                                max_length=max_length,
                                bytes_per_token=activation_bytes(model.config, max_length, param.element_size()))

        def encode(positions: range) -> list[list[int]]:
            return tokenizer([texts[i] for i in todo[positions.start:positions.stop]], truncation=True,
                             max_length=max_length, return_attention_mask=False,
                             return_token_type_ids=False)["input_ids"]

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        rows = np.asarray(todo, dtype=np.int64)
        with torch.inference_mode():
            for token_batch in token_batches(len(todo), encode, limits, pad):
                logits = model(**token_batch.tensors(param.device)).logits.float()
                out[rows[token_batch.rows]] = torch.sigmoid(logits)[:, self._columns].cpu().numpy()
        return {c: out[:, j] for j, c in enumerate(self.config.categories)}

    def _rule_doc(self, category: str, threshold: float) -> str:
        if category != "toxicity":
            return (f"Detoxify {category} probability above the threshold; off by default: `toxic` already removes "
                    "what these categories flag in the Jigsaw labels, where they are sub-labels of toxic comments")
        if self.backend == "classifier":
            measured = self._meta["threshold"]
            return (f"classifier toxicity probability above {threshold}: the lowest threshold that flags at most "
                    f"{measured['max_clean_fpr']:.1%} of clean reference text (measured "
                    f"{measured['clean_fpr']:.2%}) while catching {measured['hold_out_tpr']:.0%} of the hold-out's "
                    "toxic comments (model.json)")
        return (f"Detoxify toxicity probability above {threshold}: stricter than Detoxify's 0.5 decision point, so "
                "borderline text goes to the score report, not out")
