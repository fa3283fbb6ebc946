"""Row accounting: every input row (and every generated one) ends exported, duplicate, filtered, quarantined or
retracted.

Each stage writes the rows it drops (``REJECT_SCHEMA``: doc_id, stage, outcome, reason, detail, duplicate_of, and
for malformed input its file and line) next to the rows it keeps; the export gathers one run's dropped rows into
the date's ledger, which its Delta commit names. ``check_ledger`` proves
``ingested + synthesized = exported + duplicates + filtered + quarantined + retracted`` for a date from the data
itself (``synthesized``: rows the synthetic stage generated, accepted or not; ``retracted``: exported once, removed
later because experts judged them bad).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from dctp_tasks.storage import PartWriter, Storage

OUTCOMES = ("duplicate", "filtered", "quarantined", "retracted")

REJECT_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("stage", pa.string()),
        ("outcome", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("duplicate_of", pa.string()),
        ("source", pa.string()),
        ("file", pa.string()),
        ("line", pa.int64()),
        ("dt", pa.string()),
    ]
)


class LedgerImbalance(RuntimeError):
    """Rows went missing (or appeared) between ingest and export."""


class RejectWriter:
    """Buffer one stage's dropped rows and stream them as Parquet into ``folder`` (relative to the root).

    The stages write into the version of their output they are publishing, so a stage's dropped rows switch
    together with its kept rows.
    """

    def __init__(self, storage: Storage, folder: str, dt: str, stage: str, flush_rows: int = 50_000,
                 prefix: str = "part") -> None:
        self.dt = dt
        self.stage = stage
        self.counts: Counter[str] = Counter()
        self._rows: dict[str, list] = {name: [] for name in REJECT_SCHEMA.names}
        self._flush_rows = flush_rows
        self.parts = PartWriter(storage, storage.path(folder), REJECT_SCHEMA, prefix)

    def __enter__(self) -> RejectWriter:
        self.parts.__enter__()
        return self

    def add(self, doc_id: str, outcome: str, reason: str, detail: str = "", *, duplicate_of: str | None = None,
            source: str | None = None, file: str | None = None, line: int | None = None) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown ledger outcome {outcome!r}; expected one of {OUTCOMES}")
        row = (doc_id, self.stage, outcome, reason, detail, duplicate_of, source, file, line, self.dt)
        for name, value in zip(REJECT_SCHEMA.names, row, strict=True):
            self._rows[name].append(value)
        self.counts[reason] += 1
        if len(self._rows["doc_id"]) >= self._flush_rows:
            self.flush()

    def add_table(self, table: pa.Table) -> None:
        """Record many rejects at once (a table with ``REJECT_SCHEMA`` columns minus ``stage``/``dt``)."""
        if table.num_rows == 0:
            return
        n = table.num_rows
        columns = {
            name: table.column(name) if name in table.column_names else pa.nulls(n, REJECT_SCHEMA.field(name).type)
            for name in REJECT_SCHEMA.names
        }
        columns["stage"] = pa.array([self.stage] * n, pa.string())
        columns["dt"] = pa.array([self.dt] * n, pa.string())
        self.parts.write(pa.table(columns, schema=REJECT_SCHEMA))
        for reason, count in Counter(table.column("reason").to_pylist()).items():
            self.counts[reason] += count

    def flush(self) -> None:
        if self._rows["doc_id"]:
            self.parts.write(pa.table(self._rows, schema=REJECT_SCHEMA))
            self._rows = {name: [] for name in REJECT_SCHEMA.names}

    def __exit__(self, exc_type, exc, tb) -> None:
        self.flush()
        self.parts.__exit__(exc_type, exc, tb)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class LedgerReport:
    dt: str
    ingested: int
    exported: int
    by_outcome: dict[str, int]
    by_reason: dict[str, int] = field(default_factory=dict)
    synthesized: int = 0

    @property
    def accounted(self) -> int:
        return self.exported + sum(self.by_outcome.values())

    @property
    def balanced(self) -> bool:
        return self.ingested + self.synthesized == self.accounted

    def as_dict(self) -> dict:
        return {
            "dt": self.dt,
            "ingested": self.ingested,
            "synthesized": self.synthesized,
            "exported": self.exported,
            **{outcome: self.by_outcome.get(outcome, 0) for outcome in OUTCOMES},
            "balanced": self.balanced,
            "by_reason": dict(sorted(self.by_reason.items())),
        }

    def render(self) -> str:
        lines = [f"ledger dt={self.dt}: ingested {self.ingested:,}"
                 + (f" + synthesized {self.synthesized:,}" if self.synthesized else "")
                 + f" = exported {self.exported:,}"
                 + "".join(f" + {o} {self.by_outcome.get(o, 0):,}" for o in OUTCOMES)
                 + ("  [balanced]" if self.balanced else f"  [UNBALANCED: accounted {self.accounted:,}]")]
        for reason, count in sorted(self.by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {reason:<28} {count:>10,}")
        return "\n".join(lines)


def ledger_report(rejects: pa.Table, dt: str, ingested: int, exported: int, synthesized: int = 0) -> LedgerReport:
    """Count a date's dropped rows by outcome and reason against what was ingested (and generated) and exported."""
    by_outcome = {o: 0 for o in OUTCOMES}
    by_reason: dict[str, int] = {}
    if rejects.num_rows:
        for row in rejects.group_by(["outcome", "reason"]).aggregate([([], "count_all")]).to_pylist():
            by_outcome[row["outcome"]] += row["count_all"]
            key = f"{row['outcome']}.{row['reason']}"
            by_reason[key] = by_reason.get(key, 0) + row["count_all"]
    return LedgerReport(dt=dt, ingested=ingested, exported=exported, by_outcome=by_outcome, by_reason=by_reason,
                        synthesized=synthesized)


def check_ledger(report: LedgerReport) -> LedgerReport:
    """Raise ``LedgerImbalance`` unless every ingested row is accounted for exactly once."""
    if not report.balanced:
        raise LedgerImbalance(
            f"ledger for dt={report.dt} does not balance: ingested {report.ingested}"
            + (f" + synthesized {report.synthesized}" if report.synthesized else "") + f" but exported "
            f"{report.exported} + {report.by_outcome} = {report.accounted}"
        )
    return report


def judgement_ids(ids: list[int], shown: int = 20) -> str:
    """Name expert judgements in a ledger detail: ``#12,#15`` (the first ``shown``, then how many more)."""
    return ",".join(f"#{i}" for i in ids[:shown]) + (f",… {len(ids) - shown} more" if len(ids) > shown else "")
