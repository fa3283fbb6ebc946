"""Benchmark selection for annotation (``select_for_annotation_day``) on a decided day of N candidate rows.

Preparation (not timed) builds, per N, a day as the real stages publish it under ``{workdir}/n{N}/``:
``dedup_semantic`` rows (English-like ≈600-character texts in 6 domains x 4 sources; a few % short, repetitive,
with a curly bracket or with PII, so decide filters and redacts some), then the real ``score_day`` with the cheap
CPU scorers (heuristics, credibility, pii: ``score``; ``score_models`` has no scorer to run and passes ``score``
on, as in the DAG) and the real ``decide_day`` (``quality`` rows and rejects); ``state/embeddings/dt=D`` holds one
L2-normalized float16 vector per row (``--clusters`` Gaussian clusters) recorded as made by the default encoder, so
nothing is encoded. The feedback store is a fresh SQLite file with a roster of 5 experts.

Timed, in a fresh process per N: the first selection of the date, then a second one (replaces the unjudged batch).
Each run's time is split by wrapping the stage's module-level helpers (the library is not changed); ``--profile``
adds a third run under cProfile. Results: ``{workdir}/selection_results.md`` and ``selection_results.json``.

    python bench/bench_selection.py --rows 1000000 [--budget 1000] [--workdir .bench-selection] [--profile]
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
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dedup import run_child
from bench_spine import _maxrss_mb, _reset_peak, _Tokens, _vm_hwm_mb, generate_texts

REPO = Path(__file__).resolve().parent.parent
DT = "2026-01-02"
DAG_ID = "bench_select"
DOMAINS = ("science", "technology", "health", "finance", "travel", "sports")
SOURCES = ("web", "news", "forum", "instruct")
CPU_SCORERS = ("heuristics", "credibility", "pii")
EXPERTS = {
    "alice": {"seniority": "senior"},
    "bob": {"domains": ["science", "technology", "health"]},
    "carol": {"domains": ["finance", "travel", "sports"]},
    "dave": {"seniority": "junior"},
    "erin": {"domains": ["health", "finance"], "seniority": "senior"},
}
CHUNK = 50_000  # rows generated and written at a time
TARGET_SECONDS = 60.0

#: The stage's helpers whose time is reported (label, attribute, parent label); the rest is "other".
PHASES = [
    ("batch lookup", "store.batch", None),
    ("read_day", "read_day", None),
    ("decide_scores", "decide_scores", "read_day"),
    ("queued_doc_ids", "store.queued_doc_ids", None),
    ("expert_labels", "expert_labels", None),
    ("choose", "choose", None),
    ("strategy_scores", "strategy_scores", "choose"),
    ("read vectors", "VectorSource.vectors", "choose"),
    ("k_center_greedy", "al.k_center_greedy", "choose"),
    ("stage_rejects", "stage_rejects", None),
    ("snapshot", "snapshot", None),
    ("open_load", "store.open_load", None),
    ("assign", "assign", None),
    ("replace_batch", "store.replace_batch", None),
    ("pick_metrics", "pick_metrics", None),
    ("render + write report", "render_report|write_report", None),
    ("take_rows (all callers)", "storage.take_rows", "*"),
]

# --------------------------------------------------------------------------------------------------------------
# Preparation: the decided day, its vectors, the store
# --------------------------------------------------------------------------------------------------------------


def _config(budget: int):
    from dctp_tasks.config import load_config

    defaults = load_config().quality.scorers
    return load_config(overrides={"quality.scorers": {name: defaults.get(name, {}) for name in CPU_SCORERS},
                                  "annotation.budget": budget, "annotation.experts": EXPERTS})


def _texts(rng: np.random.Generator, tokens: _Tokens, start: int, m: int) -> tuple[list[str], dict[str, int]]:
    """Return ``m`` English-like texts of ≈600 characters; a few short, repetitive, bracketed or carrying PII."""
    texts = [t.decode("utf-8").replace("\\n", "\n") for t in generate_texts(rng, tokens, m, doc_bytes=600,
                                                                             mojibake=0.0)]
    kind = rng.random(m)
    planted = Counter()
    for i in np.flatnonzero(kind < 0.03).tolist():  # fewer than 50 words
        texts[i] = " ".join(texts[i].split()[: int(rng.integers(15, 45))]).rstrip(".,") + "."
        planted["short"] += 1
    for i in np.flatnonzero((kind >= 0.03) & (kind < 0.045)).tolist():  # one sentence over and over
        sentence = texts[i].split(". ")[0].strip() + ". "
        texts[i] = (sentence * (600 // max(len(sentence), 1) + 2)).strip()
        planted["repetitive"] += 1
    for i in np.flatnonzero((kind >= 0.045) & (kind < 0.05)).tolist():  # C4: any curly bracket
        texts[i] = texts[i] + " {see appendix}"
        planted["curly"] += 1
    for i in np.flatnonzero((kind >= 0.05) & (kind < 0.07)).tolist():  # PII: redacted, not filtered
        n = start + i
        texts[i] = f"{texts[i]} Contact j.doe{n}@example.com or call +1 (555) {n % 1000:03d}-{n % 10000:04d}."
        planted["pii"] += 1
    return texts, planted


def stage_input(storage, n: int, seed: int) -> dict:
    """Publish ``n`` rows as ``dedup_semantic``'s output (DEDUPED_SCHEMA); return the planted counts."""
    import pyarrow as pa

    from dctp_tasks.records import DEDUPED_SCHEMA, content_hashes, empty_lineage
    from dctp_tasks.staging import ROWS, stage_output

    rng = np.random.default_rng([seed, 1])
    tokens = _Tokens()
    day = np.datetime64(f"{DT}T00:00:00", "us")
    planted: Counter = Counter()
    with stage_output(storage, DAG_ID, DT, "dedup_semantic") as out, \
            out.writer(ROWS, schema=DEDUPED_SCHEMA) as writer:
        for lo in range(0, n, CHUNK):
            m = min(CHUNK, n - lo)
            texts, kinds = _texts(rng, tokens, lo, m)
            planted.update(kinds)
            text = pa.array(texts, pa.string())
            source = np.asarray(SOURCES, dtype=object)[rng.integers(0, len(SOURCES), size=m)]
            domain = np.asarray(DOMAINS, dtype=object)[rng.integers(0, len(DOMAINS), size=m)]
            stamps = day + rng.integers(0, 86_400_000_000, size=m).astype("timedelta64[us]")
            columns = {
                "doc_id": pa.array([f"{s}/{i:08d}" for s, i in zip(source.tolist(), range(lo, lo + m), strict=True)],
                                   pa.string()),
                "text": text, "prompt": pa.nulls(m, pa.string()), "response": pa.nulls(m, pa.string()),
                "source": pa.array(source, pa.string()), "domain": pa.array(domain, pa.string()),
                "created_at": pa.array(stamps, pa.timestamp("us", tz="UTC")), "meta": pa.array(["{}"] * m),
                "dt": pa.array([DT] * m, pa.string()), "synthetic": pa.array(np.zeros(m, bool)),
                "sampling_weight": pa.array(np.ones(m)), "lineage": empty_lineage(m),
                "lang": pa.array(["en"] * m, pa.string()), "lang_score": pa.array(np.full(m, 0.9, np.float32)),
                "content_hash": content_hashes(text),
            }
            writer.write(pa.table([columns[f.name] for f in DEDUPED_SCHEMA], schema=DEDUPED_SCHEMA))
    return {**planted, "mean_chars": float(np.mean([len(t) for t in texts[:2000]]))}


