"""``meta`` leaves the pipeline as an allow-list (``export.meta_fields``), its text redacted (``redact_meta``)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from dctp_tasks.config import ExportConfig, load_config
from dctp_tasks.export.delta import MetaFilter
from tests.conftest import make_table

METAS = [json.dumps({"_file": "landing/web/dt=2026-01-01/a.jsonl", "_line": 3, "author": "ada@example.org",
                     "url": "https://x.example.com/a", "score": 4}),
         json.dumps({"_file": "f.csv", "note": "call +44 20 7946 0958 today"}), None,
         json.dumps(["not", "an", "object", "bob@example.org"])]


def filtered(**settings) -> tuple[list, MetaFilter]:
    meta = MetaFilter(ExportConfig(**settings))
    table = meta.apply(make_table(["a", "b", "c", "d"], meta=METAS))
    return [json.loads(m) if m else m for m in table.column("meta").to_pylist()], meta


def test_only_allowed_keys_leave_the_pipeline():
    rows, meta = filtered()
    assert rows == [{"_file": "landing/web/dt=2026-01-01/a.jsonl", "_line": 3}, {"_file": "f.csv"}, None, None]
    assert meta.dropped == 5


def test_allowed_text_values_are_redacted_unless_switched_off():
    rows, _ = filtered(meta_fields=["author", "note", "score"])
    assert rows == [{"author": "<EMAIL>", "score": 4}, {"note": "call <PHONE> today"}, None, None]
    rows, _ = filtered(meta_fields=["author", "note"], redact_meta=False)
    assert rows == [{"author": "ada@example.org"}, {"note": "call +44 20 7946 0958 today"}, None, None]


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "..", "with space"])
def test_a_dataset_name_that_is_not_one_path_segment_is_refused(name):
    with pytest.raises(ValidationError, match="dataset_name"):
        load_config(overrides={"export.dataset_name": name})
