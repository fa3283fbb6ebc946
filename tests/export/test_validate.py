"""Validation of a table version: every check passes on good data and fails, with count and examples, on bad."""

from __future__ import annotations

import base64
import html
import json
import math
import re

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from dctp_tasks.config import VALIDATION_CHECKS, ValidationConfig, load_config
from dctp_tasks.export import Staged, export_day, open_table
from dctp_tasks.export.validate import ValidationFailed, render_html, validate_dataset
from dctp_tasks.records import DEDUPED_SCHEMA, content_hashes
from dctp_tasks.storage import Storage
from tests.conftest import make_table, publish_stage

CONFIG = load_config()
DOMAINS = ["science", "health", "law", "code"]
SCORES = pa.struct([("toxicity", pa.struct([("toxicity", pa.float32())])),
                    ("classifier_expert", pa.struct([("probability", pa.float32())])),
                    ("perplexity", pa.struct([("perplexity", pa.float32()), ("tokens", pa.int32())]))])


def config(**validation):
    """The default pipeline config with ``export.validation`` set to ``validation``."""
    export = CONFIG.export.model_copy(update={"validation": ValidationConfig(**validation)})
    return CONFIG.model_copy(update={"export": export})


def columns(n: int = 20) -> dict[str, list]:
    """Good rows: unique ids and texts, four domains and two sources evenly, every score in range."""
    texts = [f"document number {i} about a topic, long enough to read" for i in range(n)]
    return {
        "doc_id": [f"web/{i}" for i in range(n)], "text": texts,
        "source": ["web" if i % 2 else "books" for i in range(n)], "domain": [DOMAINS[i % 4] for i in range(n)],
        "dt": ["2026-01-01" if i < n // 2 else "2026-01-02" for i in range(n)], "sampling_weight": [1.0] * n,
        "lang": ["en"] * n, "lang_score": [0.95] * n,
        "content_hash": content_hashes(pa.array(texts)).to_pylist(),
        "split": ["train", "validation", "test", "train"] * (n // 4) + ["train"] * (n % 4),
        "quality": [0.5] * n, "toxicity": [0.01] * n, "probability": [0.7] * n,
        "perplexity": [float("nan")] + [20.0] * (n - 1),  # NaN: the scorer's "nothing to score", not an error
    }


def dataset(tmp_path, cols: dict[str, list], *, drop: tuple[str, ...] = (), retype: dict | None = None) -> ds.Dataset:
    """Write ``cols`` as two Parquet files (like two dates) and open them as one dataset."""
    core = {k: cols[k] for k in ("doc_id", "source", "domain", "dt", "sampling_weight")}
    table = make_table(cols["text"], **core)
    for name, type_ in (("lang", pa.string()), ("lang_score", pa.float32()), ("content_hash", pa.string()),
                        ("split", pa.string()), ("quality", pa.float32())):
        table = table.append_column(name, pa.array(cols[name], type_))
    scores = [{"toxicity": {"toxicity": t}, "classifier_expert": {"probability": p},
               "perplexity": {"perplexity": x, "tokens": 12}}
              for t, p, x in zip(cols["toxicity"], cols["probability"], cols["perplexity"])]
    table = table.append_column("scores", pa.array(scores, SCORES)).drop_columns(list(drop))
    for name, type_ in (retype or {}).items():
        table = table.set_column(table.schema.get_field_index(name), name, table[name].cast(type_))
    folder = tmp_path / "version"
    folder.mkdir()
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), folder / "part-0.parquet")
    pq.write_table(table.slice(half), folder / "part-1.parquet")
    return ds.dataset(str(folder), format="parquet")


def failed(report) -> list[str]:
    return [c.name for c in report.checks if not c.passed]


def test_good_rows_pass_every_check(tmp_path):
    report = validate_dataset(dataset(tmp_path, columns()), config())
    assert [c.name for c in report.checks] == list(VALIDATION_CHECKS)
    assert failed(report) == [] and report.ok and report.errors == [] and report.rows == 20
    assert report.domains == {d: 5 for d in sorted(DOMAINS)} and report.sources == {"books": 10, "web": 10}
    assert sum(report.length_counts) == 20
    assert "scores.perplexity.perplexity" in report.check("scores").detail
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_no_rows_pass(tmp_path):
    report = validate_dataset(dataset(tmp_path, columns(0)), config())
    assert report.rows == 0 and failed(report) == []


