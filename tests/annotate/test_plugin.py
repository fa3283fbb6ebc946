"""Where the plugin finds the store and the roster: the Airflow connection ``dctp_feedback`` first, the config file
re-read when it changes."""

from __future__ import annotations

import os

import pytest
import yaml

from dctp_tasks.annotate.app import Backend
from dctp_tasks.feedback import db
from tests.annotate.conftest import plugin_module
from tests.conftest import config_file


def test_the_store_is_the_dctp_feedback_connection_when_airflow_has_one(monkeypatch, tmp_path, pg_dsn):
    plugin = plugin_module()
    monkeypatch.setenv("DCTP_FEEDBACK_URL", f"sqlite:///{tmp_path / 'ignored.db'}")
    monkeypatch.setenv("AIRFLOW_CONN_DCTP_FEEDBACK", pg_dsn + "?sslmode=disable&connect_timeout=7")
    engine = plugin.feedback_engine()
    assert engine.url.get_backend_name() == "postgresql" and engine.url.database == pg_dsn.rsplit("/", 1)[1]
    assert engine.url.query == {"sslmode": "disable", "connect_timeout": "7"}
    engine.dispose()
    monkeypatch.delenv("AIRFLOW_CONN_DCTP_FEEDBACK")
    engine = plugin.feedback_engine()
    assert engine.url.get_backend_name() == "sqlite" and engine.url.database == str(tmp_path / "ignored.db")
    engine.dispose()


def test_the_roster_follows_the_config_file(tmp_path):
    path = config_file(tmp_path, {"annotation.experts": {"alice": {}}})
    engine = db.create_feedback_engine(f"sqlite:///{tmp_path / 'feedback.db'}")
    db.upgrade(engine)
    backend = Backend(lambda: engine, config_path=path)
    assert set(backend.store().roster) == {"alice"}
    data = yaml.safe_load(path.read_text())
    data["annotation"]["experts"]["dave"] = {"domains": ["law"]}
    path.write_text(yaml.safe_dump(data))
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 1_000_000))
    assert set(backend.store().roster) == {"alice", "dave"}
    assert backend.store().roster["dave"].domains == ["law"]
    engine.dispose()


def test_a_store_not_upgraded_is_refused_until_it_is(tmp_path):
    engine = db.create_feedback_engine(f"sqlite:///{tmp_path / 'feedback.db'}")
    backend = Backend(lambda: engine, config_path=config_file(tmp_path, {}))
    with pytest.raises(db.SchemaOutdated, match="dctp db upgrade"):
        backend.store()
    db.upgrade(engine)
    assert backend.store().engine is engine
    engine.dispose()
