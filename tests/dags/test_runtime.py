"""The Airflow glue's failure handling, with real errors: what fails at once, what is retried, who is told."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pyarrow as pa
import pytest
from airflow.sdk.exceptions import AirflowFailException

from dctp_common.runtime import is_permanent, on_failure, permanent_errors
from dctp_tasks.config import check_run_overrides, load_config
from dctp_tasks.ledger import REJECT_SCHEMA, LedgerImbalance, check_ledger, ledger_report
from dctp_tasks.storage import S3Options, Storage


def raised(call) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("expected an error")


def test_a_missing_bucket_fails_at_once(moto_server):
    storage = Storage("s3://no-such-bucket/data", S3Options(endpoint_url=moto_server, access_key="testing",
                                                            secret_key="testing"))
    exc = raised(lambda: storage.write_bytes(storage.path("x.txt"), b"x"))
    assert isinstance(exc, OSError) and is_permanent(exc), exc
    with pytest.raises(AirflowFailException, match="bucket"):
        with permanent_errors():
            storage.write_bytes(storage.path("x.txt"), b"x")


def test_an_unreachable_endpoint_is_retried():
    storage = Storage("s3://bucket/data", S3Options(endpoint_url="http://127.0.0.1:9", access_key="testing",
                                                    secret_key="testing"))
    exc = raised(lambda: storage.list_files("landing"))
    assert isinstance(exc, OSError) and not is_permanent(exc), exc
    with pytest.raises(OSError):  # propagates unchanged: Airflow retries it with backoff
        with permanent_errors():
            storage.list_files("landing")


@pytest.mark.parametrize("call", [
    pytest.param(lambda: load_config(overrides={"batch_size": -1}), id="invalid_config"),
    pytest.param(lambda: pa.table({"a": ["x"]}).cast(pa.schema([("a", pa.int64())])), id="schema_mismatch"),
    pytest.param(lambda: check_ledger(ledger_report(REJECT_SCHEMA.empty_table(), "2026-01-01", 5, 3)),
                 id="unbalanced_ledger"),
    pytest.param(lambda: pa.table({"a": [1]}).column("scores"), id="missing_column"),
    pytest.param(lambda: {}["scores"], id="key_error"),
    pytest.param(lambda: None.field("x"), id="attribute_error"),
    pytest.param(lambda: Storage("file:///tmp/dctp-root").path("..", "etc"), id="path_outside_root"),
    pytest.param(lambda: check_run_overrides({"tracking.tracking_uri": "http://evil"}), id="refused_override"),
    pytest.param(lambda: load_config(overrides={"quality.thresholds": {"nope.rule": 1}}), id="unknown_rule"),
])
def test_errors_a_retry_cannot_fix_fail_at_once(call):
    exc = raised(call)
    assert is_permanent(exc), exc
    with pytest.raises(AirflowFailException, match=type(exc).__name__):
        with permanent_errors():
            call()


def test_transient_errors_propagate_unchanged():
    assert not is_permanent(ConnectionResetError("reset by peer"))
    assert not is_permanent(TimeoutError("read timed out"))
    assert not is_permanent(OSError("AWS Error NETWORK_CONNECTION during GetObject operation"))
    assert is_permanent(FileNotFoundError("no such staged output"))
    assert is_permanent(LedgerImbalance("rows went missing"))
    assert is_permanent(RuntimeError("an unexpected state"))


def test_a_lost_delta_commit_race_is_retried(tmp_path):
    from deltalake import DeltaTable, write_deltalake

    write_deltalake(str(tmp_path), pa.table({"x": [1], "dt": ["a"]}), partition_by=["dt"])
    first, second = DeltaTable(str(tmp_path)), DeltaTable(str(tmp_path))
    write_deltalake(first, pa.table({"x": [2], "dt": ["a"]}), mode="overwrite", predicate="dt = 'a'")
    exc = raised(lambda: write_deltalake(second, pa.table({"x": [3], "dt": ["a"]}), mode="overwrite",
                                         predicate="dt = 'a'"))
    assert type(exc).__name__ == "CommitFailedError" and not is_permanent(exc)


def test_a_restarting_database_is_retried(pg_dsn):
    import psycopg2

    exc = raised(lambda: psycopg2.connect(pg_dsn.replace("127.0.0.1:5432", "127.0.0.1:9"), connect_timeout=2))
    assert isinstance(exc, psycopg2.OperationalError) and not is_permanent(exc)


def test_airflow_signals_pass_through_untouched():
    from airflow.sdk.exceptions import AirflowRescheduleException, AirflowSkipException

    for signal in (AirflowSkipException("nothing to do"), AirflowRescheduleException(reschedule_date=None)):
        with pytest.raises(type(signal)):
            with permanent_errors():
                raise signal


def test_failure_callback_logs_one_line_and_calls_the_configured_notifier(tmp_path, monkeypatch, caplog):
    out = tmp_path / "notified.txt"
    monkeypatch.setenv("DCTP_FAILURE_NOTIFIER", "tests.dags.notifier_for_tests:FileNotifier")
    monkeypatch.setenv("DCTP_FAILURE_NOTIFIER_KWARGS", f'{{"path": "{out}"}}')
    ti = SimpleNamespace(dag_id="dctp_daily", task_id="normalize", run_id="scheduled__1", try_number=3,
                         xcom_pull=lambda task_ids: None)
    exc = raised(lambda: load_config(overrides={"batch_size": -1}))
    with caplog.at_level(logging.ERROR):
        on_failure({"ti": ti, "task_instance": ti, "exception": exc, "params": {}})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("DCTP task failed")]
    assert len(lines) == 1 and "dctp_daily.normalize run=scheduled__1 try=3: ValidationError" in lines[0]
    assert out.read_text() == f"dctp_daily.normalize try 3: ValidationError: {exc}\n"


def test_a_broken_notifier_never_hides_the_failure(monkeypatch, caplog):
    monkeypatch.setenv("DCTP_FAILURE_NOTIFIER", "tests.dags.notifier_for_tests:NoSuchNotifier")
    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="r", try_number=1, xcom_pull=lambda task_ids: None)
    with caplog.at_level(logging.ERROR):
        on_failure({"ti": ti, "exception": RuntimeError("boom"), "params": {}})
    assert any("notifier tests.dags.notifier_for_tests:NoSuchNotifier failed" in r.getMessage()
               for r in caplog.records)


def test_an_unreachable_feedback_store_fails_merging_with_a_retry_never_a_skip(monkeypatch):
    """merge_feedback and the apply DAG open the store through the dctp_feedback connection: a database that does
    not answer raises a transient error (Airflow retries the task), never a silent pass without merging."""
    from dctp_common.runtime import feedback_store, table_lock

    monkeypatch.setenv("AIRFLOW_CONN_DCTP_FEEDBACK", "postgresql://nobody@127.0.0.1:9/feedback?connect_timeout=2")
    config = load_config()
    for opening in (lambda: feedback_store(config).__enter__(), lambda: table_lock(config).__enter__()):
        exc = raised(opening)
        assert not isinstance(exc, AirflowFailException) and not is_permanent(exc), exc
        assert "127.0.0.1" in str(exc) and "9" in str(exc)


def test_the_asset_names_the_configured_table_or_export_fails_at_once(monkeypatch, tmp_path):
    from dctp_common.assets import curated_asset, table_uri
    from dctp_common.runtime import RunContext, check_asset
    from dctp_tasks.export import dataset_dir

    monkeypatch.setenv("DCTP_DATA_ROOT", tmp_path.as_uri())
    storage = Storage(tmp_path.as_uri())
    config = load_config()
    assert curated_asset().uri == table_uri() == storage.uri(dataset_dir(config.export.dataset_name))
    run = RunContext("dctp_daily", "r", "2026-01-01", (None, None), config, storage)
    check_asset(run)  # the defaults agree
    monkeypatch.setenv("DCTP_DATASET_NAME", "other")
    assert curated_asset().name == "dctp_other"
    with pytest.raises(AirflowFailException, match="DCTP_DATASET_NAME=curated"):
        check_asset(run)


def test_an_event_without_a_version_fails_the_consumer_at_once():
    from dctp_common.runtime import materialize_announced

    manual = SimpleNamespace(extra={})  # an asset event created by hand, not by export
    with pytest.raises(AirflowFailException, match="names a table version"):
        materialize_announced([manual], {}, fmt="chat")


def test_the_consumer_materializes_the_newest_announced_version_with_its_params(tmp_path, monkeypatch):
    from dctp_common.runtime import materialize_announced
    from dctp_tasks.export.views import read_manifest
    from tests.export.test_export_cli import export_day
    from tests.export.test_views import CONFIG, lines_of, stage

    storage = Storage((tmp_path / "root").as_uri())
    monkeypatch.setenv("DCTP_DATA_ROOT", storage.root)
    for n, dt in enumerate(("2026-01-01", "2026-01-02")):
        stage(storage, dt, 40, 40 * n)
        export_day(storage, CONFIG, "dag", dt, run_id=f"run-{n}")
    events = [SimpleNamespace(extra={"version": 1}), SimpleNamespace(extra={"version": 2})]
    done = materialize_announced(events, {"split": "train", "system_prompt": "Be brief."}, fmt="chat")
    assert done["version"] == 2 and done["out"] == storage.uri("views/curated/v2-chat")
    out = Storage(done["out"])
    manifest = read_manifest(out)
    assert list(manifest["splits"]) == ["train"] and manifest["rows"] == done["rows"] > 0
    assert all(r["messages"][0] == {"role": "system", "content": "Be brief."} for r in lines_of(out, manifest))
    assert materialize_announced(events, {"split": "train", "system_prompt": "Be brief."}, fmt="chat") == done
