"""Dataset card of a table version: ``card_stats`` measures it (counts, score distributions, ledger rates, lineage,
licenses) into a JSON-able dict, ``render_card`` writes the Hugging Face card (YAML front matter + Markdown body).
The same version and config give the same bytes; document text is never read."""

from __future__ import annotations

import posixpath
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import yaml

from dctp_tasks.config import PipelineConfig
from dctp_tasks.export.delta import dataset_dir, open_table
from dctp_tasks.export.ledger import read_ledger
from dctp_tasks.export.lineage import version_lineage
from dctp_tasks.ledger import OUTCOMES, ledger_report
from dctp_tasks.records import SYNTHETIC_SOURCE
from dctp_tasks.storage import Storage

NULL = "(none)"
"""The group name of rows whose column is null."""
PERCENTILES = (5, 25, 50, 75, 95)
MAX_ROWS = 50
"""Rows a count table shows (the stats keep every group)."""
MAX_DATES = 31
"""Dates up to which the ledger is also broken down per date."""
#: Hugging Face ``size_categories`` buckets: the first whose bound exceeds the row count.
SIZE_CATEGORIES = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T"))
#: Columns the card reads, by name in the stats: the composite quality (``quality.decide``), the toxicity
#: scorer's probability, the experts' consensus (``feedback.merge``) and the synthetic rows' generator.
COLUMNS = {"split": ("split",), "source": ("source",), "domain": ("domain",), "lang": ("lang",),
           "synthetic": ("synthetic",), "quality": ("quality",), "toxicity": ("scores", "toxicity", "toxicity"),
           "consensus": ("consensus",), "sampling_weight": ("sampling_weight",), "model": ("generation", "model")}
_LANG_CODE = re.compile(r"^[a-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")
_MD = str.maketrans({"\\": "\\\\", "|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]",
                     "~": "\\~", "&": "&amp;", "<": "&lt;", ">": "&gt;", "\n": " ", "\r": " ", "\t": " "})


def md(value: object) -> str:
    """Return ``value`` as inert Markdown text, safe in a table cell: no markup, HTML or cell break survives."""
    return "".join(c for c in str(value).translate(_MD) if c.isprintable())


def size_category(rows: int) -> str:
    return next((label for bound, label in SIZE_CATEGORIES if rows < bound), "n>1T")


def card_stats(storage: Storage, name: str, version: int | None, config: PipelineConfig) -> dict:
    """All numbers the card shows, as a JSON-able dict (also useful for MLflow / --json)."""
    table = open_table(storage, name, version)
    version = table.version()  # pinned: every read below sees the same version, whatever commits meanwhile
    dataset = table.to_pyarrow_dataset()
    data = dataset.to_table(columns={key: ds.field(*path) for key, path in COLUMNS.items()
                                     if _has(dataset.schema, path)})
    rows = data.num_rows
    synthetic = _floats(data, "synthetic") == 1.0  # null counts as real
    generated = data.filter(pa.array(synthetic))
    lineage = version_lineage(storage, name, version)
    weights = _floats(data, "sampling_weight")
    judged = {k: v for k, v in _counts(data, "consensus").items() if k != NULL}
    return {
        "dataset": name, "version": version, "uri": storage.uri(dataset_dir(name)), "rows": rows,
        "dates": sorted(lineage),
        **{f"by_{column}": _counts(data, column) for column in ("split", "source", "domain", "lang")},
        "quality": _scores(data, "quality", by_domain=True),
        "toxicity": _scores(data, "toxicity", by_domain=False),
        "synthetic": {"rows": generated.num_rows, "share": _share(generated.num_rows, rows),
                      "by_domain": _counts(generated, "domain"), "by_model": _counts(generated, "model")},
        "feedback": {"judged": sum(judged.values()), "share": _share(sum(judged.values()), rows),
                     "consensus": judged, "sampling_weight": _distribution(weights),
                     "reweighted": int(np.sum(~np.isnan(weights) & (weights != 1.0)))},
        "ledger": _ledger(storage, lineage),
        "lineage": lineage,
        "licenses": _licenses(_counts(data.filter(pa.array(~synthetic)), "source"), config),
    }


