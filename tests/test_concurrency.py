"""Concurrent writers of one date, in real processes: nothing lost, duplicated or half-read.

Two writers re-run the same date's normalize → dedup_exact → export in a loop, with settings that give different
results (a different minimum length), while a reader reads the date's history partition, its staged output and the
latest Delta version as fast as it can. Every observation must be one writer's complete result, every Delta
version's ledger must balance, and the last commit wins.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dctp_tasks.config import load_config
from dctp_tasks.dedup.exact import dedup_exact_day
from dctp_tasks.export import PARTITION, committed_ledger, open_table
from dctp_tasks.export.delta import commit_info
from dctp_tasks.ingest import ingest_day
from dctp_tasks.ledger import ledger_report
from dctp_tasks.normalize import normalize_day
from dctp_tasks.publish import versions
from dctp_tasks.storage import Storage, staging_dir
from tests.concurrency_procs import DAG, DT
from tests.conftest import REPO

pytestmark = pytest.mark.slow

MIN_CHARS = (60, 160)
ROUNDS = 6


def land(storage: Storage) -> None:
    """One day of web documents of many lengths, some of them exact copies."""
    rows = []
    for i in range(400):
        words = " ".join(f"word{(i * 7 + k) % 97}" for k in range(5 + i % 40))
        rows.append({"id": str(i), "text": f"Document {i % 350}: {words}."})  # ids 350+ repeat earlier texts' start
    for i in range(350, 400):
        rows[i]["text"] = rows[i - 350]["text"]
    body = "\n".join(json.dumps(r) for r in rows).encode()
    storage.write_bytes(storage.path("landing", "web", f"dt={DT}", "day.jsonl"), body)


def expected(tmp_path) -> dict:
    """Each writer's result, computed alone on its own copy of the day."""
    state, normalized = [], []
    for min_chars in MIN_CHARS:
        storage = Storage((tmp_path / f"alone-{min_chars}").as_uri())
        land(storage)
        config = load_config(overrides={"normalize.min_chars": min_chars, "normalize.workers": 1})
        ingest_day(storage, config, DAG, DT)
        normalized.append(normalize_day(storage, config, DAG, DT).kept)
        dedup_exact_day(storage, config, DAG, DT)
        state.append(storage.read_table(f"state/exact_hashes/dt={DT}").column("doc_id").to_pylist())
    assert normalized[0] != normalized[1] and len(state[0]) != len(state[1]), "the writers must disagree"
    return {"state": state, "normalized": normalized}


def test_two_writers_and_a_reader_of_one_date(tmp_path):
    storage = Storage((tmp_path / "shared").as_uri())
    land(storage)
    ingest_day(storage, load_config(), DAG, DT)
    want = expected(tmp_path)
    # Start from a complete state, so the reader has something to read from its first look.
    config = load_config(overrides={"normalize.min_chars": MIN_CHARS[0], "normalize.workers": 1})
    normalize_day(storage, config, DAG, DT)
    dedup_exact_day(storage, config, DAG, DT)
    stop = tmp_path / "stop"

    python = [sys.executable, "-m", "tests.concurrency_procs"]
    reader = subprocess.Popen([*python, "reader", storage.root, json.dumps(want), str(stop)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    meet = str(tmp_path / "barrier")
    writers = [subprocess.Popen([*python, "writer", storage.root, str(m), str(ROUNDS), meet], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in MIN_CHARS]
    try:
        results = []
        for proc in writers:
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stop.touch()
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-3000:]
    seen = json.loads(out.strip().splitlines()[-1])
    print(f"writers: {results}; reader: {seen}")

    assert seen["violation_count"] == 0, seen["violations"]
    assert seen["state_reads"] > 10 and seen["versions_seen"] > 1, "the reader must have read during the writes"
    # Every version either writer committed balances against its own ledger, and none lost or doubled a row.
    table = open_table(storage, "curated")
    data_versions = [c["version"] for c in map(lambda v: commit_info(storage, "datasets/curated", v),
                                                range(table.version() + 1)) if c.get("dctp.dt") == DT]
    assert len(data_versions) == 2 * ROUNDS, "every export committed exactly one version"
    for version in data_versions:
        ids = open_table(storage, "curated", version).to_pyarrow_dataset().to_table(
            columns=["doc_id", PARTITION]).column("doc_id").to_pylist()
        commit, rejects = committed_ledger(storage, "curated", DT, version)
        assert commit["version"] == version
        assert ledger_report(rejects, DT, int(commit["dctp.ingested"]), len(ids)).balanced, version
        assert sorted(ids) in [sorted(s) for s in want["state"]] and len(set(ids)) == len(ids)
    # The last commit wins, and it is the result of the writer that made it.
    last = commit_info(storage, "datasets/curated", data_versions[-1])
    winner = MIN_CHARS.index(int(last["dctp.run_id"].split("-")[1]))
    final = table.to_pyarrow_dataset().to_table(columns=["doc_id"]).column("doc_id").to_pylist()
    assert sorted(final) == sorted(want["state"][winner])
    # The losers of commit races retried and won later; superseded staged versions are still there to read.
    assert sum(sum(r["commit_attempts"]) for r in results) >= 2 * ROUNDS
    assert len(versions(storage, staging_dir(DAG, DT, "normalize"))) > 1
