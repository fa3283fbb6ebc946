"""Benchmark sharded stages on 1, 2 and 4 local workers: how much shorter a day gets when its shards spread out.

One day of N ≈1 KB documents is generated (as ``bench_spine.py`` does), ingested and staged once (not timed).
Then, for each worker count W, the CPU stages that shard — ``normalize``, ``dedup_near`` (sign, then search)
and ``score`` (heuristics, language, PII, credibility) — run as the DAG runs them: the plan here, each phase's
shards on a pool of W worker processes, then the reduce here. Like a Celery worker running an Airflow task, each
shard runs in a fresh process (it imports the library and loads its models) on one core (``normalize.workers``
and ``dedup_near.workers`` are 1, BLAS threads 1), and a worker takes the next shard as soon as it is free.

Every W runs the same plan (``--shards`` shards per stage, the same for every W), and the stages' results (kept
and dropped counts) must be identical for every W, or the benchmark fails.

    python bench/bench_shards.py [--docs 1000000] [--workers 1 2 4] [--shards 8] [--workdir .bench-shards]

Output: ``{workdir}/shards_results.md`` and ``shards_results.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from bench_spine import DAG_ID, DT, SOURCE, _fmt, _reset_peak, _vm_hwm_mb, generate_landing  # noqa: E402

#: The sharded CPU stages, in pipeline order: (stage, ``module:NAME`` of its ``ShardedStage``, plan arguments,
#: plan keyword arguments).
STAGES = [
    ("normalize", "dctp_tasks.normalize:NORMALIZE", (), {}),
    ("dedup_near", "dctp_tasks.dedup.near:NEAR", (), {}),
    ("score", "dctp_tasks.quality.scoring:SCORE", ("cpu",), {"input_stage": "dedup_near"}),
]
ONE_CORE = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def overrides(shards: int, batch_size: int | None) -> dict:
    """Every sharded stage in ``shards`` shards, each worker on one core."""
    return {"ingest.include_sources": [SOURCE], "normalize.workers": 1, "dedup_near.workers": 1,
            "sharding.max_shards": shards, "sharding.shards": {stage: shards for stage, *_ in STAGES},
            **({"batch_size": batch_size} if batch_size else {})}


def bench_config(settings: dict):
    """The pipeline's default settings with ``settings`` over them, PostgreSQL sources off."""
    from dctp_tasks.config import load_config

    config = load_config(overrides=settings)
    for source in config.ingest.sources.values():
        if source.postgres is not None:
            source.enabled = False
    return config


def _stage(ref: str):
    import importlib

    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def run_shard(root: str, settings: dict, ref: str, phase: str, shard: dict) -> dict:
    """One mapped task: run ``phase`` of ``shard`` in this (fresh) process; return its timings."""
    started = time.perf_counter()
    from dctp_tasks.shards import Shard
    from dctp_tasks.storage import Storage

    stage, config, storage = _stage(ref), bench_config(settings), Storage(root)
    imported = time.perf_counter()
    stage.phases[phase](storage, config, Shard.from_dict(shard))
    done = time.perf_counter()
    return {"startup_s": imported - started, "work_s": done - imported, "peak_rss_mb": _vm_hwm_mb()}


def run_stage(root: str, settings: dict, workers: int, stage_name: str, ref: str, args: tuple, kwargs: dict) -> dict:
    """Plan here, run each phase's shards on ``workers`` fresh processes, reduce here; return timings and counts."""
    from dctp_tasks.storage import Storage

    stage, config, storage = _stage(ref), bench_config(settings), Storage(root)
    t0 = time.perf_counter()
    planned = stage.plan(storage, config, DAG_ID, DT, *args, **kwargs)
    timing = {"plan_s": time.perf_counter() - t0, "phases": {}}
    context = multiprocessing.get_context("spawn")
    for phase in stage.phases:
        t1 = time.perf_counter()
        # max_tasks_per_child=1: each shard in a new process, as each Airflow task instance is.
        with ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1) as pool:
            runs = list(pool.map(run_shard, *zip(*[(root, settings, ref, phase, s.as_dict()) for s in planned],
                                                 strict=True)))
        peaks = [r["peak_rss_mb"] for r in runs if r["peak_rss_mb"] is not None]
        timing["phases"][phase] = {"seconds": time.perf_counter() - t1, "startup_s": sum(r["startup_s"] for r in runs),
                                   "work_s": sum(r["work_s"] for r in runs), "peak_rss_mb": max(peaks, default=None)}
    resettable = _reset_peak()
    t2 = time.perf_counter()
    result = stage.finish(storage, config, planned)
    timing["reduce_s"] = time.perf_counter() - t2
    timing["reduce_peak_rss_mb"] = _vm_hwm_mb() if resettable else None
    timing["seconds"] = time.perf_counter() - t0
    return {"stage": stage_name, "shards": len(planned), **timing, "input_rows": result.total, "kept": result.kept,
            "dropped": dict(sorted(result.dropped_by_reason.items()))}


def prepare(root: Path, docs: int, seed: int, settings: dict) -> dict:
    """Write the landing zone and ingest it (not timed)."""
    from dctp_tasks.ingest import ingest_day
    from dctp_tasks.storage import Storage

    landing = generate_landing(root, docs, seed, rows_per_file=50_000)
    ingested = ingest_day(Storage(root.as_uri()), bench_config(settings), DAG_ID, DT)
    return {"landing": landing, "ingested": ingested.total}


