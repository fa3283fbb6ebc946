"""DCTP's annotation app in the Airflow API server (mounted at ``/dctp``) and its "Annotate" entry in the UI's nav.

Airflow authenticates none of a plugin app's routes, so this file hands the app Airflow's own dependency: the user
of the request's bearer token or of the UI's ``_token`` session cookie, checked by the configured auth manager. If
that cannot be imported, the app is built without it and refuses every request. The app finds the feedback store
through the Airflow connection ``dctp_feedback`` (else ``$DCTP_FEEDBACK_URL``, else SQLite under
``$AIRFLOW_HOME``) and the expert roster in the DCTP config (``$DCTP_CONFIG``), re-read when the file changes.
"""

# No ``from __future__ import annotations``: FastAPI reads the dependency's ``Annotated`` hint at runtime, and it
# names a local import.

import logging
from typing import Annotated
from urllib.parse import urlsplit

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

from dctp_tasks.annotate.app import Backend, create_app

log = logging.getLogger(__name__)

URL_PREFIX = "/dctp"


def airflow_user_dependency():
    """Return a FastAPI dependency giving the request's Airflow user name, or ``None`` when Airflow's security
    module cannot be loaded (the app then answers every request with 503: it fails closed)."""
    try:
        from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
        from airflow.api_fastapi.core_api.security import get_user
        from fastapi import Depends
    except Exception:
        log.exception("DCTP annotation app: Airflow's authentication could not be imported; refusing every request")
        return None

    def airflow_user(user: Annotated[BaseUser, Depends(get_user)]) -> str:
        return user.get_name()

    return airflow_user


def feedback_engine():
    """Open the feedback store named by the Airflow connection ``dctp_feedback`` (any secrets backend), else the
    library's default (``$DCTP_FEEDBACK_URL`` or SQLite under ``$AIRFLOW_HOME``)."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    from dctp_tasks.feedback import db

    try:
        connection = Connection.get_connection_from_secrets(db.CONN_ID)
    except AirflowNotFoundException:
        return db.create_feedback_engine(db.feedback_url())
    url = db.postgres_url(connection.host, connection.port, connection.login, connection.password, connection.schema)
    return db.create_feedback_engine(db.with_libpq_options(url, connection.extra_dejson))


def _base_url() -> str:
    return conf.get("api", "base_url", fallback="") or ""


def _trusted_origins() -> list[str]:
    """The deployment's public origin (``[api] base_url``): behind a proxy the browser's Origin is that one."""
    return [_base_url()] if _base_url() else []


app = create_app(Backend(feedback_engine), airflow_user_dependency(), trusted_origins=_trusted_origins())


class DctpAnnotatePlugin(AirflowPlugin):
    name = "dctp_annotate"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "DCTP annotation"}]
    external_views = [{
        "name": "Annotate",
        "href": urlsplit(_base_url()).path.rstrip("/") + URL_PREFIX + "/",
        "destination": "nav",
        "url_route": "annotate",
    }]
