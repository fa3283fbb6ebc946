"""The scoring framework: score stages, the score cache, deciding by rules and the composite, the report."""

from __future__ import annotations

import pytest

from dctp_tasks.config import load_config
from dctp_tasks.quality import registry
from dctp_tasks.quality.decide import decide_day
from dctp_tasks.quality.report import edges, report_path
from dctp_tasks.quality.scoring import score_day
from dctp_tasks.storage import Storage, staging_dir
from tests.conftest import rejects as staged_drops
from tests.conftest import stage_dedup_input, staged
from tests.quality.scorers_for_tests import XModelScorer, use_test_scorers

DAG, DT = "dag", "2026-05-01"
SCORERS = {"length": {}, "xmodel": {}}
ROWS = [
    ("w/short", "tiny text", None, "news"),  # 9 chars: too_short
    ("w/xs", "xxxxxxxxxx xxxxxxxxxx and some words", None, "news"),  # share of x 0.56: too_many_x
    ("w/ok", "A perfectly ordinary sentence of some length, long enough to pass.", None, "news"),
    ("f/mid", "Forum post of forty-one characters in all", None, "forum"),  # quality ≈ (0.41 + 1) / 2
    ("f/long", "A forum post that is long enough to get the full length score, well past one hundred characters "
               "in all.", None, "forum"),
]


@pytest.fixture(autouse=True)
def test_scorers(monkeypatch):
    use_test_scorers(monkeypatch)


@pytest.fixture
def storage(tmp_path) -> Storage:
    storage = Storage(tmp_path.as_uri())
    stage_dedup_input(storage, DAG, DT, "dedup_semantic", ROWS)
    return storage


def staged_version(storage, stage: str) -> str:
    from dctp_tasks.publish import current

    return current(storage, staging_dir(DAG, DT, stage))["version"]


def config(**overrides):
    # only the test scorers: not the default config's expert_quality classifier
    return load_config(overrides={"quality.scorers": SCORERS, "quality.classifiers": {}, **overrides})


def score_both(storage, cfg):
    cpu = score_day(storage, cfg, DAG, DT, "cpu")
    gpu = score_day(storage, cfg, DAG, DT, "gpu", input_stage=cpu.output_stage or cpu.stage, input_version=cpu.version)
    return cpu, gpu


def test_each_score_stage_adds_its_scorers_struct(storage):
    cpu, gpu = score_both(storage, config())
    assert (cpu.total, gpu.total) == (5, 5)
    assert (cpu.extra["scorers"], gpu.extra["scorers"]) == ("length", "xmodel")
    rows = staged(storage, DAG, DT, "score_models").to_pylist()
    by_id = {r["doc_id"]: r["scores"] for r in rows}
    assert by_id["w/short"]["length"] == {"chars": 9}
    assert by_id["w/xs"]["xmodel"]["share"] == pytest.approx(20 / 36, rel=1e-6)
    assert by_id["w/ok"]["xmodel"] == {"share": 0.0, "label": "none"}
    assert [s["name"] for s in rows[0]["lineage"]["steps"]][-2:] == ["score", "score_models"]


def test_unchanged_input_and_settings_reuse_scores_without_running_the_model(storage):
    score_both(storage, config())
    calls = XModelScorer.calls
    _, again = score_both(storage, config(**{"quality.thresholds": {"xmodel.too_many_x": 0.9}}))
    assert again.extra["cached"] == 1 and XModelScorer.calls == calls
    _, changed = score_both(storage, config(**{"quality.scorers": {"length": {}, "xmodel": {"letter": "o"}}}))
    assert changed.extra["cached"] == 0 and XModelScorer.calls == calls + 1


def test_no_scorer_of_a_kind_passes_its_input_through(storage):
    cfg = config(**{"quality.scorers": {"length": {}}})
    cpu = score_day(storage, cfg, DAG, DT, "cpu")
    result = score_day(storage, cfg, DAG, DT, "gpu", input_stage="score", input_version=cpu.version)
    assert result.as_dict()["output_stage"] == "score"
    assert result.version == staged_version(storage, "score")
    assert not storage.exists(staging_dir(DAG, DT, "score_models"))


