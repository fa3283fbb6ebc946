"""Documents are untrusted: whatever their text, ids, scores' details or judges' rationales hold, the pages show it
as text — no element, attribute, script, style or link of theirs reaches the browser."""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser
from urllib.parse import unquote, urlsplit

import pytest

from dctp_tasks.annotate.render import HIDDEN_CONTROLS, visible
from tests.annotate.conftest import bearer, new_item, seed

CORPUS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil.example/x.js></SCRIPT>",
    '<img src=x onerror="alert(1)">',
    "<body onload=alert(1)>",
    '<a href="javascript:alert(1)">click me</a>',
    "[click me](javascript:alert(1)) and ![x](javascript:alert(2))",
    "<svg/onload=alert(1)><script>alert(2)</script></svg>",
    '<svg><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>',
    '<iframe src="javascript:alert(1)"></iframe>',
    "&lt;script&gt;alert(1)&lt;/script&gt; &#60;script&#62; \\u003cscript\\u003e %3Cscript%3E",
    '"><script>alert(1)</script>',
    "'><img src=x onerror=alert(1)>",
    "</pre></textarea></title><script>alert(1)</script>",
    "<style>body{display:none}</style>",
    '<meta http-equiv="refresh" content="0;url=https://evil.example">',
    '<base href="https://evil.example/">',
    '<form action="https://evil.example"><button>go</button></form>',
    "<object data=x></object><embed src=x>",
    "<math><mi xlink:href=javascript:alert(1)>x</mi></math>",
    "{{ 7*7 }} {% raw %} ${7*7}",
    "<!-- comment --><![CDATA[ x ]]>",
    "invoice\u202egnp.exe and \u2066isolated\u2069 zero\u200bwidth, tag\U000e0041 and soft\u00adhyphen",
    "../../auth/logout",
    "/../../api/v2/dags?x=1#y",
]
OURS = {"script": {"src"}, "link": {"rel", "href"}, "form": {"method", "action", "id", "class"}}


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def parse(page: str) -> list[tuple[str, dict]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


def assert_inert(page: str, root: str = "/dctp") -> None:
    tags = parse(page)
    names = {t for t, _ in tags}
    assert not names & {"iframe", "svg", "math", "mi", "object", "embed", "style", "img"}, names
    metas = [a for t, a in tags if t == "meta"]
    assert all(set(a) <= {"charset", "name", "content"} and a.get("name") in (None, "viewport", "referrer")
               for a in metas), metas
    assert [t for t, _ in tags].count("body") == 1 and [t for t, _ in tags].count("base") == 0
    for tag, attrs in tags:
        assert not [a for a in attrs if a.startswith("on")], (tag, attrs)  # no event handler anywhere
        for name in ("href", "src", "action", "xlink:href"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("javascript:", "data:", "//", "http:", "https:")), (tag, name, value)
            if value:
                # a link stays inside the app: no document can make its path climb out (ids go in the query)
                path = unquote(urlsplit(value).path)
                assert path.startswith(root + "/") and "/." not in path, (tag, name, value)
        if tag == "script":
            assert attrs == {"src": f"{root}/static/annotate.js"}, attrs
        if tag == "form":
            assert attrs["action"] in (f"{root}/judge", f"{root}/undo"), attrs


def shown(page: str, element_id: str) -> str:
    """The text the page shows in the <pre> with ``element_id``, the markers of hidden controls turned back."""
    start = page.index(f'id="{element_id}">') + len(f'id="{element_id}">')
    body = page[start:page.index("</pre>", start)]
    return unescape(re.sub(r'<span class="ctl">⟨U\+([0-9A-F]{4,6})⟩</span>', lambda m: chr(int(m.group(1), 16)),
                           body))


def test_direction_and_width_controls_are_shown_not_obeyed():
    html = str(visible("invoice\u202egnp.exe <b>"))
    assert html == 'invoice<span class="ctl">⟨U+202E⟩</span>gnp.exe &lt;b&gt;'
    assert not HIDDEN_CONTROLS.search(html)


def doc_id_of(n: int, payload: str) -> str:
    """Every other document's id is a payload too (ids are as untrusted as texts: they come from the sources)."""
    return payload if n % 2 else f"evil/{n}\"><script>alert({n})</script>"


@pytest.fixture
def hostile(store):
    text = "\n".join(CORPUS)
    docs = [new_item(doc_id_of(n, payload), text=payload,
                     source=payload[:40], filter_reason="<b>x</b>", filter_detail=payload, stratum=payload[:30],
                     duplicates=[{"doc_id": payload[:20], "reason": "near_duplicate", "detail": payload,
                                  "text": payload}])
            for n, payload in enumerate(CORPUS)]
    docs.insert(0, new_item("evil/all", text=text, prompt="<script>alert('p')</script>",
                            response='<img src=x onerror="alert(1)">'))
    docs.insert(1, new_item("evil/long", text=("x" * 1_000_000) + "<script>alert(1)</script>"))
    return seed(store, docs)


def test_the_queue_page_shows_every_payload_as_text(client, hostile, store, token):
    alice = bearer(token("alice"))
    page = client.get("/dctp/", headers=alice).text
    assert_inert(page)
    assert shown(page, "doc-prompt") == "<script>alert('p')</script>"
    assert shown(page, "doc-response") == '<img src=x onerror="alert(1)">'
    for n, payload in enumerate(CORPUS):
        item_id = hostile[doc_id_of(n, payload)]
        for other in ("evil/all", "evil/long"):  # judge the two first items away to reach each payload in turn
            if hostile[other] == client.get("/dctp/api/next", headers=alice).json()["item"]["item_id"]:
                client.post("/dctp/api/judgements", headers=alice,
                            json={"item_id": hostile[other], "label": "skip", "request_id": other})
        page = client.get("/dctp/", headers=alice).text
        assert f'data-item-id="{item_id}"' in page
        assert_inert(page)
        assert shown(page, "doc-text") == payload
        client.post("/dctp/api/judgements", headers=alice,
                    json={"item_id": item_id, "label": "bad", "rationale": payload, "request_id": f"p{n}"})


def test_a_one_megabyte_line_is_shown_whole_and_inert(client, hostile, token):
    alice = bearer(token("alice"))
    client.post("/dctp/api/judgements", headers=alice,
                json={"item_id": hostile["evil/all"], "label": "skip", "request_id": "s"})
    page = client.get("/dctp/", headers=alice).text
    assert_inert(page)
    assert shown(page, "doc-text") == ("x" * 1_000_000) + "<script>alert(1)</script>"


def test_the_document_list_and_batch_pages_stay_inert(client, hostile, token):
    alice = bearer(token("alice"))
    for n, payload in enumerate(CORPUS):
        doc_id = doc_id_of(n, payload)
        client.post("/dctp/api/judgements", headers=alice,
                    json={"item_id": hostile[doc_id], "label": "bad", "rationale": payload, "request_id": f"p{n}"})
        page = client.get("/dctp/document", params={"doc_id": doc_id}, headers=alice)
        assert page.status_code == 200
        assert_inert(page.text)
        assert shown(page.text, "doc-text") == payload
    for path in ("/dctp/queue", "/dctp/batches", "/dctp/queue?limit=200"):
        assert_inert(client.get(path, headers=alice).text)


def test_error_pages_do_not_reflect_markup(client, token):
    page = client.get("/dctp/document", params={"doc_id": "<script>alert(1)</script>"},
                      headers=bearer(token("alice")))
    assert page.status_code == 404
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;" in page.text
    assert_inert(page.text)