def render_card(stats: dict, config: PipelineConfig, *, data_files: dict[str, list[str]] | None = None) -> str:
    """Hugging Face dataset card: YAML front matter + Markdown body."""
    card = config.export.card
    title = card.pretty_name or stats["dataset"]
    front: dict = {
        "language": [code for code in stats["by_lang"] if _LANG_CODE.match(code)],
        "license": card.license or stats["licenses"]["dataset"], "pretty_name": title,
        "size_categories": [size_category(stats["rows"])], "task_categories": list(card.task_categories),
        "annotations_creators": list(card.annotations_creators),
        "source_datasets": list(card.source_datasets) or ["original"],
    }
    if data_files is not None:
        front["configs"] = [{"config_name": "default", "data_files": _data_files(data_files)}]
    dates = stats["dates"]
    out = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip("\n"), "---", "",
           f"# {md(title)}", ""]
    if card.description:
        out += [card.description.strip(), ""]
    uri = "`" + re.sub(r"[`\s]", "_", stats["uri"]) + "`"  # a code span: nothing to escape but its own quote
    out += [f"**{stats['rows']:,} rows** from Delta version {stats['version']} of {uri}"
            + (f", {len(dates)} dates ({dates[0]} to {dates[-1]})." if dates else "."), ""]
    for column, heading in (("split", "Splits"), ("source", "Sources"), ("domain", "Domains"),
                            ("lang", "Languages")):
        out += [f"## {heading}", "", *_count_table(column, stats[f"by_{column}"], stats["rows"]), ""]
    out += _quality_section(stats)
    out += _ledger_section(stats["ledger"])
    syn, fb = stats["synthetic"], stats["feedback"]
    out += ["## Synthetic data", "", f"{syn['rows']:,} rows ({_pct(syn['share'])}) are synthetic (column "
            "`synthetic`): generated from the documents of the sources above, then scored and filtered like them.",
            ""]
    if syn["rows"]:
        out += [*_count_table("domain", syn["by_domain"], syn["rows"]), ""]
        if set(syn["by_model"]) - {NULL}:
            out += [*_count_table("generator model", syn["by_model"], syn["rows"]), ""]
    weights = fb["sampling_weight"]
    out += ["## Expert feedback", "", f"{fb['judged']:,} rows ({_pct(fb['share'])}) carry an expert consensus "
            "(column `consensus`)" + "".join(f"; {n:,} {md(k)}" for k, n in fb["consensus"].items()) + ". "
            f"{fb['reweighted']:,} rows have a `sampling_weight` other than 1.", ""]
    if weights["count"]:
        out += [*_distribution_table("sampling_weight", {"all rows": weights}), ""]
    out += _lineage_section(stats)
    out += _license_section(stats)
    return "\n".join(out).rstrip("\n") + "\n"


def build_card(storage: Storage, name: str, version: int | None, config: PipelineConfig, *,
               data_files: dict[str, list[str]] | None = None) -> str:
    return render_card(card_stats(storage, name, version, config), config, data_files=data_files)


def _has(schema: pa.Schema, path: tuple[str, ...]) -> bool:
    if path[0] not in schema.names:
        return False
    kind = schema.field(path[0]).type
    for part in path[1:]:
        if not pa.types.is_struct(kind) or kind.get_field_index(part) < 0:
            return False
        kind = kind.field(part).type
    return True


def _floats(data: pa.Table, column: str) -> np.ndarray:
    if column not in data.column_names:
        return np.full(data.num_rows, np.nan)
    return data.column(column).cast(pa.float64()).to_numpy(zero_copy_only=False)  # null -> NaN


def _counts(data: pa.Table, column: str) -> dict[str, int]:
    """Rows per value of ``column``, most first (ties by name); nulls under ``NULL``."""
    if column not in data.column_names or data.num_rows == 0:
        return {}
    counts = pc.value_counts(pc.fill_null(data.column(column).cast(pa.string()), NULL))
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    return {k: int(n) for k, n in sorted(pairs, key=lambda kv: (-kv[1], kv[0]))}