def put(cols: dict, column: str, values: dict[int, object]) -> dict:
    for i, value in values.items():
        cols[column][i] = value
    return cols


SAME_HASH = columns()["content_hash"][1]
BAD = {
    "missing column": ({"drop": ("lang",)}, {}, "schema", 1, ["lang"]),
    "mistyped column": ({"retype": {"sampling_weight": pa.string()}}, {}, "schema", 1, ["sampling_weight"]),
    "empty and whitespace text": (lambda c: put(c, "text", {3: "", 5: " \n\t\u3000 ", 7: None}), {}, "empty_text", 3,
                                  ["web/3", "web/5", "web/7"]),
    "duplicated doc_id": (lambda c: put(c, "doc_id", {9: "web/2"}), {}, "duplicate_doc_id", 1, ["web/2"]),
    "one hash in train and test": (lambda c: put(put(c, "content_hash", {2: SAME_HASH}), "split", {1: "train"}), {},
                                   "split_leakage", 1, [SAME_HASH]),
    "a domain at 90 %": (lambda c: put(c, "domain", {i: "science" for i in range(18)}), {"max_domain_share": 0.8},
                         "balance", 1, ["science"]),
    "a per-domain ceiling": (None, {"domain_ceilings": {"health": 0.2}}, "balance", 1, ["health"]),
    "a source ceiling": (None, {"max_source_share": 0.4}, "balance", 2, ["books", "web"]),
    "e-mail and phone left in text": (lambda c: put(c, "text", {6: "mail jane.doe@example.com now",
                                                                8: "call +44 20 7946 0958 today"}), {}, "pii", 2,
                                      ["web/6", "web/8"]),
    "NaN quality": (lambda c: put(c, "quality", {4: math.nan}), {}, "scores", 1, ["web/4"]),
    "toxicity of 1.5": (lambda c: put(c, "toxicity", {11: 1.5}), {}, "scores", 1, ["web/11"]),
    "negative sampling weight": (lambda c: put(c, "sampling_weight", {12: -0.5}), {}, "scores", 1, ["web/12"]),
    "infinite perplexity": (lambda c: put(c, "perplexity", {13: math.inf}), {}, "scores", 1, ["web/13"]),
    "probability below 0": (lambda c: put(c, "probability", {14: -0.1}), {}, "scores", 1, ["web/14"]),
}


@pytest.mark.parametrize(("plant", "validation", "check", "count", "examples"), BAD.values(), ids=BAD.keys())
def test_each_check_fails_on_planted_bad_data(tmp_path, plant, validation, check, count, examples):
    cols, options = columns(), {}
    if isinstance(plant, dict):
        options = plant
    elif plant is not None:
        cols = plant(cols)
    report = validate_dataset(dataset(tmp_path, cols, **options), config(**validation))
    assert failed(report) == [check]
    result = report.check(check)
    assert (result.passed, result.count, result.examples) == (False, count, examples)
    assert result.detail
    assert report.ok == (result.severity != "error")


def test_same_hash_within_one_split_is_no_leakage(tmp_path):
    cols = put(put(columns(), "content_hash", {3: SAME_HASH}), "split", {1: "train"})  # rows 1 and 3: both train
    assert failed(validate_dataset(dataset(tmp_path, cols), config())) == []


def test_details_name_the_offenders(tmp_path):
    cols = put(put(columns(), "quality", {4: math.nan}), "toxicity", {11: 1.5})
    cols = put(cols, "domain", {i: "science" for i in range(18)})
    report = validate_dataset(dataset(tmp_path, cols), config())
    assert "quality: 1 NaN" in report.check("scores").detail
    assert "scores.toxicity.toxicity: 1 above 1" in report.check("scores").detail
    assert report.check("scores").count == 2
    assert "domain science holds 90.0% of rows > ceiling 80.0%" in report.check("balance").detail


