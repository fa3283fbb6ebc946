"""Every route of the annotation app behind Airflow's authentication: 401 without a token, 403 for a user who is
not an expert, 200 for an expert; judgements land in the store under the token's user, once per request id."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dctp_tasks.config import PipelineConfig
from dctp_tasks.feedback import db
from dctp_tasks.feedback.merge import merge_judgements
from tests.annotate.conftest import DT, ROSTER, bearer, new_item, plugin_module, seed

ORIGIN = {"Origin": "http://testserver"}
DOC = "wiki/a b?#1"  # a doc id with characters a URL must quote

# (method, path, body kind, status for an expert); {doc} is the seeded document's path, {item} its id
ROUTES = [
    ("GET", "/dctp/", None, 200),
    ("GET", "/dctp/queue", None, 200),
    ("POST", "/dctp/judge", "form", 303),
    ("POST", "/dctp/undo", "form-undo", 303),
    ("GET", "/dctp/document", "doc", 200),
    ("GET", "/dctp/batches", None, 200),
    ("GET", "/dctp/static/annotate.js", None, 200),
    ("GET", "/dctp/static/annotate.css", None, 200),
    ("GET", "/dctp/api/me", None, 200),
    ("GET", "/dctp/api/next", None, 200),
    ("GET", "/dctp/api/queue", None, 200),
    ("POST", "/dctp/api/judgements", "json", 201),
    ("POST", "/dctp/api/undo", "json-undo", 200),
    ("GET", "/dctp/api/document", "doc", 200),
    ("GET", "/dctp/api/batches", None, 200),
    ("GET", "/dctp/api/openapi.json", None, 200),
]


@pytest.fixture
def items(store):
    return seed(store, [new_item(DOC), new_item("wiki/2"), new_item("wiki/3"), new_item("wiki/4"),
                        new_item("sports/1", domain="sports", experts=("alice",))])


def call(client, method: str, path: str, kind: str | None, items: dict, headers: dict | None = None,
         request_id: str = "r-1"):
    url = path
    headers = {**ORIGIN, **(headers or {})}
    if kind == "doc":
        return client.get(url, params={"doc_id": DOC}, headers=headers)
    if kind == "form":
        return client.post(url, data={"item_id": items[DOC], "label": "good", "request_id": request_id},
                           headers=headers, follow_redirects=False)
    if kind == "form-undo":
        return client.post(url, data={"request_id": request_id}, headers=headers, follow_redirects=False)
    if kind == "json":
        return client.post(url, json={"item_id": items[DOC], "label": "good", "request_id": request_id},
                           headers=headers)
    if kind == "json-undo":
        return client.post(url, json={"request_id": request_id}, headers=headers)
    return client.request(method, url, headers=headers)


def annotation_rows(store) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(db.annotations).order_by(
            db.annotations.c.annotation_id)).mappings()]


def test_the_route_table_above_lists_every_route_of_the_app(client):
    app = next(r.app for r in client.app.routes if getattr(r, "path", None) == "/dctp")  # the annotation app
    from dctp_tasks.annotate.app import STATIC_FILES

    def expand(path: str) -> list[str]:
        if "{name}" in path:
            return [path.replace("{name}", name) for name in STATIC_FILES]
        return [path]

    served = {(m, "/dctp" + p) for r in app.routes for m in r.methods if m != "HEAD" for p in expand(r.path)}
    assert served == {(m, p) for m, p, _, _ in ROUTES}


@pytest.mark.parametrize("method,path,kind,_", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_every_route_refuses_a_request_without_a_token(client, items, store, method, path, kind, _):
    response = call(client, method, path, kind, items)
    assert response.status_code == 401, response.text
    assert annotation_rows(store) == []


@pytest.mark.parametrize("method,path,kind,_", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_every_route_refuses_a_signed_in_user_who_is_not_an_expert(client, items, store, token, method, path, kind,
                                                                    _):
    # an Airflow admin is not an expert either: the roster decides, not the Airflow role
    for name, role in (("mallory", "viewer"), ("admin", "admin")):
        response = call(client, method, path, kind, items, bearer(token(name, role)))
        assert response.status_code == 403, response.text
        assert "not an expert" in response.text
        assert "text of" not in response.text  # nothing of the queue leaks into the refusal
    assert annotation_rows(store) == []


@pytest.mark.parametrize("method,path,kind,expected", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_every_route_serves_an_expert(client, items, token, method, path, kind, expected):
    if kind == "json-undo" or kind == "form-undo":  # something to undo first
        assert call(client, "POST", "/dctp/api/judgements", "json", items, bearer(token("alice")),
                    request_id="first").status_code == 201
    response = call(client, method, path, kind, items, bearer(token("alice")))
    assert response.status_code == expected, response.text
    assert response.headers["content-security-policy"].startswith("default-src 'none'")


def test_the_session_cookie_of_the_airflow_ui_authenticates_too(client, items, token):
    client.cookies.set("_token", token("alice"))
    page = client.get("/dctp/")
    assert page.status_code == 200 and "Signed in as" in page.text and ">alice<" in page.text
    client.cookies.set("_token", token("mallory"))
    assert client.get("/dctp/").status_code == 403


def test_a_forged_or_expired_token_is_refused(client, items, token, auth_manager):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    forged = token("alice")[:-4] + "AAAA"
    assert client.get("/dctp/api/me", headers=bearer(forged)).status_code in (401, 403)
    expired = auth_manager.generate_jwt(SimpleAuthManagerUser(username="alice", role="viewer"),
                                        expiration_time_in_seconds=-60)
    assert client.get("/dctp/api/me", headers=bearer(expired)).status_code == 401


def test_the_app_fails_closed_when_airflow_auth_cannot_be_imported(store, items, monkeypatch):
    import sys

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from dctp_tasks.annotate.app import Backend, create_app

    plugin = plugin_module()
    monkeypatch.setitem(sys.modules, "airflow.api_fastapi.core_api.security", None)  # the import raises
    dependency = plugin.airflow_user_dependency()
    assert dependency is None
    server = FastAPI()
    server.mount("/dctp", create_app(Backend(lambda: store.engine, store.config), dependency))
    with TestClient(server) as client:
        for method, path, kind, _ in ROUTES:
            response = call(client, method, path, kind, items, {"Authorization": "Bearer anything"})
            assert response.status_code == 503, (method, path, response.text)
    assert annotation_rows(store) == []


def test_a_judgement_is_stored_under_the_token_user_never_a_field(client, items, store, token):
    # a body naming another expert is refused outright; a form field naming one is ignored
    response = client.post("/dctp/api/judgements", headers=bearer(token("bob")),
                           json={"item_id": items[DOC], "label": "bad", "request_id": "x", "expert": "alice"})
    assert response.status_code == 422
    response = client.post("/dctp/api/judgements", headers=bearer(token("bob")),
                           json={"item_id": items[DOC], "label": "bad", "category": "toxic", "rationale": "insults",
                                 "request_id": "x"})
    assert response.status_code == 201
    assert response.json()["expert"] == "bob" and response.json()["client"] == "web"
    client.post("/dctp/judge", headers={**bearer(token("alice")), **ORIGIN}, follow_redirects=False,
                data={"item_id": items["wiki/2"], "label": "good", "request_id": "y", "expert": "bob"})
    rows = annotation_rows(store)
    assert [(r["expert"], r["item_id"], r["label"], r["category"], r["rationale"]) for r in rows] == [
        ("bob", items[DOC], "bad", "toxic", "insults"), ("alice", items["wiki/2"], "good", None, None)]


def test_the_same_request_id_judges_once(client, items, store, token):
    body = {"item_id": items[DOC], "label": "good", "request_id": "press-1"}
    first = client.post("/dctp/api/judgements", headers=bearer(token("alice")), json=body)
    again = client.post("/dctp/api/judgements", headers=bearer(token("alice")), json=body)
    assert first.status_code == again.status_code == 201
    assert first.json()["annotation_id"] == again.json()["annotation_id"]
    for _ in range(2):  # a double submission of the page's form
        client.post("/dctp/judge", headers={**bearer(token("alice")), **ORIGIN}, follow_redirects=False,
                    data={"item_id": items["wiki/2"], "label": "bad", "request_id": "press-2"})
    assert len(annotation_rows(store)) == 2
    conflict = client.post("/dctp/api/judgements", headers=bearer(token("alice")), json={**body, "label": "bad"})
    assert conflict.status_code == 409
    assert len(annotation_rows(store)) == 2


def test_undo_appends_a_retraction_and_the_item_comes_back(client, items, store, token):
    alice = bearer(token("alice"))
    first = client.get("/dctp/api/next", headers=alice).json()
    assert first["item"]["doc_id"] == DOC and first["progress"]["open"] == 5
    client.post("/dctp/api/judgements", headers=alice, json={"item_id": items[DOC], "label": "bad",
                                                             "request_id": "j"})
    after = client.get("/dctp/api/next", headers=alice).json()
    assert after["item"]["doc_id"] == "wiki/2"
    assert after["progress"] | {"judged_today": None} == {"open": 4, "done": 1, "assigned": 5, "judged_today": None}
    undone = client.post("/dctp/api/undo", headers=alice, json={"request_id": "u"}).json()["retraction"]
    assert undone["retracts"] == annotation_rows(store)[0]["annotation_id"] and undone["label"] is None
    assert client.post("/dctp/api/undo", headers=alice, json={"request_id": "u"}).json()["retraction"] == undone
    assert client.get("/dctp/api/next", headers=alice).json()["item"]["doc_id"] == DOC
    rows = annotation_rows(store)
    assert [(r["label"], r["retracts"]) for r in rows] == [("bad", None), (None, rows[0]["annotation_id"])]
    nothing = client.post("/dctp/api/undo", headers=alice, json={"request_id": "u2"})
    assert nothing.status_code == 200 and nothing.json() == {"retraction": None}


def test_a_browser_write_must_come_from_this_site(client, items, store, token):
    client.cookies.set("_token", token("alice"))
    form = {"item_id": items[DOC], "label": "good", "request_id": "c"}
    for headers in ({}, {"Origin": "https://evil.example"}, {"Origin": "null"},
                    {"Referer": "https://evil.example/page"}, {"Origin": "http://testserver.evil.example"}):
        response = client.post("/dctp/judge", data=form, headers=headers, follow_redirects=False)
        assert response.status_code == 403, headers
    assert annotation_rows(store) == []
    # an Authorization header does not exempt a request that carries the session cookie
    for scheme in ("Basic eDp5", f"Bearer {token('alice')}", "Bearer garbage"):
        response = client.post("/dctp/api/judgements", headers={"Authorization": scheme},
                               json={**form, "item_id": items[DOC]})
        assert response.status_code in (401, 403), scheme
    assert annotation_rows(store) == []
    ok = client.post("/dctp/judge", data=form, headers={"Referer": "http://testserver/dctp/"},
                     follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/dctp/"
    assert len(annotation_rows(store)) == 1


def test_an_expert_may_not_judge_a_domain_outside_theirs(client, items, store, token):
    response = client.post("/dctp/api/judgements", headers=bearer(token("bob")),
                           json={"item_id": items["sports/1"], "label": "good", "request_id": "d"})
    assert response.status_code == 403 and "may not judge domain" in response.json()["detail"]
    for body in ({"item_id": 10**9, "label": "good", "request_id": "e"},
                 {"item_id": items[DOC], "label": "maybe", "request_id": "e"},
                 {"item_id": items[DOC], "label": "good", "category": "nope", "request_id": "e"},
                 {"item_id": items[DOC], "label": "good", "request_id": ""}):
        assert client.post("/dctp/api/judgements", headers=bearer(token("bob")), json=body).status_code in (404, 422)
    assert annotation_rows(store) == []


def test_the_queue_pages_through_every_open_item(client, store, token):
    seed(store, [new_item(f"wiki/{i:03d}") for i in range(7)])
    alice = bearer(token("alice"))
    pages = [client.get("/dctp/api/queue", headers=alice, params={"limit": 3, "offset": o}).json()
             for o in (0, 3, 6)]
    assert [p["total"] for p in pages] == [7, 7, 7]
    assert [i["doc_id"] for p in pages for i in p["items"]] == [f"wiki/{i:03d}" for i in range(7)]
    listing = client.get("/dctp/queue", headers=alice, params={"limit": 3, "offset": 3})
    assert "wiki/003" in listing.text and "wiki/002" not in listing.text and "offset=6" in listing.text
    assert client.get("/dctp/api/queue", headers=alice, params={"limit": 1000}).status_code == 422


def test_the_document_page_shows_judgements_consensus_and_history(client, items, store, token):
    for expert, label in (("alice", "bad"), ("bob", "bad")):
        client.post("/dctp/api/judgements", headers=bearer(token(expert)),
                    json={"item_id": items[DOC], "label": label, "rationale": f"{expert} says <b>no</b>",
                          "request_id": f"r-{expert}"})
    config = PipelineConfig.model_validate({"annotation": {"experts": ROSTER}})
    merged = merge_judgements(store, config, dag_id="dctp_daily", run_id="manual__1", dt=DT)
    assert merged is not None
    doc = client.get("/dctp/api/document", params={"doc_id": DOC}, headers=bearer(token("bob"))).json()
    assert [(j["expert"], j["label"]) for j in doc["judgements"]] == [("alice", "bad"), ("bob", "bad")]
    assert doc["consensus"]["label"] == "bad" and doc["consensus"]["judgements"] == 2
    assert [h["label"] for h in doc["history"]] == ["bad"] and doc["history"][0]["run_id"] == "manual__1"
    page = client.get("/dctp/document", params={"doc_id": DOC}, headers=bearer(token("bob"))).text
    assert "alice says &lt;b&gt;no&lt;/b&gt;" in page and "<b>no</b>" not in page
    assert 'id="history"' in page and "manual__1" in page
    assert client.get("/dctp/api/document", params={"doc_id": "wiki/missing"},
                      headers=bearer(token("bob"))).status_code == 404


def test_batches_show_progress_per_expert_and_agreement_once_merged(client, items, store, token):
    before = client.get("/dctp/api/batches", headers=bearer(token("alice"))).json()
    assert before["total"] == 1
    batch = before["batches"][0]
    assert batch["dt"] == DT and batch["alpha"] is None and batch["items"] == 5
    assert {e: (p["assigned"], p["done"]) for e, p in batch["experts"].items()} == {"alice": (5, 0), "bob": (4, 0)}
    for expert in ("alice", "bob"):
        for n, doc in enumerate((DOC, "wiki/2", "wiki/3")):
            client.post("/dctp/api/judgements", headers=bearer(token(expert)),
                        json={"item_id": items[doc], "label": "good" if n else "bad", "request_id": f"{doc}"})
    merge_judgements(store, PipelineConfig.model_validate({"annotation": {"experts": ROSTER}}), dag_id="dctp_daily",
                     run_id="r", dt=DT)
    after = client.get("/dctp/api/batches", headers=bearer(token("alice"))).json()["batches"][0]
    assert after["alpha"] == pytest.approx(1.0) and after["merge_id"] is not None
    alice = after["experts"]["alice"]
    assert (alice["assigned"], alice["done"], alice["open"], alice["good"], alice["bad"]) == (5, 3, 2, 2, 1)
    assert alice["agreement"] is not None
    page = client.get("/dctp/batches", headers=bearer(token("alice"))).text
    assert DT in page and "1.000" in page


def test_a_form_that_breaks_a_limit_is_refused_not_an_error(client, items, store, token):
    alice = {**bearer(token("alice")), **ORIGIN}
    for data in ({"item_id": items[DOC], "label": "good", "request_id": "r", "rationale": "x" * 10_001},
                 {"item_id": items[DOC], "label": "good", "request_id": "r" * 129},
                 {"item_id": items[DOC], "label": "fine", "request_id": "r"},
                 {"item_id": "one", "label": "good", "request_id": "r"}):
        response = client.post("/dctp/judge", data=data, headers=alice, follow_redirects=False)
        assert response.status_code == 422, data
        assert "<h1>422</h1>" in response.text
    assert client.post("/dctp/undo", data={"request_id": ""}, headers=alice).status_code == 422
    assert annotation_rows(store) == []
