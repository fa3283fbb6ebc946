"""Processes for the concurrency test: a writer that re-runs one date's stages and export in a loop, and a reader
that checks, as often as it can meanwhile, that everything it sees is one writer's complete result.

Run as ``python -m tests.concurrency_procs writer ROOT MIN_CHARS ROUNDS BARRIER`` or
``… reader ROOT EXPECTED_JSON STOP``; each prints one JSON line with what it did. Writers meet at a file barrier
before each export, so their commits race for the same table version.
"""

from __future__ import annotations

import json
import os
import sys
import time

DAG, DT = "dctp_daily", "2026-04-01"


def barrier(folder: str, name: str, me: str, parties: int = 2, timeout: float = 120.0) -> None:
    """Wait until ``parties`` processes have reached ``name``."""
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, f"{name}.{me}"), "w").close()
    deadline = time.monotonic() + timeout
    while sum(f.startswith(f"{name}.") for f in os.listdir(folder)) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {name}: the other writer never came")
        time.sleep(0.005)


def write(root: str, min_chars: int, rounds: int, meet: str) -> dict:
    """Re-run normalize → dedup_exact → export of ``DT`` ``rounds`` times, each run reading its own versions."""
    from dctp_tasks.config import load_config
    from dctp_tasks.dedup.exact import dedup_exact_day
    from dctp_tasks.export import Staged, export_day
    from dctp_tasks.normalize import normalize_day
    from dctp_tasks.storage import Storage

    storage = Storage(root)
    config = load_config(overrides={"normalize.min_chars": min_chars, "normalize.workers": 1,
                                    "tracking.enabled": False})
    attempts = []
    for i in range(rounds):
        normalized = normalize_day(storage, config, DAG, DT)
        deduped = dedup_exact_day(storage, config, DAG, DT, input_version=normalized.version)
        stages = [Staged(DAG, "ingest"), Staged(DAG, "normalize", normalized.version),
                  Staged(DAG, "dedup_exact", deduped.version)]
        barrier(meet, f"round-{i}", str(min_chars))
        exported = export_day(storage, config, DAG, DT, run_id=f"writer-{min_chars}-{i}", rows=stages[-1],
                              ledger=stages, ingested=normalized.total)
        attempts.append(exported.extra["commit_attempts"])
    return {"rounds": rounds, "commit_attempts": attempts}


def read(root: str, expected: dict, stop: str) -> dict:
    """Until the file ``stop`` exists, read the date's history, staged output and latest Delta version; return
    how many of each were seen and every observation that was not one writer's complete result."""
    from deltalake.exceptions import TableNotFoundError

    from dctp_tasks.export import PARTITION, committed_ledger, open_table
    from dctp_tasks.ledger import ledger_report
    from dctp_tasks.staging import stage_rows
    from dctp_tasks.storage import Storage, state_dir

    storage = Storage(root)
    valid_state = [sorted(ids) for ids in expected["state"]]
    valid_rows = set(expected["normalized"])
    seen = {"state": 0, "staged": 0, "versions": set()}
    bad: list[str] = []
    while not os.path.exists(stop):
        state = storage.read_table(state_dir("exact_hashes", DT), columns=["doc_id"]).column("doc_id").to_pylist()
        seen["state"] += 1
        if sorted(state) not in valid_state:
            bad.append(f"history state of {len(state)} rows is no writer's result")
        staged = storage.count_rows(stage_rows(storage, DAG, DT, "normalize"))
        seen["staged"] += 1
        if staged not in valid_rows:
            bad.append(f"staged normalize output of {staged} rows is no writer's result")
        try:
            table = open_table(storage, "curated")
        except TableNotFoundError:
            continue
        version = table.version()
        ids = table.to_pyarrow_dataset().to_table(columns=["doc_id", PARTITION]).column("doc_id").to_pylist()
        try:
            commit, rejects = committed_ledger(storage, "curated", DT, version)
        except FileNotFoundError:  # the table was just created, empty: no date committed yet
            if ids:
                bad.append(f"version {version} holds {len(ids)} rows but no commit of {DT}")
            continue
        report = ledger_report(rejects, DT, int(commit["dctp.ingested"]), len(ids))
        seen["versions"].add(version)
        if len(set(ids)) != len(ids):
            bad.append(f"version {version} exports a doc_id twice")
        if sorted(ids) not in valid_state:
            bad.append(f"version {version} holds {len(ids)} rows, no writer's result")
        if not report.balanced:
            bad.append(f"version {version}: {report.render()}")
        time.sleep(0.01)
    return {"state_reads": seen["state"], "staged_reads": seen["staged"], "versions_seen": len(seen["versions"]),
            "violations": bad[:20], "violation_count": len(bad)}


if __name__ == "__main__":
    role, root = sys.argv[1], sys.argv[2]
    if role == "writer":
        out = write(root, int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        out = read(root, json.loads(sys.argv[3]), sys.argv[4])
    print(json.dumps(out))
