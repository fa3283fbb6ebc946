"""The score report: verdicts, filtered rows by rule, and a histogram of every score and the composite, per domain.

Written to ``reports/dt=D/quality.md`` (printed in the task log, logged to MLflow, shown by ``dctp report D``) with
one PNG of histograms per scorer under ``reports/dt=D/quality/``.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dctp_tasks.storage import Storage

if TYPE_CHECKING:
    from dctp_tasks.config import QualityConfig
    from dctp_tasks.quality.base import Scorer
    from dctp_tasks.quality.decide import Decisions

QUALITY_FIELD = "quality"
MAX_DOMAINS = 6  # more domains fold into "other": the table stays readable
NO_DOMAIN = "(none)"


@dataclass
class Report:
    markdown_path: str
    plot_paths: list[str] = field(default_factory=list)
    means: dict[str, float] = field(default_factory=dict)


def report_path(dt: str) -> str:
    return f"reports/dt={dt}/quality.md"


def write_report(storage: Storage, dt: str, decisions: Decisions, scorers: list[Scorer], q: QualityConfig,
                 counts: Counter) -> Report:
    """Render and store the date's score report and plots; return their paths and the mean of every score."""
    n = len(decisions.verdict)
    domains = np.where(decisions.domains == None, NO_DOMAIN, decisions.domains)  # noqa: E711
    top = [d for d, _ in Counter(domains.tolist()).most_common(MAX_DOMAINS)]
    if len(set(domains.tolist())) > len(top):
        domains = np.where(np.isin(domains, top), domains, "other")
        top.append("other")
    lines = [f"# Quality scores, dt={dt}", "",
             f"{n:,} documents: " + ", ".join(f"{v} {counts[v]:,} ({_pct(counts[v], n)})"
                                            for v in ("pass", "review", "fail")),
             f"(fail: a rule or `min_quality` removed it; review: composite quality < {q.review_below:.2f}).", ""]
    reasons = Counter(r for r in decisions.reason.tolist() if r is not None)
    if reasons:
        lines += ["| filtered by | rows | share |", "|---|---:|---:|"]
        lines += [f"| `{r}` | {c:,} | {_pct(c, n)} |" for r, c in reasons.most_common()]
        lines.append("")
    means: dict[str, float] = {}
    series = [(QUALITY_FIELD, "composite quality (weighted mean of the scorers' contributions)",
               decisions.quality)]
    for scorer in scorers:
        for f in scorer.fields:
            values = decisions.scores[scorer.name][f.name]
            if values.dtype != object:
                series.append((f"{scorer.name}.{f.name}", f.doc, values))
    plots: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name, doc, values in series:
        values = np.asarray(values, dtype=np.float64)
        finite = values[np.isfinite(values)]
        means[name] = round(float(finite.mean()), 6) if len(finite) else float("nan")
        lines += [f"## {name}", "", f"{doc} — mean {_num(means[name])}, unscored {n - len(finite):,}", ""]
        lines += _histogram(values, domains, top) if len(finite) else ["(no document has this score today)"]
        lines.append("")
        plots.setdefault(name.split(".")[0], []).append((name, values))
    markdown = "\n".join(lines)
    path = report_path(dt)
    storage.write_bytes(storage.path(path), markdown.encode())
    plot_paths = []
    for group, items in plots.items():
        plot_path = f"reports/dt={dt}/quality/{group}.png"
        storage.write_bytes(storage.path(plot_path), _plot(group, items))
        plot_paths.append(plot_path)
    return Report(path, plot_paths, {k: v for k, v in means.items() if v == v})


def edges(values: np.ndarray) -> np.ndarray:
    """Return histogram bin edges: tenths for scores in [0, 1], unit bins for small counts, else 10 nice bins."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return np.linspace(0.0, 1.0, 11)
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.linspace(0.0, 1.0, 11)
    if np.all(finite == np.round(finite)) and hi - lo <= 10:
        return np.arange(lo, hi + 2)
    p_lo, p_hi = np.percentile(finite, [1, 99])
    if p_hi <= p_lo:
        p_lo, p_hi = lo, max(hi, lo + 1)
    step = _nice((p_hi - p_lo) / 10)
    start = np.floor(p_lo / step) * step
    return start + step * np.arange(int(np.ceil((p_hi - start) / step)) + 1)


def _histogram(values: np.ndarray, domains: np.ndarray, top: list[str]) -> list[str]:
    bins = edges(values)
    header = "| bin | all |" + "".join(f" {d} |" for d in top)
    lines = [header, "|---" * (len(top) + 2) + "|"]
    columns = [np.ones(len(values), bool)] + [domains == d for d in top]
    labels, rows = _bins(values, bins)
    for label, in_bin in zip(labels, rows, strict=True):
        cells = []
        for column in columns:
            total = int(column.sum())
            count = int((in_bin & column).sum())
            cells.append(f"{count:,} ({_pct(count, total)})" if total else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _bins(values: np.ndarray, bins: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    finite = np.isfinite(values)
    labels, masks = [], []
    with np.errstate(invalid="ignore"):
        if (values[finite] < bins[0]).any():
            labels.append(f"< {_num(bins[0])}")
            masks.append(finite & (values < bins[0]))
        for i in range(len(bins) - 1):
            last = i == len(bins) - 2
            upper = values <= bins[i + 1] if last else values < bins[i + 1]
            labels.append(f"{_num(bins[i])}–{_num(bins[i + 1])}")
            masks.append(finite & (values >= bins[i]) & upper)
        if (values[finite] > bins[-1]).any():
            labels.append(f"> {_num(bins[-1])}")
            masks.append(finite & (values > bins[-1]))
    return labels, masks


def _plot(group: str, items: list[tuple[str, np.ndarray]]) -> bytes:
    """Return a PNG with one histogram per score of ``group``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(items))
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, values) in zip(axes.ravel(), items, strict=False):
        finite = values[np.isfinite(values)]
        bins = edges(values)
        ax.hist(np.clip(finite, bins[0], bins[-1]), bins=bins, color="#4C72B0")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(items):]:
        ax.axis("off")
    fig.suptitle(f"{group} score distributions", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def _nice(step: float) -> float:
    exponent = np.floor(np.log10(step))
    fraction = step / 10 ** exponent
    return float((1 if fraction <= 1 else 2 if fraction <= 2 else 5 if fraction <= 5 else 10) * 10 ** exponent)


def _num(value: float) -> str:
    if value != value:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value)}"


def _pct(count: int, total: int) -> str:
    return f"{100 * count / total:.1f} %" if total else "–"