def run_day(root: Path, settings: dict, workers: int, *, first: bool) -> list[dict]:
    """Run the sharded stages in order on ``workers`` workers. On the ``first`` day exact dedup (one task, not
    timed) runs between normalize and near dedup, which reads it; later days reuse its output."""
    from dctp_tasks.dedup.exact import dedup_exact_day
    from dctp_tasks.storage import Storage, staging_dir

    out = []
    for spec in STAGES:
        # Drop the stage's earlier output (not timed): score would reuse the stored scores of an unchanged input.
        shutil.rmtree(root / staging_dir(DAG_ID, DT, spec[0]), ignore_errors=True)
        out.append(run_stage(root.as_uri(), settings, workers, *spec))
        if out[-1]["shards"] != settings["sharding.max_shards"]:
            raise SystemExit(f"{spec[0]} planned {out[-1]['shards']} shards, not {settings['sharding.max_shards']}: "
                             "the day has fewer batches (pass a smaller --batch-size)")
        if spec[0] == "normalize" and first:
            dedup_exact_day(Storage(root.as_uri()), bench_config(settings), DAG_ID, DT)
    return out


def render(result: dict) -> str:
    meta, runs = result["meta"], result["runs"]
    base = {r["stage"]: r["seconds"] for r in runs[0]["stages"]}
    base_total = runs[0]["seconds"]
    lines = [f"Sharded CPU stages on {result['docs']:,} documents, {result['shards']} shards per stage; "
             f"{meta['machine']}; Python {meta['python']}; load average before {meta['load_before']}; "
             f"{meta['finished']}", "",
             "| workers | " + " | ".join(f"{name} s" for name, *_ in STAGES) + " | total s | docs/s | speed-up "
             "| expected (Amdahl) | shards' import + config s (sum) |",
             "|---:|" + "---:|" * (len(STAGES) + 5)]
    # Amdahl: plan and reduce run once, in one process; the shards' work spreads over min(workers, cores).
    serial = sum(r["plan_s"] + r["reduce_s"] for r in runs[0]["stages"])
    base_cores = min(runs[0]["workers"], meta["cores"])
    for run in runs:
        w = run["workers"]
        cells = [f"{s['seconds']:,.1f}" for s in run["stages"]]
        startup = sum(p["startup_s"] for s in run["stages"] for p in s["phases"].values())
        expected = base_total / (serial + (base_total - serial) * base_cores / min(w, meta["cores"]))
        speed = base_total / run["seconds"]
        lines.append(f"| {w} | " + " | ".join(cells) + f" | {run['seconds']:,.1f} "
                     f"| {result['docs'] / run['seconds']:,.0f} | {speed:.2f}× | {expected:.2f}× | {startup:,.1f} |")
    lines += ["", f"Per stage on {runs[0]['workers']} worker(s): plan / phases / reduce seconds; peak RSS of the "
              "largest shard and of the reduce:"]
    for s in runs[0]["stages"]:
        phases = ", ".join(f"{name} {p['seconds']:,.1f} (work {p['work_s']:,.1f}, startup {p['startup_s']:,.1f}, "
                           f"peak RSS {_fmt(p['peak_rss_mb'], ' MB')})" for name, p in s["phases"].items())
        lines.append(f"- {s['stage']}: plan {s['plan_s']:,.1f}, {phases}, reduce {s['reduce_s']:,.1f} "
                     f"(peak RSS {_fmt(s['reduce_peak_rss_mb'], ' MB')}); {s['input_rows']:,} in, {s['kept']:,} kept")
    lines += ["", "Speed-up per stage: " + "; ".join(
        f"{r['workers']} workers " + ", ".join(f"{s['stage']} {base[s['stage']] / s['seconds']:.2f}×"
                                                for s in r["stages"]) for r in runs[1:])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--shards", type=int, default=8, help="shards per stage, the same for every worker count")
    parser.add_argument("--batch-size", type=int, help="override batch_size (shards cut between batches)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench-shards")
    parser.add_argument("--keep-data", action="store_true")
    args = parser.parse_args(argv)
    if args.shards < 1 or min(args.workers) < 1:
        parser.error("--shards and --workers must be at least 1")
    os.environ.update(ONE_CORE)  # inherited by every worker process
    workdir = args.workdir.resolve()
    root = workdir / "data"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    settings = overrides(args.shards, args.batch_size)
    prepared = prepare(root, args.docs, args.seed, settings)
    print(f"prepared {args.docs:,} documents in {time.perf_counter() - t0:,.0f}s", flush=True)

    meta = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or 'cpu'}",
            "cores": os.cpu_count() or 1, "python": platform.python_version(),
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    runs = []
    for workers in sorted(set(args.workers)):
        stages = run_day(root, settings, workers, first=not runs)
        runs.append({"workers": workers, "seconds": sum(s["seconds"] for s in stages), "stages": stages})
        print(f"[{workers} workers] " + ", ".join(f"{s['stage']} {s['seconds']:.1f}s" for s in stages)
              + f"; total {runs[-1]['seconds']:.1f}s", flush=True)
    counts = {(r["workers"], s["stage"]): (s["input_rows"], s["kept"], s["dropped"]) for r in runs
              for s in r["stages"]}
    for stage_name, *_ in STAGES:
        seen = [counts[(r["workers"], stage_name)] for r in runs]
        if any(c != seen[0] for c in seen):
            raise SystemExit(f"{stage_name}: results differ across worker counts: {seen}")
    meta["finished"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    result = {"docs": args.docs, "shards": args.shards, "prepared": prepared, "meta": meta, "runs": runs}
    (workdir / "shards_results.json").write_text(json.dumps(result, indent=2))
    report = render(result)
    (workdir / "shards_results.md").write_text(report)
    print(report)
    if not args.keep_data:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
