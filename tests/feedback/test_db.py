"""Where the feedback store lives: connection URLs keep their TLS options; a store that cannot use WAL still opens."""

from __future__ import annotations

import json

import pytest

from dctp_tasks.feedback import db


def test_a_connection_keeps_its_tls_and_timeout_options():
    uri = "postgresql://u:p%40ss@db.internal:6432/feedback?sslmode=verify-full&sslrootcert=/ca.pem&__extra__=%7B%7D"
    url = db.connection_url(uri)
    assert (url.host, url.port, url.username, url.password, url.database) == ("db.internal", 6432, "u", "p@ss",
                                                                              "feedback")
    assert dict(url.query) == {"sslmode": "verify-full", "sslrootcert": "/ca.pem"}
    as_json = json.dumps({"conn_type": "postgres", "host": "db.internal", "login": "u", "schema": "feedback",
                          "extra": json.dumps({"sslmode": "require", "connect_timeout": 10, "unrelated": "x"})})
    assert dict(db.connection_url(as_json).query) == {"sslmode": "require", "connect_timeout": "10"}
    with pytest.raises(ValueError, match="postgres://"):
        db.connection_url("mysql://u@h/feedback")


def test_a_store_that_cannot_use_wal_opens_and_migrates():
    engine = db.create_feedback_engine("sqlite://")  # in memory: no WAL; must not wait for it
    versions = [m.version for m in db.MIGRATIONS]
    assert db.upgrade(engine) == versions and db.applied_versions(engine) == versions
    engine.dispose()
