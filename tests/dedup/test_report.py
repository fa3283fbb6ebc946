from __future__ import annotations

import re

import pyarrow as pa
import pytest

from dctp_tasks.dedup.report import TEXT_CHARS, DuplicateRates, SamplePair, closest, render_report
from dctp_tasks.storage import Storage
from tests.dedup.test_near import D1, edited, passage, run, stage, ts


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(f"file://{tmp_path}")


def report_of(storage: Storage, result) -> str:
    assert result.extra["report"] == f"reports/dt={D1}/dedup_near.md"
    return storage.read_bytes(storage.path(result.extra["report"])).decode()


def test_near_report_counts_rates_and_pairs_on_both_sides(storage):
    a, b = passage(31), passage(32)
    stage(storage, D1, [("w/a", a, ts(1), "news"), ("x/a2", edited(a), ts(2), "news"),
                        ("w/b", b, ts(1), "forum"), ("x/b2", edited(b, (30, 70, 110)), ts(2), "forum")]
          + [(f"w/u{i}", passage(200 + i), ts(3), "news") for i in range(4)]
          + [(f"x/u{i}", passage(300 + i), ts(3), "forum") for i in range(4, 6)])

    result = run(storage, D1, **{"dedup_near.domain_thresholds": {"forum": 0.9}})
    text = report_of(storage, result)

    assert "| 10 | 1 | 10.0% | 1 |" in text  # docs in, duplicates, rate, clusters
    assert "forum 0.90" in text
    for row in ("| w | 6 | 0 | 0.0% |", "| x | 4 | 1 | 25.0% |",
                "| news | 6 | 1 | 16.7% |", "| forum | 4 | 0 | 0.0% |"):
        assert row in text
    above, below = text.split("## Pairs just below")
    assert re.search(r"\*\*estimated Jaccard 0\.8\d+\*\* \(threshold 0\.70\): `x/a2` vs `w/a`", above)
    assert re.search(r"\*\*estimated Jaccard 0\.[78]\d+\*\* \(threshold 0\.90\): `x/b2` vs `w/b`", below)
    assert f"  - `w/b`: {' '.join(b.split())[:TEXT_CHARS - 1]}…" in below


def test_report_shows_history_pairs_with_their_date(storage):
    a = passage(33)
    stage(storage, "2026-02-28", [("w/a", a, ts(1))])
    stage(storage, D1, [("w/a2", edited(a), ts(1))])
    run(storage, "2026-02-28")

    text = report_of(storage, run(storage, D1))

    assert "`w/a2` vs `w/a` (history dt=2026-02-28)" in text
    assert f"  - `w/a`: {' '.join(a.split())[:TEXT_CHARS - 1]}…" in text  # the earlier date's staged text


def test_closest_picks_pairs_nearest_the_threshold_on_each_side():
    pairs = [SamplePair(s, 0.7, f"d{i}", "o") for i, s in enumerate([0.95, 0.71, 0.7, 0.69, 0.56, 0.8])]

    assert [p.similarity for p in closest(pairs, above=True, k=2)] == [0.7, 0.71]
    assert [p.similarity for p in closest(pairs, above=False, k=5)] == [0.69, 0.56]


def test_render_report_without_pairs_or_rows():
    rates = DuplicateRates()
    rates.add(pa.table({"source": ["s", "s"], "domain": [None, "law"]}), pa.array([False, True]))

    text = render_report("dedup_near", D1, method="m", measure="estimated Jaccard", thresholds="0.70", clusters=1,
                         rates=rates, above=[], below=[], texts={})

    assert "| 2 | 1 | 50.0% | 1 |" in text
    assert "| (none) | 1 | 0 | 0.0% |" in text and "| law | 1 | 1 | 100.0% |" in text
    assert text.count("*(no such pairs this run)*") == 2


def test_sample_texts_are_redacted_before_the_report_reaches_logs_and_mlflow(storage):
    a = "Write to jane.doe@example.com or call +1 (415) 555-0132 for the full story. " + passage(34)
    stage(storage, D1, [("w/a", a, ts(1)), ("w/a2", edited(a), ts(2))])

    text = report_of(storage, run(storage, D1))

    assert "`w/a2` vs `w/a`" in text
    assert "jane.doe@example.com" not in text and "555-0132" not in text
    assert "<EMAIL>" in text and "<PHONE>" in text


def test_render_report_redacts_what_it_is_given():
    rates = DuplicateRates()
    rates.add(pa.table({"source": ["s", "s"], "domain": ["d", "d"]}), pa.array([False, True]))
    pair = SamplePair(0.9, 0.7, "s/1", "s/2")

    text = render_report("dedup_near", D1, method="m", measure="estimated Jaccard", thresholds="0.70", clusters=1,
                         rates=rates, above=[pair], below=[],
                         texts={(None, "s/1"): "mail bob@example.org", (None, "s/2"): "card 4111 1111 1111 1111"})

    assert "bob@example.org" not in text and "4111" not in text
    assert "mail <EMAIL>" in text and "card <CREDIT_CARD>" in text
