"""Planning, seeding and prompting for synthetic generation: exact plans under each limit, seed order and chunk
windows, template loading and the parsing of what a model writes back."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dctp_tasks.config import SyntheticConfig
from dctp_tasks.synthetic.plan import allowed_synthetic, plan_generation, render_plan
from dctp_tasks.synthetic.prompts import TemplateError, load_template, parse_score
from dctp_tasks.synthetic.seeds import chunk_text, rank_seeds, seed_chunks

PROMPTS = Path(__file__).resolve().parents[2] / "include" / "prompts"
OPEN = dict(daily_budget=100_000, per_domain_cap=100_000, max_share=0.9)
"""Limits that never bind, so a test sees only the one it sets."""


def cfg(**values) -> SyntheticConfig:
    return SyntheticConfig(**{**OPEN, **values})


def planned(plan) -> dict[str, int]:
    return {d.domain: d.planned for d in plan.domains}


# plan ------------------------------------------------------------------------------------------------------------

def test_target_share_of_the_day_sets_the_shortfall():
    plan = plan_generation({"news": 900, "legal": 50, "sports": 50}, cfg(targets={"legal": 0.1}))
    [legal] = plan.domains
    assert (legal.domain, legal.real, legal.target, legal.shortfall, legal.planned) == ("legal", 50, 100, 50, 50)
    assert legal.why == "target 10.0% of 1,000"
    assert plan.real_total == 1000 and plan.planned == 50


def test_a_domain_at_its_target_is_not_planned():
    plan = plan_generation({"news": 900, "legal": 100}, cfg(targets={"legal": 0.1}))
    assert plan.domains == [] and plan.planned == 0


def test_target_is_read_as_written_not_as_its_float_product():
    """0.07 x 100 is 7.000…01 in floats: the target stays 7 rows, not 8."""
    plan = plan_generation({"news": 95, "legal": 5}, cfg(targets={"legal": 0.07}))
    assert [(d.target, d.shortfall) for d in plan.domains] == [(7, 2)]
    plan = plan_generation({"big": 100, "small": 5}, cfg(min_share_of_largest=0.07))
    assert [(d.domain, d.target, d.shortfall) for d in plan.domains] == [("small", 7, 2)]


def test_min_share_of_largest_raises_every_small_domain():
    plan = plan_generation({"big": 1000, "mid": 600, "small": 100, "tiny": 1}, cfg(min_share_of_largest=0.5))
    assert [(d.domain, d.target, d.shortfall, d.planned) for d in plan.domains] == \
        [("small", 500, 400, 400), ("tiny", 500, 499, 499)]
    assert {d.why for d in plan.domains} == {"50% of the largest domain (1,000)"}


def test_the_larger_of_target_and_min_share_wins_with_its_reason():
    plan = plan_generation({"big": 1000, "a": 10, "b": 10},
                           cfg(targets={"a": 0.4, "b": 0.1}, min_share_of_largest=0.2))
    by_domain = {d.domain: d for d in plan.domains}
    assert (by_domain["a"].target, by_domain["a"].why) == (408, "target 40.0% of 1,020")
    assert (by_domain["b"].target, by_domain["b"].why) == (200, "20% of the largest domain (1,000)")


def test_per_domain_cap_bounds_each_domain():
    plan = plan_generation({"big": 1000, "small": 100, "mid": 450}, cfg(min_share_of_largest=0.5, per_domain_cap=100))
    assert planned(plan) == {"mid": 50, "small": 100}
    small = plan.domains[1]
    assert small.why == "50% of the largest domain (1,000); capped at per_domain_cap 100"
    assert "capped" not in plan.domains[0].why


def test_daily_budget_splits_by_largest_remainder():
    # shortfalls 5, 3, 2 for a budget of 7: shares 3.5, 2.1, 1.4 -> floors 3, 2, 1 and the spare row to the .5
    plan = plan_generation({"big": 1000, "a": 495, "b": 497, "c": 498}, cfg(min_share_of_largest=0.5, daily_budget=7))
    assert planned(plan) == {"a": 4, "b": 2, "c": 1}
    assert plan.budget == 7 and plan.planned == 7
    assert [d.why.split("; ")[-1] for d in plan.domains] == \
        ["daily_budget leaves 4 of 5", "daily_budget leaves 2 of 3", "daily_budget leaves 1 of 2"]


def test_equal_remainders_go_to_the_first_domains():
    # shortfalls 4, 1, 1 for 2 rows: shares 4/3, 1/3, 1/3 leave three equal remainders; the first domain takes the row
    plan = plan_generation({"big": 1000, "a": 496, "b": 499, "c": 499}, cfg(min_share_of_largest=0.5, daily_budget=2))
    assert planned(plan) == {"a": 2, "b": 0, "c": 0}


def test_max_share_binds_before_the_budget():
    plan = plan_generation({"big": 900, "small": 100}, cfg(min_share_of_largest=0.5, max_share=0.1, daily_budget=1000))
    assert (plan.allowed_total, plan.budget, plan.planned) == (111, 111, 111)
    [small] = plan.domains
    assert small.why.endswith("; max_share 10% leaves 111 of 350")


def test_budget_and_max_share_split_several_domains():
    plan = plan_generation({"big": 600, "a": 100, "b": 200, "c": 200},
                           cfg(min_share_of_largest=0.5, max_share=0.2, daily_budget=1000))
    assert plan.allowed_total == 275  # 275 / (1100 + 275) = 20 %
    # shortfalls 200, 100, 100 share 275: 137.5, 68.75, 68.75 -> the two spare rows to the larger remainders
    assert planned(plan) == {"a": 137, "b": 69, "c": 69}
    assert all("max_share 20% leaves" in d.why for d in plan.domains)


def test_a_target_domain_without_real_rows_is_listed_and_planned_nothing():
    plan = plan_generation({"news": 100}, cfg(targets={"legal": 0.2}))
    [legal] = plan.domains
    assert (legal.domain, legal.real, legal.planned, legal.why) == ("legal", 0, 0, "no real rows today to seed from")
    assert plan.planned == 0


def test_disabled_or_empty_day_plans_nothing():
    off = plan_generation({"big": 1000, "small": 1}, cfg(enabled=False, min_share_of_largest=0.5))
    assert off.domains == [] and off.planned == 0 and off.real_total == 1001
    empty = plan_generation({}, cfg(targets={"legal": 0.5}))
    assert empty.domains == [] and empty.planned == 0 and empty.allowed_total == 0
    nothing = plan_generation({"big": 1000, "small": 1}, cfg())  # neither targets nor min_share
    assert nothing.domains == []


@pytest.mark.parametrize("max_share", [0.0, 0.01, 0.1, 0.25, 0.3, 0.5, 0.75, 0.9, 0.99])
def test_allowed_synthetic_is_the_largest_count_within_max_share(max_share):
    share = Fraction(repr(max_share))  # the share as written, compared exactly
    for real in [*range(0, 200), 997, 1000, 1001, 4096, 9999, 10_000]:
        s = allowed_synthetic(real, max_share)
        assert s >= 0
        assert s == 0 or Fraction(s, real + s) <= share, (real, max_share, s)
        if real > 0:
            assert Fraction(s + 1, real + s + 1) > share, (real, max_share, s)
    assert allowed_synthetic(1000, 0.1) == 111 and allowed_synthetic(9, 0.1) == 1 and allowed_synthetic(3, 0.25) == 1


def test_planned_never_exceeds_what_the_partition_may_hold():
    rng = np.random.default_rng(7)
    for _ in range(300):
        counts = {f"d{i}": int(rng.integers(0, 2000)) for i in range(int(rng.integers(1, 6)))}
        config = SyntheticConfig(min_share_of_largest=float(rng.choice([0.1, 0.5, 1.0])),
                                 targets={"d0": float(rng.choice([0.0, 0.3, 0.6]))},
                                 max_share=float(rng.choice([0.0, 0.05, 0.1, 0.5])),
                                 daily_budget=int(rng.integers(0, 3000)), per_domain_cap=int(rng.integers(0, 800)))
        plan = plan_generation(counts, config)
        assert plan.planned <= plan.budget <= plan.allowed_total
        assert plan.planned <= config.daily_budget
        assert all(0 <= d.planned <= min(d.shortfall, config.per_domain_cap) for d in plan.domains)
        total = sum(counts.values())
        assert plan.planned == 0 or Fraction(plan.planned, total + plan.planned) <= Fraction(repr(config.max_share))


def test_render_plan_escapes_the_domain():
    plan = plan_generation({"big": 100, "<b>x|y</b>": 1}, cfg(min_share_of_largest=0.5))
    lines = render_plan(plan)
    row = next(line for line in lines if "x" in line and line.startswith("| "))
    assert "<b>" not in "\n".join(lines)
    assert row.startswith("| &lt;b&gt;x\\|y&lt;/b&gt; | 1 | 50 | 49 | 49 |")
    cells = row.replace("\\|", "").split("|")
    assert len(cells) == 8  # six cells between seven column bars, the escaped one not among them
    assert render_plan(plan_generation({"a": 1}, cfg()))[-1].startswith("No domain is short of data")


# seeds -----------------------------------------------------------------------------------------------------------

def make_facts(rows: list[dict]) -> pa.Table:
    """Seed facts: ``doc_id`` plus any of domain (default "sci"), source ("web"), quality, quality_verdict ("pass"),
    consensus, synthetic (False)."""
    defaults = {"domain": "sci", "source": "web", "quality": 0.5, "quality_verdict": "pass", "consensus": None,
                "synthetic": False}
    rows = [{**defaults, **row} for row in rows]
    return pa.table({
        "doc_id": pa.array([r["doc_id"] for r in rows], pa.string()),
        "domain": pa.array([r["domain"] for r in rows], pa.string()),
        "source": pa.array([r["source"] for r in rows], pa.string()),
        "quality": pa.array([r["quality"] for r in rows], pa.float32()),
        "quality_verdict": pa.array([r["quality_verdict"] for r in rows], pa.string()),
        "consensus": pa.array([r["consensus"] for r in rows], pa.string()),
        "synthetic": pa.array([r["synthetic"] for r in rows], pa.bool_()),
    })


def seed_ids(facts: pa.Table, domain: str = "sci", strata: list[str] | None = None, limit: int = 100) -> list[str]:
    rows = rank_seeds(facts, domain, strata if strata is not None else [], limit)
    return facts.column("doc_id").take(pa.array(rows, pa.int64())).to_pylist()


def test_seeds_are_real_passing_rows_of_the_domain_best_quality_first():
    facts = make_facts([
        {"doc_id": "mid", "quality": 0.6},
        {"doc_id": "generated", "quality": 0.99, "synthetic": True},
        {"doc_id": "review", "quality": 0.9, "quality_verdict": "review"},
        {"doc_id": "fail", "quality": 0.95, "quality_verdict": "fail"},
        {"doc_id": "unjudged", "quality": 0.9, "quality_verdict": None},
        {"doc_id": "other-domain", "quality": 0.9, "domain": "law"},
        {"doc_id": "top", "quality": 0.8},
        {"doc_id": "no-quality", "quality": None},
    ])
    assert seed_ids(facts) == ["top", "mid", "no-quality"]


def test_with_quality_off_every_real_row_seeds():
    facts = make_facts([{"doc_id": "b", "quality": None, "quality_verdict": None},
                        {"doc_id": "a", "quality": None, "quality_verdict": None},
                        {"doc_id": "s", "quality_verdict": None, "synthetic": True}])
    assert seed_ids(facts) == ["a", "b"]  # ties by doc id


def test_consensus_good_comes_before_higher_quality():
    facts = make_facts([{"doc_id": "high", "quality": 0.95}, {"doc_id": "good-low", "quality": 0.55,
                                                               "consensus": "good"},
                        {"doc_id": "bad-high", "quality": 0.99, "consensus": "bad"},
                        {"doc_id": "good-high", "quality": 0.7, "consensus": "good"}])
    assert seed_ids(facts) == ["good-high", "good-low", "bad-high", "high"]


def test_small_strata_are_interleaved_before_the_bulk():
    big = [{"doc_id": f"web{i}", "source": "web", "quality": 0.9 - i / 100} for i in range(5)]
    small = [{"doc_id": f"forum{i}", "source": "forum", "quality": 0.6 - i / 100} for i in range(2)]
    facts = make_facts(big + small)
    assert seed_ids(facts, strata=["domain", "source"]) == \
        ["forum0", "web0", "forum1", "web1", "web2", "web3", "web4"]
    assert seed_ids(facts, strata=[]) == ["web0", "web1", "web2", "web3", "web4", "forum0", "forum1"]
    assert seed_ids(facts, strata=["domain", "source"], limit=3) == ["forum0", "web0", "forum1"]


def test_strata_interleave_within_each_consensus_tier():
    facts = make_facts([{"doc_id": "web-good", "consensus": "good"}, {"doc_id": "web1"}, {"doc_id": "web2"},
                        {"doc_id": "forum1", "source": "forum"}, {"doc_id": "forum2", "source": "forum"},
                        {"doc_id": "web3"}])
    # forum (2 rows) is smaller than web (4): its k-th row comes before web's k-th
    assert seed_ids(facts, strata=["source"]) == ["web-good", "forum1", "web1", "forum2", "web2", "web3"]


def test_no_seed_is_an_empty_array():
    assert seed_ids(make_facts([{"doc_id": "x", "quality_verdict": "fail"}])) == []


WORDS10 = " ".join(f"w{i}" for i in range(10))


@pytest.mark.parametrize(("words", "overlap", "expected"), [
    (4, 1, ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9"]),
    (4, 0, ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]),
    (5, 2, ["w0 w1 w2 w3 w4", "w3 w4 w5 w6 w7", "w6 w7 w8 w9"]),
    (10, 3, [WORDS10]),
    (20, 5, [WORDS10]),
    (3, 2, [" ".join(f"w{j}" for j in range(i, i + 3)) for i in range(8)]),
])
def test_chunk_windows(words, overlap, expected):
    assert chunk_text(WORDS10, words, overlap) == expected


def test_chunks_keep_the_original_spacing():
    text = "  Alpha  beta\ngamma\tdelta\n\nepsilon zeta.  "
    assert chunk_text(text, 3, 1) == ["Alpha  beta\ngamma", "gamma\tdelta\n\nepsilon", "epsilon zeta."]


def test_chunking_nothing_gives_no_chunk():
    assert chunk_text("", 4, 1) == [] and chunk_text(" \n\t ", 4, 1) == [] and chunk_text(None, 4, 1) == []
    with pytest.raises(ValueError, match="overlap"):
        chunk_text(WORDS10, 4, 4)


def make_seeds(texts: dict[str, str], lang: bool = True) -> pa.Table:
    columns = {"doc_id": list(texts), "domain": ["sci"] * len(texts), "text": list(texts.values())}
    if lang:
        columns["lang"] = ["en"] * len(texts)
    return pa.table(columns)


def words(n: int, tag: str) -> str:
    return " ".join(f"{tag}{i}" for i in range(n))


def test_seed_chunks_take_every_seeds_first_chunk_before_any_second():
    seeds = make_seeds({"a": words(10, "a"), "b": words(4, "b"), "c": words(7, "c"), "empty": ""})
    chunks = seed_chunks(seeds, needed=100, words=4, overlap=1)
    assert [c.chunk_id for c in chunks] == ["a#0", "b#0", "c#0", "a#1", "c#1", "a#2"]
    assert [c.seed_id for c in chunks] == ["a", "b", "c", "a", "c", "a"]
    assert chunks[3].text == "a3 a4 a5 a6" and chunks[4].text == "c3 c4 c5 c6"
    assert {(c.domain, c.lang) for c in chunks} == {("sci", "en")}


def test_seed_chunks_stop_at_needed():
    seeds = make_seeds({"a": words(10, "a"), "b": words(10, "b")}, lang=False)
    chunks = seed_chunks(seeds, needed=3, words=4, overlap=1)
    assert [c.chunk_id for c in chunks] == ["a#0", "b#0", "a#1"]
    assert {c.lang for c in chunks} == {None}
    assert seed_chunks(seeds, needed=0, words=4, overlap=1) == []


# prompts ---------------------------------------------------------------------------------------------------------

def test_shipped_templates_load():
    qa, instruction, judge = (load_template(PROMPTS, name) for name in ("qa", "instruction", "judge"))
    assert (qa.name, qa.version, qa.kind, qa.labels) == ("qa", "1", "qa", ("Q", "A"))
    assert (instruction.kind, instruction.labels) == ("instruction", ("Instruction", "Response"))
    assert (judge.kind, judge.labels) == ("judge", ("Score",))
    assert all(t.system and len(t.digest) == 16 for t in (qa, instruction, judge))
    assert len({qa.digest, instruction.digest, judge.digest}) == 3


def write(folder: Path, text: str, name: str = "t") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


VALID = "version: 2\nkind: qa\nlabels: [Q, A]\nsystem: be brief\nuser: 'Passage: ${chunk} - write ${n} pairs'\n"


def test_a_valid_custom_template_and_its_digest(tmp_path):
    write(tmp_path, VALID)
    template = load_template(tmp_path, "t")
    assert (template.version, template.system) == ("2", "be brief")
    write(tmp_path, VALID.replace("be brief", "be short"))
    assert load_template(tmp_path, "t").digest != template.digest


@pytest.mark.parametrize(("text", "message"), [
    ("version: 1\nkind: qa\nlabels: [Q, A\nuser: x", "not valid YAML"),
    ("- a list\n", "must be a mapping"),
    ("version: 1\nkind: qa\nuser: '${chunk} ${n}'\n", "lacks ['labels']"),
    ("version: 1\nkind: summary\nlabels: [Q, A]\nuser: '${chunk} ${n}'\n", "kind 'summary' is not one of"),
    ("version: 1\nkind: qa\nlabels: [Q, A]\nuser: 'Passage: ${chunk}'\n", "must use ${chunk}, ${n}"),
    ("version: 1\nkind: judge\nlabels: [Score]\nuser: '${chunk} ${prompt}'\n", "must use ${chunk}, ${prompt}"),
    ("version: 1\nkind: qa\nlabels: [Q]\nuser: '${chunk} ${n}'\n", "labels must be"),
    ("version: 1\nkind: qa\nlabels: [Q, ' ']\nuser: '${chunk} ${n}'\n", "labels must be"),
    ("version: 1\nkind: qa\nlabels: QA\nuser: '${chunk} ${n}'\n", "labels must be"),
    ("version: 1\nkind: qa\nlabels: [Q, q]\nuser: '${chunk} ${n}'\n", "labels must be"),
    ("version: 1\nkind: judge\nlabels: [Score, Why]\nuser: '${chunk} ${prompt} ${response}'\n", "labels must be"),
    ("version: 1\nkind: qa\nlabels: [Q, A]\nuser: [a, b]\n", "user must be text"),
    ("version: 1\nkind: qa\nlabels: [Q, A]\nuser: '${chunk} ${n} costs $5'\n", "must open a placeholder"),
    ("version: 1\nkind: qa\nlabels: [Q, A]\nuser: '${chunk} ${n} ${topic}'\n", "unknown placeholders ['topic']"),
])
def test_a_bad_template_is_named_with_its_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(TemplateError) as error:
        load_template(tmp_path, "t")
    assert message in str(error.value) and str(path) in str(error.value)


def test_a_missing_template_is_named_with_its_path(tmp_path):
    with pytest.raises(TemplateError, match="'nope' not found") as error:
        load_template(tmp_path, "nope")
    assert str(tmp_path / "nope.yaml") in str(error.value)


def test_render_inserts_values_as_text():
    qa = load_template(PROMPTS, "qa")
    chunk = "Costs $5 or ${chunk}, $n and $$ stay as written."
    system, user = qa.render(chunk=chunk, n=3)
    assert system == {"role": "system", "content": qa.system}
    assert user["role"] == "user" and chunk in user["content"]
    assert "Write 3 different question-answer pairs" in user["content"] and "${" not in user["content"].replace(
        chunk, "")
    with pytest.raises(TemplateError, match="needs a value for 'n'"):
        qa.render(chunk="x")


def test_render_without_system_message(tmp_path):
    write(tmp_path, VALID.replace("system: be brief\n", ""))
    assert load_template(tmp_path, "t").render(chunk="c", n=1) == \
        [{"role": "user", "content": "Passage: c - write 1 pairs"}]


QA = load_template(PROMPTS, "qa")
INSTRUCTION = load_template(PROMPTS, "instruction")


@pytest.mark.parametrize(("text", "pairs"), [
    ("Q: What is X?\nA: X is Y.\nQ: Why?\nA: Because.", [("What is X?", "X is Y."), ("Why?", "Because.")]),
    ("Here are two pairs:\n1. Q: What is X?\n   A: X is Y.\n2) Q: Why?\n   A: Because Z.\n",
     [("What is X?", "X is Y."), ("Why?", "Because Z.")]),
    ("**Q:** What is X?\n**A:** X is Y.\n\n**Q1:** Who?\n**A1:** Ann.", [("What is X?", "X is Y."), ("Who?", "Ann.")]),
    ("**Q**: Where?\n__A__: Here.", [("Where?", "Here.")]),
    ("Q: Explain X.\nA: First line.\nSecond line.\n\n- a bullet\nQ: Next?\nA: Yes.",
     [("Explain X.", "First line.\nSecond line."), ("Next?", "Yes.")]),  # a QA part ends at a blank line
    ("Q: Lost question?\nQ: Kept?\nA: Yes.\nQ: Dangling at the end", [("Kept?", "Yes.")]),
    ("A: an answer with no question\nQ: Then?\nA: Then.", [("Then?", "Then.")]),
    ("q: lower case?\na: fine.", [("lower case?", "fine.")]),
    ("Q 1: spaced number?\nA 1: ok.", [("spaced number?", "ok.")]),
    ("Q：full-width colon?\nA：ok.", [("full-width colon?", "ok.")]),
    ("Q: empty answer\nA:\nQ: next\nA: z", [("empty answer", ""), ("next", "z")]),
    ("Not a pair at all.", []),
    ("", []),
])
def test_parse_qa_pairs(text, pairs):
    assert QA.parse_pairs(text) == pairs


def test_parse_instruction_pairs():
    text = "Instruction: Summarise the passage.\nResponse: It says X.\n\nINSTRUCTION: List two facts.\nresponse: X; Y."
    assert INSTRUCTION.parse_pairs(text) == [("Summarise the passage.", "It says X."), ("List two facts.", "X; Y.")]
    assert INSTRUCTION.parse_pairs("Q: not my labels\nA: no") == []


@pytest.mark.parametrize(("reply", "score"), [
    ("Score: 7", 7.0),
    ("score = 9/10", 9.0),
    ("**Score:** 10", 10.0),
    ("The answer is faithful.\nScore: 8", 8.0),
    ("Score:10/10", 10.0),
    ("SCORE: 1", 1.0),
    ("Score: 7.5", 7.5),
    ("Score: <1-10>\nScore: 6", 6.0),
    ("Score: 8.", 8.0),
    ("I would give it an 8.", math.nan),
    ("Score: 0", math.nan),
    ("Score: 11", math.nan),
    ("Score: 100", math.nan),
    ("Score: 10.5", math.nan),
    ("Score: 3/5", math.nan),
    ("Score: 10/100", math.nan),
    ("Score: -3", math.nan),
    ("underscore: 5", math.nan),
    ("", math.nan),
    (None, math.nan),
])
def test_parse_score(reply, score):
    got = parse_score(reply)
    assert got == score or (math.isnan(score) and math.isnan(got)), (reply, got)


def test_a_qa_part_ends_at_its_first_blank_line_an_instruction_response_does_not():
    from dctp_tasks.config import SyntheticConfig
    from dctp_tasks.synthetic.prompts import load_template, prompts_dir

    folder = prompts_dir(SyntheticConfig())
    chatter = "Q: What did the workers say?\nA: They were disappointed.\n\nQuestion 1: What is the passage about?"
    assert load_template(folder, "qa").parse_pairs(chatter) == [("What did the workers say?",
                                                                 "They were disappointed.")]
    steps = "Instruction: List the steps.\nResponse: First, plan.\n\nThen, act."
    assert load_template(folder, "instruction").parse_pairs(steps) == [("List the steps.",
                                                                        "First, plan.\n\nThen, act.")]