def write_vectors(storage, config, n: int, dim: int, clusters: int, seed: int) -> dict:
    """Publish ``state/embeddings/dt=DT`` as semantic dedup's ``_write_state`` does: every row of the day survived,
    one L2-normalized float16 vector each, drawn around ``clusters`` random unit centres."""
    import pyarrow as pa

    from dctp_tasks.embeddings import STATE, embeddings_schema, encoder_identity
    from dctp_tasks.publish import publish
    from dctp_tasks.staging import stage_rows
    from dctp_tasks.storage import state_dir

    cfg = config.dedup_semantic
    encoder = encoder_identity(cfg, dim)
    schema = embeddings_schema(dim, cfg.storage_dtype, encoder)
    rng = np.random.default_rng([seed, 2])
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = 1.0 / np.sqrt(dim)  # noise as long as a centre: cosine to its centre ≈ 0.7, across centres ≈ 0
    ids = storage.read_table(stage_rows(storage, DAG_ID, DT, "dedup_semantic"), columns=["doc_id"]).column("doc_id")
    ids = ids.combine_chunks()
    with publish(storage, state_dir(STATE, DT), meta={"encoder": encoder}) as state, \
            state.writer(schema=schema, row_group_size=10_000) as writer:
        for lo in range(0, n, CHUNK):
            m = min(CHUNK, n - lo)
            x = centres[rng.integers(0, clusters, size=m)] + spread * rng.standard_normal((m, dim), np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            flat = pa.array(np.ascontiguousarray(x, dtype=cfg.storage_dtype).ravel())
            writer.write(pa.table({"doc_id": ids.slice(lo, m),
                                   "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)}, schema=schema))
    return {"encoder": encoder}


def prepare(root: Path, n: int, budget: int, dim: int, clusters: int, seed: int) -> dict:
    """Build the decided day under ``root``; return what the selection run needs and the preparation's timings."""
    from dctp_tasks.feedback.select import VectorSource
    from dctp_tasks.quality.decide import decide_day
    from dctp_tasks.quality.scoring import score_day
    from dctp_tasks.staging import stage_rows
    from dctp_tasks.storage import Storage

    storage = Storage(root.as_uri())
    config = _config(budget)
    seconds = {}
    start = time.perf_counter()
    planted = stage_input(storage, n, seed)
    seconds["generate"] = time.perf_counter() - start
    start = time.perf_counter()
    write_vectors(storage, config, n, dim, clusters, seed)
    seconds["vectors"] = time.perf_counter() - start
    start = time.perf_counter()
    scored = score_day(storage, config, DAG_ID, DT, "cpu")
    seconds["score"] = time.perf_counter() - start
    models = score_day(storage, config, DAG_ID, DT, "gpu", input_stage=scored.output_stage or scored.stage,
                       input_version=scored.version)
    start = time.perf_counter()
    decided = decide_day(storage, config, DAG_ID, DT, input_stage=models.output_stage or models.stage,
                         input_version=models.version)
    seconds["decide"] = time.perf_counter() - start
    # The stage must find every row's vector: it encodes nothing.
    scores_dir = stage_rows(storage, DAG_ID, DT, decided.extra["scores_stage"], decided.extra["scores_version"])
    stored = VectorSource(storage, DT, config, scores_dir, None).lookup(DT).stored_ids()
    if len(stored) != n:
        raise RuntimeError(f"EmbeddingLookup reuses {len(stored)} stored vectors, expected {n}: the encoder identity "
                           "or the state layout does not match")
    return {"n": n, "planted": planted, "prepare_seconds": seconds, "stored_vectors": len(stored),
            "pass": decided.extra["pass"], "review": decided.extra["review"], "fail": decided.extra["fail"],
            "dropped_by_reason": dict(decided.dropped_by_reason.most_common(8)),
            "input_stage": decided.output_stage or decided.stage, "input_version": decided.version,
            "scores_stage": decided.extra["scores_stage"], "scores_version": decided.extra["scores_version"]}


# --------------------------------------------------------------------------------------------------------------
# The timed selection
# --------------------------------------------------------------------------------------------------------------


def _timed(phases: dict[str, float], label: str, fn):
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            phases[label] = phases.get(label, 0.0) + time.perf_counter() - start
    return call


def _instrument(store, storage, phases: dict[str, float], counts: Counter) -> None:
    """Wrap the helpers ``select_for_annotation_day`` calls so each adds its seconds to ``phases``; count the
    candidate rows whose vectors are read into ``counts["vectors_read"]``."""
    from dctp_tasks.feedback import select
    from dctp_tasks.feedback import strategies as al

    owners = {"store": store, "storage": storage, "al": al, "VectorSource": select.VectorSource}
    for label, attributes, _ in PHASES:
        for attribute in attributes.split("|"):
            owner_name, _, name = attribute.rpartition(".")
            owner = owners[owner_name] if owner_name else select
            setattr(owner, name, _timed(phases, label, getattr(owner, name)))
    read = select.VectorSource.vectors

    def vectors(self, rows):
        counts["vectors_read"] += len(np.unique(rows))
        return read(self, rows)

    select.VectorSource.vectors = vectors


def run_selection(root: Path, prepared: dict, budget: int, runs: int, profile: bool) -> dict:
    """Time ``runs`` selections of the prepared date in a fresh store (the first stores the batch, the next replace
    it); with ``profile`` one more under cProfile. Return each run's seconds, phases, peak RSS and result."""
    from dctp_tasks.feedback.select import select_for_annotation_day
    from dctp_tasks.feedback.store import FeedbackStore
    from dctp_tasks.storage import Storage

    storage = Storage(root.as_uri())
    config = _config(budget)
    db_path = root / "feedback.db"
    db_path.unlink(missing_ok=True)
    store = FeedbackStore.open(f"sqlite:///{db_path}", config.annotation, upgrade=True)
    phases: dict[str, float] = {}
    counts: Counter = Counter()
    _instrument(store, storage, phases, counts)

    def select():
        return select_for_annotation_day(storage, config, DAG_ID, DT, store=store,
                                         input_stage=prepared["input_stage"], input_version=prepared["input_version"],
                                         scores_stage=prepared["scores_stage"],
                                         scores_version=prepared["scores_version"], run_id="bench")

    out: dict = {"runs": [], "rss_before_mb": _maxrss_mb(resource.RUSAGE_SELF)}
    for number in range(runs + (1 if profile else 0)):
        phases.clear()
        counts.clear()
        profiler = cProfile.Profile() if number == runs else None
        resettable = _reset_peak()
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        result = select()
        if profiler is not None:
            profiler.disable()
        seconds = time.perf_counter() - start
        peak = (_vm_hwm_mb() if resettable else None) or _maxrss_mb(resource.RUSAGE_SELF)
        extra = {k: v for k, v in result.extra.items() if isinstance(v, (int, float))}
        if profiler is not None:
            profiler.dump_stats(str(root.parent / f"select-{root.name}.prof"))
            out["profile"] = {"seconds": seconds, "cumulative": _top(profiler, "cumulative"),
                              "tottime": _top(profiler, "tottime")}
            continue
        out["runs"].append({"seconds": seconds, "phases": dict(phases), "peak_rss_mb": peak, "extra": extra,
                            "total": result.total, "vectors_read": counts["vectors_read"]})
        if extra.get("vectors_encoded"):
            raise RuntimeError(f"the stage encoded {extra['vectors_encoded']} vectors: stored vectors were not reused")
    return out


def _top(profiler: cProfile.Profile, key: str, count: int = 20) -> str:
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).strip_dirs().sort_stats(key).print_stats(count)
    text = buffer.getvalue()
    return text[text.find("   ncalls"):].rstrip() if "   ncalls" in text else text


# --------------------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------------------


def _child(*argv: str) -> dict:
    return run_child(str(Path(__file__).resolve()), *argv, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})


def render(results: dict) -> str:
    lines = ["# DCTP selection-for-annotation benchmark", "",
             f"{results['machine']}; Python {results['python']}; load average {results['load']:.2f} at the start. "
             f"Budget {results['budget']}, {results['dim']}-d float16 vectors in {results['clusters']} clusters; "
             "run 1 stores the date's batch, run 2 replaces it (nobody judged it).", "",
             "| rows | kept / filtered | run | selected | per strategy | seconds | peak RSS | vectors read | "
             "vectors encoded |", "|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for entry in results["sizes"]:
        prep = entry["prepared"]
        for number, run in enumerate(entry["selection"]["runs"], start=1):
            x = run["extra"]
            mix = ", ".join(f"{k.removeprefix('picked_')} {v}" for k, v in x.items() if k.startswith("picked_"))
            flag = "" if run["seconds"] < TARGET_SECONDS else " ⚠"
            lines.append(f"| {entry['n']:,} | {prep['pass'] + prep['review']:,} / {prep['fail']:,} | {number} "
                         f"| {x.get('selected', 0):,} | {mix} | {run['seconds']:.2f}{flag} "
                         f"| {run['peak_rss_mb']:,.0f} MB | {run['vectors_read']:,} "
                         f"| {x.get('vectors_encoded', 0)} |")
    lines += ["", f"Target: < {TARGET_SECONDS:.0f} s at 1,000,000 rows with a budget of 1,000.", "",
              "Seconds per phase (nested phases are part of the one above; take_rows counts every caller):", ""]
    header = [f"{e['n']:,} run {i}" for e in results["sizes"] for i in range(1, len(e["selection"]["runs"]) + 1)]
    lines += ["| phase | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    runs = [run for e in results["sizes"] for run in e["selection"]["runs"]]
    for label, _, parent in PHASES:
        shown = f"&nbsp;&nbsp;{label}" if parent else label
        lines.append(f"| {shown} | " + " | ".join(f"{run['phases'].get(label, 0.0):.2f}" for run in runs) + " |")
    top_level = [label for label, _, parent in PHASES if parent is None]
    lines.append("| other | " + " | ".join(
        f"{run['seconds'] - sum(run['phases'].get(k, 0.0) for k in top_level):.2f}" for run in runs) + " |")
    lines.append("| **total** | " + " | ".join(f"**{run['seconds']:.2f}**" for run in runs) + " |")
    lines += ["", "Preparation (not timed): " + "; ".join(
        f"{e['n']:,} rows: " + ", ".join(f"{k} {v:.0f} s" for k, v in e["prepared"]["prepare_seconds"].items())
        + f"; filtered by {e['prepared']['dropped_by_reason']}" for e in results["sizes"]), ""]
    return "\n".join(lines) + "\n"


def prepare_main(argv: list[str]) -> int:
    root, n, budget, dim, clusters, seed = Path(argv[0]), *(int(a) for a in argv[1:6])
    reuse = argv[6] == "1"
    marker = root / "prepared.json"
    key = {"n": n, "dim": dim, "clusters": clusters, "seed": seed}
    prepared = json.loads(marker.read_text()) if reuse and marker.is_file() else None
    if prepared is None or prepared.get("key") != key:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        prepared = {**prepare(root, n, budget, dim, clusters, seed), "key": key}
        marker.write_text(json.dumps(prepared, indent=1))
    print("BENCH_RESULT " + json.dumps({"prepared": prepared}))
    return 0


def select_main(argv: list[str]) -> int:
    root, budget, runs, profile = Path(argv[0]), int(argv[1]), int(argv[2]), argv[3] == "1"
    prepared = json.loads((root / "prepared.json").read_text())
    selection = run_selection(root, prepared, budget, runs, profile)
    print("BENCH_RESULT " + json.dumps({"selection": selection}, default=float))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        return prepare_main(argv[2:]) if argv[1] == "prepare" else select_main(argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000], help="candidate rows per day")
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--runs", type=int, default=2, help="timed selections of the date (the later ones replace)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true",
                        help="one more run under cProfile ({workdir}/select-n{N}.prof)")
    parser.add_argument("--reuse", action="store_true", help="reuse a prepared day of the same N, dim, clusters, seed")
    parser.add_argument("--keep-data", action="store_true", help="keep the prepared days")
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench-selection")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    results: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version(),
                     "load": os.getloadavg()[0], "budget": args.budget, "dim": args.dim, "clusters": args.clusters,
                     "sizes": []}
    for n in args.rows:
        root = workdir / f"n{n}"
        start = time.perf_counter()
        prepared = _child("prepare", str(root), str(n), str(args.budget), str(args.dim), str(args.clusters),
                          str(args.seed), "1" if args.reuse else "0")["prepared"]
        print(f"[n={n:,}] prepared in {time.perf_counter() - start:.0f} s: {prepared['pass']:,} pass, "
              f"{prepared['review']:,} review, {prepared['fail']:,} filtered", flush=True)
        selection = _child("select", str(root), str(args.budget), str(args.runs),
                           "1" if args.profile else "0")["selection"]
        results["sizes"].append({"n": n, "prepared": prepared, "selection": selection})
        for number, run in enumerate(selection["runs"], start=1):
            print(f"[n={n:,}] run {number}: {run['extra'].get('selected', 0)} selected in {run['seconds']:.2f} s, "
                  f"peak {run['peak_rss_mb']:,.0f} MB, vectors encoded {run['extra'].get('vectors_encoded')}",
                  flush=True)
        if "profile" in selection:
            print(f"[n={n:,}] profiled run: {selection['profile']['seconds']:.2f} s; top by cumulative time:\n"
                  + selection["profile"]["cumulative"], flush=True)
        if not args.keep_data:
            shutil.rmtree(root, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "selection_results.json").write_text(json.dumps(results, indent=2, default=float))
    (workdir / "selection_results.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
