"""Validate a whole table version (all dates) before export commits it, or later from ``dctp validate``.

``validate_dataset`` runs the ``VALIDATION_CHECKS`` in one streamed scan of the columns they need (plus a seeded PII
sample) and returns a ``ValidationReport``; failed checks of severity ``error`` make ``report.ok`` false.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from dctp_tasks.config import VALIDATION_CHECKS, PipelineConfig, ValidationConfig
from dctp_tasks.pii import ALL, redact_pii
from dctp_tasks.records import EXPORT_SCHEMA

EXAMPLES = 5
NONE_LABEL = "(none)"
"""How rows without a domain (or source) are counted: shown in the shares, never held to a ceiling."""
#: Character-length bins of the text histogram (lower edges; the last bin is open).
LENGTH_EDGES = [0, 1, 10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000]
TOLERANCE = 1e-6  # float32 scores (a cosine of unit vectors) may overshoot their bound by rounding
# (scorer, field) bounds of stored scores; "*" matches any field. NaN in ``scores`` is a scorer's documented
# "unscored" value (empty text, no centroid, untrained classifier) and passes; infinities never do.
SCORE_BOUNDS: dict[tuple[str, str], tuple[float, float]] = {
    ("toxicity", "*"): (0.0, 1.0), ("classifier_*", "probability"): (0.0, 1.0),
    ("credibility", "credibility"): (0.0, 1.0), ("language", "lang_score"): (0.0, 1.0),
    ("language", "oov_ratio"): (0.0, 1.0), ("relevance", "relevance"): (-1.0, 1.0), ("pii", "*"): (0.0, np.inf),
    ("perplexity", "tokens"): (0.0, np.inf), ("heuristics", "*_fraction"): (0.0, 1.0),
    ("heuristics", "*_count"): (0.0, np.inf),
}
#: Top-level numeric columns: (lower, upper); here NaN fails (decide stores an unjudged quality as null).
COLUMN_BOUNDS: dict[str, tuple[float, float]] = {"quality": (0.0, 1.0), "lang_score": (0.0, 1.0),
                                                 "sampling_weight": (0.0, np.inf)}


@dataclass
class CheckResult:
    name: str
    severity: str
    passed: bool
    detail: str
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    checks: list[CheckResult]
    rows: int
    length_counts: list[int] = field(default_factory=list)
    """Texts per ``LENGTH_EDGES`` bin (empty when the text was not scanned)."""
    domains: dict[str, int] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    domain_ceilings: dict[str, float] = field(default_factory=dict)
    """The ceiling each listed domain was held to."""
    max_source_share: float = 1.0

    @property
    def errors(self) -> list[CheckResult]:
        return [c for c in self.checks if c.severity == "error" and not c.passed]

    @property
    def ok(self) -> bool:
        return not self.errors

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "errors": [c.name for c in self.errors], "length_edges": LENGTH_EDGES, **asdict(self)}

    def raise_for_errors(self) -> None:
        if not self.ok:
            raise ValidationFailed(self)


class ValidationFailed(ValueError):
    """A version failed checks of severity ``error``; ``report`` holds every check."""

    def __init__(self, report: ValidationReport, where: str | None = None) -> None:
        self.report = report
        super().__init__("validation failed: " + "; ".join(f"{c.name}: {c.detail}" for c in report.errors)
                         + (f" (report: {where})" if where else ""))


def validate_dataset(dataset: ds.Dataset, config: PipelineConfig) -> ValidationReport:
    """Run every check not ``off`` on ``dataset`` (one table version, all dates) and return the report."""
    cfg = config.export.validation
    on = {name for name in VALIDATION_CHECKS if cfg.severity(name) != "off"}
    schema = dataset.schema
    usable = {f.name for f in EXPORT_SCHEMA
              if f.name in schema.names and _compatible(schema.field(f.name).type, f.type)}
    dated = ["dt"] if "dt" in schema.names else []
    needs = {"empty_text": ["doc_id", "text"], "duplicate_doc_id": ["doc_id", *dated],
             "split_leakage": ["content_hash", "split"], "balance": ["domain", "source"], "pii": ["doc_id", "text"],
             "scores": ["doc_id"]}
    results: dict[str, CheckResult] = {}
    for name, cols in needs.items():
        missing = [c for c in cols if c not in usable]
        if name in on and missing:  # the data cannot be vouched for: a failure, not a pass
            results[name] = CheckResult(name, "", False, f"not run: column(s) {', '.join(missing)} missing or "
                                                         "mistyped (see schema)")
    run = {name for name in on if name not in results}
    if "schema" in run:
        results["schema"] = _schema_check(schema)
    bounds = _score_fields(schema) if "scores" in run else {}
    columns = sorted({c for name in run - {"pii", "schema"} for c in needs[name]})
    scan = _Scan(bounds, run)
    if columns or bounds:
        exprs = {c: ds.field(c) for c in columns} | {key: ds.field(*key.split(".")) for key in bounds}
        for batch in dataset.to_batches(columns=exprs, batch_size=config.batch_size, batch_readahead=2,
                                        fragment_readahead=1):
            scan.add(batch)
    rows = scan.rows if columns or bounds else dataset.count_rows()
    report = ValidationReport([], rows, length_counts=scan.lengths.tolist() if "empty_text" in run else [],
                              max_source_share=cfg.max_source_share)
    if "empty_text" in run:
        results["empty_text"] = _result("empty_text", scan.empty, scan.empty_examples,
                                        f"{scan.empty} null, empty or whitespace-only text(s)",
                                        "no null, empty or whitespace-only text")
    if "duplicate_doc_id" in run:
        results["duplicate_doc_id"] = scan.duplicates()
    if "split_leakage" in run:
        results["split_leakage"] = scan.leakage()
    if "balance" in run:
        results["balance"] = _balance(scan, cfg, report)
    if "scores" in run:
        results["scores"] = scan.scores_result()
    if "pii" in run:
        results["pii"] = _pii(dataset, rows, cfg, config)
    for name in VALIDATION_CHECKS:
        result = results.get(name) or CheckResult(name, "off", True, "skipped (severity off)")
        result.severity = cfg.severity(name)
        report.checks.append(result)
    return report


def _result(name: str, count: int, examples: list[str], failure: str, success: str = "none") -> CheckResult:
    return CheckResult(name, "", count == 0, failure if count else success, count, examples[:EXAMPLES])


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    """Whether ``actual`` holds what ``expected`` does (string/large/view, list/large list, any int width …)."""
    if pa.types.is_dictionary(actual):
        actual = actual.value_type
    families = [(pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view),
                (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_binary_view),
                (pa.types.is_integer,), (pa.types.is_floating,), (pa.types.is_boolean,)]
    for family in families:
        if any(test(expected) for test in family):
            return any(test(actual) for test in family)
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(actual) and (actual.tz is None) == (expected.tz is None)
    lists = (pa.types.is_list, pa.types.is_large_list, pa.types.is_list_view, pa.types.is_large_list_view)
    if any(test(expected) for test in lists):
        return any(test(actual) for test in lists) and _compatible(actual.value_type, expected.value_type)
    if pa.types.is_struct(expected):
        names = [f.name for f in actual] if pa.types.is_struct(actual) else []
        return pa.types.is_struct(actual) and all(
            f.name in names and _compatible(actual.field(f.name).type, f.type) for f in expected)
    return actual == expected


def _schema_check(schema: pa.Schema) -> CheckResult:
    missing = [f.name for f in EXPORT_SCHEMA if f.name not in schema.names]
    wrong = [f"{f.name} ({schema.field(f.name).type}, expected {f.type})" for f in EXPORT_SCHEMA
             if f.name in schema.names and not _compatible(schema.field(f.name).type, f.type)]
    parts = [f"missing: {', '.join(missing)}"] if missing else []
    parts += [f"mistyped: {'; '.join(wrong)}"] if wrong else []
    names = missing + [w.split(" ", 1)[0] for w in wrong]
    return _result("schema", len(names), names, "; ".join(parts), "every export column present and typed")


def _score_fields(schema: pa.Schema) -> dict[str, tuple[float, float, bool]]:
    """Return ``{dotted column: (lower, upper, nan_fails)}`` of every numeric score present."""
    out = {}
    for name, (lo, hi) in COLUMN_BOUNDS.items():
        if name in schema.names and _numeric(schema.field(name).type):
            out[name] = (lo, hi, True)
    scores = schema.field("scores").type if "scores" in schema.names else None
    for scorer in scores if scores is not None and pa.types.is_struct(scores) else []:
        for sub in scorer.type if pa.types.is_struct(scorer.type) else []:
            if _numeric(sub.type):
                out[f"scores.{scorer.name}.{sub.name}"] = (*_bounds(scorer.name, sub.name), False)
    return out


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _bounds(scorer: str, name: str) -> tuple[float, float]:
    def fits(pattern: str, value: str) -> bool:
        return value.startswith(pattern[:-1]) if pattern.endswith("*") else (
            value.endswith(pattern[1:]) if pattern.startswith("*") else value == pattern)
    return next((b for (s, f), b in SCORE_BOUNDS.items() if fits(s, scorer) and fits(f, name)), (-np.inf, np.inf))


class _Scan:
    """What the checks need from each batch; keeps counts, examples and the id/hash columns, never the text."""

    def __init__(self, bounds: dict[str, tuple[float, float, bool]], run: set[str]) -> None:
        self.bounds, self.run, self.rows = bounds, run, 0
        self.lengths = np.zeros(len(LENGTH_EDGES), np.int64)
        self.empty, self.empty_examples = 0, []
        self.ids: list[pa.Array] = []
        self.null_ids = 0
        self.pairs: list[pa.RecordBatch] = []
        self.domains: dict[str, int] = {}
        self.sources: dict[str, int] = {}
        self.bad_rows, self.bad_examples = 0, []
        self.bad_fields: dict[str, dict[str, int]] = {}

    def add(self, batch: pa.RecordBatch) -> None:
        self.rows += batch.num_rows
        cols = {n: _decoded(batch.column(n)) for n in batch.schema.names}
        if "empty_text" in self.run:
            lengths = pc.fill_null(pc.utf8_length(pc.utf8_trim_whitespace(cols["text"])), 0)
            empty = pc.equal(lengths, 0)
            self.empty += pc.sum(empty).as_py() or 0
            self.empty_examples += cols["doc_id"].filter(empty)[: EXAMPLES - len(self.empty_examples)].to_pylist()
            raw = pc.fill_null(pc.utf8_length(cols["text"]), 0).to_numpy(zero_copy_only=False)
            self.lengths += np.bincount(np.searchsorted(LENGTH_EDGES, raw, side="right") - 1,
                                        minlength=len(LENGTH_EDGES))
        if "duplicate_doc_id" in self.run:
            self.null_ids += cols["doc_id"].null_count
            dt = cols["dt"] if "dt" in cols else pa.nulls(batch.num_rows, pa.string())
            ids = pa.RecordBatch.from_arrays([cols["doc_id"], dt.cast(pa.string())], ["doc_id", "dt"])
            self.ids.append(ids.filter(pc.is_valid(ids[0])))
        if "split_leakage" in self.run:
            pair = pa.RecordBatch.from_arrays([cols["content_hash"], cols["split"]], ["content_hash", "split"])
            self.pairs.append(pair.filter(pc.and_(pc.is_valid(pair[0]), pc.is_valid(pair[1]))))
        if "balance" in self.run:
            for key, counts in (("domain", self.domains), ("source", self.sources)):
                for item in pc.value_counts(cols[key]).to_pylist():
                    label = NONE_LABEL if item["values"] is None else item["values"]
                    counts[label] = counts.get(label, 0) + item["counts"]
        if self.bounds:
            self._scores(batch, cols)

    def _scores(self, batch: pa.RecordBatch, cols: dict[str, pa.Array]) -> None:
        bad = np.zeros(batch.num_rows, bool)
        for key, (lo, hi, nan_fails) in self.bounds.items():
            values = cols[key]
            floating = pa.types.is_floating(values.type)
            masks = {"NaN": pc.is_nan(values) if floating and nan_fails else None,
                     "infinite": pc.is_inf(values) if floating else None,
                     f"below {lo:g}": pc.less(values, lo - TOLERANCE) if np.isfinite(lo) else None,
                     f"above {hi:g}": pc.greater(values, hi + TOLERANCE) if np.isfinite(hi) else None}
            for what, mask in masks.items():
                if mask is None:
                    continue
                hits = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
                if hits.any():
                    per = self.bad_fields.setdefault(key, {})
                    per[what] = per.get(what, 0) + int(hits.sum())
                    bad |= hits
        if bad.any():
            self.bad_rows += int(bad.sum())
            self.bad_examples += cols["doc_id"].filter(pa.array(bad))[: EXAMPLES - len(self.bad_examples)].to_pylist()

    def duplicates(self) -> CheckResult:
        """A doc_id twice in one date fails. The same doc_id on several dates is a document that came again,
        changed, and is kept once per date (a retraction removes one date's version): reported, not failed."""
        ids = pa.Table.from_batches(self.ids, pa.schema([("doc_id", pa.string()), ("dt", pa.string())])
                                    if not self.ids else self.ids[0].schema)
        groups = ids.group_by("doc_id", use_threads=False).aggregate([("doc_id", "count"), ("dt", "count_distinct")])
        # count_distinct counts a null dt as a value: rows without a date are one "date"
        dup = groups.filter(pc.greater(groups["doc_id_count"], groups["dt_count_distinct"]))
        dated = groups.filter(pc.greater(groups["dt_count_distinct"], 1)).num_rows
        extra = int(pc.sum(pc.subtract(dup["doc_id_count"], dup["dt_count_distinct"])).as_py() or 0)
        examples = sorted(dup["doc_id"].to_pylist())[:EXAMPLES] if dup.num_rows <= 10_000 else \
            dup["doc_id"][:EXAMPLES].to_pylist()
        detail = f"{dup.num_rows} doc_id(s) appear more than once in a date ({extra} surplus rows)"
        if dated:
            detail += f"; {dated} doc_id(s) on several dates (a changed document, one row per date)"
        if self.null_ids:
            detail += f"; {self.null_ids} row(s) without a doc_id"
            examples = (examples + ["<null>"])[:EXAMPLES]
        return _result("duplicate_doc_id", dup.num_rows + self.null_ids, examples, detail,
                       "every doc_id once per date" + (f" ({dated} on several dates)" if dated else ""))

    def leakage(self) -> CheckResult:
        pairs = pa.Table.from_batches(self.pairs, pa.schema([("content_hash", pa.string()), ("split", pa.string())])
                                      if not self.pairs else self.pairs[0].schema)
        groups = pairs.group_by("content_hash", use_threads=False).aggregate([("split", "count_distinct")])
        leaked = groups.filter(pc.greater(groups["split_count_distinct"], 1))["content_hash"]
        examples = sorted(leaked.to_pylist())[:EXAMPLES] if len(leaked) <= 10_000 else leaked[:EXAMPLES].to_pylist()
        seen = pairs.filter(pc.is_in(pairs["content_hash"], pa.array(examples, pairs.schema.field(0).type)))
        splits = {h: sorted({s for hh, s in zip(seen[0].to_pylist(), seen[1].to_pylist()) if hh == h})
                  for h in examples}
        detail = f"{len(leaked)} content_hash(es) in more than one split, e.g. " + \
            "; ".join(f"{h}: {', '.join(s)}" for h, s in splits.items())
        return _result("split_leakage", len(leaked), examples, detail, "no content_hash in two splits")

    def scores_result(self) -> CheckResult:
        detail = "; ".join(f"{key}: " + ", ".join(f"{n} {what}" for what, n in per.items())
                           for key, per in self.bad_fields.items())
        checked = ", ".join(self.bounds) or "no score columns"
        return _result("scores", self.bad_rows, self.bad_examples, f"{self.bad_rows} row(s) with bad scores: {detail}",
                       f"finite and in range: {checked}")


def _decoded(array: pa.Array) -> pa.Array:
    return array.dictionary_decode() if pa.types.is_dictionary(array.type) else array


def _balance(scan: _Scan, cfg: ValidationConfig, report: ValidationReport) -> CheckResult:
    rows = max(scan.rows, 1)
    report.domains = dict(sorted(scan.domains.items(), key=lambda kv: (-kv[1], kv[0])))
    report.sources = dict(sorted(scan.sources.items(), key=lambda kv: (-kv[1], kv[0])))
    report.domain_ceilings = {d: cfg.domain_ceilings.get(d, cfg.max_domain_share) for d in report.domains
                              if d != NONE_LABEL}
    over = [("domain", d, n / rows, report.domain_ceilings[d]) for d, n in report.domains.items()
            if d != NONE_LABEL and n / rows > report.domain_ceilings[d]]
    over += [("source", s, n / rows, cfg.max_source_share) for s, n in report.sources.items()
             if s != NONE_LABEL and n / rows > cfg.max_source_share]
    shares = "; ".join(f"{kind} shares: " + ", ".join(f"{name} {n / rows:.1%}" for name, n in counts.items())
                       for kind, counts in (("domain", report.domains), ("source", report.sources)))
    failure = "; ".join(f"{kind} {name} holds {share:.1%} of rows > ceiling {cap:.1%}" for kind, name, share, cap
                        in over) + f" ({shares})"
    return _result("balance", len(over), [name for _, name, _, _ in over], failure,
                   f"every domain and source under its ceiling ({shares})")


def _pii(dataset: ds.Dataset, rows: int, cfg: ValidationConfig, config: PipelineConfig) -> CheckResult:
    size = min(cfg.pii_sample, rows)
    if size == 0:
        return CheckResult("pii", "", True, "no rows sampled (pii_sample 0 or no rows)")
    # Indices from the row count alone: the sample is the same for the same version and seed, and costs one take.
    indices = np.sort(np.random.default_rng(cfg.seed).choice(rows, size=size, replace=False))
    sample = dataset.take(pa.array(indices), columns=["doc_id", "text"])
    # The kinds the pipeline redacts (the pii scorer's types); all kinds when it does not run.
    types = (config.quality.scorers.get("pii") or {}).get("types") or list(ALL)
    _, counts = redact_pii(_decoded(sample["text"].combine_chunks()), types)
    hits = np.sum([counts[k] for k in types], axis=0) > 0
    rate = float(hits.mean())
    kinds = ", ".join(f"{k} {int((counts[k] > 0).sum())}" for k in types if counts[k].any())
    detail = (f"{int(hits.sum())} of {size} sampled rows ({rate:.2%}) hold PII ({kinds or 'none'}); "
              f"max {cfg.max_pii_rate:.2%}")
    examples = sample["doc_id"].filter(pa.array(hits)).to_pylist()[:EXAMPLES]
    return CheckResult("pii", "", rate <= cfg.max_pii_rate, detail, int(hits.sum()), examples)


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # Agg directly: no pyplot, no global backend switch in a worker process
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None}, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plots(report: ValidationReport) -> list[tuple[str, str]]:
    """Return ``(caption, base64 PNG)`` of the length histogram and the domain and source shares."""
    import matplotlib
    from matplotlib.figure import Figure

    out = []
    # parse_math off: a domain named "$x$" is a name, not TeX; a fixed salt and no Software key keep bytes stable
    with matplotlib.rc_context({"text.parse_math": False, "svg.hashsalt": "dctp", "font.size": 9}):
        if report.length_counts:
            fig = Figure(figsize=(7, 3))
            ax = fig.add_subplot()
            labels = ["0"] + [f"{_short(lo)}-{_short(hi)}" for lo, hi in zip(LENGTH_EDGES[1:], LENGTH_EDGES[2:])]
            labels += [f">={_short(LENGTH_EDGES[-1])}"]
            ax.bar(range(len(labels)), report.length_counts, color="#4c72b0")
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
            ax.set(xlabel="text length in characters (bins [low, high))", ylabel="rows")
            out.append(("Text length histogram", _png(fig)))
        rows = max(report.rows, 1)
        for kind, counts in (("domain", report.domains), ("source", report.sources)):
            if not counts:
                continue
            names = list(counts)[:30]
            fig = Figure(figsize=(7, 0.8 + 0.3 * len(names)))
            ax = fig.add_subplot()
            ax.barh(range(len(names)), [counts[n] / rows for n in names], color="#55a868")
            caps = [report.domain_ceilings.get(n) if kind == "domain" else report.max_source_share for n in names]
            for i, cap in enumerate(caps):
                if cap is not None:
                    ax.plot([cap, cap], [i - 0.45, i + 0.45], color="#c44e52", linewidth=2)
            ax.set_yticks(range(len(names)), names)
            ax.invert_yaxis()
            ax.set(xlim=(0, 1.05), xlabel="share of rows (red: ceiling)", title=f"{kind} shares")
            out.append((f"{kind.capitalize()} shares", _png(fig)))
    return out


