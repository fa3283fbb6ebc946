"""An expert annotates in a real browser: Debian's Chromium (headless) driven by Playwright against a real
``airflow api-server`` that loaded the plugin, signing in through SimpleAuthManager's login page."""

from __future__ import annotations

import json
import os
import secrets
import uuid
from pathlib import Path

import pytest

from dctp_tasks.config import AnnotationConfig
from dctp_tasks.feedback import db
from dctp_tasks.feedback.store import FeedbackStore
from tests.airflow_stack import READY_TIMEOUT, Stack, clean_env, sigterm_unwinds, stopped_on_exit
from tests.annotate.conftest import new_item, seed
from tests.conftest import REPO, config_file, free_port, unavailable

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("DCTP_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("DCTP_TEST_ARTIFACTS") or REPO / ".artifacts")
PASSWORD = secrets.token_urlsafe(12)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (requirements-dev.txt)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    """A real API server with the plugins folder, a seeded feedback store, alice (an expert) and mallory (not)."""
    home = tmp_path_factory.mktemp("annotate-ui")
    (home / "dags").mkdir()
    (home / "passwords.json").write_text(json.dumps({"alice": PASSWORD, "mallory": PASSWORD}))
    store_url = f"sqlite:///{home / 'feedback.db'}"
    engine = db.create_feedback_engine(store_url)
    db.upgrade(engine)
    roster = {"alice": {"seniority": "senior"}}
    store = FeedbackStore(engine, AnnotationConfig(experts=roster))
    texts = ["The treaty was signed in 1648 and ended the war.", "Buy cheap pills now!!! <script>alert(1)</script>",
             "Photosynthesis turns light into chemical energy.", "Water boils at 100 degrees at sea level."]
    first = {"scores": {"heuristics": {"word_count": 11, "stop_word_ratio": 0.36, "mean_word_length": 4.2},
                        "perplexity": {"perplexity": 41.7}, "toxicity": {"toxicity": 0.004},
                        "classifier_expert_quality": {"p_good": 0.52}},
             "quality": 0.61, "strategy_score": 0.97, "verdict": "review", "lang": "en",
             "duplicates": [{"doc_id": "news/8812", "reason": "near_duplicate", "detail": "jaccard=0.91",
                             "text": "The treaty was signed in 1648, and it ended the war."}]}
    ids = seed(store, [new_item(f"wiki/{n}", experts=("alice",), text=t, **(first if n == 0 else {}))
                       for n, t in enumerate(texts)])
    port = free_port()
    marker = uuid.uuid4().hex
    env = clean_env(marker, ("AIRFLOW__", "AIRFLOW_CONN_"), {"DCTP_CONFIG", "DCTP_FEEDBACK_URL"})
    env.update({
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        "AIRFLOW_HOME": str(home / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "alice:viewer,mallory:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "DCTP_FEEDBACK_URL": store_url,
        "DCTP_CONFIG": str(config_file(home, {"annotation.experts": roster})),
    })
    stack = Stack(f"http://127.0.0.1:{port}", "alice", PASSWORD, home, env)
    with sigterm_unwinds(), stopped_on_exit(stack.services, marker):
        stack.cli("db", "migrate")
        stack.start("api-server", "api-server")
        import httpx

        stack.wait("the api-server", lambda: httpx.get(f"{stack.api_url}/api/v2/monitor/health", timeout=5)
                   .status_code == 200, READY_TIMEOUT)
        yield stack, store, ids
    engine.dispose()


def sign_in(browser, stack: Stack, user: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{stack.api_url}/")
    page.locator("input[name=username]").fill(user)
    page.locator("input[name=password]").fill(PASSWORD)
    page.locator("button[type=submit]").click()
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)
    return page


def judge_with_key(page, frame, key: str, expected_next: str | None) -> None:
    frame.locator("#doc-text").click()  # as a person does: the page takes the keyboard once clicked
    page.keyboard.press(key)
    if expected_next is None:
        frame.locator("#empty").wait_for(timeout=30_000)
    else:
        frame.locator(f'#item a.doc-id:text-is("{expected_next}")').wait_for(timeout=30_000)


def test_an_expert_judges_with_the_keyboard_undoes_and_sees_the_document(browser, api_server):
    stack, store, ids = api_server
    page = sign_in(browser, stack, "alice")
    page.get_by_role("link", name="Annotate").click()  # the plugin's entry in the Airflow navigation
    page.wait_for_url("**/plugin/annotate", timeout=30_000)
    frame = page.frame_locator("iframe")
    frame.locator("#item").wait_for(timeout=30_000)
    assert frame.locator("#expert").inner_text() == "alice"
    assert "4 left" in frame.locator("#progress").inner_text()
    assert frame.locator("#doc-text").inner_text().startswith("The treaty")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "annotate-queue.png"
    page.screenshot(path=str(screenshot))

    page.keyboard.press("g")  # no click first: the page took the keyboard when Annotate opened it
    frame.locator('#item a.doc-id:text-is("wiki/1")').wait_for(timeout=30_000)
    # the hostile document is shown as text, its script inert
    assert "<script>alert(1)</script>" in frame.locator("#doc-text").inner_text()
    judge_with_key(page, frame, "b", "wiki/2")
    frame.locator("#category").select_option("other")
    frame.locator("#rationale").fill("not what we train on")
    frame.locator("#doc-text").click()
    page.keyboard.press("s")
    frame.locator('#item a.doc-id:text-is("wiki/3")').wait_for(timeout=30_000)
    assert "3 judged today" in frame.locator("#progress").inner_text()
    frame.locator("#doc-text").click()
    page.keyboard.press("u")  # take back the skip: wiki/2 comes back
    frame.locator('#item a.doc-id:text-is("wiki/2")').wait_for(timeout=30_000)
    assert "2 judged today" in frame.locator("#progress").inner_text()

    frame.locator("#item a.doc-id").click()  # the document page, inside the Airflow UI's frame
    frame.locator("#judgements").wait_for(timeout=30_000)
    trail = [r.inner_text() for r in frame.locator("#judgements tbody tr").all()]
    assert len(trail) == 2 and "skip" in trail[0] and "not what we train on" in trail[0] and "undo of" in trail[1]
    page.goto(f"{stack.api_url}/dctp/document?doc_id=wiki%2F1")
    rows = page.locator("#judgements tbody tr")
    assert rows.count() == 1 and "bad" in rows.first.inner_text() and "alice" in rows.first.inner_text()

    trail = store.export_judgements(trail=True)
    assert [(j["doc_id"], j["expert"], j["label"], j["client"]) for j in trail] == [
        ("wiki/0", "alice", "good", "web"), ("wiki/1", "alice", "bad", "web"), ("wiki/2", "alice", "skip", "web"),
        ("wiki/2", "alice", None, "web")]
    assert trail[2]["category"] == "other" and trail[3]["retracts"] == trail[2]["annotation_id"]
    assert_not_blank(screenshot)


def test_an_airflow_user_who_is_not_an_expert_sees_a_refusal(browser, api_server):
    stack, store, _ = api_server
    page = sign_in(browser, stack, "mallory")
    response = page.goto(f"{stack.api_url}/dctp/")
    assert response.status == 403
    assert "not an expert" in page.locator("#detail").inner_text()
    assert page.locator("#item").count() == 0


def assert_not_blank(path: Path) -> None:
    """The screenshot shows a page: many colours, not one flat fill."""
    from PIL import Image, ImageStat

    image = Image.open(path).convert("RGB")
    assert image.size[0] >= 800 and image.size[1] >= 600
    assert len(image.getcolors(maxcolors=1 << 20) or []) > 50
    assert max(ImageStat.Stat(image).stddev) > 20



def test_the_api_server_mounts_the_app_protected_and_lists_the_nav_entry(api_server):
    import httpx

    stack, _, _ = api_server
    plugins = {p["name"]: p for p in stack.api("GET", "/plugins")["plugins"]}
    annotate = plugins["dctp_annotate"]
    assert [a["url_prefix"] for a in annotate["fastapi_apps"]] == ["/dctp"]
    assert [(v["name"], v["href"], v["url_route"]) for v in annotate["external_views"]] == [
        ("Annotate", "/dctp/", "annotate")]
    me = f"{stack.api_url}/dctp/api/me"
    assert httpx.get(me, timeout=30).status_code == 401
    tokens = {user: httpx.post(f"{stack.api_url}/auth/token", json={"username": user, "password": PASSWORD},
                               timeout=30).json()["access_token"] for user in ("alice", "mallory")}
    assert httpx.get(me, headers={"Authorization": f"Bearer {tokens['mallory']}"}, timeout=30).status_code == 403
    answer = httpx.get(me, headers={"Authorization": f"Bearer {tokens['alice']}"}, timeout=30)
    assert answer.status_code == 200 and answer.json()["expert"] == "alice"
