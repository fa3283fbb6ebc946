"""The ``pii`` scorer: one int32 count per PII kind (emails, phones, IPs, cards, IBANs, SSNs) and ``total``.

Detection and redaction live in ``dctp_tasks.pii``; decide redacts kept rows when ``pii.redact`` is on (the default).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from dctp_tasks.pii import ALL, PLACEHOLDERS, PiiType, _scan, redact_pii
from dctp_tasks.quality.base import Field as ScoreField
from dctp_tasks.quality.base import Rule, Scorer

__all__ = ["ALL", "PLACEHOLDERS", "PiiConfig", "PiiScorer", "redact_pii"]

class PiiConfig(BaseModel):
    """Which PII kinds to count and whether decide redacts them from kept rows."""

    model_config = ConfigDict(extra="forbid")

    redact: bool = True
    """Replace each match with its placeholder (``<EMAIL>`` …) in kept rows before export; on by default: no PII
    leaves the pipeline unless someone switches this off."""
    types: list[PiiType] = Field(default_factory=lambda: list(ALL))
    """PII kinds to count and redact; default all six. Others are still recognised (a card number is never read as a
    phone) but neither counted nor replaced."""


class PiiScorer(Scorer):
    """Count PII per row and kind (int32) and ``total``; no rule is on by default: PII is redacted, not filtered."""

    name = "pii"
    gpu = False

    def __init__(self, config: PiiConfig | None = None) -> None:
        self.config = config or PiiConfig()
        self.fields = [ScoreField(kind, pa.int32(), f"{kind} matches in text (validated, count)")
                       for kind in ("email", "phone", "ip_address", "credit_card", "iban", "ssn")]
        self.fields.append(ScoreField("total", pa.int32(), "PII matches of the configured kinds in text (count)"))
        self.rules = [Rule("too_much_pii", "total", ">", None,
                           "more PII matches than the threshold (e.g. a leaked contact list); off by default: "
                           "redaction already removes the PII")]

    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """Return the per-kind and total PII counts of ``batch``'s text (null text counts zero)."""
        _, counts = _scan(batch.column("text"), self.config.types, replace=False)
        counts["total"] = np.sum([counts[k] for k in self.config.types], axis=0, dtype=np.int32) \
            if self.config.types else np.zeros(batch.num_rows, np.int32)
        return counts
