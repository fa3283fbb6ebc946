"""Export to Delta (one version per run, only its own ``dt`` replaced, commit metadata) and the ``dctp`` command."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from dctp_tasks.cli import main
from dctp_tasks.config import load_config
from dctp_tasks.export import METADATA_PREFIX, Staged, open_table
from dctp_tasks.export import export_day as export_stage
from dctp_tasks.records import CORE_SCHEMA, DEDUPED_SCHEMA, NORMALIZED_SCHEMA, content_hashes
from dctp_tasks.storage import Storage
from tests.conftest import make_table, publish_stage

CONFIG = load_config()


def stage(storage: Storage, dt: str, ids: list[str], extra_column: bool = False) -> None:
    texts = [f"document {i} with enough words to be a document" for i in ids]
    table = make_table(texts, doc_id=ids, dt=[dt] * len(ids), source=["web"] * len(ids),
                       domain=["science" if int(i.split("/")[1]) % 2 else "health" for i in ids])
    table = table.append_column("lang", pa.array(["en"] * len(ids))).append_column(
        "lang_score", pa.array([0.9] * len(ids), pa.float32()))
    table = table.append_column("content_hash", content_hashes(table.column("text")))
    schema = DEDUPED_SCHEMA
    if extra_column:  # a later stage added a column: the table's schema must merge it
        table = table.append_column("quality", pa.array([0.5] * len(ids)))
        schema = pa.schema(list(DEDUPED_SCHEMA) + [pa.field("quality", pa.float64())])
    publish_stage(storage, "dag", dt, "dedup_exact", table.cast(schema))
    assert NORMALIZED_SCHEMA.names[0] == "doc_id"


def quarantine(storage: Storage, dt: str, lines: int) -> None:
    """Publish an ingest stage of ``dt`` that quarantined ``lines`` malformed lines."""
    publish_stage(storage, "dag", dt, "ingest", CORE_SCHEMA.empty_table(),
                  [(f"web/quarantine:f.jsonl:{n}", "quarantined", "malformed_json") for n in range(1, lines + 1)])


def export_day(storage: Storage, config, dag_id: str, dt: str, *, run_id: str, metadata: dict | None = None):
    """Export the staged ``dedup_exact`` rows of ``dt``; the ledger is what ``ingest`` (if staged) dropped."""
    from dctp_tasks.export.ledger import ledger_for_run

    metadata = dict(metadata or {})
    ledger = [Staged(dag_id, stage) for stage in ("ingest", "dedup_exact")
              if storage.exists(f"staging/{dag_id}/dt={dt}/{stage}")]
    # by default the day's input is what was exported plus what was dropped: the ledger balances
    ingested = int(metadata.pop("ingested", storage.count_rows(f"staging/{dag_id}/dt={dt}/dedup_exact")
                                + ledger_for_run(storage, dt, ledger).num_rows))
    return export_stage(storage, config, dag_id, dt, run_id=run_id, rows=Staged(dag_id, "dedup_exact"),
                        ledger=ledger, ingested=ingested, metadata=metadata)


@pytest.fixture
def storage(tmp_path, monkeypatch):
    storage = Storage(tmp_path.as_uri())
    monkeypatch.setenv("DCTP_DATA_ROOT", storage.root)
    stage(storage, "2026-01-01", [f"web/{i}" for i in range(0, 40)])
    quarantine(storage, "2026-01-01", 5)
    export_day(storage, CONFIG, "dag", "2026-01-01", run_id="run-1", metadata={"mlflow_run_id": "m1", "ingested": 45})
    stage(storage, "2026-01-02", [f"web/{i}" for i in range(40, 70)], extra_column=True)
    export_day(storage, CONFIG, "dag", "2026-01-02", run_id="run-2", metadata={"mlflow_run_id": "m2", "ingested": 30})
    return storage


def test_each_export_is_one_version_with_run_metadata(storage):
    table = open_table(storage, "curated")
    assert table.version() == 2  # version 0 created the table, empty
    history = sorted(table.history(), key=lambda c: c["version"])
    assert [c.get(f"{METADATA_PREFIX}dt") for c in history] == [None, "2026-01-01", "2026-01-02"]
    assert history[0][f"{METADATA_PREFIX}operation"] == "create"
    assert open_table(storage, "curated", 0).to_pyarrow_dataset().count_rows() == 0
    first = history[1]
    assert first[f"{METADATA_PREFIX}run_id"] == "run-1"
    assert first[f"{METADATA_PREFIX}mlflow_run_id"] == "m1"
    assert first[f"{METADATA_PREFIX}exported"] == "40" and first[f"{METADATA_PREFIX}ingested"] == "45"
    assert first[f"{METADATA_PREFIX}config_hash"] == CONFIG.config_hash()
    assert first[f"{METADATA_PREFIX}code_version"]
    assert "quality" in table.schema().to_arrow().names  # merged from the second day's extra column


def test_reexport_replaces_only_its_own_date(storage):
    stage(storage, "2026-01-01", [f"web/{i}" for i in range(0, 10)])
    export_day(storage, CONFIG, "dag", "2026-01-01", run_id="run-1b")
    data = open_table(storage, "curated").to_pyarrow_dataset()
    assert data.count_rows(filter=ds.field("dt") == "2026-01-01") == 10
    assert data.count_rows(filter=ds.field("dt") == "2026-01-02") == 30
    # time travel: version 1 still holds the first export
    assert open_table(storage, "curated", 1).to_pyarrow_dataset().count_rows() == 40


def test_split_is_stable_across_versions(storage):
    v1 = open_table(storage, "curated", 2).to_pyarrow_dataset().to_table(filter=ds.field("dt") == "2026-01-01")
    stage(storage, "2026-01-01", [f"web/{i}" for i in range(0, 40)])
    export_day(storage, CONFIG, "dag", "2026-01-01", run_id="again")
    v2 = open_table(storage, "curated").to_pyarrow_dataset().to_table(filter=ds.field("dt") == "2026-01-01")
    assert dict(zip(v1["doc_id"].to_pylist(), v1["split"].to_pylist())) == \
        dict(zip(v2["doc_id"].to_pylist(), v2["split"].to_pylist()))
    assert set(v2["split"].to_pylist()) <= {"train", "validation", "test"}


def run_cli(capsys, *args: str) -> dict | list:
    assert main(["--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_versions(storage, capsys):
    rows = run_cli(capsys, "versions")
    assert [(r["version"], r["dt"], r["rows"], r["run_id"]) for r in rows] == [
        (0, None, None, None), (1, "2026-01-01", "40", "run-1"), (2, "2026-01-02", "30", "run-2")]


def test_cli_show(storage, capsys):
    out = run_cli(capsys, "show", "2")
    assert out["rows"] == 70
    assert out["by_dt"] == {"2026-01-01": 40, "2026-01-02": 30}
    assert sum(out["by_split"].values()) == 70
    assert out["by_source"] == {"web": 70}
    assert out["by_domain"] == {"health": 35, "science": 35}
    assert out["by_lang"] == {"en": 70}
    assert run_cli(capsys, "show", "1")["rows"] == 40


def test_cli_files_are_the_versions_parquet(storage, capsys):
    uris = run_cli(capsys, "files", "2")
    assert len(uris) == 2 and all(u.endswith(".parquet") for u in uris)
    total = sum(ds.dataset(u.removeprefix("file://"), format="parquet").count_rows() for u in uris)
    assert total == 70


def test_cli_diff(storage, capsys):
    stage(storage, "2026-01-01", [f"web/{i}" for i in [*range(5, 40), *range(100, 105)]])
    export_day(storage, CONFIG, "dag", "2026-01-01", run_id="run-3")
    out = run_cli(capsys, "diff", "2", "3", "--sample", "3")
    assert (out["added"], out["removed"], out["unchanged"]) == (5, 5, 65)
    assert out["added_sample"] == ["web/100", "web/101", "web/102"]
    assert out["removed_sample"] == ["web/0", "web/1", "web/2"]


def test_cli_ledger(storage, capsys):
    out = run_cli(capsys, "ledger", "2026-01-01")
    assert (out["ingested"], out["exported"], out["quarantined"], out["balanced"]) == (45, 40, 5, True)
    assert out["version"] == 1
    assert out["examples"]["quarantined.malformed_json"][0]["doc_id"] == "web/quarantine:f.jsonl:1"
    assert main(["ledger", "2026-01-01"]) == 0
    assert "[balanced]" in capsys.readouterr().out


def test_cli_ledger_is_the_one_each_version_balances_against(storage, capsys):
    stage(storage, "2026-01-01", [f"web/{i}" for i in range(0, 38)])
    quarantine(storage, "2026-01-01", 7)
    export_day(storage, CONFIG, "dag", "2026-01-01", run_id="run-1b", metadata={"ingested": 45})
    latest = run_cli(capsys, "ledger", "2026-01-01")
    assert (latest["version"], latest["exported"], latest["quarantined"], latest["balanced"]) == (3, 38, 7, True)
    first = run_cli(capsys, "ledger", "2026-01-01", "--version", "2")
    assert (first["version"], first["exported"], first["quarantined"], first["balanced"]) == (1, 40, 5, True)


def test_cli_console_script_reports_a_missing_table(tmp_path):
    exe = [sys.executable, "-m", "dctp_tasks.cli", "--root", (tmp_path / "empty").as_uri(), "versions"]
    result = subprocess.run(exe, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "no exported table" in result.stderr


def test_an_empty_day_commits_a_version_that_empties_only_its_date(storage):
    publish_stage(storage, "dag", "2026-01-01", "dedup_exact", DEDUPED_SCHEMA.empty_table())  # no survivors
    quarantine(storage, "2026-01-01", 0)
    result = export_day(storage, CONFIG, "dag", "2026-01-01", run_id="empty")
    assert (result.kept, result.extra["table_version"], result.extra["files"]) == (0, 3, 0)
    data = open_table(storage, "curated").to_pyarrow_dataset()
    assert data.count_rows(filter=ds.field("dt") == "2026-01-01") == 0
    assert data.count_rows(filter=ds.field("dt") == "2026-01-02") == 30


def test_files_hold_no_partition_column_and_the_log_counts_rows(storage):
    table = open_table(storage, "curated")
    actions = table.get_add_actions(flatten=True)
    assert sorted(pa.table(actions).column("num_records").to_pylist()) == [30, 40]
    for uri in table.file_uris():
        assert "dt" not in ds.dataset(uri.removeprefix("file://"), format="parquet").schema.names
        assert "/dt=" in uri


def test_a_table_partitioned_otherwise_is_refused(tmp_path):
    from deltalake import write_deltalake

    storage = Storage(tmp_path.as_uri())
    write_deltalake(storage.uri("datasets", "curated"), pa.table({"doc_id": ["a"], "source": ["x"]}),
                    partition_by=["source"])
    stage(storage, "2026-01-01", ["web/1"])
    with pytest.raises(ValueError, match=r"partitioned by \['source'\]"):
        export_day(storage, CONFIG, "dag", "2026-01-01", run_id="r")


def test_cli_ledger_of_a_date_never_exported_says_so(storage, capsys):
    quarantine(storage, "2026-02-01", 1)
    assert main(["ledger", "2026-02-01", "--dag-id", "dag"]) == 0
    out = capsys.readouterr().out
    assert "no export of dt=2026-02-01 yet" in out and "quarantined 1" in out


def test_an_export_whose_ledger_does_not_balance_commits_nothing(storage):
    from dctp_tasks.ledger import LedgerImbalance

    before = open_table(storage, "curated").version()
    with pytest.raises(LedgerImbalance, match="ingested 999"):
        export_day(storage, CONFIG, "dag", "2026-01-01", run_id="bad", metadata={"ingested": 999})
    assert open_table(storage, "curated").version() == before


def test_a_re_decision_never_overwrites_a_newer_export_of_its_date(storage):
    from dctp_tasks.export import StaleCommit, latest_commit

    started_from = latest_commit(storage, "curated", "2026-01-01")[f"{METADATA_PREFIX}commit_token"]
    export_day(storage, CONFIG, "dag", "2026-01-01", run_id="rerun", metadata={"ingested": 45})  # a daily re-run
    newest = open_table(storage, "curated").version()
    rows = Staged("dag", "dedup_exact")

    with pytest.raises(StaleCommit, match="exported again"):
        export_stage(storage, CONFIG, "rescore", "2026-01-01", run_id="late-rescore", rows=rows, ledger=[rows],
                     ingested=45, amend=started_from)
    assert open_table(storage, "curated").version() == newest
    latest = latest_commit(storage, "curated", "2026-01-01")
    result = export_stage(storage, CONFIG, "rescore", "2026-01-01", run_id="rescore", rows=rows, ledger=[rows],
                          ingested=45, amend=latest[f"{METADATA_PREFIX}commit_token"])
    assert result.extra["table_version"] == newest + 1
