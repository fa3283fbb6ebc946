"""The generate_synthetic stage through the transformers backend on the AG News day: a tiny random LM for the
mechanics (every gibberish output accounted for, a crash mid-generation resumed without generating a batch twice),
and the prepared SmolLM2 writing and judging pairs of its own."""

from __future__ import annotations

import os

import pyarrow.compute as pc
import pytest

# Set before transformers is imported by these tests: any attempt to reach the Hub fails instead of downloading.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

from dctp_tasks.config import load_config
from dctp_tasks.quality import lm
from dctp_tasks.staging import stage_rejects, stage_rows
from dctp_tasks.synthetic.candidates import EMPTY, NO_PAIR, TRUNCATED
from dctp_tasks.synthetic.generators import HFGenerator
from dctp_tasks.synthetic.stage import CANDIDATES, generate_synthetic_day
from tests.conftest import unavailable
from tests.quality.tiny_models import build_tiny_causal_lm
from tests.synthetic.conftest import DAG, DT, decided_day, settings


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> str:
    return str(build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm")))


@pytest.fixture
def day(tmp_path, news_rows):
    storage, _, decided = decided_day(tmp_path / "data", news_rows)
    return storage, decided


class Calls:
    """Wraps ``HFGenerator.generate``: records each call's kind (``generate`` or ``judge``) and raises
    ``RuntimeError("worker lost")`` on call ``fail_on`` (1-based), as a worker dying mid-task would."""

    def __init__(self, monkeypatch, fail_on: int | None = None) -> None:
        self.kinds: list[str] = []
        self.fail_on = fail_on
        original = HFGenerator.generate

        def generate(generator, prompts, seed):
            judging = any("Grade the answer" in m["content"] for p in prompts for m in p)
            self.kinds.append("judge" if judging else "generate")
            if len(self.kinds) == self.fail_on:
                raise RuntimeError("worker lost")
            return original(generator, prompts, seed)

        monkeypatch.setattr(HFGenerator, "generate", generate)

    def count(self, kind: str) -> int:
        return self.kinds.count(kind)


def hf_config(model: str | None, *, batch_size: int = 2, max_new_tokens: int = 16, **overrides):
    generator = {"backend": "transformers", "model": model, "device": "cpu", "batch_size": batch_size,
                 "max_new_tokens": max_new_tokens}
    return load_config(overrides=settings(**{"synthetic.generator": generator, **overrides}))


def generate(storage, config):
    return generate_synthetic_day(storage, config, DAG, DT, input_stage="quality")


def rows_of(storage, result):
    return storage.read_table(stage_rows(storage, DAG, DT, result.stage, result.version))


def candidates_of(storage, result):
    version_dir = stage_rows(storage, DAG, DT, result.stage, result.version).rsplit("/", 1)[0]
    return storage.read_table(f"{version_dir}/{CANDIDATES}")


def rejects_of(storage, result):
    return stage_rejects(storage, DAG, DT, result.stage, result.version)


def assert_accounted(storage, result, real: int):
    """Every generated row is exported or in the ledger with a ``synthetic_*`` reason; the rows are real + accepted."""
    rows = rows_of(storage, result)
    accepted = rows.filter(pc.equal(rows.column("synthetic"), True)).num_rows
    rejected = rejects_of(storage, result).column("reason").to_pylist()
    assert accepted == result.extra["synthetic"]
    assert accepted + len(rejected) == result.extra["generated"] == candidates_of(storage, result).num_rows
    assert all(reason.startswith("synthetic_") for reason in rejected)
    assert rows.num_rows == real + accepted == result.extra["real"] + result.extra["synthetic"]
    return rows, rejected


# --- mechanics with a tiny random LM ----------------------------------------------------------------------------


def test_gibberish_from_a_local_lm_is_accounted_for_and_judged_by_the_generator(day, tiny_lm):
    storage, decided = day
    result = generate(storage, hf_config(tiny_lm))
    planned, chunks = result.extra["planned"], result.extra["chunks"]
    assert planned > 0 and chunks == -(-planned // 2)
    assert chunks <= result.extra["generated"] <= planned  # an output with no pair is one (malformed) row
    _, rejected = assert_accounted(storage, result, decided.kept)
    assert set(rejected) <= {"synthetic_malformed", "synthetic_low_quality", "synthetic_copies_seed"}
    assert "synthetic_malformed" in rejected  # random weights do not write "Q: … A: …"
    cands = candidates_of(storage, result)
    generation = cands.column("generation").to_pylist()
    assert {g["backend"] for g in generation} == {"transformers"} and {g["model"] for g in generation} == {tiny_lm}
    assert {g["judge_model"] for g in generation} == {tiny_lm}  # no judge configured: the generator grades
    assert result.extra["generate_batches"] == -(-result.extra["chunks"] // 2)
    assert result.extra["generate_completion_tokens"] > 0 and result.extra["generate_seconds"] > 0
    assert result.extra["generate_reused_batches"] == 0


def test_a_crash_mid_generation_resumes_from_the_stored_batches(day, tiny_lm, monkeypatch, tmp_path, news_rows):
    storage, decided = day
    config = hf_config(tiny_lm)
    crashing = Calls(monkeypatch, fail_on=2)  # the first batch is generated and stored, the second one dies
    with pytest.raises(RuntimeError, match="worker lost"):
        generate(storage, config)
    assert crashing.kinds == ["generate", "generate"]
    monkeypatch.undo()
    retry = Calls(monkeypatch)
    resumed = generate(storage, config)
    batches = resumed.extra["generate_batches"]
    assert batches >= 3
    assert retry.count("generate") == batches - 1  # the first batch was read back, not generated again
    assert resumed.extra["generate_reused_batches"] == 1
    assert_accounted(storage, resumed, decided.kept)
    # the same rows, candidates and rejects as a run that never crashed, in a storage of its own
    monkeypatch.undo()
    other, _, _ = decided_day(tmp_path / "other", news_rows)
    clean = generate(other, config)
    assert clean.extra["generate_reused_batches"] == 0

    def same(table):
        return sorted(zip(*(table.column(c).to_pylist() for c in table.column_names if c != "created_at"),
                          strict=True), key=str)

    assert same(rows_of(storage, resumed).select(["doc_id", "text"])) == \
        same(rows_of(other, clean).select(["doc_id", "text"]))
    assert same(candidates_of(storage, resumed).select(["doc_id", "text", "generation"])) == \
        same(candidates_of(other, clean).select(["doc_id", "text", "generation"]))
    assert same(rejects_of(storage, resumed).select(["doc_id", "reason", "detail"])) == \
        same(rejects_of(other, clean).select(["doc_id", "reason", "detail"]))


# --- the prepared SmolLM2 ---------------------------------------------------------------------------------------


@pytest.fixture
def one_torch_thread():
    """Decoding a 135M model is thousands of small ops per token: on a shared 2-vCPU host two torch threads waiting
    on each other ran 3-13x slower at times (measured), while one thread ran steadily at about 50 tokens/s."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_smollm2_writes_and_judges_pairs_from_real_articles(tmp_path, news_rows, monkeypatch, one_torch_thread):
    """Three chunks in one batch, 96 new tokens each, then the judge."""
    if not lm.is_prepared(lm.smollm2_folder()):
        unavailable(f"SmolLM2 not prepared at {lm.smollm2_folder()}: run `make install`")
    storage, _, decided = decided_day(tmp_path / "data", news_rows)
    config = hf_config(None, batch_size=3, max_new_tokens=96, **{
        "synthetic.daily_budget": 6, "synthetic.questions_per_chunk": 2, "synthetic.max_share": 0.5})
    calls = Calls(monkeypatch)
    result = generate(storage, config)
    extra = result.extra
    assert extra["planned"] == 6 and extra["chunks"] == 3
    assert calls.count("generate") == extra["generate_batches"] == 1
    assert extra["generate_completion_tokens"] > 0 and extra["generate_prompt_tokens"] > 0
    assert extra["generate_tokens_per_s"] > 0
    _, rejected = assert_accounted(storage, result, decided.kept)
    cands = candidates_of(storage, result)
    generation = cands.column("generation").to_pylist()
    assert {g["model"] for g in generation} == {g["judge_model"] for g in generation} == {"SmolLM2-135M-Instruct"}
    well_formed = [(p, r) for p, r, g in zip(cands.column("prompt").to_pylist(), cands.column("response").to_pylist(),
                                              generation, strict=True) if g["malformed"] is None]
    if well_formed:  # SmolLM2 kept to the format at least once: those pairs, and only those, went to the judge
        assert all(p and r for p, r in well_formed)
        assert calls.count("judge") == extra["judge_batches"] >= 1 and extra["judge_prompts"] == len(well_formed)
        assert 0 < extra["judge_completion_tokens"] <= 16 * len(well_formed)  # greedy, one short line each
    else:  # it never did: every row is malformed for what its output lacked, and the judge was never asked
        assert set(rejected) == {"synthetic_malformed"} and calls.count("judge") == extra["judge_batches"] == 0
        assert {g["malformed"] for g in generation} <= {NO_PAIR, TRUNCATED, EMPTY}
        assert all(d.startswith("output: ") for d in rejects_of(storage, result).column("detail").to_pylist())
    report = storage.read_bytes(storage.path(extra["report"])).decode()
    assert "## Generation" in report and "completion tokens" in report and "## Decisions" in report