def _distribution(values: np.ndarray) -> dict:
    # sorted first: the mean then sums in one order, whatever order the files were read in
    present = np.sort(values[~np.isnan(values)])
    if not present.size:
        return {"count": 0}
    cuts = np.percentile(present, PERCENTILES)
    return {"count": int(present.size), "mean": round(float(present.mean()), 6),
            **{f"p{p}": round(float(v), 6) for p, v in zip(PERCENTILES, cuts, strict=True)}}


def _scores(data: pa.Table, column: str, *, by_domain: bool) -> dict | None:
    values = _floats(data, column)
    if np.isnan(values).all():
        return None
    out = {"column": ".".join(COLUMNS[column]), "overall": _distribution(values)}
    if by_domain and "domain" in data.column_names:
        keys = pc.fill_null(data.column("domain"), NULL)
        groups = pc.unique(keys)
        codes = pc.index_in(keys, value_set=groups).to_numpy(zero_copy_only=False)
        out["by_domain"] = {key: _distribution(values[codes == i])
                            for i, key in sorted(enumerate(groups.to_pylist()), key=lambda kv: kv[1])}
    return out


def _ledger(storage: Storage, lineage: dict[str, dict]) -> dict:
    """Each date's dropped rows by outcome, from the ledger its commit balances against. Drops of generated rows
    (source ``synthetic``) count apart: the rates are of the ingested rows."""
    dates, missing, reasons = {}, [], {}
    for dt, commit in lineage.items():
        try:
            rejects = read_ledger(storage, dt, commit.get("ledger_version"))
        except FileNotFoundError:  # log or ledger cleaned up: the date's rates are unknown, not zero
            missing.append(dt)
            continue
        generated = pc.fill_null(pc.equal(rejects.column("source"), SYNTHETIC_SOURCE), False)
        report = ledger_report(rejects.filter(pc.invert(generated)), dt, _int(commit.get("ingested")), 0)
        dates[dt] = {"ingested": report.ingested, **report.by_outcome,
                     "synthesized": _int(commit.get("synthesized")),
                     "synthetic_rejected": int(pc.sum(generated).as_py() or 0)}
        for reason, n in report.by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + n
    total = {key: sum(d[key] for d in dates.values()) for key in ("ingested", *OUTCOMES, "synthesized",
                                                                  "synthetic_rejected")}
    for row in (*dates.values(), total):
        row.update({f"{o}_rate": _share(row[o], row["ingested"]) for o in OUTCOMES})
    return {"total": total, "dates": dates, "missing": missing,
            "by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))}


def _licenses(sources: dict[str, int], config: PipelineConfig) -> dict:
    """The real sources' configured licenses, and the dataset's: the one they all share, ``other`` when they differ
    or only some have one, ``unknown`` when none has."""
    configured = config.ingest.sources
    per_source = {s: configured[s].license if s in configured else None for s in sources}
    known = set(filter(None, per_source.values()))
    derived = "unknown" if not known else known.pop() if len(known) == 1 and all(per_source.values()) else "other"
    return {"dataset": config.export.card.license or derived,
            "sources": {s: {"license": license, "rows": sources[s]} for s, license in per_source.items()}}


def _data_files(data_files: dict[str, list[str]]) -> list[dict]:
    for path in (p for paths in data_files.values() for p in paths):
        if posixpath.isabs(path) or "://" in path or ".." in path.split("/"):
            raise ValueError(f"data file {path!r} must be relative to the card's folder (no '..', no URI)")
    return [{"split": split, "path": paths[0] if len(paths) == 1 else list(paths)}
            for split, paths in data_files.items()]


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(md(c) for c in header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(md(c) for c in row) + " |" for row in rows)]


def _count_table(column: str, counts: dict[str, int], total: int) -> list[str]:
    if not counts:
        return [f"No `{column}` values."]
    rows = [[k, f"{n:,}", _pct(_share(n, total))] for k, n in list(counts.items())[:MAX_ROWS]]
    rest = list(counts.values())[MAX_ROWS:]
    if rest:
        rows.append([f"{len(rest):,} more", f"{sum(rest):,}", _pct(_share(sum(rest), total))])
    return _table([column, "rows", "share"], rows)


