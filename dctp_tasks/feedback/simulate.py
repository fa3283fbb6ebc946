"""Offline active learning (``dctp al-simulate``): replay a labeled file as an unlabeled pool, let each strategy pick
``budget`` docs a round for the MiniLM + logistic-regression scorer of ``dctp train-scorer``, and record the learning
curve (labels used vs ROC-AUC on a stratified hold-out); texts are encoded once, shared by every strategy and seed.
"""

from __future__ import annotations

import csv
import json
import logging
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dctp_tasks.feedback.strategies import (
    bootstrap_committee,
    entropy,
    k_center_greedy,
    kl_to_mean,
    least_confidence,
    logistic_regression,
    margin,
    random_pick,
    top_k,
)

if TYPE_CHECKING:
    from dctp_tasks.quality.embeddings import EmbeddingConfig

log = logging.getLogger(__name__)

STRATEGIES = ("least-confidence", "margin", "entropy", "qbc", "coreset", "margin-coreset", "random")
BASELINE = "random"
"""Always simulated (added when not asked for), so every summary can say what a strategy gains over random picks."""
MARGIN_CANDIDATES = 10
"""``margin-coreset`` runs k-center over the ``MARGIN_CANDIDATES x budget`` docs nearest the boundary."""
CSV_COLUMNS = ("strategy", "seed", "round", "labels", "roc_auc", "average_precision")
_UNCERTAINTY = {"least-confidence": least_confidence, "margin": margin, "entropy": entropy}


def parse_strategies(text: str) -> list[str]:
    """Return the strategies of a comma-separated list, in order, without repeats; an unknown one lists the valid."""
    names = list(dict.fromkeys(s.strip().lower() for s in text.split(",") if s.strip()))
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown or not names:
        raise ValueError(f"unknown strategy {', '.join(map(repr, unknown)) or repr(text)}; valid strategies are "
                         f"{', '.join(STRATEGIES)}")
    return names


