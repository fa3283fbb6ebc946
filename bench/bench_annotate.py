"""Benchmark the feedback store's expert-facing calls (what the annotation app asks on every request) at scale.

Preparation (not timed) fills a fresh store through the real migrations and ``FeedbackStore.replace_batch`` (one
executemany per batch): ``--items`` queued documents in batches of ``--batch``, one batch a day up to yesterday,
≈``--text-chars`` characters of text each, every item assigned to two experts of a roster of ``--experts`` (round
robin, so each has the same load). Each expert has judged the oldest part of their queue already — the first expert
half of it, the others 10-90 % — through bulk-inserted judgements (≈2 % later corrected, ≈1 % retracted), so the
triggers set ``judged`` and undo has a real trail to walk. ANALYZE follows each step, as autovacuum would.

Timed, on the half-done first expert: ``--iterations`` rounds of ``next_item`` → ``submit`` (with a request id) →
``progress``, then as many ``retract_last`` (with a request id); also ``open_queue`` (a page of 50 at the head and
deep in the queue), ``open_count`` and ``batch_progress`` (the first page of 20). Then, for the second expert, the
same through the annotation app's routes: ``GET /api/next``, ``POST /api/judgements`` and the rendered queue page.
Per call and engine it prints the median and p95 in milliseconds and, last, one JSON line of the results.

Engines: SQLite (a file in a temporary folder, deleted after) and PostgreSQL (a database of its own created on
``--pg-dsn``'s server, dropped after).

    python bench/bench_annotate.py --items 100000 [--iterations 300] [--engines sqlite postgresql]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from dctp_tasks.config import AnnotationConfig, ExpertConfig
from dctp_tasks.feedback import db
from dctp_tasks.feedback.db import annotations, assignments
from dctp_tasks.feedback.store import FeedbackStore, NewItem

DAG_ID = "bench_annotate"
DOMAINS = ("science", "technology", "health", "finance", "travel", "sports")
SOURCES = ("web", "news", "forum", "wiki")
CHUNK = 10_000  # judgements per bulk insert
TARGET_MS = 50.0
TARGETED = ("next_item", "submit", "GET /api/next", "POST /api/judgements")
"""The calls with a target (median under ``TARGET_MS``); the others are reported for the app's pages."""
WORDS = ("the of and to in a is that for it as was with be by on not this are or from at which but have an they "
         "you were their one all we can has there been if more when will who so no other its may these about some "
         "what them than time into only could new people two first also after any like should data model river "
         "market health study city energy policy school music water light system report history local science "
         "travel season player result method answer number market").split()


