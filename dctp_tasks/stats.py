"""What every stage returns: output URI and version, ``total / kept / dropped / dropped_<reason>``, seconds, rows/s.

The result is small and JSON-safe: it becomes the task's XCom and the stage's MLflow metrics. ``output_stage`` and
``version`` name the staged output the next stage reads (a stage with nothing to do passes its input on).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import dctp_tasks


@dataclass
class StageResult:
    stage: str
    output_uri: str
    total: int = 0
    kept: int = 0
    dropped_by_reason: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    extra: dict[str, float | int | str] = field(default_factory=dict)
    version: str | None = None
    """The version of the staged output this run published (or reused, or passed on)."""
    output_stage: str | None = None
    """Whose staged output holds this result's rows: the stage itself unless it passed its input on."""

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())

    def as_dict(self) -> dict:
        """Return the XCom payload: counts and URIs, never data."""
        out: dict = {
            "stage": self.stage,
            "output_uri": self.output_uri,
            "total": self.total,
            "kept": self.kept,
            "dropped": self.dropped,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(self.total / self.seconds, 1) if self.seconds > 0 else 0.0,
            "code_version": dctp_tasks.__version__,
            "output_stage": self.output_stage or self.stage,
            "version": self.version,
        }
        out.update({f"dropped_{reason}": count for reason, count in sorted(self.dropped_by_reason.items())})
        out.update(self.extra)
        return out

    def metrics(self) -> dict[str, float]:
        """Return the numeric fields under the stage's prefix, for MLflow."""
        return {f"{self.stage}.{key}": float(value) for key, value in self.as_dict().items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)}


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
