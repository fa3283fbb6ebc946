"""The scorer contract: a scorer turns an Arrow batch into named score fields; rules turn scores into decisions.

Scoring and deciding are separate ("score, then decide"): scores are stored once, in the ``scores``
struct column (``scores.{scorer}.{field}``), and thresholds change without recomputing any model score. A rule
names the reason a row is removed (the ledger's ``reason``) and reads one field of its own scorer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import pyarrow as pa

from dctp_tasks.storage import Storage


@dataclass(frozen=True)
class Field:
    """One score a scorer writes: ``scores.{scorer}.{name}`` of Arrow type ``dtype``."""

    name: str
    dtype: pa.DataType
    doc: str
    """Unit and meaning, e.g. "words in the document (whitespace tokens)"."""


@dataclass(frozen=True)
class Rule:
    """Remove a row when ``value op threshold`` (``<`` or ``>``); ``threshold=None`` switches the rule off.

    ``name`` is the ledger reason and says what failed (``too_few_words``, not ``word_count``). Config overrides a
    threshold as ``{scorer}.{name}`` (``heuristics.too_few_words: 30``), globally or per domain.
    """

    name: str
    field: str
    op: Literal["<", ">"]
    threshold: float | None
    doc: str
    """The rule and where its default comes from, e.g. "Gopher: fewer than 50 words"."""

    def fails(self, values: np.ndarray, threshold: float | np.ndarray | None = None) -> np.ndarray:
        """Return a boolean mask of the rows this rule removes (NaN never fails: unscored is not bad)."""
        limit = self.threshold if threshold is None else threshold
        if limit is None:
            return np.zeros(len(values), dtype=bool)
        values = np.asarray(values, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            return values < limit if self.op == "<" else values > limit


@dataclass
class ScoringContext:
    """What a scorer may need besides the batch: the storage root and the date (e.g. stored embeddings)."""

    storage: Storage
    dt: str
    extra: dict = field(default_factory=dict)


class Scorer(ABC):
    """Base class of every scorer.

    Subclasses set ``name`` (the ``scores`` sub-struct and config key), ``gpu`` (runs in the GPU scoring task),
    ``fields`` and ``rules`` (instance attributes: they may depend on config), and implement ``score``.
    Heavy imports (torch, transformers) happen inside methods, never at module import.
    """

    name: ClassVar[str]
    gpu: ClassVar[bool] = False
    fields: list[Field]
    rules: list[Rule]

    def prepare(self, context: ScoringContext) -> None:  # noqa: B027 - optional hook
        """Load models or per-day data once before the first batch (default: nothing)."""

    def cache_token(self, context: ScoringContext) -> str:
        """Return what else this day's scores depend on besides the rows and settings (default: nothing).

        The score stages reuse stored scores only while the token is unchanged (e.g. the history a scorer reads).
        """
        return ""

    @abstractmethod
    def score(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """Return one array per field in ``fields`` (same length as ``batch``, dtype matching ``Field.dtype``)."""

    def quality(self, scores: dict[str, np.ndarray], domains: np.ndarray) -> np.ndarray | None:
        """Return this scorer's contribution to the composite ``quality``, in [0, 1] (1 = best), or ``None``.

        Called once on the whole day's scores (``domains`` aligned), so contributions may be ranks or percentiles
        within a domain. ``None`` (the default) leaves the scorer out of the composite.
        """
        return None

    def struct_type(self) -> pa.StructType:
        """Return the Arrow type of ``scores.{name}``."""
        return pa.struct([pa.field(f.name, f.dtype) for f in self.fields])

    def to_struct(self, values: dict[str, np.ndarray]) -> pa.StructArray:
        """Return ``score``'s output as ``scores.{name}``; a missing or mis-sized field is a bug, named here."""
        missing = [f.name for f in self.fields if f.name not in values]
        if missing:
            raise ValueError(f"scorer {self.name} returned no {missing}")
        arrays = [pa.array(np.asarray(values[f.name]), type=f.dtype) if not isinstance(values[f.name], pa.Array)
                  else values[f.name].cast(f.dtype) for f in self.fields]
        lengths = {len(a) for a in arrays}
        if len(lengths) > 1:
            raise ValueError(f"scorer {self.name} returned fields of different lengths {sorted(lengths)}")
        return pa.StructArray.from_arrays(arrays, fields=list(self.struct_type()))
