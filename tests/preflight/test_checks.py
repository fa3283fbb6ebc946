"""The preflight checks on real storage and real Delta tables: the protocol check against tables that declare what
this deltalake cannot read or write, the version table against the pins, and transient faults retried."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from dctp_tasks.preflight import Check, PreflightFailed, raise_on_failure, render
from dctp_tasks.preflight import versions as preflight_versions
from dctp_tasks.preflight.checks import check_data_root, retrying
from dctp_tasks.preflight.delta import WRITABLE_DELTA_FEATURES, check_delta
from dctp_tasks.preflight.versions import SUPPORTED_AIRFLOW, TESTED_PACKAGES, check_airflow_versions
from dctp_tasks.storage import Storage
from tests.conftest import REPO

#: Delta table features a table may declare (the protocol's names), known to delta-rs or not.
CANDIDATE_FEATURES = ["appendOnly", "invariants", "checkConstraints", "changeDataFeed", "generatedColumns",
                      "columnMapping", "identityColumns", "deletionVectors", "rowTracking", "timestampNtz",
                      "domainMetadata", "v2Checkpoint", "icebergCompatV1", "variantType", "variantType-preview",
                      "typeWidening", "vacuumProtocolCheck", "inCommitTimestamp", "clustering", "dctpFutureFeature"]
READER_FEATURES = {"columnMapping", "deletionVectors", "timestampNtz", "v2Checkpoint", "variantType",
                   "variantType-preview", "typeWidening", "vacuumProtocolCheck"}


def declare(table_dir: Path, writer: list[str], reader: list[str] | None = None, writer_version: int = 7) -> None:
    """Commit a protocol upgrade declaring ``writer`` (and ``reader``) features, as another Delta writer would."""
    protocol = {"minReaderVersion": 3 if reader else 1, "minWriterVersion": writer_version, "writerFeatures": writer}
    if reader:
        protocol["readerFeatures"] = reader
    version = DeltaTable(str(table_dir)).version() + 1
    (table_dir / "_delta_log" / f"{version:020d}.json").write_text(
        json.dumps({"protocol": protocol}) + "\n" + json.dumps({"commitInfo": {"timestamp": 1}}) + "\n")


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage((tmp_path / "data").as_uri())


def make_table(storage: Storage) -> Path:
    table_dir = Path(storage.root.removeprefix("file://")) / "datasets" / "curated"
    write_deltalake(str(table_dir), pa.table({"doc_id": ["a"], "dt": ["2026-01-01"]}))
    return table_dir


def test_no_table_yet_is_fine(storage):
    check = check_delta(storage, "curated")
    assert check.status == "ok" and "does not exist yet" in check.detail


def test_a_table_this_deltalake_reads_and_writes(storage):
    make_table(storage)
    check = check_delta(storage, "curated")
    assert check.status == "ok" and "version 0" in check.detail and "reader 1 / writer 2" in check.detail


def test_a_reader_feature_this_deltalake_lacks_fails_with_the_upgrade(storage):
    declare(make_table(storage), writer=["dctpFutureFeature"], reader=["dctpFutureFeature"])
    check = check_delta(storage, "curated")
    assert check.status == "fail" and "cannot read datasets/curated" in check.detail
    assert "dctpFutureFeature" in check.detail and "upgrade deltalake" in check.fix


@pytest.mark.parametrize("feature", ["rowTracking", "dctpFutureFeature"])
def test_a_writer_feature_this_deltalake_cannot_commit_with_fails(storage, feature):
    declare(make_table(storage), writer=[feature])
    check = check_delta(storage, "curated")
    assert check.status == "fail" and "is readable, but deltalake" in check.detail and feature in check.detail


@pytest.mark.parametrize(("writer_version", "status"), [(5, "ok"), (6, "fail")])
def test_a_legacy_writer_version_implies_its_features(storage, writer_version, status):
    # writer version 6 means identity columns, which deltalake 1.6 cannot write; 5 (column mapping) it can
    table_dir = make_table(storage)
    (table_dir / "_delta_log" / f"{1:020d}.json").write_text(
        json.dumps({"protocol": {"minReaderVersion": 1, "minWriterVersion": writer_version}}) + "\n"
        + json.dumps({"commitInfo": {"timestamp": 1}}) + "\n")
    check = check_delta(storage, "curated")
    assert check.status == status, check
    if status == "fail":
        assert check.detail.endswith("cannot commit to it: identityColumns")


def test_writable_features_are_what_the_installed_deltalake_commits_with(tmp_path):
    # re-probe: append to a table declaring each feature; a deltalake upgrade that changes support shows up here
    writable = set()
    for feature in CANDIDATE_FEATURES:
        table_dir = tmp_path / feature
        write_deltalake(str(table_dir), pa.table({"a": [1]}))
        declare(table_dir, writer=[feature], reader=[feature] if feature in READER_FEATURES else None)
        try:
            write_deltalake(str(table_dir), pa.table({"a": [2]}), mode="append")
        except Exception as exc:
            assert "Unsupported table features" in str(exc), exc
            continue
        writable.add(feature)
        shutil.rmtree(table_dir)
    assert writable == WRITABLE_DELTA_FEATURES


def test_the_tested_versions_are_the_pinned_ones():
    pins = dict(line.split("==", 1) for line in (REPO / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert {package: pins[package] for package in TESTED_PACKAGES} == TESTED_PACKAGES
    assert pins["apache-airflow"] in preflight_versions.TESTED_AIRFLOW


@pytest.mark.parametrize(("version", "status"), [("2.10.5", "fail"), ("3.0.6", "fail"), ("3.1.8", "ok"),
                                                 ("3.2.2", "ok"), ("3.4.0", "fail")])
def test_airflow_versions_outside_the_supported_range_fail(monkeypatch, version, status):
    real = preflight_versions.installed
    monkeypatch.setattr(preflight_versions, "installed",
                        lambda p: version if p in {"apache-airflow-core", "apache-airflow"} else real(p))
    check = check_airflow_versions(None)[0]
    assert check.status == status, check
    if status == "fail":
        assert SUPPORTED_AIRFLOW in check.detail and "3.1.8" in check.fix


def test_a_missing_provider_fails_with_the_pip_command(monkeypatch):
    real = preflight_versions.installed
    monkeypatch.setattr(preflight_versions, "installed",
                        lambda p: None if p == "apache-airflow-providers-standard" else real(p))
    [check] = [c for c in check_airflow_versions(None) if c.name == "provider standard"]
    assert check.status == "fail" and check.fix == "pip install apache-airflow-providers-standard==1.21.0"


def test_the_data_root_probe_leaves_nothing_behind(storage):
    check = check_data_root(storage)
    assert check.status == "ok"
    assert storage.list_files("state", "preflight") == []


def test_transient_faults_are_retried_and_others_are_not():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert retrying(flaky, pause=0.01) == "ok" and len(calls) == 3
    calls.clear()

    def broken():
        calls.append(1)
        raise ValueError("bad setting")

    with pytest.raises(ValueError):
        retrying(broken, pause=0.01)
    assert len(calls) == 1


def test_failures_raise_with_every_failed_line_and_fix():
    checks = [Check("config", "ok", "fine"), Check("pool gpu", "fail", "missing", "airflow pools set gpu 1 x"),
              Check("mlflow", "warn", "slow", "look"), Check("model SmolLM2", "fail", "not prepared", "prepare it")]
    with pytest.raises(PreflightFailed) as raised:
        raise_on_failure(checks)
    message = str(raised.value)
    assert message.startswith("2 preflight check(s) failed")
    assert "airflow pools set gpu 1 x" in message and "prepare it" in message and "fine" not in message
    assert render(checks).splitlines()[-1] == "preflight FAILED: 1 ok, 1 warn, 2 fail"
    raise_on_failure(checks[:1] + checks[2:3])  # warnings do not fail a run


def test_an_mlflow_store_in_postgresql_is_pinged_with_its_password_masked(pg_dsn):
    from dctp_tasks.config import TrackingConfig
    from dctp_tasks.preflight.checks import check_mlflow

    check = check_mlflow(TrackingConfig(tracking_uri=pg_dsn))
    assert check.status == "ok" and check.detail == f"{pg_dsn} answers"
    host = pg_dsn.split("@", 1)[1]
    check = check_mlflow(TrackingConfig(tracking_uri=f"postgresql://nobody:s3cret@{host}"))
    assert check.status == "fail" and "unreachable" in check.detail
    assert "s3cret" not in check.line() and "nobody:***@" in check.detail


def test_a_local_model_folder_is_read_as_a_folder(tmp_path, monkeypatch):
    from dctp_tasks.preflight.models import _named_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "minilm").mkdir(parents=True)
    check = _named_model("model models/minilm", "models/minilm", "dedup_semantic", offline=True)
    assert check.status == "fail" and "lacks config.json or weights" in check.detail
    (tmp_path / "models" / "minilm" / "config.json").write_text("{}")
    (tmp_path / "models" / "minilm" / "model.safetensors").write_bytes(b"")
    assert _named_model("model models/minilm", "models/minilm", "dedup_semantic", offline=True).status == "ok"


def test_the_feedback_store_check_on_postgresql_and_sqlite(pg_database, tmp_path, monkeypatch):
    from dctp_tasks.config import load_config
    from dctp_tasks.feedback import db
    from dctp_tasks.preflight.checks import check_feedback

    roster = load_config(overrides={"annotation.experts": {"alice": {}}})
    [new] = check_feedback(roster, pg_database)
    assert new.status == "ok" and f"schema version 0 (feedback_db applies migrations up to {db.LATEST})" in new.detail
    engine = db.create_feedback_engine(db.connection_url(pg_database))
    db.upgrade(engine)
    [current] = check_feedback(roster, pg_database)
    assert current.status == "ok" and current.detail.endswith(f"schema version {db.LATEST}")
    with engine.begin() as conn:  # a store migrated by a newer dctp
        conn.exec_driver_sql(f"INSERT INTO {db.MIGRATIONS_TABLE} VALUES ({db.LATEST + 1}, 'future', now(), 'x')")
    engine.dispose()
    [newer] = check_feedback(roster, pg_database)
    assert newer.status == "fail" and "upgrade dctp" in newer.fix

    [down] = check_feedback(roster, "postgresql://nobody@127.0.0.1:1/nowhere")
    assert down.status == "fail" and "cannot reach" in down.detail and "dctp_feedback" in down.fix

    monkeypatch.setenv("DCTP_FEEDBACK_URL", f"sqlite:///{tmp_path}/feedback.db")
    store, empty_roster = check_feedback(load_config(), None)
    assert store.status == "ok" and "feedback.db" in store.detail
    assert empty_roster.status == "warn" and "annotation.experts" in empty_roster.fix
    [off] = check_feedback(load_config(overrides={"annotation.budget": 0}), None)
    assert off.status == "skip"