def test_checks_that_cannot_run_fail(tmp_path):
    report = validate_dataset(dataset(tmp_path, columns(), drop=("text",)), config())
    assert failed(report) == ["schema", "empty_text", "pii"]
    assert "not run: column(s) text missing" in report.check("empty_text").detail


def test_warn_reports_without_failing_and_off_skips(tmp_path):
    cols = put(columns(), "doc_id", {9: "web/2"})
    data = dataset(tmp_path, cols)
    warned = validate_dataset(data, config(severities={"duplicate_doc_id": "warn"}))
    check = warned.check("duplicate_doc_id")
    assert (check.severity, check.passed, check.count) == ("warn", False, 1)
    assert warned.ok and warned.errors == []
    skipped = validate_dataset(data, config(severities={"duplicate_doc_id": "off"}))
    check = skipped.check("duplicate_doc_id")
    assert (check.severity, check.passed, check.count, check.examples) == ("off", True, 0, [])
    assert skipped.ok


def test_validation_failed_names_each_failed_error_check(tmp_path):
    cols = put(put(columns(), "doc_id", {9: "web/2"}), "quality", {4: math.nan})
    report = validate_dataset(dataset(tmp_path, cols), config())
    assert [c.name for c in report.errors] == ["duplicate_doc_id", "scores"]
    with pytest.raises(ValidationFailed) as err:
        report.raise_for_errors()
    assert err.value.report is report
    message = str(err.value)
    assert "duplicate_doc_id: 1 doc_id(s) appear more than once" in message and "scores: 1 row(s)" in message
    assert "balance" not in message


def test_pii_sample_is_seeded_and_bounded(tmp_path):
    cols = columns(40)
    cols = put(cols, "text", {i: f"row {i}: reach me at user{i}@example.org" for i in range(0, 40, 2)})
    data = dataset(tmp_path, cols)
    first = validate_dataset(data, config(pii_sample=10, seed=7)).check("pii")
    again = validate_dataset(data, config(pii_sample=10, seed=7)).check("pii")
    other = validate_dataset(data, config(pii_sample=10, seed=8)).check("pii")
    assert (first.count, first.examples) == (again.count, again.examples)
    assert 0 < first.count <= 10 and f"{first.count} of 10 sampled rows" in first.detail
    assert all(int(e.split("/")[1]) % 2 == 0 for e in first.examples)
    assert (other.count, other.examples) != (first.count, first.examples)
    assert validate_dataset(data, config(max_pii_rate=1.0)).check("pii").passed
    assert validate_dataset(data, config(pii_sample=0)).check("pii").passed


def test_html_report(tmp_path):
    evil_id, evil_domain = '<script>alert("id")</script>', "<script>d</script>"
    cols = put(put(columns(), "doc_id", {8: evil_id, 9: evil_id}), "domain", {i: evil_domain for i in range(18)})
    report = validate_dataset(dataset(tmp_path, cols), config())
    page = render_html(report, title="curated <v3>")
    assert all(name in page for name in VALIDATION_CHECKS)
    assert "<script" not in page
    assert html.escape(evil_id) in page and html.escape(evil_domain) in page and "curated &lt;v3&gt;" in page
    pngs = [base64.b64decode(p) for p in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]
    assert len(pngs) == 3 and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert not any(b"matplotlib" in p for p in pngs)  # no Software key: the bytes do not carry a version
    assert render_html(report, title="curated <v3>") == page


