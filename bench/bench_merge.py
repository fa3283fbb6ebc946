"""Benchmark merging expert judgements (``merge_judgements``: consensus, reliability, weights, review assignments).

Preparation (not timed) fills a fresh feedback store (a SQLite file, or with ``--pg`` a PostgreSQL database of its
own) through the real migrations: ``--dates`` annotation batches holding ``--docs`` queue items in 8 sources x 6
domains (≈``--text-chars`` characters of text each), a roster of 10 experts (three limited to some domains, one
unreliable), each document assigned to two experts who may judge its domain, and their judgements of a planted
truth (each expert right with their own accuracy): ≈1 row of the audit trail per assignment, plus ≈2 % skips (most
followed by a label), 3 % corrections (a wrong label, then the right one) and 1 % retractions (half re-judged), so
the effective-label resolution has real work. Rows are written with SQLAlchemy Core bulk inserts of 50k; the truth
goes to ``truth.npy``.

Timed, in a fresh process: ``merge_judgements`` on the prepared store (run 1: every consensus row is new), then,
after ``--new`` judgements through ``FeedbackStore.submit`` (most by the experts the first merge assigned to
``needs_review`` documents, a few corrections) and a few ``retract_last`` (not timed), a second merge (run 2: only the
changed consensus rows are written). Each run's time is split by wrapping the helpers ``merge_judgements`` calls in
``dctp_tasks.feedback.merge``'s namespace (the library is not changed); peak RSS is VmHWM, reset before each run.
The consensus is scored against the planted truth next to a plain (unweighted) majority of the same effective
judgements. Results: ``{workdir}/merge_results.md`` and ``merge_results.json``.

    python bench/bench_merge.py --docs 500000 [--dates 10] [--pg postgresql+psycopg2://postgres@127.0.0.1:5432/x]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import shutil
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dedup import run_child
from bench_spine import WORDS, _maxrss_mb, _reset_peak, _vm_hwm_mb

REPO = Path(__file__).resolve().parent.parent
DAG_ID = "bench_merge"
FIRST_DT = datetime(2026, 1, 1, tzinfo=UTC)
DOMAINS = ("science", "technology", "health", "finance", "travel", "sports")
SOURCES = ("web", "news", "forum", "instruct", "wiki", "books", "code", "social")
SOURCE_GOOD = np.linspace(0.45, 0.9, len(SOURCES))  # planted share of good documents per source
#: name -> (planted accuracy, roster entry)
EXPERTS = {
    "alice": (0.95, {"seniority": "senior"}),
    "bob": (0.92, {"domains": ["science", "technology", "health"]}),
    "carol": (0.92, {"domains": ["finance", "travel", "sports"]}),
    "dave": (0.85, {"seniority": "junior"}),
    "erin": (0.93, {"domains": ["health", "finance"], "seniority": "senior"}),
    "frank": (0.90, {}),
    "grace": (0.90, {"weight": 1.5}),
    "heidi": (0.88, {}),
    "ivan": (0.87, {}),
    "mallory": (0.55, {"seniority": "junior"}),  # the unreliable one: should be flagged
}
SKIP, CORRECT, RETRACT = 0.02, 0.03, 0.01  # shares of assignments with a skip / a correction / a retraction first
CHUNK = 50_000  # rows per bulk insert
TARGET_SECONDS = 60.0

#: The helpers whose time is reported (label, attribute, parent label); "cs." is the consensus module, "store." the
#: store object, the rest lives in dctp_tasks.feedback.merge. The rest of merge_judgements is "other".
PHASES = [
    ("latest_annotation_id", "latest_annotation_id", None),
    ("effective_labels", "effective_labels", None),
    ("merge_consensus", "cs.merge_consensus", None),
    ("dawid_skene", "cs.dawid_skene", "merge_consensus"),
    ("item_facts", "item_facts", None),
    ("_group (judgement ids per doc)", "_group", None),
    ("group_weights", "group_weights", None),
    ("agreement_stats", "agreement_stats", None),
    ("krippendorff_alpha", "cs.krippendorff_alpha", "agreement_stats"),
    ("cohen_kappa_pairs", "cs.cohen_kappa_pairs", "agreement_stats"),
    ("record_merge", "record_merge", None),
    ("assign_reviews", "assign_reviews", None),
    ("open_load", "store.open_load", "assign_reviews"),
]

# --------------------------------------------------------------------------------------------------------------
# Preparation: the store, its batches, assignments and audit trail
# --------------------------------------------------------------------------------------------------------------


def _config():
    from dctp_tasks.config import load_config

    return load_config(overrides={"annotation.experts": {name: entry for name, (_, entry) in EXPERTS.items()},
                                  "quality.classifiers": {}, "feedback.classifier.enabled": False})


def _insert(engine, table, columns: dict[str, list]) -> None:
    """Bulk-insert ``columns`` (name -> values) in chunks of ``CHUNK`` rows, one transaction each."""
    names = list(columns)
    n = len(columns[names[0]])
    for lo in range(0, n, CHUNK):
        rows = [dict(zip(names, values, strict=True))
                for values in zip(*(columns[k][lo:lo + CHUNK] for k in names), strict=True)]
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)


def _texts(rng: np.random.Generator, n: int, chars: int) -> list[str]:
    words = list(dict.fromkeys(WORDS))
    filler = " ".join(np.asarray(words, dtype=object)[rng.integers(0, len(words), size=4 * chars // 5 + 400)])
    start = rng.integers(0, max(len(filler) - chars, 1), size=n).tolist()
    return [f"Document {i}. {filler[s:s + chars]}" for i, s in enumerate(start)]


def prepare(url: str, root: Path, n: int, dates: int, text_chars: int, seed: int) -> dict:
    """Fill the store at ``url`` with ``dates`` batches of ``n`` documents, their assignments and judgements;
    write the planted truth (per item_id - 1) to ``root/truth.npy``; return the counts and timings."""
    from dctp_tasks.feedback import db

    rng = np.random.default_rng([seed, 1])
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    engine = db.create_feedback_engine(url)
    db.upgrade(engine)

    # Documents: batch, date, source, domain, planted truth.
    item_id = np.arange(1, n + 1, dtype=np.int64)
    batch = (np.arange(n) * dates // n).astype(np.int64)  # 0..dates-1, in blocks
    per_batch = np.bincount(batch, minlength=dates)
    position = np.arange(n) - np.concatenate([[0], np.cumsum(per_batch)[:-1]])[batch]
    day = [(FIRST_DT + timedelta(days=k)).date().isoformat() for k in range(dates)]
    source = rng.integers(0, len(SOURCES), size=n)
    domain = rng.integers(0, len(DOMAINS), size=n)
    truth = (rng.random(n) < SOURCE_GOOD[source]).astype(np.int8)
    synthetic = rng.random(n) < 0.01
    filtered = rng.random(n) < 0.1  # the audit share: documents the filters removed
    quality = np.round(rng.beta(5, 3, size=n), 4)

    # Two distinct experts per document among those who may judge its domain.
    names = list(EXPERTS)
    accuracy = np.array([EXPERTS[e][0] for e in names])
    allowed = np.array([[not entry.get("domains") or d in entry["domains"] for _, entry in EXPERTS.values()]
                        for d in DOMAINS])
    keys = rng.random((n, len(names)))
    keys[~allowed[domain]] = 2.0
    chosen = np.argpartition(keys, 1, axis=1)[:, :2]
    pair_item = np.repeat(np.arange(n), 2)
    pair_expert = chosen.ravel()
    pairs = len(pair_item)
    right = rng.random(pairs) < accuracy[pair_expert]
    final = np.where(right, truth[pair_item], 1 - truth[pair_item]).astype(np.int8)
    # When each expert first touches the document: within three days of its batch; later rows follow.
    first_at = batch[pair_item] * 86_400.0 + rng.uniform(3_600, 3 * 86_400, size=pairs)
    gap = rng.uniform(30, 7_200, size=pairs)

    # The audit trail: 0 bad, 1 good, 2 skip, 3 retraction (of the pair's first row).
    kind = rng.random(pairs)
    skip = kind < SKIP
    correct = (kind >= SKIP) & (kind < SKIP + CORRECT)
    retract = (kind >= SKIP + CORRECT) & (kind < SKIP + CORRECT + RETRACT)
    again = rng.random(pairs) < np.where(skip, 0.7, 0.5)  # a skip followed by a label; a retraction re-judged
    first = np.where(skip, 2, np.where(correct, 1 - final, np.where(retract, rng.integers(0, 2, pairs), final)))
    second = np.flatnonzero((skip & again) | correct | retract)
    third = np.flatnonzero(retract & again)
    row_pair = np.concatenate([np.arange(pairs), second, third])
    row_label = np.concatenate([first, np.where(retract[second], 3, final[second]), final[third]]).astype(np.int8)
    row_time = np.concatenate([first_at, first_at[second] + gap[second], first_at[third] + 2 * gap[third]])
    order = np.argsort(row_time, kind="stable")
    annotation_id = np.empty(len(order), dtype=np.int64)
    annotation_id[order] = np.arange(1, len(order) + 1)
    retracts = np.full(len(order), -1, dtype=np.int64)
    is_retraction = row_label == 3
    retracts[is_retraction] = annotation_id[row_pair[is_retraction]]  # a pair's first row is row number `pair`
    row_pair, row_label, row_time, retracts = row_pair[order], row_label[order], row_time[order], retracts[order]
    seconds["generate"] = time.perf_counter() - start

    from dctp_tasks.feedback.db import annotations, assignments, batches, items

    start = time.perf_counter()
    created = [FIRST_DT + timedelta(days=k) for k in range(dates)]
    _insert(engine, batches, {
        "batch_id": list(range(1, dates + 1)), "dag_id": [DAG_ID] * dates, "dt": day,
        "run_id": [f"bench__{d}" for d in day], "created_at": created, "budget": per_batch.tolist(),
        "strategy_mix": ['{"uncertainty": 0.5, "qbc": 0.3, "random": 0.2}'] * dates,
        "config_hash": ["bench"] * dates, "mlflow_run_id": [None] * dates, "staged_version": [None] * dates,
        "table_version": [None] * dates, "items": per_batch.tolist()})
    source_names = np.asarray(SOURCES, dtype=object)[source]
    domain_names = np.asarray(DOMAINS, dtype=object)[domain]
    strategy = np.asarray(("uncertainty", "qbc", "random"), dtype=object)[rng.integers(0, 3, size=n)]
    _insert(engine, items, {
        "item_id": item_id.tolist(), "batch_id": (batch + 1).tolist(), "position": position.tolist(),
        "doc_id": [f"{s}/{i:08d}" for s, i in zip(source_names.tolist(), range(n), strict=True)],
        "dt": [day[b] for b in batch.tolist()], "source": source_names.tolist(), "domain": domain_names.tolist(),
        "lang": ["en"] * n, "text": _texts(rng, n, text_chars), "prompt": [None] * n, "response": [None] * n,
        "scores": [f'{{"quality": {q}}}' for q in quality.tolist()], "quality": quality.tolist(),
        "verdict": np.where(filtered, "fail", np.where(quality < 0.5, "review", "pass")).tolist(),
        "filter_reason": np.where(filtered, "heuristics", None).tolist(), "filter_detail": [None] * n,
        "pool": np.where(filtered, "filtered", "kept").tolist(),
        "strategy": np.where(filtered, "audit", strategy).tolist(),
        "strategy_score": np.round(rng.random(n), 4).tolist(),
        "stratum": [f"{s}|{d}" for s, d in zip(source_names.tolist(), domain_names.tolist(), strict=True)],
        "staged_version": [None] * n, "table_version": [None] * n, "synthetic": synthetic.tolist()})
    seconds["insert items"] = time.perf_counter() - start

    start = time.perf_counter()
    assigned = [created[b] for b in batch[pair_item].tolist()]
    _insert(engine, assignments, {
        "item_id": item_id[pair_item].tolist(), "expert": np.asarray(names, dtype=object)[pair_expert].tolist(),
        "assigned_at": assigned, "due_at": [a + timedelta(days=7) for a in assigned]})
    seconds["insert assignments"] = time.perf_counter() - start

    start = time.perf_counter()
    label_text = np.array(["bad", "good", "skip", None], dtype=object)[row_label]
    stamps = (np.datetime64(FIRST_DT.replace(tzinfo=None), "us")
              + (row_time * 1e6).astype("timedelta64[us]")).astype(datetime)
    m = len(row_pair)
    _insert(engine, annotations, {
        "annotation_id": list(range(1, m + 1)), "item_id": item_id[pair_item[row_pair]].tolist(),
        "expert": np.asarray(names, dtype=object)[pair_expert[row_pair]].tolist(), "label": label_text.tolist(),
        "category": [None] * m, "rationale": [None] * m,
        "retracts": np.where(retracts > 0, retracts, None).tolist(),
        "created_at": [s.replace(tzinfo=UTC) for s in stamps.tolist()], "client": ["bench"] * m,
        "request_id": [None] * m})
    seconds["insert annotations"] = time.perf_counter() - start
    if engine.dialect.name == "sqlite":
        import sqlite3

        engine.dispose()
        with sqlite3.connect(engine.url.database, isolation_level=None) as conn:  # fold the WAL into the file
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    else:
        with engine.begin() as conn:  # the ids were given explicitly: move the identity sequences past them
            for table, column in (("annotation_batches", "batch_id"), ("queue_items", "item_id"),
                                  ("annotations", "annotation_id")):
                conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                                     f"(SELECT max({column}) FROM {table}))")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
        engine.dispose()

    np.save(root / "truth.npy", truth)
    return {"docs": n, "dates": dates, "experts": len(names), "assignments": pairs, "annotation_rows": m,
            "skips": int(skip.sum()), "skips_relabelled": int((skip & again).sum()), "corrections": int(correct.sum()),
            "retractions": int(retract.sum()), "retractions_rejudged": int((retract & again).sum()),
            "planted_good": float(truth.mean()), "planted_expert_right": float(right.mean()),
            "prepare_seconds": seconds}


# --------------------------------------------------------------------------------------------------------------
# The timed merges
# --------------------------------------------------------------------------------------------------------------


def _timed(phases: dict[str, float], label: str, fn, seen: dict | None = None):
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            out = fn(*args, **kwargs)
            if seen is not None:
                seen[label] = out
            return out
        finally:
            phases[label] = phases.get(label, 0.0) + time.perf_counter() - start
    return call


def _instrument(store, phases: dict[str, float], seen: dict) -> None:
    """Wrap the helpers ``merge_judgements`` calls so each adds its seconds to ``phases``; keep the effective labels
    of the last merge in ``seen``."""
    from dctp_tasks.feedback import consensus as cs
    from dctp_tasks.feedback import merge

    owners = {"cs": cs, "store": store}
    for label, attribute, _ in PHASES:
        owner_name, _, name = attribute.rpartition(".")
        owner = owners[owner_name] if owner_name else merge
        setattr(owner, name, _timed(phases, label, getattr(owner, name),
                                    seen if label == "effective_labels" else None))


def _accuracy(merged, labels, truth: np.ndarray) -> dict:
    """Score the consensus and a plain majority of the same effective judgements against the planted truth:
    share decided, accuracy on the decided, and accuracy with every undecided document settled by a coin flip."""
    true = truth[merged.item_ids - 1]
    out = {}
    consensus = np.where(merged.labels == "good", 1, np.where(merged.labels == "bad", 0, -1))
    _, index = np.unique(labels.item_id, return_inverse=True)
    good = np.bincount(index, weights=labels.label, minlength=len(merged.item_ids))
    total = np.bincount(index, minlength=len(merged.item_ids))
    majority = np.where(2 * good > total, 1, np.where(2 * good < total, 0, -1))
    for name, guess in (("consensus", consensus), ("majority", majority)):
        decided = guess >= 0
        hits = int((guess[decided] == true[decided]).sum())
        out[name] = {"decided": float(decided.mean()), "accuracy_decided": hits / max(int(decided.sum()), 1),
                     "accuracy_coin_flip": (hits + 0.5 * int((~decided).sum())) / len(true)}
    return out


def _new_judgements(store, merged, labels, truth: np.ndarray, count: int, seed: int) -> dict:
    """Write ``count`` judgements through the store's API (not timed): ≈85 % by the experts the merge assigned to
    ``needs_review`` documents, the rest corrections by an expert who judged the document; then a few undos."""
    rng = np.random.default_rng([seed, 2])
    accuracy = {name: acc for name, (acc, _) in EXPERTS.items()}
    reviews = sorted(merged.reviews.items())
    picked = [reviews[i] for i in rng.permutation(len(reviews))[:int(count * 0.85)]]
    done = Counter()
    for item_id, expert in picked:
        right = rng.random() < accuracy[expert]
        label = int(truth[item_id - 1]) if right else 1 - int(truth[item_id - 1])
        store.submit(expert, item_id, "good" if label else "bad", client="bench")
        done["review_judgements"] += 1
    for i in rng.choice(len(labels.item_id), size=count - len(picked), replace=False).tolist():
        item_id = int(labels.item_id[i])
        store.submit(str(labels.expert[i]), item_id, "good" if truth[item_id - 1] else "bad", client="bench")
        done["corrections"] += 1
    for expert in list(EXPERTS)[:max(count // 100, 1)]:
        if store.retract_last(expert, client="bench") is not None:
            done["retractions"] += 1
    return dict(done)


def run_merges(url: str, root: Path, new: int, seed: int, profile: bool) -> dict:
    """Open the prepared store, time the first merge, write ``new`` judgements, time the second merge."""
    import sqlalchemy as sa

    from dctp_tasks.feedback.db import batches
    from dctp_tasks.feedback.merge import merge_judgements
    from dctp_tasks.feedback.store import FeedbackStore

    config = _config()
    store = FeedbackStore.open(url, config.annotation)
    truth = np.load(root / "truth.npy")
    phases: dict[str, float] = {}
    seen: dict = {}
    _instrument(store, phases, seen)
    out: dict = {"runs": [], "rss_before_mb": _maxrss_mb(resource.RUSAGE_SELF)}
    with store._reading() as conn:  # the daily run merges on the latest batch's date
        dt = conn.execute(sa.select(sa.func.max(batches.c.dt))).scalar()
    merged = None
    for number in (1, 2):
        if merged is not None:
            start = time.perf_counter()
            out["new_judgements"] = _new_judgements(store, merged, seen["effective_labels"], truth, new, seed)
            out["new_judgements_seconds"] = time.perf_counter() - start
        phases.clear()
        resettable = _reset_peak()
        profiler = cProfile.Profile() if profile else None
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        merged = merge_judgements(store, config, dag_id=DAG_ID, run_id=f"bench-{number}", dt=dt)
        if profiler is not None:
            profiler.disable()
        seconds = time.perf_counter() - start
        peak = (_vm_hwm_mb() if resettable else None) or _maxrss_mb(resource.RUSAGE_SELF)
        labels = seen["effective_labels"]
        run = {"seconds": seconds, "phases": dict(phases), "peak_rss_mb": peak, "merge_id": merged.merge_id,
               "method": merged.method, "changed": merged.changed, "judgements": int(len(labels.label)),
               "documents": int(len(merged.item_ids)), "skips": int(labels.skips),
               "good": merged.stats["good"], "bad": merged.stats["bad"], "needs_review": merged.stats["needs_review"],
               "iterations": merged.stats["iterations"], "alpha": merged.stats["alpha"],
               "reviews_assigned": len(merged.reviews), "flagged": merged.stats["flagged"],
               "experts": merged.experts, "accuracy": _accuracy(merged, labels, truth)}
        if profiler is not None:
            profiler.dump_stats(str(root / f"merge-{number}.prof"))
            run["profile_top"] = _top(profiler, "cumulative")
        out["runs"].append(run)
    store.engine.dispose()
    return out


def _top(profiler: cProfile.Profile, key: str, count: int = 25) -> str:
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).strip_dirs().sort_stats(key).print_stats(count)
    text = buffer.getvalue()
    return text[text.find("   ncalls"):].rstrip() if "   ncalls" in text else text


# --------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------


def _child(*argv: str) -> dict:
    return run_child(str(Path(__file__).resolve()), *argv)


def _pg_database(url: str, create: bool, name: str | None = None) -> str:
    """Create a database of our own next to ``url``'s (return its URL) or drop database ``name``."""
    import psycopg2
    from sqlalchemy.engine import make_url

    base = make_url(url)
    conn = psycopg2.connect(host=base.host, port=base.port or 5432, user=base.username, password=base.password,
                            dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            if create:
                name = f"dctp_bench_merge_{uuid.uuid4().hex[:12]}"
                cursor.execute(f'CREATE DATABASE "{name}"')
                return base.set(database=name).render_as_string(hide_password=False)
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
            return name
    finally:
        conn.close()


def render(results: dict) -> str:
    lines = ["# DCTP feedback-merge benchmark", "",
             "`merge_judgements` on a prepared store: run 1 is the first merge (every consensus row new), run 2 "
             "follows a few hundred new judgements (only changed consensus rows written). Accuracy against the "
             "planted truth: share decided / accuracy on the decided / accuracy with the undecided settled by a "
             "coin flip.", "",
             "| backend | docs | judgements | run | method | seconds | target | peak RSS | good / bad / review | "
             "changed | reviews assigned | consensus accuracy | plain majority |",
             "|---|---:|---:|---:|---|---:|---|---:|---|---:|---:|---|---|"]
    runs = []
    for entry in results["runs"]:
        for number, run in enumerate(entry["merge"]["runs"], start=1):
            runs.append((entry, number, run))
            acc = run["accuracy"]
            fmt = "{decided:.1%} / {accuracy_decided:.2%} / {accuracy_coin_flip:.2%}"
            lines.append(
                f"| {entry['backend']} | {run['documents']:,} | {run['judgements']:,} | {number} | {run['method']} "
                f"| {run['seconds']:.1f} | {'PASS' if run['seconds'] < TARGET_SECONDS else 'FAIL'} "
                f"| {run['peak_rss_mb']:,.0f} MB | {run['good']:,} / {run['bad']:,} / {run['needs_review']:,} "
                f"| {run['changed']:,} | {run['reviews_assigned']:,} | {fmt.format(**acc['consensus'])} "
                f"| {fmt.format(**acc['majority'])} |")
    lines += ["", f"Target: < {TARGET_SECONDS:.0f} s to merge 1,000,000 judgements over 500,000 documents.", "",
              "Seconds per phase (indented phases are part of the one above):", ""]
    header = [f"{e['backend']} {r['documents']:,} run {i}" for e, i, r in runs]
    lines += ["| phase | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for label, _, parent in PHASES:
        shown = f"&nbsp;&nbsp;{label}" if parent else label
        lines.append(f"| {shown} | " + " | ".join(f"{r['phases'].get(label, 0.0):.2f}" for _, _, r in runs) + " |")
    top = [label for label, _, parent in PHASES if parent is None]
    lines.append("| other (rows for record_merge, experts, logging) | " + " | ".join(
        f"{r['seconds'] - sum(r['phases'].get(k, 0.0) for k in top):.2f}" for _, _, r in runs) + " |")
    lines.append("| **total** | " + " | ".join(f"**{r['seconds']:.2f}**" for _, _, r in runs) + " |")
    lines += ["", "Experts (run 1): planted accuracy → reliability (flagged):", ""]
    for entry in results["runs"]:
        first = entry["merge"]["runs"][0]
        lines.append(f"- {entry['backend']} {first['documents']:,}: " + ", ".join(
            f"{e['expert']} {EXPERTS[e['expert']][0]:.2f} → {e['reliability']:.3f}{' ⚑' if e['flagged'] else ''}"
            for e in first["experts"]))
    lines += ["", "Preparation (not timed): " + "; ".join(
        f"{e['backend']} {e['prepared']['docs']:,} docs, {e['prepared']['annotation_rows']:,} audit rows "
        f"({e['prepared']['skips']:,} skips, {e['prepared']['corrections']:,} corrections, "
        f"{e['prepared']['retractions']:,} retractions): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in e["prepared"]["prepare_seconds"].items())
        + f"; before run 2: {e['merge'].get('new_judgements')}" for e in results["runs"]), "",
        f"Machine: {results['machine']}; Python {results['python']}; SQLite {results['sqlite']}; load average "
        f"{results['load']:.2f} at the start.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        if argv[1] == "prepare":
            url, root, n, dates, chars, seed = argv[2], Path(argv[3]), *(int(a) for a in argv[4:8])
            print("BENCH_RESULT " + json.dumps({"prepared": prepare(url, root, n, dates, chars, seed)}))
        else:
            url, root, new, seed, profile = argv[2], Path(argv[3]), int(argv[4]), int(argv[5]), argv[6] == "1"
            print("BENCH_RESULT " + json.dumps({"merge": run_merges(url, root, new, seed, profile)}, default=float))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=500_000, help="judged documents (two assignments each)")
    parser.add_argument("--dates", type=int, default=10, help="annotation batches (one per date)")
    parser.add_argument("--text-chars", type=int, default=600, help="characters of text per queue item")
    parser.add_argument("--new", type=int, default=300, help="judgements written between run 1 and run 2")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pg", metavar="URL", help="run against PostgreSQL: a database of its own is created next "
                        "to URL's (e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/postgres) and dropped after")
    parser.add_argument("--profile", action="store_true",
                        help="run both merges under cProfile ({workdir}/n{N}/merge-{1,2}.prof; times inflate)")
    parser.add_argument("--reuse", action="store_true",
                        help="SQLite: reuse a prepared store of the same docs, dates, text size and seed")
    parser.add_argument("--keep-data", action="store_true", help="keep the prepared store (SQLite file or database)")
    parser.add_argument("--fresh", action="store_true", help="discard earlier results in merge_results.json")
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench-merge")
    args = parser.parse_args(argv)
    import sqlite3

    workdir = args.workdir.resolve()
    backend = "postgresql" if args.pg else "sqlite"
    root = workdir / f"{backend}-n{args.docs}"
    key = {"docs": args.docs, "dates": args.dates, "text_chars": args.text_chars, "seed": args.seed}
    results_path = workdir / "merge_results.json"
    previous = {} if args.fresh or not results_path.exists() else json.loads(results_path.read_text())
    results: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cores, "
                                f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
                     "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                     "load": os.getloadavg()[0],
                     "runs": [r for r in previous.get("runs", []) if (r["backend"], r["prepared"]["docs"])
                              != (backend, args.docs)]}
    database = None
    try:
        marker = root / "prepared.json"
        if args.pg:
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            url = _pg_database(args.pg, create=True)
            database = url.rsplit("/", 1)[1].split("?")[0]
            prepared_url = url
        else:
            prepared_url = f"sqlite:///{root / 'prepared.db'}"
            url = f"sqlite:///{root / 'feedback.db'}"
        prepared = json.loads(marker.read_text()) if args.reuse and not args.pg and marker.is_file() else None
        start = time.perf_counter()
        if prepared is None or prepared.get("key") != key:
            if not args.pg:
                shutil.rmtree(root, ignore_errors=True)
                root.mkdir(parents=True)
            prepared = {**_child("prepare", prepared_url, str(root), str(args.docs), str(args.dates),
                                 str(args.text_chars), str(args.seed))["prepared"], "key": key}
            marker.write_text(json.dumps(prepared, indent=1))
        print(f"[{backend} n={args.docs:,}] prepared in {time.perf_counter() - start:.0f} s: "
              f"{prepared['annotation_rows']:,} audit rows ({prepared['prepare_seconds']})", flush=True)
        if not args.pg:  # the timed runs change the store: they work on a copy
            for suffix in ("", "-wal", "-shm"):
                (root / f"feedback.db{suffix}").unlink(missing_ok=True)
            shutil.copyfile(root / "prepared.db", root / "feedback.db")
        merge = _child("merge", url, str(root), str(args.new), str(args.seed), "1" if args.profile else "0")["merge"]
        results["runs"].append({"backend": backend, "prepared": prepared, "merge": merge})
        for number, run in enumerate(merge["runs"], start=1):
            c, m = run["accuracy"]["consensus"], run["accuracy"]["majority"]
            print(f"[{backend} n={args.docs:,}] run {number}: {run['method']}, {run['judgements']:,} judgements on "
                  f"{run['documents']:,} docs in {run['seconds']:.1f} s "
                  f"({'PASS' if run['seconds'] < TARGET_SECONDS else 'FAIL'} < {TARGET_SECONDS:.0f} s), "
                  f"peak {run['peak_rss_mb']:,.0f} MB, {run['changed']:,} changed; "
                  f"accuracy {c['accuracy_decided']:.2%} on {c['decided']:.1%} decided "
                  f"(majority {m['accuracy_decided']:.2%} on {m['decided']:.1%})",
                  flush=True)
            if "profile_top" in run:
                print(run["profile_top"], flush=True)
    finally:
        if not args.pg:
            for suffix in ("", "-wal", "-shm"):
                (root / f"feedback.db{suffix}").unlink(missing_ok=True)
            if not args.keep_data and not args.reuse:
                shutil.rmtree(root, ignore_errors=True)
        elif database and not args.keep_data:
            _pg_database(args.pg, create=False, name=database)
    workdir.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2, default=float))
    (workdir / "merge_results.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
