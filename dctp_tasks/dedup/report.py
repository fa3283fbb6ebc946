"""Per-run dedup report: duplicate rates by source and domain, and pairs just above and below each threshold.

A dedup stage counts its input with :class:`DuplicateRates`, samples :class:`SamplePair` s around its threshold,
renders Markdown with :func:`render_report` and stores it as ``reports/dt=D/{stage}.md`` (:func:`write_report`).
The report goes to the task log and MLflow too, before any later stage has redacted the data, so the sample texts
it shows are redacted here (``dctp_tasks.pii``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from dctp_tasks.pii import redact_text
from dctp_tasks.publish import NotPublished
from dctp_tasks.storage import Storage

SAMPLE_PAIRS = 5
"""Pairs shown on each side of the threshold: enough to judge it by eye, short enough to read."""
TEXT_CHARS = 200
"""Characters of each text shown per pair."""
_NONE = "(none)"


@dataclass(frozen=True)
class SamplePair:
    """Two docs and their similarity; ``dt`` of the other doc is set when it comes from history."""

    similarity: float
    threshold: float
    doc_id: str
    other_id: str
    other_dt: str | None = None


@dataclass
class DuplicateRates:
    """Docs in and duplicates out, by source and by domain."""

    docs: dict[tuple[str, str], int] = field(default_factory=dict)
    duplicates: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, table: pa.Table, is_dup: pa.Array) -> None:
        """Count a batch of the stage input (``source``, ``domain``) and which of its rows are duplicates."""
        for key in ("source", "domain"):
            values = pc.fill_null(table.column(key), _NONE)
            for target, rows in ((self.docs, values), (self.duplicates, values.filter(is_dup))):
                for item in pc.value_counts(rows).to_pylist():
                    target[key, item["values"]] = target.get((key, item["values"]), 0) + item["counts"]

    def table(self, key: str) -> list[tuple[str, int, int]]:
        """Return ``(value, docs, duplicates)`` of ``key`` (``source`` or ``domain``), by value."""
        return [(value, n, self.duplicates.get((k, value), 0)) for (k, value), n in sorted(self.docs.items())
                if k == key]


def closest(pairs: list[SamplePair], above: bool, k: int = SAMPLE_PAIRS) -> list[SamplePair]:
    """Return up to ``k`` pairs nearest their threshold on one side, deterministically (ties by doc ids)."""
    side = [p for p in pairs if (p.similarity >= p.threshold) == above]
    side.sort(key=lambda p: (abs(p.similarity - p.threshold), p.doc_id, p.other_id, p.other_dt or ""))
    return side[:k]


def lookup_texts(storage: Storage, folder: str, doc_ids: set[str]) -> dict[str, str]:
    """Return the texts of ``doc_ids`` found in a staged Parquet ``folder`` (none when it is gone)."""
    if not doc_ids or not storage.exists(folder):
        return {}
    wanted = pa.array(sorted(doc_ids), pa.string())
    found: dict[str, str] = {}
    for batch in storage.iter_batches(folder, batch_size=10_000, columns=["doc_id", "text"]):
        hits = pa.Table.from_batches([batch]).filter(pc.is_in(batch.column("doc_id"), value_set=wanted))
        found.update(zip(hits.column("doc_id").to_pylist(), hits.column("text").to_pylist(), strict=True))
    return found


def _short(text: str | None) -> str:
    if text is None:
        return "*(text not available)*"
    flat = " ".join(redact_text(text).split())
    return flat if len(flat) <= TEXT_CHARS else flat[:TEXT_CHARS - 1] + "…"


def _rate_rows(title: str, rows: list[tuple[str, int, int]]) -> list[str]:
    lines = [f"## Duplicates by {title}", "", f"| {title} | docs | duplicates | rate |", "|---|---:|---:|---:|"]
    for value, docs, dups in rows:
        lines.append(f"| {value} | {docs} | {dups} | {dups / docs:.1%} |")
    return lines + [""]


def _pair_rows(title: str, pairs: list[SamplePair], measure: str, texts: dict[tuple[str | None, str], str]
               ) -> list[str]:
    lines = [f"## {title}", ""]
    if not pairs:
        return lines + ["*(no such pairs this run)*", ""]
    for p in pairs:
        where = f" (history dt={p.other_dt})" if p.other_dt else ""
        lines += [f"- **{measure} {p.similarity:.3f}** (threshold {p.threshold:.2f}): `{p.doc_id}` vs "
                  f"`{p.other_id}`{where}",
                  f"  - `{p.doc_id}`: {_short(texts.get((None, p.doc_id)))}",
                  f"  - `{p.other_id}`: {_short(texts.get((p.other_dt, p.other_id)))}"]
    return lines + [""]


def render_report(stage: str, dt: str, *, method: str, measure: str, thresholds: str, clusters: int,
                  rates: DuplicateRates, above: list[SamplePair], below: list[SamplePair],
                  texts: dict[tuple[str | None, str], str]) -> str:
    """Return the run's Markdown report; ``texts`` maps ``(history dt or None, doc_id)`` to the doc's text."""
    total = sum(n for (k, _), n in rates.docs.items() if k == "source")
    dups = sum(n for (k, _), n in rates.duplicates.items() if k == "source")
    lines = [f"# {stage} report, dt={dt}", "", f"Method: {method}. Thresholds ({measure}): {thresholds}.", "",
             "| docs in | duplicates | duplicate rate | clusters |", "|---:|---:|---:|---:|",
             f"| {total} | {dups} | {dups / total if total else 0.0:.1%} | {clusters} |", ""]
    lines += _rate_rows("source", rates.table("source")) + _rate_rows("domain", rates.table("domain"))
    lines += _pair_rows("Pairs just above the threshold (duplicates)", above, measure, texts)
    lines += _pair_rows("Pairs just below the threshold (not duplicates)", below, measure, texts)
    return "\n".join(lines)


def report_path(dt: str, stage: str) -> tuple[str, ...]:
    """Return the report's location under the root, next to the date's rejects."""
    return "reports", f"dt={dt}", f"{stage}.md"


def write_report(storage: Storage, dt: str, stage: str, text: str) -> str:
    """Store the report; return its path relative to the root."""
    storage.write_bytes(storage.path(*report_path(dt, stage)), text.encode())
    return "/".join(report_path(dt, stage))


def stage_report(storage: Storage, stage: str, dt: str, today_dir: str, history_dir: Callable[[str], str], *,
                 method: str, measure: str, thresholds: str, clusters: int, rates: DuplicateRates,
                 pairs: list[SamplePair]) -> str:
    """Sample pairs around the threshold, fetch their texts, render and store the report; return its path.

    ``history_dir(dt)`` is the folder holding an earlier date's texts (its staged output); an earlier date whose
    staged output is gone shows no texts.
    """
    above, below = closest(pairs, True), closest(pairs, False)
    shown = above + below
    texts: dict[tuple[str | None, str], str] = {}
    today = lookup_texts(storage, today_dir, {p.doc_id for p in shown} | {p.other_id for p in shown
                                                                         if p.other_dt is None})
    texts.update({(None, doc): text for doc, text in today.items()})
    for day in sorted({p.other_dt for p in shown if p.other_dt}):
        try:
            folder = history_dir(day)
        except NotPublished:
            continue
        found = lookup_texts(storage, folder, {p.other_id for p in shown if p.other_dt == day})
        texts.update({(day, doc): text for doc, text in found.items()})
    text = render_report(stage, dt, method=method, measure=measure, thresholds=thresholds, clusters=clusters,
                         rates=rates, above=above, below=below, texts=texts)
    return write_report(storage, dt, stage, text)


def table_cell(text: str) -> str:
    """A Markdown table cell of untrusted text (a domain, a source, a name): no control characters, no HTML, no column
    breaks."""
    text = re.sub(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", " ", text)
    return html.escape(text).replace("|", "\\|")