def test_decide_filters_by_the_first_failing_rule_with_a_readable_detail(storage):
    cfg = config()
    score_both(storage, cfg)
    result = decide_day(storage, cfg, DAG, DT)
    rejects = {r["doc_id"]: r for r in staged_drops(storage, DAG, DT).to_pylist()}
    assert set(rejects) == {"w/short", "w/xs"}
    assert (rejects["w/short"]["reason"], rejects["w/short"]["detail"]) == ("too_short", "length.chars=9<20")
    assert (rejects["w/xs"]["reason"], rejects["w/xs"]["detail"]) == ("too_many_x", "xmodel.share=0.56>0.30")
    assert {r["outcome"] for r in rejects.values()} == {"filtered"}
    assert (result.total, result.kept, dict(result.dropped_by_reason)) == (5, 3, {"too_short": 1, "too_many_x": 1})
    kept = {r["doc_id"]: r for r in staged(storage, DAG, DT, "quality").to_pylist()}
    assert kept["f/long"]["quality"] == pytest.approx(1.0)
    assert kept["f/mid"]["quality"] == pytest.approx((41 / 100 + 1.0) / 2, rel=1e-6)
    assert {k: r["quality_verdict"] for k, r in kept.items()} == {"w/ok": "pass", "f/mid": "pass", "f/long": "pass"}


@pytest.mark.parametrize(("overrides", "dropped"), [
    pytest.param({"quality.thresholds": {"xmodel.too_many_x": None}}, {"w/short"}, id="rule_switched_off"),
    pytest.param({"quality.thresholds": {"length.too_short": 50}}, {"w/short", "w/xs", "f/mid"}, id="stricter"),
    pytest.param({"quality.domain_thresholds": {"forum": {"length.too_short": 50}}}, {"w/short", "w/xs", "f/mid"},
                 id="stricter_for_one_domain"),
    pytest.param({"quality.domain_thresholds": {"news": {"length.too_short": None}}}, {"w/xs"},
                 id="off_for_one_domain"),
    pytest.param({"quality.thresholds": {"xmodel.any_x": 0.0}}, {"w/short", "w/xs"}, id="default_off_rule_on"),
    pytest.param({"quality.min_quality": 0.8}, {"w/short", "w/xs", "f/mid"}, id="min_quality"),
])
def test_thresholds_change_what_is_filtered_without_rescoring(storage, overrides, dropped):
    score_both(storage, config())
    calls = XModelScorer.calls
    decide_day(storage, config(**overrides), DAG, DT)
    assert {r["doc_id"] for r in staged_drops(storage, DAG, DT).to_pylist()} == dropped
    assert XModelScorer.calls == calls


def test_low_quality_detail_and_review_band(storage):
    score_both(storage, config())
    decide_day(storage, config(**{"quality.min_quality": 0.8, "quality.review_below": 0.99}), DAG, DT)
    rejects = {r["doc_id"]: r for r in staged_drops(storage, DAG, DT).to_pylist()}
    assert (rejects["f/mid"]["reason"], rejects["f/mid"]["detail"]) == ("low_quality", "quality=0.70<0.80")
    kept = {r["doc_id"]: r["quality_verdict"] for r in staged(storage, DAG, DT, "quality").to_pylist()}
    assert kept == {"w/ok": "review", "f/long": "pass"}


def test_weights_shape_the_composite(storage):
    score_both(storage, config())
    decide_day(storage, config(**{"quality.weights": {"length": 3.0, "xmodel": 1.0}}), DAG, DT)
    kept = {r["doc_id"]: r["quality"] for r in staged(storage, DAG, DT, "quality").to_pylist()}
    assert kept["f/mid"] == pytest.approx((3 * 0.41 + 1.0) / 4, rel=1e-6)


