"""``dctp report``, ``dctp rescore`` (re-decide from stored scores, optionally re-export) and ``dctp train-scorer``."""

from __future__ import annotations

import csv

import pytest
import yaml

from dctp_tasks.cli import main
from dctp_tasks.config import DEFAULT_CONFIG_PATH, load_config
from dctp_tasks.export import METADATA_PREFIX, Staged, committed_ledger, export_day, open_table, rows_for_dt
from dctp_tasks.quality import registry
from dctp_tasks.quality.decide import decide_day
from dctp_tasks.quality.scoring import score_day
from dctp_tasks.storage import Storage
from tests.conftest import rejects as staged_drops
from tests.conftest import stage_dedup_input
from tests.quality.scorers_for_tests import XModelScorer
from tests.quality.test_framework import ROWS

DAG, DT = "dctp_daily", "2026-05-01"


@pytest.fixture
def storage(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.BUILTIN, "length", ("tests.quality.scorers_for_tests", "LengthScorer",
                                                      "LengthConfig"))
    monkeypatch.setitem(registry.BUILTIN, "xmodel", ("tests.quality.scorers_for_tests", "XModelScorer",
                                                      "XModelConfig"))
    settings = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    settings["quality"] = {"scorers": {"length": {}, "xmodel": {}}, "thresholds": {"xmodel.too_many_x": 0.5}}
    settings["tracking"] = {"enabled": False}
    path = tmp_path / "dctp.yaml"
    path.write_text(yaml.safe_dump(settings))
    monkeypatch.setenv("DCTP_CONFIG", str(path))
    storage = Storage((tmp_path / "data").as_uri())
    monkeypatch.setenv("DCTP_DATA_ROOT", storage.root)
    stage_dedup_input(storage, DAG, DT, "dedup_semantic", ROWS)
    config = load_config()
    score_day(storage, config, DAG, DT, "cpu")
    score_day(storage, config, DAG, DT, "gpu")
    result = decide_day(storage, config, DAG, DT)
    decided = Staged(DAG, "quality")
    export_day(storage, config, DAG, DT, run_id="scheduled__1", rows=decided, ledger=[decided], ingested=5,
               metadata={k: result.extra[k] for k in ("scores_dag_id", "scores_stage", "scores_version")})
    return storage


def read_rejects(storage, dt):
    """The ledger of the date's latest commit."""
    return committed_ledger(storage, "curated", dt)[1]


def test_report_prints_the_dates_score_report(storage, capsys):
    assert main(["report", DT]) == 0
    out = capsys.readouterr().out
    assert "# Quality scores, dt=2026-05-01" in out and "5 documents: pass 3" in out
    assert "| `too_short` | 1 | 20.0 % |" in out and "too_many_x" in out


def test_rescore_with_export_commits_a_new_version_without_running_models(storage, capsys):
    calls = XModelScorer.calls
    assert main(["rescore", DT, "--set", "length.too_short=50", "--set", "xmodel.too_many_x=off", "--export"]) == 0
    out = capsys.readouterr().out
    assert XModelScorer.calls == calls, "re-deciding must not call the model"
    assert "committed as version 2" in out and "balanced" in out.lower()
    table = open_table(storage, "curated")
    assert table.version() == 2 and rows_for_dt(table, DT) == 2
    latest = max(table.history(), key=lambda c: c["version"])
    assert latest[f"{METADATA_PREFIX}run_id"].startswith("rescore__")
    assert latest[f"{METADATA_PREFIX}ingested"] == "5"
    reasons = {r["doc_id"]: r["reason"] for r in read_rejects(storage, DT).to_pylist()}
    assert reasons == {"w/short": "too_short", "w/xs": "too_short", "f/mid": "too_short"}


def test_rescore_per_domain_without_export_changes_no_version(storage, capsys):
    assert main(["rescore", DT, "--set", "forum:length.too_short=50", "--set", "min_quality=0"]) == 0
    assert "not exported: pass --export" in capsys.readouterr().out
    assert open_table(storage, "curated").version() == 1
    # the committed ledger is untouched; the re-decision's own drops are staged under dctp_rescore
    assert {r["doc_id"] for r in read_rejects(storage, DT).to_pylist()} == {"w/short", "w/xs"}
    assert set(staged_drops(storage, "dctp_rescore", DT).column("doc_id").to_pylist()) == {"w/short", "w/xs", "f/mid"}
    assert set(staged_drops(storage, DAG, DT).column("doc_id").to_pylist()) == {"w/short", "w/xs"}


@pytest.mark.parametrize(("setting", "message"), [
    ("length.too_short", "expected KEY=VALUE"),
    ("length.too_long=3", "unknown rule length.too_long"),
    ("length.too_short=abc", "could not convert"),
])
def test_bad_rescore_settings_are_refused(storage, capsys, setting, message):
    assert main(["rescore", DT, "--set", setting]) == 2
    assert message in capsys.readouterr().err


def test_report_of_an_unscored_date_is_a_clear_error(storage, capsys):
    assert main(["report", "2026-05-02"]) == 2
    assert "no score report for dt=2026-05-02" in capsys.readouterr().err


def test_train_scorer_stores_a_classifier_usable_by_name(storage, tmp_path, capsys):
    data = tmp_path / "labels.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(20):
            writer.writerow([f"Great product number {i}, I love it and would buy it again.", 1])
            writer.writerow([f"Terrible service on order {i}; rude staff and a broken item.", 0])
    assert main(["--json", "train-scorer", "reviews", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert '"roc_auc"' in out
    from dctp_tasks.publish import resolve

    assert storage.exists(resolve(storage, "state/classifiers/reviews"), "model.json")
    config = load_config(overrides={"quality.classifiers": {"reviews": {"positive_is_good": True}}})
    assert [s.name for s in registry.build_scorers(config.quality)][-1] == "classifier_reviews"
