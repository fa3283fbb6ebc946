"""The annotation app behind Airflow's real authentication: the plugin's dependency over the configured auth manager
(SimpleAuthManager, the Airflow 3 default), tokens it signed, a feedback store seeded with a batch."""

from __future__ import annotations

import importlib
import os
import secrets
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from dctp_tasks.config import AnnotationConfig
from dctp_tasks.feedback import db
from dctp_tasks.feedback.store import FeedbackStore, NewItem
from tests.conftest import REPO

DT = "2026-03-01"
ROSTER = {"alice": {"seniority": "senior"}, "bob": {"domains": ["news"]}}
"""Experts; ``mallory`` is an Airflow user who is not on the roster."""
os.environ.setdefault("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(32))


def plugin_module():
    """Import ``plugins/dctp_annotate.py`` as the API server does (the plugins folder is on ``sys.path``)."""
    if str(REPO / "plugins") not in sys.path:
        sys.path.insert(0, str(REPO / "plugins"))
    return importlib.import_module("dctp_annotate")


def new_item(doc_id: str, *, dt: str = DT, experts=("alice", "bob"), **values) -> NewItem:
    values = {"text": f"text of {doc_id}", "pool": "kept", "strategy": "uncertainty", "stratum": "news/wiki",
              "domain": "news", "source": "wiki", "quality": 0.5, "strategy_score": 0.9,
              "scores": {"heuristics": {"stop_words": 0.4}}, **values}
    return NewItem(doc_id=doc_id, dt=dt, experts=list(experts), **values)


def seed(store: FeedbackStore, docs: list[NewItem], dt: str = DT) -> dict[str, int]:
    """Store ``docs`` as date ``dt``'s batch; return their item ids by doc_id."""
    store.replace_batch(dt=dt, dag_id="dctp_daily", run_id=f"scheduled__{dt}", budget=len(docs),
                        strategy_mix={"uncertainty": 1.0}, config_hash="0" * 64, mlflow_run_id=None,
                        staged_version=None, new_items=docs, assigned_at=datetime(2026, 3, 1, tzinfo=UTC))
    return {q.doc_id: q.item_id for q in store.open_queue("alice", limit=None, dt=dt)}


@pytest.fixture(scope="session")
def auth_manager(airflow_db):
    """Airflow's configured auth manager, initialised as the API server does."""
    from airflow.api_fastapi.app import init_auth_manager

    return init_auth_manager()


@pytest.fixture(scope="session")
def token(auth_manager):
    """``token(name)``: a JWT the auth manager signed for Airflow user ``name``."""
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    def make(name: str, role: str = "viewer") -> str:
        return auth_manager.generate_jwt(SimpleAuthManagerUser(username=name, role=role))

    return make


@pytest.fixture
def store(tmp_path) -> FeedbackStore:
    engine = db.create_feedback_engine(f"sqlite:///{tmp_path / 'feedback.db'}")
    db.upgrade(engine)
    yield FeedbackStore(engine, AnnotationConfig(experts=ROSTER))
    engine.dispose()


@pytest.fixture
def client(store, auth_manager) -> Iterator:
    """A client of an app that mounts the plugin's app at ``/dctp``, authenticated by the plugin's dependency."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from dctp_tasks.annotate.app import Backend, create_app

    plugin = plugin_module()
    backend = Backend(lambda: store.engine, store.config)
    server = FastAPI()
    server.mount(plugin.URL_PREFIX, create_app(backend, plugin.airflow_user_dependency()))
    with TestClient(server, base_url="http://testserver") as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