def stage_and_export(storage: Storage, dt: str, ids: list[str], scored: bool = False) -> None:
    """Stage ``dt``'s deduplicated rows and export them, as the daily DAG does (``scored``: with quality scores)."""
    texts = [f"document {i} with enough words to be a document" for i in ids]
    table = make_table(texts, doc_id=ids, dt=[dt] * len(ids), source=["web"] * len(ids),
                       domain=["science" if int(i.split("/")[1]) % 2 else "health" for i in ids])
    table = table.append_column("lang", pa.array(["en"] * len(ids))).append_column(
        "lang_score", pa.array([0.9] * len(ids), pa.float32()))
    table = table.append_column("content_hash", content_hashes(table.column("text"))).cast(DEDUPED_SCHEMA)
    if scored:  # a later stage's columns: the table's schema merges them, earlier dates read null
        table = table.append_column("quality", pa.array([0.5] * len(ids), pa.float32())).append_column(
            "scores", pa.array([{"toxicity": {"toxicity": 0.1}}] * len(ids), pa.struct([SCORES.field("toxicity")])))
    publish_stage(storage, "dag", dt, "dedup_exact", table)
    export_day(storage, CONFIG, "dag", dt, run_id=f"run-{dt}", rows=Staged("dag", "dedup_exact"), ledger=[],
               ingested=len(ids))


def test_a_real_delta_version_passes(tmp_path, monkeypatch):
    storage = Storage(tmp_path.as_uri())
    monkeypatch.setenv("DCTP_DATA_ROOT", storage.root)
    stage_and_export(storage, "2026-01-01", [f"web/{i}" for i in range(0, 40)])
    stage_and_export(storage, "2026-01-02", [f"web/{i}" for i in range(40, 70)], scored=True)
    version = open_table(storage, "curated").to_pyarrow_dataset()
    report = validate_dataset(version, CONFIG)
    assert failed(report) == [] and report.ok and report.rows == 70
    empty = validate_dataset(open_table(storage, "curated", 0).to_pyarrow_dataset(), CONFIG)  # created, no rows
    assert empty.rows == 0 and failed(empty) == []
    assert report.domains == {"health": 35, "science": 35}
    assert "quality" in report.check("scores").detail and "scores.toxicity.toxicity" in report.check("scores").detail
    render_html(report, title="curated")


def test_a_document_on_two_dates_is_reported_not_failed(tmp_path):
    cols = put(columns(), "doc_id", {15: "web/2"})  # row 2 is on the first date, row 15 on the second
    check = validate_dataset(dataset(tmp_path, cols), config()).check("duplicate_doc_id")
    assert check.passed and "1 on several dates" in check.detail


def test_export_commits_nothing_when_an_error_check_fails(tmp_path, monkeypatch):
    from dctp_tasks.export.validate import ValidationFailed

    storage = Storage(tmp_path.as_uri())
    monkeypatch.setenv("DCTP_DATA_ROOT", storage.root)
    stage_and_export(storage, "2026-01-01", [f"web/{i}" for i in range(0, 10)])
    assert storage.exists("reports/dt=2026-01-01/validation.html")
    table_files = set(storage.list_files("datasets/curated/dt=2026-01-02"))
    ids = [f"web/{i}" for i in range(10, 20)] + ["web/10"]  # one doc_id twice in the date
    with pytest.raises(ValidationFailed, match=r"duplicate_doc_id: 1 doc_id\(s\) appear more than once in a date"):
        stage_and_export(storage, "2026-01-02", ids)
    assert open_table(storage, "curated").version() == 1  # nothing committed
    assert set(storage.list_files("datasets/curated/dt=2026-01-02")) == table_files  # its files were removed
    page = storage.read_bytes(storage.path("reports/dt=2026-01-02/validation.html")).decode()
    assert "duplicate_doc_id" in page and "web/10" in page
    monkeypatch.setattr(CONFIG.export.validation, "severities", {"duplicate_doc_id": "warn"})
    stage_and_export(storage, "2026-01-02", ids)  # as a warning, the same rows commit
    assert open_table(storage, "curated").version() == 2


def test_validation_switched_off_commits_without_a_report(tmp_path, monkeypatch):
    storage = Storage(tmp_path.as_uri())
    monkeypatch.setenv("DCTP_DATA_ROOT", storage.root)
    monkeypatch.setattr(CONFIG.export.validation, "enabled", False)
    stage_and_export(storage, "2026-01-01", [f"web/{i}" for i in range(0, 10)] + ["web/3"])  # a doc_id twice
    assert open_table(storage, "curated").version() == 1
    assert not storage.exists("reports/dt=2026-01-01/validation.html")