def prepare(store: FeedbackStore, items: int, batch: int, text_chars: int, seed: int) -> dict:
    """Queue ``items`` documents in batches of ``batch``, one a day up to yesterday, and bulk-insert each expert's
    judgements of the oldest part of their queue; return counts and seconds."""
    rng = np.random.default_rng(seed)
    days = -(-items // batch)
    first_day = datetime.combine(date.today() - timedelta(days=days), datetime.min.time(), UTC)
    experts = sorted(store.roster)
    vocabulary = np.asarray(WORDS, dtype=object)
    words_per_text = text_chars // 5
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    for number, first in enumerate(range(0, items, batch)):
        dt = (first_day + timedelta(days=number)).date().isoformat()
        count = min(batch, items - first)
        texts = [" ".join(row)[:text_chars] for row in
                 vocabulary[rng.integers(0, len(vocabulary), size=(count, words_per_text))].tolist()]
        new_items = [NewItem(
            doc_id=f"{SOURCES[i % len(SOURCES)]}/{first + i:08d}", dt=dt, text=f"Document {first + i}. {text}",
            pool="kept", strategy=("uncertainty", "qbc", "random")[i % 3], stratum=DOMAINS[i % len(DOMAINS)],
            source=SOURCES[i % len(SOURCES)], domain=DOMAINS[i % len(DOMAINS)], lang="en",
            scores={"heuristics": {"quality": 0.5}}, quality=float(rng.random()), verdict="pass",
            strategy_score=float(rng.random()),
            experts=[experts[(first + i) % len(experts)], experts[(first + i + 1) % len(experts)]])
            for i, text in enumerate(texts)]
        store.replace_batch(dt=dt, dag_id=DAG_ID, run_id=f"bench__{dt}", budget=batch,
                            strategy_mix={"uncertainty": 0.5, "qbc": 0.3, "random": 0.2}, config_hash="bench",
                            mlflow_run_id=None, staged_version=None, new_items=new_items,
                            assigned_at=first_day + timedelta(days=number))
    seconds["queue (replace_batch)"] = time.perf_counter() - start
    _analyze(store.engine)  # as autovacuum would after so many rows (PostgreSQL plans the triggers' queries once)

    start = time.perf_counter()
    shares = dict(zip(experts, [0.5, *np.linspace(0.1, 0.9, len(experts) - 1).tolist()], strict=True))
    rows: list[dict] = []
    with store.engine.connect() as conn:
        for expert in experts:
            queue = conn.execute(sa.select(assignments.c.item_id, assignments.c.assigned_at)
                                 .where(assignments.c.expert == expert)
                                 .order_by(assignments.c.due_at, assignments.c.item_id)).all()
            done = queue[:round(len(queue) * shares[expert])]
            labels = rng.choice(["good", "bad", "skip"], p=[0.6, 0.35, 0.05], size=len(done)).tolist()
            hours = rng.uniform(1, 20, size=len(done)).tolist()  # judged within a day of assignment
            for (item_id, assigned_at), label, after in zip(done, labels, hours, strict=True):
                at = assigned_at.replace(tzinfo=UTC) + timedelta(hours=after)
                rows.append({"item_id": item_id, "expert": expert, "label": label, "created_at": at})
    order = np.argsort([r["created_at"] for r in rows], kind="stable")
    trail = []
    for index in order.tolist():
        row = rows[index]
        trail.append({**row, "category": None, "rationale": None, "retracts": None, "client": "bench",
                      "request_id": None})
        kind = rng.random()
        if kind < 0.02:  # a correction
            trail.append({**trail[-1], "label": "good" if row["label"] != "good" else "bad",
                          "created_at": row["created_at"] + timedelta(minutes=1)})
    annotation_ids = []
    for lo in range(0, len(trail), CHUNK):
        with store.engine.begin() as conn:
            annotation_ids += conn.execute(
                annotations.insert().returning(annotations.c.annotation_id, sort_by_parameter_order=True),
                trail[lo:lo + CHUNK]).scalars().all()
    retract = rng.random(len(trail)) < 0.01
    retractions = [{**trail[i], "label": None, "retracts": annotation_ids[i],
                    "created_at": trail[i]["created_at"] + timedelta(minutes=2)} for i in np.flatnonzero(retract)]
    with store.engine.begin() as conn:
        if retractions:
            conn.execute(annotations.insert(), retractions)
    seconds["judgements (bulk, triggers)"] = time.perf_counter() - start
    _analyze(store.engine)
    with store.engine.connect() as conn:
        judged = conn.execute(sa.select(sa.func.count()).select_from(assignments).where(
            assignments.c.judged == sa.true())).scalar_one()
    return {"items": items, "batches": -(-items // batch), "assignments": 2 * items, "judged": int(judged),
            "annotation_rows": len(trail) + len(retractions), "seconds": seconds}


def _analyze(engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


def _time(fn: Callable[[int], object], n: int) -> list[float]:
    """Call ``fn(i)`` for i in range(n); return the milliseconds of each call."""
    out = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def measure(store: FeedbackStore, iterations: int) -> dict[str, list[float]]:
    """Time the app's calls for the first expert; return milliseconds per call name."""
    expert = sorted(store.roster)[0]
    since = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    run = uuid.uuid4().hex[:8]
    times: dict[str, list[float]] = {"next_item": [], "submit": [], "progress": []}
    labels = ("good", "bad", "skip")
    for i in range(iterations):
        start = time.perf_counter()
        item = store.next_item(expert)
        times["next_item"].append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        store.submit(expert, item.item_id, labels[i % 3], client="bench", request_id=f"{run}-judge-{i}")
        times["submit"].append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        store.progress(expert, since)
        times["progress"].append((time.perf_counter() - start) * 1000)
    times["retract_last"] = _time(lambda i: store.retract_last(expert, client="bench", request_id=f"{run}-undo-{i}"),
                                  iterations)
    open_now = store.open_count(expert)
    times["open_queue (50, head)"] = _time(lambda i: store.open_queue(expert, limit=50), iterations)
    times["open_queue (50, deep)"] = _time(lambda i: store.open_queue(expert, limit=50, offset=open_now // 2),
                                           max(iterations // 10, 1))
    times["open_count"] = _time(lambda i: store.open_count(expert), iterations)
    times["batch_progress (20)"] = _time(lambda i: store.batch_progress(limit=20), max(iterations // 10, 1))
    return times


def measure_http(store: FeedbackStore, iterations: int) -> dict[str, list[float]]:
    """Time the same work through the app's routes (FastAPI's TestClient, in process): the JSON API's next item and
    judgement, and the queue page, rendered. Authentication is a stand-in naming the expert: Airflow's token check
    (a JWT signature and a revoked-token lookup) comes on top of these figures."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from dctp_tasks.annotate.app import Backend, create_app

    expert = sorted(store.roster)[1]
    server = FastAPI()
    server.mount("/dctp", create_app(Backend(lambda: store.engine, store.config), lambda: expert))
    run = uuid.uuid4().hex[:8]
    times: dict[str, list[float]] = {"GET /api/next": [], "POST /api/judgements": [], "GET / (queue page)": []}
    headers = {"Authorization": "Bearer stand-in"}
    with TestClient(server) as client:
        for i in range(iterations):
            start = time.perf_counter()
            item = client.get("/dctp/api/next", headers=headers).json()["item"]
            times["GET /api/next"].append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            response = client.post("/dctp/api/judgements", headers=headers, json={
                "item_id": item["item_id"], "label": "good", "request_id": f"{run}-http-{i}"})
            times["POST /api/judgements"].append((time.perf_counter() - start) * 1000)
            assert response.status_code == 201, response.text
            start = time.perf_counter()
            assert client.get("/dctp/", headers=headers).status_code == 200
            times["GET / (queue page)"].append((time.perf_counter() - start) * 1000)
    return times


def summarize(times: dict[str, list[float]]) -> dict[str, dict]:
    out = {}
    for name, values in times.items():
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, int(np.ceil(0.95 * len(ordered))) - 1)]
        out[name] = {"n": len(values), "median_ms": round(statistics.median(values), 3), "p95_ms": round(p95, 3),
                     "max_ms": round(ordered[-1], 3)}
        if name in TARGETED:
            out[name]["pass"] = out[name]["median_ms"] < TARGET_MS
    return out


def run_engine(engine_name: str, url: str, args: argparse.Namespace) -> dict:
    config = AnnotationConfig(experts={f"expert{k:02d}": ExpertConfig() for k in range(args.experts)})
    engine = db.create_feedback_engine(url)
    try:
        db.upgrade(engine)
        store = FeedbackStore(engine, config)
        start = time.perf_counter()
        prepared = prepare(store, args.items, args.batch, args.text_chars, args.seed)
        print(f"[{engine_name}] prepared {args.items:,} items in {time.perf_counter() - start:.0f} s: "
              f"{prepared['judged']:,} of {prepared['assignments']:,} assignments judged, "
              f"{prepared['annotation_rows']:,} audit rows", flush=True)
        calls = summarize(measure(store, args.iterations) | measure_http(store, args.iterations))
        server = ".".join(map(str, engine.dialect.server_version_info or ()))
    finally:
        engine.dispose()
    for name, stats in calls.items():
        target = f"  {'PASS' if stats['pass'] else 'FAIL'} < {TARGET_MS:.0f} ms" if "pass" in stats else ""
        print(f"[{engine_name}] {name:<24} median {stats['median_ms']:8.2f} ms   p95 {stats['p95_ms']:8.2f} ms   "
              f"(n={stats['n']}){target}", flush=True)
    return {"engine": engine_name, "server": server, "prepared": prepared, "calls": calls}


def _pg_database(dsn: str, create: bool, name: str | None = None) -> str:
    """Create a database of our own on ``dsn``'s server (return its SQLAlchemy URL) or drop database ``name``."""
    import psycopg2

    base = sa.engine.make_url(dsn)
    conn = psycopg2.connect(host=base.host, port=base.port or 5432, user=base.username, password=base.password,
                            dbname=base.database or "postgres", connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            if create:
                name = f"dctp_bench_annotate_{uuid.uuid4().hex[:12]}"
                cursor.execute(f'CREATE DATABASE "{name}"')
                return base.set(drivername="postgresql+psycopg2", database=name).render_as_string(
                    hide_password=False)
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
            return name
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=100_000, help="queued documents (two assignments each)")
    parser.add_argument("--batch", type=int, default=1_000, help="documents per batch (one batch per date)")
    parser.add_argument("--experts", type=int, default=10, help="experts on the roster")
    parser.add_argument("--text-chars", type=int, default=600, help="characters of text per queued document")
    parser.add_argument("--iterations", type=int, default=300, help="timed calls of next_item, submit, …")
    parser.add_argument("--engines", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"])
    parser.add_argument("--pg-dsn", default="postgresql://postgres@127.0.0.1:5432/test",
                        help="a PostgreSQL server to create (and drop) a database of its own on")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the SQLite file goes (default: a temporary folder); removed after")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.experts < 2:
        parser.error("--experts must be at least 2 (two experts per item)")
    results: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "python": platform.python_version(),
                     "sqlite": sqlite3.sqlite_version, "load": os.getloadavg()[0], "target_ms": TARGET_MS,
                     "items": args.items, "iterations": args.iterations, "runs": []}
    for engine_name in args.engines:
        if engine_name == "sqlite":
            folder = Path(tempfile.mkdtemp(prefix="dctp-bench-annotate-", dir=args.workdir))
            try:
                results["runs"].append(run_engine("sqlite", f"sqlite:///{folder / 'feedback.db'}", args))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        else:
            url = _pg_database(args.pg_dsn, create=True)
            try:
                results["runs"].append(run_engine("postgresql", url, args))
            finally:
                _pg_database(args.pg_dsn, create=False, name=sa.engine.make_url(url).database)
    failed = [f"{r['engine']} {name}" for r in results["runs"] for name, s in r["calls"].items()
              if s.get("pass") is False]
    results["pass"] = not failed
    print(json.dumps(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
