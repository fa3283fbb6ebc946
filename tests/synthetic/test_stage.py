"""The generate_synthetic stage on a real day (AG News, science kept short) with a deterministic OpenAI-compatible
server: the plan and its cap, provenance, every row in the ledger, each safeguard firing on the failure it guards
against, resuming after a crash without paying twice, and re-deciding from stored candidates without a model call."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.compute as pc
import pytest

from dctp_tasks.config import load_config
from dctp_tasks.ledger import ledger_report
from dctp_tasks.staging import stage_rejects, stage_rows
from dctp_tasks.synthetic.generators import EndpointUnavailable
from dctp_tasks.synthetic.plan import allowed_synthetic
from dctp_tasks.synthetic.stage import CANDIDATES, generate_synthetic_day, redecide_synthetic_day
from tests.synthetic.conftest import DAG, DT, copy_day, decided_day, settings


def generate(storage, llm, dt: str = DT, **overrides):
    config = load_config(overrides=settings(**overrides))
    return generate_synthetic_day(storage, config, DAG, dt, input_stage="quality",
                                  endpoints={"dctp_llm": llm.endpoint})


def rows_of(storage, result):
    return storage.read_table(stage_rows(storage, DAG, DT, result.output_stage or result.stage, result.version))


def reasons(storage, result) -> dict[str, int]:
    table = stage_rejects(storage, DAG, DT, result.stage, result.version)
    return dict(zip(*np.unique(table.column("reason").to_numpy(zero_copy_only=False), return_counts=True)))


@pytest.fixture
def day(tmp_path, decided_template):
    return copy_day(decided_template, tmp_path / "data")


def test_short_domain_gets_grounded_rows_with_provenance_and_every_row_is_accounted(day, llm):
    storage, decided = day
    result = generate(storage, llm)
    real = decided.kept
    assert result.extra["real"] == real
    plan_science = result.extra["planned"]
    assert plan_science > 0 and result.extra["generated"] == plan_science
    rows = rows_of(storage, result)
    synthetic = rows.filter(pc.equal(rows.column("synthetic"), True))
    assert synthetic.num_rows == result.extra["synthetic"] > 0
    assert rows.num_rows == real + synthetic.num_rows
    # provenance: the seed domain, the generator, the template, the decoding, the judge, the lineage
    for row in synthetic.to_pylist():
        assert row["source"] == "synthetic" and row["domain"] == "science"
        assert row["doc_id"].startswith("synthetic/") and row["prompt"] and row["response"]
        assert row["text"] == f"{row['prompt']}\n\n{row['response']}"
        gen = row["generation"]
        assert (gen["backend"], gen["model"], gen["template"], gen["template_version"]) == \
            ("openai", "test-model", "qa", "1")
        assert json.loads(gen["decoding"])["temperature"] == 0.7
        assert gen["judge_score"] == 8 and gen["grounding"] == 1.0
        assert row["lineage"]["parents"] == [gen["seed_doc_id"], gen["chunk_id"]]
        assert gen["chunk_id"].startswith(gen["seed_doc_id"] + "#")
        assert row["quality_verdict"] in ("pass", "review") and row["scores"]["heuristics"] is not None
    seeds = {r["generation"]["seed_doc_id"] for r in synthetic.to_pylist()}
    real_rows = rows.filter(pc.equal(rows.column("synthetic"), False))
    science = set(real_rows.filter(pc.equal(real_rows.column("domain"), "science")).column("doc_id").to_pylist())
    assert seeds <= science  # seeds are the domain's real, kept rows
    # the ledger: every generated row exported or rejected with a synthetic_* reason
    rejected = reasons(storage, result)
    assert sum(rejected.values()) + synthetic.num_rows == result.extra["generated"]
    assert all(r.startswith("synthetic_") for r in rejected)
    report = ledger_report(stage_rejects(storage, DAG, DT, result.stage, result.version), DT, real,
                           rows.num_rows, synthesized=result.extra["generated"])
    assert report.balanced
    text = storage.read_bytes(storage.path(result.extra["report"])).decode()
    assert "| science |" in text and "50% of the largest domain" in text


def test_the_synthetic_share_never_exceeds_its_cap(day, llm):
    storage, decided = day
    result = generate(storage, llm, **{"synthetic.max_share": 0.02, "synthetic.min_grounding": 0.0})
    cap = allowed_synthetic(decided.kept, 0.02)
    assert result.extra["planned"] == result.extra["allowed"] == cap
    assert result.extra["synthetic"] <= cap
    assert result.extra["synthetic"] / (result.extra["real"] + result.extra["synthetic"]) <= 0.02


def test_over_cap_after_a_redecision_on_fewer_real_rows_is_trimmed(day, llm):
    storage, decided = day
    first = generate(storage, llm, **{"synthetic.max_share": 0.5, "synthetic.min_share_of_largest": 1.0,
                                      "synthetic.rouge_threshold": 1.0})
    assert first.extra["synthetic"] > 2
    # the same candidates against a day whose real rows were cut to 4 science articles: 4 * 0.2 / 0.8 = 1 allowed
    from tests.conftest import publish_stage

    real = storage.read_table(stage_rows(storage, DAG, DT, "quality"))
    few = real.filter(pc.equal(real.column("domain"), "science")).slice(0, 4)
    version = publish_stage(storage, DAG, DT, "quality_few", few)
    config = load_config(overrides=settings(**{"synthetic.max_share": 0.2, "synthetic.rouge_threshold": 1.0}))
    again = redecide_synthetic_day(storage, config, DAG, DT, input_stage="quality_few", input_version=version,
                                   candidates_dag_id=DAG, candidates_version=first.version)
    assert again.extra["synthetic"] == 1
    assert reasons(storage, again)["synthetic_over_cap"] == first.extra["synthetic"] - 1


def test_nothing_short_passes_the_day_through(day, llm):
    storage, decided = day
    result = generate(storage, llm, **{"synthetic.min_share_of_largest": 0.05})
    assert result.output_stage == "quality" and result.extra["planned"] == 0
    assert llm.requests == []


def test_switched_off_generates_nothing(day, llm):
    storage, _ = day
    result = generate(storage, llm, **{"synthetic.enabled": False})
    assert result.output_stage == "quality" and llm.requests == []
    assert "switched off" in storage.read_bytes(storage.path(result.extra["report"])).decode()


def test_a_retried_task_resumes_and_never_pays_twice(day, llm, fast_backoff, tmp_path, decided_template):
    storage, _ = day
    llm.fail_after = 2  # the first batch (2 prompts) completes, then the endpoint goes down
    with pytest.raises(EndpointUnavailable):
        generate(storage, llm)
    first_try = len(llm.generation_requests())
    batch_prompts = [r["messages"][-1]["content"] for r in llm.generation_requests()[:2]]
    llm.fail_after = None
    llm.requests.clear()
    resumed = generate(storage, llm)
    asked = [r["messages"][-1]["content"] for r in llm.generation_requests()]
    assert not set(batch_prompts) & set(asked)  # the stored batch was read back, not generated again
    assert len(asked) == resumed.extra["chunks"] - 2 and first_try >= 3
    assert resumed.extra["generate_reused_batches"] == 1
    # the same rows as a run that never failed
    other, _ = copy_day(decided_template, tmp_path / "other")
    clean = generate(other, llm)
    assert sorted(rows_of(storage, resumed).column("doc_id").to_pylist()) == \
        sorted(rows_of(other, clean).column("doc_id").to_pylist())
    # a re-run of the date calls no model at all
    llm.requests.clear()
    again = generate(storage, llm)
    assert llm.requests == [] and again.extra["generate_reused_batches"] == again.extra["generate_batches"]
    assert again.extra["synthetic"] == resumed.extra["synthetic"]


def test_copies_of_the_seed_are_rejected(day, llm):
    storage, _ = day
    llm.mode = "copy"
    result = generate(storage, llm)
    assert result.extra["synthetic"] == 0
    assert reasons(storage, result) == {"synthetic_copies_seed": result.extra["generated"]}
    detail = stage_rejects(storage, DAG, DT, result.stage, result.version).column("detail").to_pylist()
    assert all("copies its chunk" in d or "near copy of news/" in d for d in detail)


def test_generated_duplicates_of_each_other_are_rejected_but_the_first(day, llm):
    storage, _ = day
    llm.mode = "same"  # one answer for every passage: not grounded, so grounding is switched off here
    result = generate(storage, llm, **{"synthetic.min_grounding": 0.0})
    assert result.extra["synthetic"] == 1
    assert reasons(storage, result) == {"synthetic_copies_seed": result.extra["generated"] - 1}
    detail = stage_rejects(storage, DAG, DT, result.stage, result.version).column("detail").to_pylist()
    assert all("copy of generated synthetic/" in d or "ROUGE-L" in d for d in detail)


def test_ungrounded_and_unparsable_outputs_are_malformed(day, llm):
    storage, _ = day
    llm.mode = "same"
    result = generate(storage, llm)
    assert reasons(storage, result) == {"synthetic_malformed": result.extra["generated"]}
    llm.mode = "garbage"
    result = generate(storage, llm)
    assert reasons(storage, result) == {"synthetic_malformed": result.extra["chunks"]}  # one row per empty output


def test_a_shifted_batch_is_held_back_and_a_faithful_one_is_not(day, llm):
    storage, _ = day
    tested = {"synthetic.shift_min_rows": 5, "synthetic.min_grounding": 0.0, "synthetic.max_share": 0.3}
    faithful = generate(storage, llm, **tested)
    assert "synthetic_distribution_shift" not in reasons(storage, faithful) and faithful.extra["synthetic"] >= 5
    llm.mode = "boilerplate"  # every answer drowned in the same disclaimer; another model, so nothing is reused
    shifted = generate(storage, llm, **tested, **{"synthetic.generator": {
        "backend": "openai", "model": "drifting-model", "batch_size": 2, "max_retries": 1}})
    assert shifted.extra["synthetic"] == 0 and shifted.extra["batches_held"] == 1
    assert shifted.extra["collapse_alarms"] == 1  # and its distinct-2 collapsed: the alarm fires (warn)
    detail = stage_rejects(storage, DAG, DT, shifted.stage, shifted.version).filter(
        pc.equal(stage_rejects(storage, DAG, DT, shifted.stage, shifted.version).column("reason"),
                 "synthetic_distribution_shift")).column("detail").to_pylist()
    assert detail and all("held back" in d and "vocabulary JS" in d for d in detail)


def test_low_judge_scores_are_low_quality_and_a_redecision_needs_no_model(day, llm):
    storage, _ = day
    llm.judge_score = 4
    result = generate(storage, llm)
    assert result.extra["synthetic"] == 0 and "synthetic_low_quality" in reasons(storage, result)
    version_dir = stage_rows(storage, DAG, DT, result.stage, result.version).rsplit("/", 1)[0]
    assert storage.count_rows(version_dir, CANDIDATES) == result.extra["generated"]
    llm.requests.clear()
    config = load_config(overrides=settings(**{"synthetic.judge_threshold": 3}))
    again = redecide_synthetic_day(storage, config, DAG, DT, input_stage="quality", input_version=None,
                                   candidates_dag_id=DAG, candidates_version=result.version)
    assert llm.requests == [] and again.extra["synthetic"] > 0
    details = stage_rejects(storage, DAG, DT, again.stage, again.version).column("detail").to_pylist()
    assert not any("judge" in d for d in details)


def test_a_later_date_may_not_copy_what_an_earlier_one_accepted(tmp_path, news_rows, llm):
    later = "2026-03-03"
    storage, _, _ = decided_day(tmp_path / "data", news_rows)
    first = generate(storage, llm)
    assert first.extra["synthetic"] > 0
    decided_day(tmp_path / "data", news_rows, dt=later)  # the same articles again: the server answers the same
    again = generate(storage, llm, dt=later)
    assert again.extra["synthetic"] == 0
    rejects = stage_rejects(storage, DAG, later, again.stage, again.version).to_pylist()
    copies = [r for r in rejects if r["reason"] == "synthetic_copies_seed"]
    accepted_first = set(rows_of(storage, first).filter(pc.equal(rows_of(storage, first).column("synthetic"), True))
                         .column("doc_id").to_pylist())
    assert len(copies) >= first.extra["synthetic"]
    assert any(r["detail"].split(":")[0].removeprefix("near copy of ") in accepted_first for r in copies)
    # switched off, the earlier dates' rows are not compared: the same pairs are accepted again
    third = generate(storage, llm, dt=later, **{"synthetic.history_days": 0})
    assert third.extra["synthetic"] == first.extra["synthetic"]


def test_instruction_domains_use_their_template_and_a_separate_judge_grades(day, llm):
    storage, _ = day
    judge = {"backend": "openai", "model": "judge-model", "temperature": 0.0, "batch_size": 4}
    result = generate(storage, llm, **{"synthetic.templates": {"science": "instruction"}, "synthetic.judge": judge})
    rows = rows_of(storage, result)
    synthetic = rows.filter(pc.equal(rows.column("synthetic"), True)).to_pylist()
    assert synthetic and {(r["generation"]["template"], r["generation"]["judge_model"]) for r in synthetic} == \
        {("instruction", "judge-model")}
    asked = llm.generation_requests()
    assert {r["model"] for r in asked} == {"test-model"} and "Instruction: <the request>" in \
        asked[0]["messages"][-1]["content"]
    assert {r["model"] for r in llm.judge_requests()} == {"judge-model"}
    assert {r["temperature"] for r in llm.judge_requests()} == {0.0}


def test_the_real_datas_rules_apply_unless_exempted_and_the_quality_gate(day, llm):
    storage, _ = day
    # a language-ID confidence no text reaches: every generated row fails the rule, as a real row would
    strict = {"quality.thresholds": {"heuristics.too_few_words": 10, "language.uncertain_language": 1.01}}
    held = generate(storage, llm, **strict)
    assert held.extra["synthetic"] == 0
    low = stage_rejects(storage, DAG, DT, held.stage, held.version).filter(
        pc.equal(stage_rejects(storage, DAG, DT, held.stage, held.version).column("reason"), "synthetic_low_quality"))
    details = low.column("detail").to_pylist()
    assert low.num_rows and all(d.startswith("rule ") for d in details)
    assert sum("rule language.uncertain_language" in d for d in details) >= low.num_rows - 2
    exempt = generate(storage, llm, **strict, **{"synthetic.exempt_rules": ["language.uncertain_language"]})
    assert exempt.extra["synthetic"] > 0
    gated = generate(storage, llm, **{"synthetic.quality_gate": 0.99})
    assert gated.extra["synthetic"] == 0 and "synthetic_low_quality" in reasons(storage, gated)