def _distribution_table(label: str, groups: dict[str, dict]) -> list[str]:
    return _table([label, "rows", "mean", *(f"p{p}" for p in PERCENTILES)],
                  [[k, f"{d['count']:,}", *(f"{d[key]:.3f}" if d["count"] else "-" for key in
                                            ("mean", *(f"p{p}" for p in PERCENTILES)))] for k, d in groups.items()])


def _quality_section(stats: dict) -> list[str]:
    out = ["## Quality", ""]
    quality, toxicity = stats["quality"], stats["toxicity"]
    if quality is None:
        out += ["No composite quality score in this version (column `quality` absent or null).", ""]
    else:
        out += ["Composite quality score (column `quality`, 0 to 1: the weighted mean of the scorers' "
                "contributions), over all rows and per domain:", "",
                *_distribution_table("domain", {"all rows": quality["overall"], **quality.get("by_domain", {})}), ""]
    if toxicity is not None:
        out += ["Toxicity probability (`scores.toxicity.toxicity`):", "",
                *_distribution_table("toxicity", {"all rows": toxicity["overall"]}), ""]
    return out


def _ledger_section(ledger: dict) -> list[str]:
    total = ledger["total"]
    out = ["## Deduplication and filtering", "", f"Every ingested row is accounted for in the ledger of its date: "
           f"of {total['ingested']:,} ingested rows, these did not reach the table (rates of the ingested rows):", "",
           *_table(["outcome", "rows", "rate"], [[o, f"{total[o]:,}", _pct(total[f"{o}_rate"])] for o in OUTCOMES]),
           ""]
    if total["synthesized"]:
        out += [f"Generated rows: {total['synthesized']:,}, of which "
                f"{total['synthetic_rejected']:,} were dropped (not counted above).", ""]
    if ledger["missing"]:
        out += ["No ledger for " + ", ".join(ledger["missing"]) + " (cleaned up): not counted above.", ""]
    if 1 < len(ledger["dates"]) <= MAX_DATES:
        out += [*_table(["date", "ingested", *(f"{o} rate" for o in OUTCOMES)],
                        [[dt, f"{d['ingested']:,}", *(_pct(d[f"{o}_rate"]) for o in OUTCOMES)]
                         for dt, d in ledger["dates"].items()]), ""]
    if ledger["by_reason"]:
        out += [*_table(["reason", "rows"], [[k, f"{n:,}"] for k, n in ledger["by_reason"].items()]), ""]
    return out


def _lineage_section(stats: dict) -> list[str]:
    lineage = stats["lineage"]
    hashes: dict[str, list[str]] = {}
    for dt, commit in lineage.items():
        hashes.setdefault(commit.get("config_hash") or NULL, []).append(dt)
    return ["## Lineage", "", f"Delta version {stats['version']}; config hashes: " + (", ".join(
        f"{md(h)} ({_dates(d)})" for h, d in hashes.items()) or "none") + ".", "",
        "<details><summary>Commit of each date</summary>", "",
        *_table(["date", "version", "DAG", "run id", "MLflow run", "config hash", "code version", "exported"],
                [[dt, *(NULL if c.get(k) is None else c[k] for k in ("version", "dag_id", "run_id", "mlflow_run_id",
                                                                      "config_hash", "code_version", "exported"))]
                 for dt, c in lineage.items()]), "", "</details>", ""]


def _license_section(stats: dict) -> list[str]:
    rows = [[s, d["license"] or "not configured", f"{d['rows']:,}"] for s, d in stats["licenses"]["sources"].items()]
    out = ["## Licenses", "", *(_table(["source", "license", "rows"], rows) if rows else ["No real rows."]), ""]
    if stats["synthetic"]["rows"]:
        out += [f"The {stats['synthetic']['rows']:,} synthetic rows are generated from the documents of these "
                "sources: their licenses' terms carry over to them.", ""]
    return out


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def _dates(dates: list[str]) -> str:
    return f"{dates[0]}" if len(dates) == 1 else f"{len(dates)} dates, {dates[0]} to {dates[-1]}"


def _int(value: object) -> int:
    return int(value or 0)