def check_plan(y: np.ndarray, strategies: Sequence[str], budget: int, rounds: int, seeds: Sequence[int],
               initial: int | None = None, test_size: float = 0.2, members: int = 5) -> int:
    """Validate a simulation before anything costly runs; return the initial labeled set's size."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ValueError(f"unknown strategy {', '.join(map(repr, unknown)) or '(none given)'}; valid strategies are "
                         f"{', '.join(STRATEGIES)}")
    if budget < 1 or rounds < 1:
        raise ValueError(f"--budget and --rounds must be at least 1, got budget={budget}, rounds={rounds}")
    if not seeds:
        raise ValueError("no seed to run: give --seed N or --seeds 0,1,2")
    if not 0.0 < test_size < 1.0:
        raise ValueError(f"--test-size must lie strictly between 0 and 1, got {test_size}")
    if "qbc" in strategies and members < 2:
        raise ValueError(f"--members must be at least 2 for qbc (a committee of one never disagrees), got {members}")
    initial = budget if initial is None else initial
    if initial < 2:
        raise ValueError(f"--initial must be at least 2 (one doc of each class), got {initial}")
    if "qbc" in strategies and initial < 4:
        raise ValueError(f"--initial must be at least 4 for qbc (its committee trains on 2 of each class), got "
                         f"{initial}")
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=2)
    if counts.min() < 2:
        raise ValueError(f"the labels give {int(counts[1])} positive and {int(counts[0])} negative rows; a stratified "
                         "hold-out needs at least 2 of each")
    pool = len(y) - int(np.ceil(test_size * len(y)))  # scikit-learn's split: the test side rounds up
    needed = initial + budget * rounds
    if needed > pool:
        raise ValueError(f"{initial} initial + {rounds} rounds x {budget} = {needed} labels, but the pool (the rows "
                         f"outside the {test_size:.0%} hold-out) has {pool}: lower --budget, --rounds or --initial")
    return initial


def simulate(vectors: np.ndarray, y: np.ndarray, strategies: Sequence[str], budget: int, rounds: int,
             seeds: Sequence[int] = (0,), initial: int | None = None, test_size: float = 0.2, members: int = 5,
             c: float = 1.0) -> tuple[list[dict], dict[str, float]]:
    """Run pool-based active learning for each strategy and seed on precomputed ``vectors`` and 0/1 ``y``.

    Per seed: a stratified ``test_size`` hold-out (as ``fit_classifier`` splits), and one initial labeled set drawn
    stratified from the rest, shared by every strategy. Each round fits the logistic regression on the labeled docs,
    measures it on the hold-out, and lets the strategy pick ``budget`` more. Returns one row per (strategy, seed,
    round) with ``CSV_COLUMNS``, and the seconds each strategy took over all seeds.
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(y, dtype=np.int64)
    initial = check_plan(y, strategies, budget, rounds, seeds, initial, test_size, members)
    rows: list[dict] = []
    seconds = dict.fromkeys(strategies, 0.0)
    for seed in seeds:
        pool, test = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed, stratify=y)
        start_set = _stratified_draw(pool, y, initial, np.random.default_rng(seed))
        for strategy in strategies:
            start = time.perf_counter()
            # Seeded by name, not list position: `random` picks the same docs whatever else is compared.
            rng = np.random.default_rng([seed, zlib.crc32(strategy.encode())])
            labeled = start_set
            for round_ in range(rounds + 1):
                model = logistic_regression(c).fit(vectors[labeled], y[labeled])
                rows.append({"strategy": strategy, "seed": int(seed), "round": round_, "labels": len(labeled),
                             **_measure(model, vectors[test], y[test])})
                if round_ < rounds:
                    unlabeled = np.setdiff1d(pool, labeled, assume_unique=True)
                    picked = _query(strategy, model, vectors, y, labeled, unlabeled, budget, rng, members, c)
                    labeled = np.concatenate([labeled, picked])
            seconds[strategy] += time.perf_counter() - start
            log.info("al-simulate %s seed %d: ROC-AUC %.4f -> %.4f", strategy, seed,
                     rows[-rounds - 1]["roc_auc"], rows[-1]["roc_auc"])
    return rows, seconds


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Return per strategy: labels per round, ROC-AUC and average precision per round (mean over seeds, and the
    ROC-AUC's min and max), the area under the ROC-AUC learning curve (trapezoid over labels divided by the labels
    spanned: the curve's mean ROC-AUC), and against ``random`` on the same seeds: the mean gain at the last round and
    in area, and how many seeds beat it at the last round."""
    table = {(r["strategy"], r["seed"], r["round"]): r for r in rows}
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    rounds = sorted({r["round"] for r in rows})

    def grid(strategy: str, key: str) -> np.ndarray:
        return np.array([[table[strategy, s, k][key] for k in rounds] for s in seeds], dtype=np.float64)

    labels = grid(strategies[0], "labels")[0]
    span = labels[-1] - labels[0]
    auc = {s: grid(s, "roc_auc") for s in strategies}
    area = {s: np.trapezoid(a, labels, axis=1) / span if span else a[:, 0] for s, a in auc.items()}
    out: dict[str, dict] = {}
    for strategy in strategies:
        mine = auc[strategy]
        out[strategy] = {"seeds": seeds, "labels": labels.astype(int).tolist(), "roc_auc": _round(mine.mean(axis=0)),
                         "average_precision": _round(grid(strategy, "average_precision").mean(axis=0)),
                         "roc_auc_min": _round(mine.min(axis=0)), "roc_auc_max": _round(mine.max(axis=0)),
                         "initial_roc_auc": _round(mine[:, 0].mean()), "final_roc_auc": _round(mine[:, -1].mean()),
                         "aulc": _round(area[strategy].mean())}
        if BASELINE in auc and strategy != BASELINE:
            base = auc[BASELINE]
            out[strategy].update(gain_final=_round((mine[:, -1] - base[:, -1]).mean()),
                                 gain_aulc=_round((area[strategy] - area[BASELINE]).mean()),
                                 seeds_beating_random=int((mine[:, -1] > base[:, -1]).sum()))
    return out


def simulate_file(data: str | Path, out_dir: str | Path, text_column: str = "text", label_column: str = "label",
                  positive_label: str | int | bool | None = None, strategies: Sequence[str] = ("margin",),
                  budget: int = 50, rounds: int = 10, seeds: Sequence[int] = (0,), initial: int | None = None,
                  test_size: float = 0.2, members: int = 5, max_rows: int | None = None,
                  embedding: EmbeddingConfig | None = None) -> dict:
    """Read a labeled CSV/Parquet file, encode it once, simulate, write ``learning_curve.csv``,
    ``learning_curve.png`` and ``summary.json`` under ``out_dir``; return the summary with a rendered ``summary``
    text. ``random`` is added when not listed; ``max_rows`` keeps a stratified sample drawn with the first seed."""
    from dctp_tasks.quality.classifier import DEFAULT_C, binary_labels, read_labeled
    from dctp_tasks.quality.embeddings import EmbeddingConfig, encode

    started = time.perf_counter()
    path = Path(data)
    strategies = list(dict.fromkeys([*strategies, BASELINE]))
    seeds = [int(s) for s in dict.fromkeys(seeds)]
    texts, y, positive = binary_labels(read_labeled(path, text_column, label_column), text_column, label_column,
                                 positive_label)
    y = np.asarray(y, dtype=np.int64)
    if max_rows is not None:
        if max_rows < 1:
            raise ValueError(f"--max-rows must be at least 1, got {max_rows}")
        keep = _subsample(y, max_rows, seeds[0] if seeds else 0)
        texts, y = [texts[i] for i in keep], y[keep]
    initial = check_plan(y, strategies, budget, rounds, seeds, initial, test_size, members)
    embedding = embedding or EmbeddingConfig()
    start = time.perf_counter()
    vectors = encode(texts, embedding)
    encode_seconds = time.perf_counter() - start
    rows, seconds = simulate(vectors, y, strategies, budget, rounds, seeds, initial, test_size, members, DEFAULT_C)
    curves = summarize(rows)
    runs = len(seeds)
    out = {"data": str(path), "rows": len(y), "positives": int(y.sum()), "positive_label": positive,
           "text_column": text_column, "label_column": label_column, "max_rows": max_rows,
           "test_rows": int(np.ceil(test_size * len(y))), "pool_rows": len(y) - int(np.ceil(test_size * len(y))),
           "strategies": strategies, "seeds": seeds, "budget": budget, "rounds": rounds, "initial": initial,
           "test_size": test_size, "members": members, "c": DEFAULT_C,
           "embedding_model": embedding.model or "all-MiniLM-L6-v2", "max_seq_length": embedding.max_seq_length,
           "encode_seconds": round(encode_seconds, 2),
           "strategy_seconds": {s: round(t, 2) for s, t in seconds.items()},
           "seconds_per_run": {s: round(t / runs, 2) for s, t in seconds.items()},
           "curves": curves}
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"csv": folder / "learning_curve.csv", "png": folder / "learning_curve.png",
             "json": folder / "summary.json"}
    write_csv(rows, files["csv"])
    plot(curves, files["png"], title=f"{path.name}: {len(y):,} rows, budget {budget} x {rounds} rounds, "
                                     f"{len(seeds)} seed{'s' * (len(seeds) > 1)}")
    out["files"] = {k: str(v) for k, v in files.items()}
    out["seconds"] = round(time.perf_counter() - started, 2)
    files["json"].write_text(json.dumps(out, indent=2) + "\n")
    out["summary"] = render(out)
    return out


def write_csv(rows: list[dict], path: Path) -> None:
    """Write the learning curves, one row per (strategy, seed, round); the bytes depend only on the rows."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: r[k] for k in CSV_COLUMNS} for r in rows)


def plot(curves: dict[str, dict], path: Path, title: str = "") -> None:
    """Draw labels vs mean hold-out ROC-AUC per strategy to a PNG (no pyplot state). With several seeds and at most
    three curves, a band shows the min-max over seeds; with more the bands would hide each other."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    markers = "os^DvPX*"
    for i, (strategy, curve) in enumerate(curves.items()):
        # Binary margin, least confidence and entropy rank alike: distinct markers keep overlapping curves visible.
        style = {"color": "black", "linestyle": "--", "marker": "."} if strategy == BASELINE else \
            {"marker": markers[i % len(markers)], "markerfacecolor": "none"}
        line, = axes.plot(curve["labels"], curve["roc_auc"], markersize=5, label=strategy, **style)
        if len(curve["seeds"]) > 1 and len(curves) <= 3:
            axes.fill_between(curve["labels"], curve["roc_auc_min"], curve["roc_auc_max"], alpha=0.12,
                              color=line.get_color())
    axes.set_xlabel("labeled docs")
    axes.set_ylabel("ROC-AUC on the hold-out")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, format="png")


def render(out: dict) -> str:
    """Return the human summary: the mean learning curves as a table, then initial/final ROC-AUC, area and gains."""
    curves = out["curves"]
    names = list(curves)
    width = max(10, *(len(n) + 2 for n in names))
    seeds = out["seeds"]
    lines = [f"al-simulate {out['data']}: {out['rows']:,} rows ({out['positives']:,} positive), pool "
             f"{out['pool_rows']:,}, hold-out {out['test_rows']:,}; {out['initial']} initial + {out['rounds']} rounds "
             f"x {out['budget']}; seeds {','.join(map(str, seeds))}; encoded in {out['encode_seconds']:.1f} s",
             "", f"hold-out ROC-AUC by labels used, mean over {len(seeds)} seed(s):",
             f"{'labels':>7}" + "".join(f"{n:>{width}}" for n in names)]
    for i, labels in enumerate(curves[names[0]]["labels"]):
        lines.append(f"{labels:>7}" + "".join(f"{curves[n]['roc_auc'][i]:>{width}.4f}" for n in names))
    lines += ["", f"{'strategy':<18}{'initial':>8}{'final':>8}{'AULC':>8}{'final-random':>14}{'AULC-random':>13}"
              f"{'seeds>random':>14}{'s/seed':>8}"]
    for name in names:
        c = curves[name]
        versus = (f"{c['gain_final']:>+14.4f}{c['gain_aulc']:>+13.4f}{c['seeds_beating_random']:>12}/{len(seeds)}"
                  if "gain_final" in c else f"{'(baseline)':>14}{'':>13}{'':>14}")
        lines.append(f"{name:<18}{c['initial_roc_auc']:>8.4f}{c['final_roc_auc']:>8.4f}{c['aulc']:>8.4f}{versus}"
                     f"{out['seconds_per_run'][name]:>8.1f}")
    lines += ["", "AULC: area under the learning curve / labels spanned (the curve's mean ROC-AUC).",
              f"Wrote {', '.join(out['files'].values())} in {out['seconds']:.1f} s."]
    return "\n".join(lines)


def _query(strategy: str, model, vectors: np.ndarray, y: np.ndarray, labeled: np.ndarray, unlabeled: np.ndarray,
           budget: int, rng: np.random.Generator, members: int, c: float) -> np.ndarray:
    """Return the rows of ``vectors`` that ``strategy`` labels next (indices from ``unlabeled``)."""
    pool = vectors[unlabeled]
    if strategy == "random":
        return unlabeled[random_pick(len(unlabeled), budget, rng)]
    if strategy == "coreset":
        return unlabeled[k_center_greedy(pool, budget, centers=vectors[labeled])]
    if strategy == "qbc":
        committee = bootstrap_committee(vectors[labeled], y[labeled], pool, members=members, seed=rng, c=c)
        return unlabeled[top_k(kl_to_mean(committee), budget)]
    p = model.predict_proba(pool)[:, 1]
    if strategy == "margin-coreset":
        candidates = top_k(margin(p), MARGIN_CANDIDATES * budget)
        return unlabeled[candidates[k_center_greedy(pool[candidates], budget, centers=vectors[labeled])]]
    return unlabeled[top_k(_UNCERTAINTY[strategy](p), budget)]


def _measure(model, vectors: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    p = model.predict_proba(vectors)[:, 1]
    return {"roc_auc": round(float(roc_auc_score(y, p)), 6),
            "average_precision": round(float(average_precision_score(y, p)), 6)}


def _stratified_draw(pool: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``size`` rows of ``pool`` in the pool's class shares, at least 2 of each class (1 when ``size < 4``):
    qbc's bootstrap committee needs two of each, and 10 % positives in an initial set of 10 would round to one."""
    positive, negative = pool[y[pool] == 1], pool[y[pool] == 0]
    least = 2 if size >= 4 else 1
    n_positive = int(np.clip(round(size * len(positive) / len(pool)), least, size - least))
    n_positive = int(np.clip(n_positive, size - len(negative), len(positive)))
    return np.sort(np.concatenate([rng.choice(positive, n_positive, replace=False),
                                   rng.choice(negative, size - n_positive, replace=False)]))


def _subsample(y: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Return the sorted row numbers of a stratified sample of ``max_rows`` rows (all rows when there are fewer)."""
    if max_rows >= len(y):
        return np.arange(len(y))
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y, minlength=2)
    if counts.min() < 2 or max_rows < 2:
        raise ValueError(f"--max-rows {max_rows}: a stratified sample needs at least 2 rows and 2 of each class "
                         f"(the file has {int(counts[1])} positive, {int(counts[0])} negative)")
    keep, _ = train_test_split(np.arange(len(y)), train_size=max_rows, random_state=seed, stratify=y)
    return np.sort(keep)


def _round(value):
    if isinstance(value, np.ndarray):
        return [round(float(v), 6) for v in value]
    return round(float(value), 6)
