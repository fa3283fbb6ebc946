"""Source credibility: a per-source prior in [0, 1] from config, or the experts' verdicts on the source.

For a source with at least ``feedback_min_labels`` expert consensus labels (counted by ``merge_feedback`` and
published per date under ``state/source_feedback/``; a date reads the latest published before it), the value is
the Beta posterior of its share judged good, centred on the config prior. ``credibility_provenance`` says which gave
the value: ``feedback:n={labels}``, ``config:priors.{source}`` or ``config:default``.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dctp_tasks.quality.base import Field as ScoreField
from dctp_tasks.quality.base import Rule, Scorer, ScoringContext
from dctp_tasks.source_labels import LABELS_FILE, latest_source_labels

log = logging.getLogger(__name__)

DEFAULT_PROVENANCE = "config:default"


class CredibilityConfig(BaseModel):
    """Prior credibility of each source; sources not listed get ``default``."""

    model_config = ConfigDict(extra="forbid")

    priors: dict[str, float] = Field(default_factory=dict)
    """Credibility per ``source`` (0 = not credible, 1 = fully), set by the team that knows the source."""
    default: float = Field(0.5, ge=0.0, le=1.0)
    """Credibility of a source not in ``priors`` (0-1); 0.5 = no opinion either way."""
    low_credibility: float | None = None
    """Default threshold of rule ``low_credibility`` (remove below, 0-1); ``None`` = off: a prior alone rarely
    justifies dropping data, it weights the composite instead."""
    feedback_min_labels: int | None = Field(20, ge=1)
    """Expert consensus labels a source needs before its credibility comes from them instead of the prior
    (``None``: never)."""
    feedback_prior_strength: float = Field(10.0, ge=0.0)
    """Pseudo-labels the config prior counts for when it is blended with the experts' labels."""

    @field_validator("priors")
    @classmethod
    def _in_range(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {source: p for source, p in value.items() if not 0.0 <= p <= 1.0}
        if bad:
            raise ValueError(f"credibility.priors must lie in [0, 1]; got {bad}")
        return value


class CredibilityScorer(Scorer):
    """Score ``credibility`` (float32, 0-1) and ``credibility_provenance`` (string) from the row's ``source``."""

    name = "credibility"
    gpu = False

    def __init__(self, config: CredibilityConfig | None = None) -> None:
        self.config = config or CredibilityConfig()
        self.fields = [
            ScoreField("credibility", pa.float32(), "credibility of the doc's source (0-1, 1 = credible)"),
            ScoreField("credibility_provenance", pa.string(), "where the value came from: feedback:n={labels}, "
                       "config:priors.{source} or config:default"),
        ]
        self.rules = [Rule("low_credibility", "credibility", "<", self.config.low_credibility,
                           "source prior below the threshold; off by default")]
        self._set(self.config.priors, {s: f"config:priors.{s}" for s in self.config.priors})

    def _set(self, values: dict[str, float], provenance: dict[str, str]) -> None:
        sources = sorted(values)
        self._sources = pa.array(sources, pa.string())
        # Last slot = the default, so one take() maps every row, listed or not.
        self._values = np.array([values[s] for s in sources] + [self.config.default], dtype=np.float32)
        self._provenance = pa.array([provenance[s] for s in sources] + [DEFAULT_PROVENANCE], pa.string())

    def cache_token(self, context: ScoringContext) -> str:
        """Scores depend on the expert labels published before the date (their latest version)."""
        latest = latest_source_labels(context.storage, context.dt) if self.config.feedback_min_labels else None
        return "" if latest is None else f"{latest[0]}/{latest[1].rsplit('/', 1)[-1]}"

    def prepare(self, context: ScoringContext) -> None:
        """Take the experts' estimate for every source with enough consensus labels before the date."""
        latest = latest_source_labels(context.storage, context.dt) if self.config.feedback_min_labels else None
        if latest is None:
            return
        labels = json.loads(context.storage.read_bytes(context.storage.path(latest[1], LABELS_FILE)))
        values = dict(self.config.priors)
        provenance = {s: f"config:priors.{s}" for s in self.config.priors}
        strength = self.config.feedback_prior_strength
        for source, counts in labels.items():
            n = int(counts["good"]) + int(counts["bad"])
            if n < self.config.feedback_min_labels:
                continue
            prior = self.config.priors.get(source, self.config.default)
            values[source] = (int(counts["good"]) + strength * prior) / (n + strength)
            provenance[source] = f"feedback:n={n}"
        self._set(values, provenance)
        log.info("credibility dt=%s: %d sources credited from expert labels of dt=%s", context.dt,
                 sum(p.startswith("feedback:") for p in provenance.values()), latest[0])

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray | pa.Array]:
        which = pc.index_in(batch.column("source"), value_set=self._sources)
        which = pc.fill_null(which, len(self._sources)).to_numpy(zero_copy_only=False).astype(np.int64)
        return {"credibility": self._values[which], "credibility_provenance": self._provenance.take(pa.array(which))}

    def quality(self, scores: dict[str, np.ndarray], domains: np.ndarray) -> np.ndarray | None:
        """Return the prior itself: it is already a credibility in [0, 1]."""
        return np.asarray(scores["credibility"], dtype=np.float64)

