"""Toxicity scorer: Detoxify's per-category probabilities, batched, one score field per category.

Writes ``scores.toxicity.{category}`` for the configured categories; rule ``toxic`` drops toxicity > 0.8.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, field_validator
from pydantic import Field as Setting

from dctp_tasks.quality.base import Field, Rule, Scorer, ScoringContext

if TYPE_CHECKING:
    from detoxify import Detoxify

log = logging.getLogger(__name__)

ORIGINAL_CATEGORIES = ["toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack"]
"""What Detoxify's "original" model predicts (Jigsaw Toxic Comment Classification); "unbiased" and
"multilingual" add ``sexual_explicit``."""
#: Rule (ledger reason) per category: the name says what failed.
REASONS = {"toxicity": "toxic", "severe_toxicity": "severely_toxic", "obscene": "obscene", "threat": "threatening",
           "insult": "insulting", "identity_attack": "identity_attack", "sexual_explicit": "sexually_explicit"}
TOXIC_THRESHOLD = 0.8


class ToxicityConfig(BaseModel):
    """Which Detoxify model scores toxicity, which categories are kept, where and in what batches."""

    model_config = ConfigDict(extra="forbid")

    model_type: Literal["original", "unbiased", "multilingual", "original-small", "unbiased-small"] = "original"
    """Detoxify's released model to use when ``checkpoint`` is None (Detoxify's default: "original")."""
    checkpoint: str | None = None
    """Local Detoxify checkpoint (a ``torch.save`` of ``config`` + ``state_dict``). None: the released checkpoint
    of ``model_type``, which Detoxify downloads on first use (production only; tests and offline installs set it)."""
    huggingface_config_path: str | None = None
    """Local folder with the base model's HF config and tokenizer (Detoxify's offline option). None: the
    checkpoint's ``arch.args.model_type``, a Hub id or a local folder."""
    categories: list[str] = Setting(default_factory=lambda: list(ORIGINAL_CATEGORIES))
    """Score fields, Detoxify's category names; the model must predict each. Default: the "original" model's six."""
    device: str = "auto"
    """``auto`` (CUDA in fp16 when present, else CPU in fp32), ``cpu`` or ``cuda``."""
    batch_size: int = Setting(32, ge=1)
    """Documents per forward pass (BERT-base at 512 tokens: ≈ 0.8 GB of activations per 32 documents on CPU)."""
    max_tokens: int = Setting(512, ge=8)
    """Tokens per document; longer documents are scored on their first tokens (512 = BERT's position limit)."""

    @field_validator("categories")
    @classmethod
    def _has_toxicity(cls, value: list[str]) -> list[str]:
        if "toxicity" not in value:
            raise ValueError(f"categories {value} must include 'toxicity' (rule `toxic` and the quality read it)")
        if len(set(value)) != len(value):
            raise ValueError(f"categories {value} repeat a name")
        return value


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


class ToxicityScorer(Scorer):
    """Score toxicity per category with Detoxify; a GPU task."""

    name = "toxicity"
    gpu = True

    def __init__(self, config: ToxicityConfig | None = None) -> None:
        self.config = config or ToxicityConfig()
        source = self.config.checkpoint or f'Detoxify "{self.config.model_type}"'
        self.fields = [Field(c, pa.float32(), f"probability (sigmoid of the logit) that the text is {c}, by {source};"
                                              " NaN: empty text") for c in self.config.categories]
        self.rules = [Rule(REASONS.get(c, f"{c}_too_high"), c, ">", TOXIC_THRESHOLD if c == "toxicity" else None,
                           _rule_doc(c)) for c in self.config.categories]
        self._model: Detoxify | None = None
        self._columns: list[int] = []

    def prepare(self, context: ScoringContext | None = None) -> None:
        """Load Detoxify once per process and check that it predicts every configured category."""
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

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        import torch

        if self._model is None:
            self.prepare()
        texts = batch.column("text").to_pylist()
        out = np.full((len(texts), len(self._columns)), np.nan, dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t]
        # longest first, so each forward pass pads to lengths alike (character length predicts token length)
        todo.sort(key=lambda i: -len(texts[i]))
        model, tokenizer = self._model.model, self._model.tokenizer
        device = next(model.parameters()).device
        max_length = min(self.config.max_tokens, tokenizer.model_max_length)
        with torch.inference_mode():
            for lo in range(0, len(todo), self.config.batch_size):
                rows = todo[lo:lo + self.config.batch_size]
                inputs = tokenizer([texts[i] for i in rows], return_tensors="pt", truncation=True, padding=True,
                                   max_length=max_length).to(device)
                probs = torch.sigmoid(model(**inputs).logits.float())[:, self._columns]
                out[rows] = probs.cpu().numpy()
        return {c: out[:, j] for j, c in enumerate(self.config.categories)}

    def quality(self, scores: dict[str, np.ndarray], domains: np.ndarray) -> np.ndarray:
        """Return 1 - toxicity (NaN stays NaN): a probability, comparable across domains as it is."""
        return 1.0 - np.asarray(scores["toxicity"], dtype=np.float64)


def _rule_doc(category: str) -> str:
    if category == "toxicity":
        return (f"Detoxify toxicity probability above {TOXIC_THRESHOLD}: the issue's example (toxicity=0.91>0.80); "
                "stricter than Detoxify's 0.5 decision point, so borderline text goes to the score report, not out")
    return (f"Detoxify {category} probability above the threshold; off by default: `toxic` already removes what "
            "these categories flag in the Jigsaw labels, where they are sub-labels of toxic comments")