def test_report_has_counts_rules_and_per_domain_histograms(storage):
    cfg = config()
    score_both(storage, cfg)
    result = decide_day(storage, cfg, DAG, DT)
    text = storage.read_bytes(storage.path(report_path(DT))).decode()
    assert "5 documents: pass 3 (60.0 %), review 0 (0.0 %), fail 2 (40.0 %)" in text
    assert "| `too_short` | 1 | 20.0 % |" in text
    assert "## xmodel.share" in text and "| bin | all | news | forum |" in text
    assert "| 0–0.1 | 3 (60.0 %) | 1 (33.3 %) | 2 (100.0 %) |" in text  # "tiny text" has one x in nine
    assert "## length.chars" in text and "## xmodel.label" not in text  # strings are not histogrammed
    pngs = result.extra["plots"].split(",")
    assert sorted(p.rsplit("/", 1)[1] for p in pngs) == ["length.png", "quality.png", "xmodel.png"]
    assert storage.read_bytes(storage.path(pngs[0]))[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.extra["mean_length.chars"] == pytest.approx((9 + 36 + 66 + 41 + 103) / 5)


def test_bin_edges():
    import numpy as np

    assert edges(np.array([0.05, 0.5, 1.0])).tolist() == pytest.approx([i / 10 for i in range(11)])
    assert edges(np.array([0.0, 2.0, 3.0])).tolist() == [0, 1, 2, 3, 4]
    wide = edges(np.arange(1000.0))
    assert wide[0] <= 10 and wide[-1] >= 989 and len(wide) <= 12


@pytest.mark.parametrize(("overrides", "message"), [
    ({"quality.scorers": {"nope": {}}}, "unknown scorer 'nope'"),
    ({"quality.thresholds": {"length.too_long": 3}}, "unknown rule length.too_long"),
    ({"quality.domain_thresholds": {"news": {"xmodel.nope": 1}}}, "quality.domain_thresholds.news: unknown rule"),
    ({"quality.weights": {"perplexity": 1}}, "perplexity is not an enabled scorer"),
    ({"quality.scorers": {"length": {"full_at": "many"}}}, "quality.scorers.length"),
])
def test_bad_quality_config_is_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)


def test_an_empty_day_scores_and_decides_to_an_empty_output(tmp_path):
    storage = Storage(tmp_path.as_uri())
    stage_dedup_input(storage, DAG, DT, "dedup_semantic", [])
    cfg = config()
    cpu, gpu = score_both(storage, cfg)
    result = decide_day(storage, cfg, DAG, DT)
    assert (cpu.total, gpu.total, result.total, result.kept) == (0, 0, 0, 0)
    assert staged(storage, DAG, DT, "quality").num_rows == 0
    assert "0 documents" in storage.read_bytes(storage.path(report_path(DT))).decode()


def test_a_scorer_whose_code_changed_rescores_even_at_the_same_package_version(storage, tmp_path, monkeypatch):
    import importlib
    import sys

    source = (tmp_path / "edited_scorer.py")
    code = '''
import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from dctp_tasks.quality.base import Field, Scorer


class EditedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EditedScorer(Scorer):
    name = "edited"

    def __init__(self, config):
        self.fields, self.rules = [Field("value", pa.float32(), "a constant")], []

    def score(self, batch):
        return {"value": np.full(batch.num_rows, VALUE, np.float32)}
'''
    source.write_text(code.replace("VALUE", "1.0"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.BUILTIN, "edited", ("edited_scorer", "EditedScorer", "EditedConfig"))
    cfg = config(**{"quality.scorers": {"edited": {}}})

    def values(result) -> set[float]:
        rows = staged(storage, DAG, DT, "score").column("scores").to_pylist()
        assert result.version == staged_version(storage, "score")
        return {r["edited"]["value"] for r in rows}

    first = score_day(storage, cfg, DAG, DT, "cpu")
    assert score_day(storage, cfg, DAG, DT, "cpu").extra["cached"] == 1 and values(first) == {1.0}
    source.write_text(code.replace("VALUE", "2.50"))  # a fix to the scorer, released under the same version
    importlib.reload(sys.modules["edited_scorer"])
    registry._load.cache_clear()
    again = score_day(storage, cfg, DAG, DT, "cpu")

    assert again.extra["cached"] == 0 and values(again) == {2.5}
