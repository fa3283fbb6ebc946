"""Source credibility: a per-source prior in [0, 1] from config, recorded with where it came from.

``credibility_provenance`` says which setting gave the value (``config:priors.{source}`` or ``config:default``),
so a later source of truth (expert feedback: ``feedback:…``) can be told apart in the stored scores.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dctp_tasks.quality.base import Field as ScoreField
from dctp_tasks.quality.base import Rule, Scorer

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
            ScoreField("credibility", pa.float32(), "prior credibility of the doc's source (0-1, 1 = credible)"),
            ScoreField("credibility_provenance", pa.string(),
                       "where the value came from: config:priors.{source} or config:default"),
        ]
        self.rules = [Rule("low_credibility", "credibility", "<", self.config.low_credibility,
                           "source prior below the threshold; off by default")]
        sources = sorted(self.config.priors)
        self._sources = pa.array(sources, pa.string())
        # Last slot = the default, so one take() maps every row, listed or not.
        self._values = np.array([self.config.priors[s] for s in sources] + [self.config.default], dtype=np.float32)
        self._provenance = pa.array([f"config:priors.{s}" for s in sources] + [DEFAULT_PROVENANCE], pa.string())

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray | pa.Array]:
        which = pc.index_in(batch.column("source"), value_set=self._sources)
        which = pc.fill_null(which, len(self._sources)).to_numpy(zero_copy_only=False).astype(np.int64)
        return {"credibility": self._values[which], "credibility_provenance": self._provenance.take(pa.array(which))}

    def quality(self, scores: dict[str, np.ndarray], domains: np.ndarray) -> np.ndarray | None:
        """Return the prior itself: it is already a credibility in [0, 1]."""
        return np.asarray(scores["credibility"], dtype=np.float64)