def _short(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n))


def render_html(report: ValidationReport, *, title: str) -> str:
    """Return a standalone HTML page of the report: the checks, their examples and the plots (inline PNGs)."""
    e = html.escape
    rows = []
    for c in report.checks:
        status = "skipped" if c.severity == "off" else ("pass" if c.passed else "FAIL")
        rows.append(f'<tr class="{status.lower()}"><td>{e(c.name)}</td><td>{status}</td><td>{e(c.severity)}</td>'
                    f"<td>{c.count}</td><td>{e(c.detail)}</td>"
                    f"<td>{'<br>'.join(f'<code>{e(x)}</code>' for x in c.examples)}</td></tr>")
    figures = "".join(f'<figure><img alt="{e(cap)}" src="data:image/png;base64,{png}"><figcaption>{e(cap)}'
                      f"</figcaption></figure>" for cap, png in _plots(report))
    verdict = "passed" if report.ok else f"FAILED ({', '.join(e(c.name) for c in report.errors)})"
    style = ("body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:4px 8px;vertical-align:top}tr.fail td{background:#fdd}tr.skipped td{color:#888}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{style}</style></head><body><h1>{e(title)}</h1><p>{report.rows} rows; validation {verdict}</p>"
            "<table><tr><th>check</th><th>result</th><th>severity</th><th>count</th><th>detail</th><th>examples</th>"
            f"</tr>{''.join(rows)}</table>{figures}</body></html>\n")
